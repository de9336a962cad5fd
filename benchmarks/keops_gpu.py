"""Time 10 Sinkhorn iterations of a KeOps Gaussian kernel on a large point cloud.

The cloud is N points uniform on the unit sphere. sigma is chosen so that each
point has about ``--neighbours`` others within distance sigma: a cap of radius
sigma covers a fraction sigma^2 / 4 of the sphere, so sigma = 2 sqrt(k / N).

The script first compiles the KeOps formula on a small cloud with the same
dtype and dimension, so the timing leaves out the compilation. It covers the 11
kernel products of 10 iterations, because the solver evaluates the marginal
error once more after the last update.
It prints one JSON line and writes it to $OUT/keops_gpu.json when OUT is set.

Usage, with sinkshape installed (``pip install -e ".[keops]"``)::

    python benchmarks/keops_gpu.py                         # N = 1,000,000 on CUDA
    python benchmarks/keops_gpu.py --n 2000 --device cpu   # quick check without a GPU

NOTE: this script has run only on the CPU, at N = 2,000. No GPU timings have
been recorded yet; record them on a CUDA machine with the first command above.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
import warnings
from pathlib import Path

import torch

from sinkshape.keops import KeOpsKernel, _keops_failure_reason
from sinkshape.sinkhorn import SinkhornConvergenceWarning, sinkhorn_scaling

#: Number of timed Sinkhorn updates. The tolerance is unreachable, so all of them run.
ITERATIONS = 10
UNREACHABLE_TOL = 1e-30

#: Size of the cloud used to compile the formula before timing.
WARM_UP_POINTS = 1000


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n", type=int, default=1_000_000, help="number of points (default 1,000,000)"
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="floating-point type of the points and products (default float32)",
    )
    parser.add_argument(
        "--device",
        default="cuda",
        help="torch device, e.g. cuda, cuda:1 or cpu (default cuda)",
    )
    parser.add_argument(
        "--neighbours",
        type=float,
        default=30.0,
        help="expected number of neighbours within distance sigma (default 30)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser.parse_args()


def sphere_points(
    n_points: int, *, dtype: torch.dtype, device: torch.device, seed: int
) -> torch.Tensor:
    """Return n_points uniform on the unit sphere, from normalized Gaussian vectors."""
    generator = torch.Generator(device=device).manual_seed(seed)
    vectors = torch.randn(n_points, 3, generator=generator, dtype=dtype, device=device)
    return vectors / vectors.norm(dim=1, keepdim=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_sinkhorn(points: torch.Tensor, sigma: float):
    """Build the KeOps kernel and run exactly ITERATIONS updates with uniform masses."""
    kernel = KeOpsKernel.from_points(points, sigma, kind="gaussian")
    n_points = points.shape[0]
    masses = torch.full(
        (n_points,), 1.0 / n_points, dtype=points.dtype, device=points.device
    )
    with warnings.catch_warnings():
        # The tolerance is unreachable on purpose, so the solver always warns.
        warnings.simplefilter("ignore", SinkhornConvergenceWarning)
        return sinkhorn_scaling(
            kernel, masses, tol=UNREACHABLE_TOL, max_iter=ITERATIONS
        )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def main() -> None:
    arguments = parse_arguments()
    if arguments.n < 2:
        raise SystemExit(f"--n must be at least 2, got {arguments.n}")
    if arguments.neighbours <= 0:
        raise SystemExit(f"--neighbours must be positive, got {arguments.neighbours}")

    device = torch.device(arguments.device)
    dtype = getattr(torch, arguments.dtype)
    failure = _keops_failure_reason(device)
    if failure is not None:
        raise SystemExit(
            f"KeOps does not work on {device.type}: {failure}. Install pykeops "
            "and a C++ compiler, and the CUDA toolkit for a GPU"
        )
    sigma = 2.0 * math.sqrt(arguments.neighbours / arguments.n)

    warm_up_points = sphere_points(
        WARM_UP_POINTS, dtype=dtype, device=device, seed=arguments.seed + 1
    )
    run_sinkhorn(warm_up_points, 2.0 * math.sqrt(arguments.neighbours / WARM_UP_POINTS))
    synchronize(device)

    points = sphere_points(arguments.n, dtype=dtype, device=device, seed=arguments.seed)
    synchronize(device)
    start = time.perf_counter()
    result = run_sinkhorn(points, sigma)
    synchronize(device)
    seconds = time.perf_counter() - start

    import pykeops  # imported by the KeOps check above, so it is installed

    record = {
        "n_points": arguments.n,
        "sigma": sigma,
        "neighbours": arguments.neighbours,
        "dtype": arguments.dtype,
        "device": str(device),
        "device_name": device_name(device),
        "iterations": result.n_iter,
        "seconds": round(seconds, 4),
        "marginal_error": result.marginal_error,
        "torch": torch.__version__,
        "pykeops": pykeops.__version__,
    }
    line = json.dumps(record)
    print(line)

    output_folder = os.environ.get("OUT")
    if output_folder:
        Path(output_folder, "keops_gpu.json").write_text(line + "\n")


if __name__ == "__main__":
    main()
