"""``sinkshape register SOURCE TARGET OUTPUT --sigma S``: LDDMM surface registration.

Writes three things:

- OUTPUT: the registered source surface, with the point array ``displacement``
  (registered minus original position);
- the geodesic path as a ParaView collection: ``<stem>_path.pvd`` listing one
  surface per time step in the folder ``<stem>_path/``, which ParaView and
  ``pyvista.read`` open as a time series;
- the deformation sampled on a grid, ``<stem>_transform.nrrd``, an NRRD grid
  transform that 3D Slicer loads in the modeling direction (it moves the source
  onto the target), in LPS coordinates.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from sinkshape._checks import check_sigma
from sinkshape.errors import InputError

__all__ = ["add_parser", "run"]

DISPLACEMENT_ARRAY = "displacement"


def add_parser(subparsers) -> None:
    """Declare the ``register`` subcommand and its options."""
    parser = subparsers.add_parser(
        "register",
        help="register a surface onto another along an LDDMM geodesic",
        description=(
            "Deform SOURCE onto TARGET along a geodesic of the Sinkhorn-normalized "
            "kernel metric, and write the registered surface, the path and a grid "
            "transform for 3D Slicer. Reads .vtp, .vtk, .vtu, .stl, .ply and .obj."
        ),
    )
    parser.add_argument("source", metavar="SOURCE", help="surface to deform")
    parser.add_argument("target", metavar="TARGET", help="surface to reach")
    parser.add_argument(
        "output", metavar="OUTPUT", help="registered surface to write (.vtp or .vtk keep arrays)"
    )
    parser.add_argument(
        "--sigma", type=float, required=True,
        help="width of the deformation kernel, in the unit of the coordinates (mm)",
    )

    parser.add_argument(
        "--loss",
        choices=("varifold", "point-to-point", "optimal-transport"),
        default="varifold",
        help="data term: varifold (default) and optimal-transport need no "
        "correspondence; point-to-point needs vertices in the same order",
    )
    parser.add_argument(
        "--loss-sigma", type=float, nargs="+", default=None, metavar="S",
        help="loss scales in mm, coarse to fine, one stage each (default: sigma/2 sigma/4)",
    )
    parser.add_argument(
        "--regularization", type=float, default=0.01,
        help="weight of the kinetic energy against the squared residual (default: 0.01)",
    )

    parser.add_argument(
        "--time-steps", type=int, default=10,
        help="integration steps from time 0 to 1 (default: 10)",
    )
    parser.add_argument(
        "--iterations", type=int, default=50,
        help="maximum L-BFGS iterations per loss scale (default: 50)",
    )
    parser.add_argument(
        "--control-points", type=int, default=None, metavar="N",
        help="number of control points chosen on SOURCE (default: every vertex of "
        "the mesh that the loss compares)",
    )
    parser.add_argument(
        "--loss-triangles", type=int, default=4000, metavar="F",
        help="decimate both meshes to about F triangles for the varifold and "
        "optimal-transport losses; 0 keeps the full meshes (default: 4000)",
    )

    parser.add_argument(
        "--kind", choices=("gaussian", "exponential"), default="gaussian",
        help="deformation kernel (default: gaussian)",
    )
    parser.add_argument(
        "--normalization", choices=("sinkhorn", "none"), default="sinkhorn",
        help="normalize the kernel by Sinkhorn scaling (default) or use it raw",
    )
    parser.add_argument(
        "--backend", choices=("auto", "dense", "sparse", "keops"), default="dense",
        help="kernel storage between control points (default: dense)",
    )
    parser.add_argument(
        "--method", choices=("euler", "midpoint", "rk4"), default="midpoint",
        help="integration scheme (default: midpoint)",
    )

    parser.add_argument(
        "--path", default=None, metavar="FILE.pvd",
        help="geodesic path collection to write (default: <OUTPUT stem>_path.pvd)",
    )
    parser.add_argument("--no-path", action="store_true", help="do not write the path")
    parser.add_argument(
        "--transform", default=None, metavar="FILE.nrrd",
        help="grid transform to write (default: <OUTPUT stem>_transform.nrrd)",
    )
    parser.add_argument(
        "--no-transform", action="store_true", help="do not write the grid transform"
    )

    parser.add_argument(
        "--grid-spacing", type=float, default=None, metavar="MM",
        help="spacing of the transform grid in mm (default: sigma / 4); coarsened "
        "if the grid would exceed 100,000 points",
    )
    parser.add_argument(
        "--grid-margin", type=float, default=None, metavar="MM",
        help="margin of the transform grid around SOURCE in mm (default: sigma)",
    )
    parser.add_argument(
        "--coordinates", choices=("LPS", "RAS"), default="LPS",
        help="frame of the mesh coordinates, for the transform file, which is "
        "always written in LPS (default: LPS, as 3D Slicer saves models)",
    )

    progress = parser.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress", dest="progress", action="store_true", default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    parser.set_defaults(run=run)


def _check_arguments(args) -> None:
    check_sigma(args.sigma, name="--sigma")
    for name in ("time_steps", "iterations"):
        value = getattr(args, name)
        minimum = 1 if name == "time_steps" else 0
        if value < minimum:
            option = "--" + name.replace("_", "-")
            msg = f"{option} must be at least {minimum}, got {value}"
            raise InputError(msg)
    if args.control_points is not None and args.control_points < 1:
        msg = f"--control-points must be at least 1, got {args.control_points}"
        raise InputError(msg)
    if args.loss_triangles < 0:
        msg = f"--loss-triangles must be 0 or more, got {args.loss_triangles}"
        raise InputError(msg)
    if not args.regularization >= 0:
        msg = f"--regularization must be 0 or more, got {args.regularization}"
        raise InputError(msg)
    if args.grid_spacing is not None:
        check_sigma(args.grid_spacing, name="--grid-spacing")
    if args.grid_margin is not None and not args.grid_margin >= 0:
        msg = f"--grid-margin must be 0 or more, got {args.grid_margin}"
        raise InputError(msg)


def _output_paths(args) -> tuple[Path | None, Path | None]:
    output = Path(args.output)
    stem = output.with_suffix("")
    path_file = None if args.no_path else Path(args.path or f"{stem}_path.pvd")
    transform_file = None if args.no_transform else Path(args.transform or f"{stem}_transform.nrrd")
    if path_file is not None and path_file.suffix.lower() != ".pvd":
        msg = f"--path must end in .pvd, got {path_file.name!r}"
        raise InputError(msg)
    if transform_file is not None and transform_file.suffix.lower() != ".nrrd":
        msg = f"--transform must end in .nrrd, got {transform_file.name!r}"
        raise InputError(msg)
    for extra in (path_file, transform_file):
        if extra is not None and not extra.parent.is_dir():
            msg = f"output folder {extra.parent} does not exist; create it before writing {extra.name}"
            raise InputError(msg)
    return path_file, transform_file


def run(args: argparse.Namespace) -> int:
    """Run ``sinkshape register``; return the exit status."""
    from sinkshape.io import check_output_path, read_mesh, write_mesh
    from sinkshape.registration import register
    from sinkshape.transforms import displacement_grid, write_grid_transform

    _check_arguments(args)
    # Check every output path before any work, so that a bad path costs nothing.
    check_output_path(args.output, source=args.source)
    path_file, transform_file = _output_paths(args)
    source = read_mesh(args.source)
    target = read_mesh(args.target)

    show_progress = sys.stderr.isatty() if args.progress is None else args.progress
    started = time.perf_counter()
    with _Progress(show_progress) as progress:
        result = register(
            source,
            target,
            sigma=args.sigma,
            loss=args.loss,
            loss_sigma=args.loss_sigma,
            regularization=args.regularization,
            n_steps=args.time_steps,
            n_iter=args.iterations,
            control_points=args.control_points,
            kind=args.kind,
            normalization=args.normalization,
            backend=args.backend,
            method=args.method,
            loss_triangles=args.loss_triangles or None,
            callback=progress.update,
        )

    registered = source.copy(deep=True)
    registered.points = result.points.astype(np.asarray(source.points).dtype)
    registered.point_data[DISPLACEMENT_ARRAY] = result.displacement.astype(np.float32)
    write_mesh(registered, args.output, source=args.source)
    lines = [
        f"{source.n_points} points, {len(result.control_points)} control points, "
        f"{sum(result.stages)} evaluations in {len(result.stages)} stages, "
        f"final objective {result.loss_history[-1]:.4g}" if result.loss_history else
        f"{source.n_points} points, no optimization (--iterations 0)",
        f"mean displacement {np.linalg.norm(result.displacement, axis=1).mean():.3g}, "
        f"max {np.linalg.norm(result.displacement, axis=1).max():.3g}",
        f"wrote {args.output}",
    ]

    if path_file is not None:
        _write_path(path_file, source, result, source_path=args.source)
        lines.append(f"wrote {path_file} ({len(result.path_times)} time steps)")

    if transform_file is not None:
        margin = args.sigma if args.grid_margin is None else args.grid_margin
        spacing = args.sigma / 4.0 if args.grid_spacing is None else args.grid_spacing
        grid = displacement_grid(
            result.transform_points, result.source_points, spacing=spacing, margin=margin
        )
        write_grid_transform(transform_file, grid, coordinates=args.coordinates)
        lines.append(
            f"wrote {transform_file} ({'x'.join(map(str, grid.shape))} grid, spacing "
            f"{grid.spacing[0]:.3g}, modeling direction, LPS)"
        )

    lines.append(f"done in {time.perf_counter() - started:.1f} s")
    for line in lines:
        print(line)
    return 0


def _write_path(pvd_file: Path, source, result, *, source_path) -> None:
    """Write one surface per time step and a ParaView collection that lists them."""
    from sinkshape.io import write_mesh

    folder = pvd_file.with_suffix("")
    folder = folder.parent / f"{folder.name}"
    folder.mkdir(exist_ok=True)
    entries = []
    for index, (time_value, points) in enumerate(zip(result.path_times, result.path)):
        frame = source.copy(deep=True)
        frame.points = points.astype(np.asarray(source.points).dtype)
        frame.point_data[DISPLACEMENT_ARRAY] = (points - result.source_points).astype(np.float32)
        frame_file = folder / f"frame_{index:04d}.vtp"
        write_mesh(frame, frame_file, source=source_path)
        relative = f"{folder.name}/{frame_file.name}"
        entries.append(
            f'    <DataSet timestep="{time_value:.10g}" part="0" file={quoteattr(relative)}/>'
        )

    text = "\n".join(
        [
            '<?xml version="1.0"?>',
            '<VTKFile type="Collection" version="0.1" byte_order="LittleEndian">',
            "  <Collection>",
            *entries,
            "  </Collection>",
            "</VTKFile>",
            "",
        ]
    )
    temporary = pvd_file.with_name(f".{pvd_file.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(pvd_file)


class _Progress:
    """A tqdm bar over the objective evaluations, or nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def __enter__(self):
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(desc="register", unit="eval", leave=False)
        return self

    def update(self, stage: int, evaluation: int, objective: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(stage=stage, objective=f"{objective:.4g}")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
