"""Time one LDDMM registration with two scikit-shapes models, side by side.

- ``ExtrinsicDeformation(normalization="both")`` from scikit-shapes 0.3: five
  fixed Sinkhorn iterations with unit masses, kernel products by KeOps;
- ``NormalizedKernelDeformation`` from sinkshape: Sinkhorn scaling to a
  tolerance with vertex-area masses and warm starts, dense kernel, and dH/dq in
  closed form.

Both run through the same ``skshapes.Registration`` with the same loss, optimizer,
number of time steps, integration scheme, kernel width and iterations, on a
sphere of about 2,000 points registered to a smoothly bent and shifted copy.
Each model first runs one untimed evaluation, so that KeOps compiles its
formulas before the timed fit; that first call is reported on its own.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/lddmm_vs_skshapes.py
    python benchmarks/lddmm_vs_skshapes.py --resolution 30 --iterations 1  # quick check
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import pyvista as pv
import torch


def build_problem(resolution: int):
    """Return a sphere of about 2,000 points (resolution 50) and its deformed copy."""
    import skshapes as sks

    mesh = pv.Sphere(radius=1.0, theta_resolution=resolution, phi_resolution=resolution - 8)
    source = sks.PolyData(mesh)
    points = source.points
    center = torch.tensor([0.0, 0.0, 1.0])
    bump = torch.exp(-((points - center) ** 2).sum(dim=1) / (2 * 0.4**2))
    target = source.copy()
    target.points = points + 0.2 * bump[:, None] * torch.tensor([1.0, 0.0, 0.0]) + torch.tensor(
        [0.1, 0.0, 0.0]
    )
    return source, target


class CountingModel:
    """Counts the calls to a model's ``morph`` by replacing it on the instance."""

    def __init__(self, model) -> None:
        self.calls = 0
        original = model.morph

        def morph(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        model.morph = morph


def time_first_evaluation(model, source) -> float:
    momenta = torch.zeros(model.parameter_shape(source), requires_grad=True)
    started = time.perf_counter()
    output = model.morph(source, momenta, return_regularization=True)
    (output.morphed_shape.points.sum() + output.regularization).backward()
    return time.perf_counter() - started


def fit(model, source, target, args) -> dict:
    import skshapes as sks

    counter = CountingModel(model)
    registration = sks.Registration(
        model=model,
        loss=sks.L2Loss(),
        optimizer=sks.LBFGS(max_iter=args.lbfgs_max_iter),
        n_iter=args.iterations,
        regularization_weight=args.regularization,
        gpu=False,
    )
    started = time.perf_counter()
    registration.fit(source=source, target=target)
    elapsed = time.perf_counter() - started
    residual = (registration.morphed_shape_.points.detach() - target.points).norm(dim=1)
    return {
        "fit_seconds": elapsed,
        # fit() calls morph once per objective evaluation, once or twice more
        # before the loop and once at the end.
        "morph_calls": counter.calls,
        "seconds_per_call": elapsed / max(counter.calls, 1),
        "fidelity": float(registration.fidelity_),
        "mean_residual": float(residual.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=50,
                        help="sphere resolution; 50 gives 2,002 points (default: 50)")
    parser.add_argument("--sigma", type=float, default=0.3, help="kernel width (default: 0.3)")
    parser.add_argument("--steps", type=int, default=5, help="time steps (default: 5)")
    parser.add_argument("--solver", default="euler", choices=("euler", "midpoint", "rk4"),
                        help="integration scheme of both models (default: euler)")
    parser.add_argument("--iterations", type=int, default=2,
                        help="Registration n_iter, L-BFGS steps (default: 2)")
    parser.add_argument("--lbfgs-max-iter", type=int, default=5,
                        help="L-BFGS iterations per step (default: 5)")
    parser.add_argument("--regularization", type=float, default=1e-3,
                        help="regularization weight (default: 1e-3)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    import skshapes as sks

    from sinkshape.lddmm import NormalizedKernelDeformation

    source, target = build_problem(args.resolution)
    models = {
        "skshapes ExtrinsicDeformation, normalization='both' (KeOps)": sks.ExtrinsicDeformation(
            n_steps=args.steps, kernel="gaussian", scale=args.sigma,
            normalization="both", solver=args.solver,
        ),
        "sinkshape NormalizedKernelDeformation (dense)": NormalizedKernelDeformation(
            n_steps=args.steps, kernel="gaussian", sigma=args.sigma, method=args.solver,
        ),
    }

    results = {}
    for name, model in models.items():
        first = time_first_evaluation(model, source)
        results[name] = {"first_evaluation_seconds": first, **fit(model, source, target, args)}
        print(f"{name}: {results[name]}", flush=True)

    reference, ours = list(results.values())
    ratio = reference["fit_seconds"] / ours["fit_seconds"]
    machine = {
        "points": source.n_points,
        "dtype": str(source.points.dtype),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "skshapes": getattr(sks, "__version__", "0.3"),
    }

    print()
    print(f"{source.n_points} points, {args.steps} {args.solver} steps, sigma {args.sigma}, "
          f"L2 loss, L-BFGS {args.iterations} x {args.lbfgs_max_iter}, "
          f"{torch.get_num_threads()} torch threads")
    print("| model | first evaluation (s) | fit (s) | morph calls | s per call | mean residual |")
    print("|---|---|---|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {values['first_evaluation_seconds']:.1f} | {values['fit_seconds']:.1f} "
              f"| {values['morph_calls']} | {values['seconds_per_call']:.2f} "
              f"| {values['mean_residual']:.2e} |")
    print(f"fit time ratio: {ratio:.1f}")

    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({"settings": vars(args), "machine": machine, "results": results,
                       "fit_time_ratio": ratio}, file, indent=2)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
