"""``sinkshape smooth INPUT OUTPUT --sigma S``: smooth a surface or its point arrays."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from sinkshape._checks import check_sigma
from sinkshape.errors import InputError

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    """Declare the ``smooth`` subcommand and its options."""
    parser = subparsers.add_parser(
        "smooth",
        help="smooth a surface or its point arrays by Sinkhorn-normalized diffusion",
        description=(
            "Smooth the shape of a surface (default) or named point arrays at scale "
            "SIGMA and write a new file. Reads and writes .vtp, .vtk, .stl, .ply and "
            ".obj; never writes over INPUT."
        ),
    )
    parser.add_argument("input", metavar="INPUT", help="surface file to read")
    parser.add_argument("output", metavar="OUTPUT", help="file to write; must differ from INPUT")
    parser.add_argument(
        "--sigma",
        required=True,
        help="smoothing scale, in the unit of the coordinates (mm for medical data)",
    )
    parser.add_argument(
        "--array",
        dest="arrays",
        action="append",
        default=[],
        metavar="NAME",
        help="point array to smooth (repeat for several); the surface is then kept "
        "unless --surface is also given",
    )
    parser.add_argument(
        "--surface",
        action="store_true",
        help="smooth the coordinates too when --array is given",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=1,
        help="smooth arrays this many times at scale SIGMA (default: 1)",
    )
    parser.add_argument(
        "--order",
        type=int,
        default=None,
        help="order of the surface filter I - (I - P)^order (default: 6; 1 is plain "
        "diffusion, which shrinks)",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "graph", "dense", "sparse", "keops"),
        default="auto",
        help="kernel backend (default: auto, the mesh graph for triangle meshes)",
    )
    parser.add_argument(
        "--kind",
        choices=("gaussian", "exponential"),
        default="gaussian",
        help="kernel of the distance for the dense, sparse and keops backends",
    )
    parser.add_argument(
        "--tol",
        type=float,
        default=None,
        help="tolerance on the marginal error (default: 1e-6 in float64)",
    )
    parser.add_argument(
        "--max-iter", type=int, default=100, help="maximum Sinkhorn iterations (default: 100)"
    )
    parser.add_argument(
        "--drop-invalid",
        action="store_true",
        help="drop vertices with a NaN or infinite coordinate and the cells that use "
        "them, instead of stopping with an error; the output then has the point "
        "array vtkOriginalPointIds, each point's index in INPUT",
    )
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress", dest="progress", action="store_true", default=None,
        help="show progress bars (default: when stderr is a terminal)",
    )
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    parser.set_defaults(run=run)


def _check_arguments(args) -> float:
    try:
        sigma = float(args.sigma)
    except ValueError:
        msg = f"--sigma must be a positive number in mm, got {args.sigma!r}"
        raise InputError(msg) from None
    sigma = check_sigma(sigma, name="--sigma")
    if args.steps < 1:
        msg = f"--steps must be at least 1, got {args.steps}"
        raise InputError(msg)
    if args.order is not None and args.order < 1:
        msg = f"--order must be at least 1, got {args.order}"
        raise InputError(msg)
    if args.max_iter < 1:
        msg = f"--max-iter must be at least 1, got {args.max_iter}"
        raise InputError(msg)
    if args.tol is not None and not args.tol > 0:
        msg = f"--tol must be positive, got {args.tol}"
        raise InputError(msg)
    return sigma


def run(args: argparse.Namespace) -> int:
    """Run ``sinkshape smooth``; return the exit status."""
    from sinkshape.io import check_output_path, read_mesh, write_mesh
    from sinkshape.mesh import to_pyvista
    from sinkshape.smoothing import DEFAULT_FILTER_ORDER, Smoother

    sigma = _check_arguments(args)
    # Check the output path before any work, so that a bad path costs nothing
    # and creates no file.
    check_output_path(args.output, source=args.input)
    mesh = read_mesh(args.input)

    available = list(mesh.point_data.keys())
    for name in args.arrays:
        if name not in available:
            msg = f"point array {name!r} not found in {args.input}; it has {available}"
            raise InputError(msg)
    smooth_shape = args.surface or not args.arrays
    progress = sys.stderr.isatty() if args.progress is None else args.progress

    start = time.perf_counter()
    smoother = Smoother(
        mesh,
        sigma,
        backend=args.backend,
        kind=args.kind,
        tol=args.tol,
        max_iter=args.max_iter,
        drop_invalid=args.drop_invalid,
        progress_bar=progress,
    )
    # A copy of the input, without the dropped vertices and their cells if any.
    output = to_pyvista(smoother.surface)
    for name in args.arrays:
        values = np.asarray(output.point_data[name])
        if not np.issubdtype(values.dtype, np.number):
            msg = f"point array {name!r} has dtype {values.dtype}; only numbers can be smoothed"
            raise InputError(msg)
        try:
            smoothed = smoother.smooth(values.astype(np.float64), repeats=args.steps)
        except InputError as error:
            msg = f"point array {name!r}: {error}"
            raise InputError(msg) from error
        output.point_data[name] = smoothed.astype(np.result_type(values.dtype, np.float32))

    lines = [
        f"{smoother.surface.n_points} points, backend {smoother.backend}: "
        f"{smoother.operator.n_iter} Sinkhorn iterations, marginal error "
        f"{smoother.operator.marginal_error:.2e}, {smoother.steps} diffusion steps per sigma"
    ]
    if smooth_shape:
        from sinkshape.smoothing import surface_report

        order = DEFAULT_FILTER_ORDER if args.order is None else args.order
        points = smoother.smooth_points(order=order)
        report = surface_report(smoother.surface, points)
        output.points = points.detach().cpu().numpy().astype(output.points.dtype)
        lines.append(
            f"surface: volume change {100 * report.volume_change:+.3f}%, "
            f"{report.flipped_triangles} flipped triangles"
        )

    write_mesh(output, args.output, source=args.input)
    elapsed = time.perf_counter() - start
    lines.append(f"wrote {args.output} in {elapsed:.1f} s")
    for line in lines:
        print(line)
    return 0
