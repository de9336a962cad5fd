"""``sinkshape bench``: time the diffusion backends against sparse LU on large surfaces.

For each surface (a sphere and a subdivided aorta) and each number of vertices,
every method runs in a fresh Python process, so that its peak memory is its own:

- ``graph``: :class:`sinkshape.smoothing.Smoother` with the mesh-graph backend,
  from points and triangles to one smoothing at scale sigma;
- ``gaussian``: a truncated Gaussian kernel of bandwidth sigma
  (:meth:`SparseKernel.from_points`), normalized, applied once;
- ``lu``: the cotangent Laplacian L and lumped masses M of ``robust-laplacian``,
  a sparse LU factorization of M + t L (scipy's SuperLU) and one solve, with
  t = sigma^2 / 2, the diffusion time of one application of a Gaussian of
  bandwidth sigma;
- ``skshapes``: scikit-shapes' ``point_neighborhoods`` with its Gaussian kernel
  (dense KeOps sums), normalized by its default 10 iterations, applied once.

sigma is a multiple of the mean edge length (2 by default). The smoothed signal
is a sum of three plane waves of wavenumber 1 / sigma, so that diffusion at
that scale changes it by about a third. Each result is compared with heat
diffusion exp(-t Delta) computed by 16 implicit steps of t / 16 with the same
cotangent Laplacian, in the relative L2 norm weighted by the lumped masses.

Time is wall-clock time (``time.perf_counter``). Memory is the peak resident
set size of the process, imports and the loaded mesh included: ``VmHWM`` in
``/proc/self/status``, reset at the start of each outermost stage through
``/proc/self/clear_refs`` (Linux). Elsewhere it falls back to ``ru_maxrss``,
which is never reset, so each stage then reports the peak so far.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sinkshape.errors import InputError

__all__ = ["add_parser", "run"]

SURFACES = ("sphere", "aorta")
METHODS = ("graph", "gaussian", "lu", "skshapes")
DEFAULT_SIZES = (10_000, 50_000, 100_000, 250_000, 500_000, 1_000_000)

#: Implicit steps of the heat reference: the validation tests use the same count.
HEAT_SUBSTEPS = 16

#: Plane waves in the test signal, each of wavenumber 1 / sigma.
SIGNAL_WAVES = 3


# --- command line ---------------------------------------------------------------


def add_parser(subparsers) -> None:
    """Declare the ``bench`` subcommand and its options."""
    parser = subparsers.add_parser(
        "bench",
        help="time graph and Gaussian diffusion against sparse LU on large surfaces",
        description=(
            "Smooth a signal on a sphere and on a subdivided aorta at scale SIGMA with "
            "each method, each in a fresh process, and print time and peak memory per "
            "stage, the ratio to sparse LU and the agreement with heat diffusion."
        ),
    )
    parser.add_argument(
        "--surface",
        dest="surfaces",
        action="append",
        choices=SURFACES,
        help="surface to run on (repeat for several; default: both)",
    )
    parser.add_argument(
        "--sizes",
        default=",".join(str(size) for size in DEFAULT_SIZES),
        help="comma-separated numbers of vertices (default: %(default)s)",
    )

    parser.add_argument(
        "--method",
        dest="methods",
        action="append",
        choices=METHODS,
        help="method to run (repeat for several; default: all)",
    )

    parser.add_argument(
        "--sigma-edges",
        type=float,
        default=2.0,
        help="smoothing scale sigma in mean edge lengths (default: 2)",
    )
    parser.add_argument(
        "--truncation",
        dest="truncations",
        type=float,
        action="append",
        help="truncation of the Gaussian kernel, the fraction of its 3-D integral "
        "beyond the cutoff (repeat for several; default: 1e-6, the library default)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="floating-point type of the sinkshape and scikit-shapes runs (default: "
        "float32); the LU runs in float64",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in each run (default: 1; scipy's LU and sparse products "
        "use one core)",
    )

    parser.add_argument(
        "--gaussian-max-points",
        type=int,
        default=None,
        help="skip Gaussian runs whose truncation is below 1e-4 above this many "
        "vertices, to bound memory: at truncation 1e-6 and 500,000 vertices a run "
        "peaked at 3 to 4.5 GB (default: no limit)",
    )
    parser.add_argument(
        "--skshapes-max-points",
        type=int,
        default=50_000,
        help="skip scikit-shapes above this many vertices: its dense sums cost "
        "O(N^2) (default: %(default)s)",
    )

    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the heat reference and the agreement columns",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds after which a run is stopped and recorded as timed out "
        "(default: %(default)s)",
    )

    parser.add_argument(
        "--work-dir",
        default="sinkshape-bench",
        help="folder for the cached meshes and the smoothed signals "
        "(default: %(default)s)",
    )
    parser.add_argument("--json", dest="json_path", help="write every result to this JSON file")
    parser.add_argument(
        "--markdown", dest="markdown_path", help="write the tables to this Markdown file"
    )
    parser.set_defaults(run=run)


def _parse_sizes(text: str) -> list[int]:
    sizes = []
    for item in text.split(","):
        try:
            size = int(item.replace("_", "").strip())
        except ValueError:
            msg = f"--sizes must be comma-separated integers, got {text!r}"
            raise InputError(msg) from None
        if size < 100:
            msg = f"--sizes must be at least 100 vertices each, got {size}"
            raise InputError(msg)
        sizes.append(size)
    return sizes


def _check_arguments(args) -> None:
    if not args.sigma_edges > 0:
        msg = f"--sigma-edges must be positive, got {args.sigma_edges}"
        raise InputError(msg)
    for truncation in args.truncations or ():
        if not 0 < truncation < 1:
            msg = f"--truncation must be in (0, 1), got {truncation}"
            raise InputError(msg)
    if args.threads < 1:
        msg = f"--threads must be at least 1, got {args.threads}"
        raise InputError(msg)
    if not args.timeout > 0:
        msg = f"--timeout must be positive, got {args.timeout}"
        raise InputError(msg)


def run(args: argparse.Namespace) -> int:
    """Run ``sinkshape bench``; return the exit status."""
    _check_arguments(args)
    sizes = _parse_sizes(args.sizes)
    surfaces = args.surfaces or list(SURFACES)
    methods = args.methods or list(METHODS)
    truncations = args.truncations or [1e-6]
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)

    report = {"machine": machine_description(), "command": sys.argv, "cases": []}
    print(_machine_line(report["machine"]))
    for surface in surfaces:
        for size in sizes:
            mesh_path = cached_mesh(surface, size, work_dir)
            for config in _case_configs(args, methods, truncations, surface, size, mesh_path):
                result = run_isolated(config, timeout=args.timeout)
                report["cases"].append(result)
                print(_result_line(result), flush=True)
            if not args.no_reference and "lu" in methods:
                _add_agreement(report["cases"], surface, size, work_dir)
            # Written after each size, so that an interrupted sweep keeps its results.
            if args.json_path:
                Path(args.json_path).write_text(json.dumps(report, indent=1) + "\n")

    tables = format_tables(report)
    print(tables)
    if args.markdown_path:
        Path(args.markdown_path).write_text(tables + "\n")
    return 0


def _case_configs(args, methods, truncations, surface, size, mesh_path):
    base = {
        "surface": surface,
        "size": size,
        "mesh": str(mesh_path),
        "sigma_edges": args.sigma_edges,
        "dtype": args.dtype,
        "threads": args.threads,
        "reference": not args.no_reference,
        "output": str(Path(args.work_dir) / f"{surface}-{size}"),
    }
    for method in methods:
        if method == "skshapes" and size > args.skshapes_max_points:
            continue
        if method != "gaussian":
            yield {**base, "method": method, "label": method}
            continue
        for truncation in truncations:
            if (
                args.gaussian_max_points is not None
                and truncation < 1e-4
                and size > args.gaussian_max_points
            ):
                continue
            label = f"gaussian {truncation:g}"
            yield {**base, "method": method, "label": label, "truncation": truncation}


# --- meshes ---------------------------------------------------------------------


def sphere_mesh(n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Return a unit sphere of ``n_points`` Fibonacci points and its convex hull.

    The points are nearly uniform, so the triangles are close to equilateral;
    they are oriented with outward normals.
    """
    from scipy.spatial import ConvexHull

    index = np.arange(n_points) + 0.5
    z = 1.0 - 2.0 * index / n_points
    radius = np.sqrt(1.0 - z * z)
    angle = math.pi * (3.0 - math.sqrt(5.0)) * index
    points = np.column_stack([radius * np.cos(angle), radius * np.sin(angle), z])

    triangles = ConvexHull(points).simplices.astype(np.int64)
    a, b, c = (points[triangles[:, corner]] for corner in range(3))
    inward = (np.cross(b - a, c - a) * a).sum(axis=1) < 0
    triangles[inward] = triangles[inward][:, [0, 2, 1]]
    return points, triangles


def aorta_mesh(n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the vmtk aorta refined by loop subdivision, then decimated to ``n_points``.

    Loop subdivision smooths the faceted input while it refines; VTK's quadric
    decimation then removes vertices down to the requested count.
    """
    from sinkshape import datasets

    mesh = datasets.load("aorta-surface").triangulate()
    while mesh.n_points < n_points:
        mesh = mesh.subdivide(1, "loop")
    if mesh.n_points > n_points:
        mesh = mesh.decimate(1.0 - n_points / mesh.n_points)
    points = np.asarray(mesh.points, dtype=np.float64)
    triangles = np.asarray(mesh.regular_faces, dtype=np.int64)
    return points, triangles


def cached_mesh(surface: str, n_points: int, work_dir: Path) -> Path:
    """Build the benchmark mesh once and return the .npz file that contains it."""
    path = work_dir / f"{surface}-{n_points}.npz"
    if path.exists():
        return path
    points, triangles = sphere_mesh(n_points) if surface == "sphere" else aorta_mesh(n_points)
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    mean_edge = float(np.linalg.norm(points[edges[:, 0]] - points[edges[:, 1]], axis=1).mean())
    temporary = path.with_suffix(".tmp.npz")
    np.savez(temporary, points=points, triangles=triangles, mean_edge=mean_edge)
    temporary.replace(path)
    return path


def plane_waves(points: np.ndarray, wavenumber: float, *, seed: int = 0) -> np.ndarray:
    """Return a sum of SIGNAL_WAVES plane waves of the given wavenumber at the points."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(SIGNAL_WAVES, points.shape[1]))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    phases = rng.uniform(0.0, 2.0 * math.pi, size=SIGNAL_WAVES)
    centred = points - points.mean(axis=0)
    return np.sin(wavenumber * centred @ directions.T + phases).sum(axis=1)


# --- one run in a fresh process ----------------------------------------------------


def run_isolated(config: dict, *, timeout: float) -> dict:
    """Run one case in a fresh Python process and return its result."""
    command = [sys.executable, "-m", "sinkshape.cli.bench"]
    started = time.perf_counter()
    try:
        completed = subprocess.run(
            command,
            input=json.dumps(config),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {**config, "status": f"timed out after {timeout:g} s"}
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        error = completed.stderr.strip().splitlines()
        reason = error[-1] if error else f"exit status {completed.returncode}"
        return {**config, "status": f"failed: {reason}"}
    result = json.loads(lines[-1])
    result["process_seconds"] = time.perf_counter() - started
    return result


@dataclass
class _Stages:
    """Wall time and peak resident memory of named stages in this process.

    A stage may run inside another one: its time then also counts in the
    outer stage, and its peak memory is the outer stage's peak so far.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)
    depth: int = 0

    @contextlib.contextmanager
    def stage(self, name: str):
        if self.depth == 0:
            _reset_peak_memory()
        self.depth += 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self.depth -= 1
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), peak_memory_mb())


def _reset_peak_memory() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb() -> float:
    """Return the peak resident set size of this process in MB (since the last reset)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource

    # ru_maxrss is in kB on Linux and is never reset.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_main() -> int:
    """Run the case described by the JSON on stdin; print its result as JSON."""
    config = json.loads(sys.stdin.read())
    import torch

    torch.set_num_threads(config["threads"])
    mesh = np.load(config["mesh"])
    points, triangles = mesh["points"], mesh["triangles"]
    sigma = config["sigma_edges"] * float(mesh["mean_edge"])
    signal = plane_waves(points, 1.0 / sigma)

    from sinkshape import mesh as mesh_module

    stages = _Stages()
    runner = _RUNNERS[config["method"]]
    # Vertex areas are timed apart from the input checks that surround them.
    with _timed_functions(mesh_module, {"vertex_areas": "masses"}, stages):
        details, smoothed = runner(config, points, triangles, sigma, signal, stages)
    _split_surface_stage(stages)
    timed_peak = max(stages.peak_mb.values())
    if config["reference"] and config["method"] == "lu":
        details.update(_save_heat_reference(config, points, triangles, sigma, signal))
    if smoothed is not None:
        np.save(_signal_path(config), np.asarray(smoothed, dtype=np.float64))

    result = {
        **config,
        "status": "ok",
        "n_points": int(len(points)),
        "n_triangles": int(len(triangles)),
        "sigma": sigma,
        "seconds": stages.seconds,
        "total_seconds": sum(stages.seconds.values()),
        "peak_mb": stages.peak_mb,
        "total_peak_mb": timed_peak,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        **details,
    }
    print(json.dumps(result))
    return 0


def _split_surface_stage(stages: _Stages) -> None:
    """Replace the "surface" stage by its two parts: input checks, then vertex areas."""
    if "surface" not in stages.seconds or "masses" not in stages.seconds:
        return
    surface_seconds = stages.seconds.pop("surface")
    surface_peak = stages.peak_mb.pop("surface")
    masses_seconds = stages.seconds.pop("masses")
    masses_peak = stages.peak_mb.pop("masses")
    seconds = {"checks": surface_seconds - masses_seconds, "masses": masses_seconds}
    peaks = {"checks": surface_peak, "masses": masses_peak}
    stages.seconds = {**seconds, **stages.seconds}
    stages.peak_mb = {**peaks, **stages.peak_mb}


def _signal_path(config: dict) -> Path:
    label = config["label"].replace(" ", "-")
    return Path(f"{config['output']}-{label}.npy")


def _torch_dtype(config: dict):
    import torch

    return torch.float32 if config["dtype"] == "float32" else torch.float64


@contextlib.contextmanager
def _timed_functions(module, stage_names: dict[str, str], stages: _Stages):
    """Time each call of module-level functions as stages, while the block runs.

    ``stage_names`` maps a function name of ``module`` to the stage that its
    calls count towards. This splits :class:`Smoother`'s construction into
    stages while it runs its own code; the functions are restored on exit.
    """
    originals = {name: getattr(module, name) for name in stage_names}

    def timed(function, stage_name):
        def wrapper(*args, **kwargs):
            with stages.stage(stage_name):
                return function(*args, **kwargs)

        return wrapper

    for name, function in originals.items():
        setattr(module, name, timed(function, stage_names[name]))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(module, name, function)


def _run_graph(config, points, triangles, sigma, signal, stages):
    import torch

    from sinkshape import smoothing

    x = torch.from_numpy(points).to(_torch_dtype(config))
    stage_names = {
        "as_surface": "surface",
        "make_kernel": "kernel",
        "DiffusionOperator": "normalize",
        "diffusion_time": "schedule",
    }
    start = time.perf_counter()
    with _timed_functions(smoothing, stage_names, stages):
        smoother = smoothing.Smoother(x, sigma, triangles=triangles, backend="graph")
    # The rest of the construction is one product for the row sums Q 1.
    elapsed = time.perf_counter() - start
    stages.seconds["row sums"] = elapsed - sum(
        stages.seconds[name] for name in stage_names.values()
    )

    with stages.stage("smooth"):
        smoothed = smoother.smooth(signal)
    details = {
        "iterations": smoother.operator.n_iter,
        "marginal_error": smoother.operator.marginal_error,
        "steps": smoother.steps,
        "alpha": smoother.alpha,
        "nnz_per_point": smoother.operator.kernel.nnz / len(points),
    }
    return details, smoothed


def _run_gaussian(config, points, triangles, sigma, signal, stages):
    import torch

    from sinkshape.diffusion import DiffusionOperator
    from sinkshape.kernels import SparseKernel
    from sinkshape.mesh import as_surface

    # cutoff_radius imports scipy.stats on first use: import it before timing.
    import scipy.stats  # noqa: F401

    dtype = _torch_dtype(config)
    with stages.stage("surface"):
        surface = as_surface(torch.from_numpy(points).to(dtype), triangles=triangles)
    with stages.stage("kernel"):
        kernel = SparseKernel.from_points(
            surface.points, sigma, truncation=config["truncation"]
        )
    with stages.stage("normalize"):
        operator = DiffusionOperator(kernel, surface.masses)
    with stages.stage("smooth"):
        smoothed = operator.apply(torch.from_numpy(signal).to(dtype))
    details = {
        "iterations": operator.n_iter,
        "marginal_error": operator.marginal_error,
        "nnz_per_point": kernel.nnz / len(points),
    }
    return details, smoothed.numpy()


def _run_lu(config, points, triangles, sigma, signal, stages):
    import robust_laplacian
    import scipy.sparse.linalg

    time_step = sigma**2 / 2.0
    with stages.stage("laplacian"):
        stiffness, mass_matrix = robust_laplacian.mesh_laplacian(points, triangles)
    with stages.stage("factor"):
        system = (mass_matrix + time_step * stiffness).tocsc()
        factor = scipy.sparse.linalg.splu(system)
    with stages.stage("solve"):
        smoothed = factor.solve(mass_matrix @ signal)
    details = {"factor_nnz_per_point": factor.nnz / len(points)}
    return details, smoothed


def _save_heat_reference(config, points, triangles, sigma, signal) -> dict:
    """Save exp(-t Delta) signal by HEAT_SUBSTEPS implicit steps, and the masses."""
    import robust_laplacian
    import scipy.sparse.linalg

    start = time.perf_counter()
    stiffness, mass_matrix = robust_laplacian.mesh_laplacian(points, triangles)
    substep = sigma**2 / 2.0 / HEAT_SUBSTEPS
    factor = scipy.sparse.linalg.splu((mass_matrix + substep * stiffness).tocsc())
    reference = signal
    for _ in range(HEAT_SUBSTEPS):
        reference = factor.solve(mass_matrix @ reference)
    output = config["output"]
    np.save(f"{output}-heat.npy", reference)
    np.save(f"{output}-masses.npy", mass_matrix.diagonal())
    np.save(f"{output}-signal.npy", signal)
    return {"reference_seconds": time.perf_counter() - start}


def _run_skshapes(config, points, triangles, sigma, signal, stages):
    import skshapes
    import torch

    dtype = _torch_dtype(config)
    # KeOps compiles each formula on first use: compile on a small sphere first,
    # so that the timed runs measure the sums only.
    small_points, small_triangles = sphere_mesh(500)
    warm_up = skshapes.PolyData(
        points=torch.from_numpy(small_points).to(dtype),
        triangles=torch.from_numpy(small_triangles),
    )
    warm_up.point_neighborhoods(method="gaussian kernel", scale=0.2).smooth(
        torch.ones(500, dtype=dtype)
    )

    with stages.stage("surface"):
        shape = skshapes.PolyData(
            points=torch.from_numpy(points).to(dtype),
            triangles=torch.from_numpy(triangles),
        )
        _ = shape.point_masses  # computes and caches the vertex areas
    with stages.stage("normalize"):
        neighborhoods = shape.point_neighborhoods(method="gaussian kernel", scale=sigma)
    with stages.stage("smooth"):
        smoothed = neighborhoods.smooth(torch.from_numpy(signal).to(dtype))
    details = {"iterations": neighborhoods.n_normalization_iterations}
    return details, smoothed.numpy()


_RUNNERS = {
    "graph": _run_graph,
    "gaussian": _run_gaussian,
    "lu": _run_lu,
    "skshapes": _run_skshapes,
}


# --- agreement and tables ------------------------------------------------------


def mass_relative_difference(values, reference, masses) -> float:
    """Return |values - reference|_M / |reference|_M for the norm weighted by masses."""
    difference = np.sqrt((masses * (values - reference) ** 2).sum())
    return float(difference / np.sqrt((masses * reference**2).sum()))


def _add_agreement(cases: list[dict], surface: str, size: int, work_dir: Path) -> None:
    prefix = work_dir / f"{surface}-{size}"
    heat_path = Path(f"{prefix}-heat.npy")
    if not heat_path.exists():
        return
    heat = np.load(heat_path)
    masses = np.load(f"{prefix}-masses.npy")
    signal = np.load(f"{prefix}-signal.npy")
    for case in cases:
        if case.get("surface") != surface or case.get("size") != size:
            continue
        if case.get("status") != "ok":
            continue
        smoothed = np.load(_signal_path(case))
        case["difference_to_heat"] = mass_relative_difference(smoothed, heat, masses)
        case["heat_change"] = mass_relative_difference(heat, signal, masses)


def _machine_line(machine: dict) -> str:
    return (
        f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']:.0f} GB; "
        f"load average {machine['load_average']}"
    )


def machine_description() -> dict:
    """Describe the CPU, memory and library versions of this machine."""
    import scipy
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = float("nan")
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = int(line.split()[1]) / 2**20
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "load_average": [round(value, 2) for value in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
    }


def _result_line(result: dict) -> str:
    head = f"{result['surface']:>6} {result['size']:>9,} {result['label']:<16}"
    if result.get("status") != "ok":
        return f"{head} {result.get('status')}"
    stages = ", ".join(f"{name} {seconds:.2f}" for name, seconds in result["seconds"].items())
    return (
        f"{head} {result['total_seconds']:7.2f} s  peak {result['total_peak_mb']:6.0f} MB"
        f"  ({stages})"
    )


def format_tables(report: dict) -> str:
    """Return one Markdown table per surface: time, memory, ratio to LU, agreement."""
    cases = report["cases"]
    blocks = []
    for surface in dict.fromkeys(case["surface"] for case in cases):
        rows = [case for case in cases if case["surface"] == surface]
        lu_seconds = {
            case["size"]: case["total_seconds"]
            for case in rows
            if case["method"] == "lu" and case.get("status") == "ok"
        }
        lines = [
            f"### {surface}",
            "",
            "| N | method | total (s) | stages (s) | peak (MB) | iterations "
            "| LU time / time | difference to heat |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for case in rows:
            lines.append(_table_row(case, lu_seconds.get(case["size"])))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _table_row(case: dict, lu_seconds: float | None) -> str:
    size = f"{case.get('n_points', case['size']):,}"
    if case.get("status") != "ok":
        return f"| {size} | {case['label']} | {case.get('status')} | | | | | |"
    stages = ", ".join(f"{name} {seconds:.2f}" for name, seconds in case["seconds"].items())
    iterations = case.get("iterations", "")
    if "steps" in case:
        iterations = f"{iterations} (+{case['steps']} steps)"
    ratio = ""
    if lu_seconds and case["method"] != "lu":
        ratio = f"{lu_seconds / case['total_seconds']:.1f}"
    agreement = (
        f"{case['difference_to_heat']:.3f}" if "difference_to_heat" in case else ""
    )
    return (
        f"| {size} | {case['label']} | {case['total_seconds']:.2f} | {stages} "
        f"| {case['total_peak_mb']:.0f} | {iterations} | {ratio} | {agreement} |"
    )


if __name__ == "__main__":
    sys.exit(worker_main())
