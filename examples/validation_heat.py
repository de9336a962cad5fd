"""Compare Sinkhorn diffusion with implicit cotangent heat diffusion at matched times.

Run from the repository root, with ``SINKSHAPE_DATA_DIR`` naming the folder that
contains ``vmtk_aorta/``::

    python examples/validation_heat.py

Shapes: the unit sphere (convex hull of 4,000 Fibonacci-lattice points) with
the signal x + y z + sin(3 z), and the vmtk aorta with a fixed random mix of
the cotangent eigenvectors 2..21 (weights 1 / sqrt(index), seed 0). Both
signals have zero mean.

Reference: exp(-T Delta) f by 16 implicit steps (M + (T / 16) L)^-1 M of the
cotangent Laplacian. Matching rules:

- Gaussian backend, bandwidth sigma: ``steps`` applications of Q run for
  T = steps * sigma^2 / 2;
- graph backend: :class:`sinkshape.smoothing.Smoother` at scale
  sigma = sqrt(2 T), a lazy walk whose step count comes from the measured
  diffusion time of one step.

Prints, for each T, |Q f - H f|_m / |H f|_m (the figure the tests bound by
10%) and |Q f - H f|_m / |f - H f|_m (the error relative to what diffusion
changed), and writes ``validation-heat.png`` with both against T.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter, ScalarFormatter
import numpy as np
from scipy.spatial import ConvexHull
from validation_samples import (
    fibonacci_sphere,
    implicit_heat,
    mass_norm,
    output_path,
    relative_difference,
)

from sinkshape import datasets, diffusion_operator
from sinkshape.mesh import as_surface
from sinkshape.reference import ImplicitHeatOperator, cotangent_laplacian
from sinkshape.smoothing import Smoother
from sinkshape.spectra import gaussian_step_time


def sphere_case():
    points = fibonacci_sphere(4000)
    triangles = ConvexHull(points).simplices
    x, y, z = points.T
    return "sphere", points, triangles, x + y * z + np.sin(3 * z), 0.1, (1, 2, 4, 10, 20)


def aorta_case():
    surface = as_surface(datasets.load("aorta-surface"))
    points = surface.points.numpy()
    spectrum = cotangent_laplacian(points, triangles=surface.triangles).spectrum(21)
    weights = np.random.default_rng(0).normal(size=20) / np.sqrt(np.arange(1, 21))
    signal = spectrum.eigenvectors[:, 1:] @ weights
    return "aorta", points, surface.triangles, signal, 2.0, (1, 2, 4, 8, 16)


def compare(case) -> dict[str, np.ndarray]:
    name, points, triangles, signal, sigma, step_counts = case
    laplacian = cotangent_laplacian(points, triangles=triangles)
    masses = laplacian.masses
    signal = signal - (masses * signal).sum() / masses.sum()
    vertex_masses = as_surface(points, triangles=triangles).masses
    gaussian = diffusion_operator(points, sigma, masses=vertex_masses, backend="sparse")

    rows = {key: [] for key in ("time", "gaussian", "gaussian/change", "graph",
                                "graph/change", "one implicit step", "change")}
    for steps in step_counts:
        time = steps * gaussian_step_time(sigma)
        reference = implicit_heat(laplacian, signal, time)
        change = mass_norm(signal - reference, masses)
        diffused = gaussian.apply(signal, steps=steps)
        smoother = Smoother(points, np.sqrt(2 * time), triangles=triangles, backend="graph")
        walked = smoother.smooth(signal)
        single = ImplicitHeatOperator(laplacian, time) @ signal

        rows["time"].append(time)
        rows["change"].append(change / mass_norm(signal, masses))
        rows["gaussian"].append(relative_difference(diffused, reference, masses))
        rows["gaussian/change"].append(mass_norm(diffused - reference, masses) / change)
        rows["graph"].append(relative_difference(walked, reference, masses))
        rows["graph/change"].append(mass_norm(walked - reference, masses) / change)
        rows["one implicit step"].append(relative_difference(single, reference, masses))

        print(f"{name}: T = {time:g} (sigma {sigma:g}, {steps} Gaussian steps; graph "
              f"{smoother.steps} steps, alpha {smoother.alpha:.3f}), |f - Hf| / |f| "
              f"{rows['change'][-1]:.3f}; Gaussian {rows['gaussian'][-1]:.4f} "
              f"({rows['gaussian/change'][-1]:.3f} of the change); graph "
              f"{rows['graph'][-1]:.4f} ({rows['graph/change'][-1]:.3f} of the change); "
              f"one implicit step {rows['one implicit step'][-1]:.4f}")
    return {key: np.array(values) for key, values in rows.items()}


def main() -> None:
    path = output_path(__doc__.splitlines()[0], "validation-heat.png")
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for axis, case in zip(axes, (sphere_case(), aorta_case()), strict=True):
        rows = compare(case)
        times = rows["time"]
        axis.loglog(times, rows["gaussian"], "o-", color="C0", label="Gaussian, |Qf - Hf| / |Hf|")
        axis.loglog(times, rows["gaussian/change"], "o--", color="C0", label="Gaussian, / |f - Hf|")
        axis.loglog(times, rows["graph"], "s-", color="C1", label="graph, |Qf - Hf| / |Hf|")
        axis.loglog(times, rows["graph/change"], "s--", color="C1", label="graph, / |f - Hf|")
        axis.loglog(times, rows["change"], "k:", label="|f - Hf| / |f|")
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xticks(times)
        axis.axhline(0.1, color="grey", linewidth=0.8)
        unit = " (mm^2)" if case[0] == "aorta" else ""
        axis.set_xlabel(f"diffusion time T{unit}")
        axis.set_ylabel("relative L2 difference (mass-weighted)")
        axis.set_title(f"{case[0]}: against 16 implicit cotangent heat steps")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
