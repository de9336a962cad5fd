"""Render the pictures of the VesselDiffusion walkthrough in ``slicer_module/README.md``.

The script needs no 3D Slicer application. It runs the module's Logic the way the
Smooth and Register panels do, on the MRML classes of the ``slicer-core`` wheel,
and renders the new nodes with pyvista off screen. Run it from the repository root, with ``SINKSHAPE_DATA_DIR`` naming the folder that contains
``vmtk_aorta/`` (otherwise the files are downloaded on first use)::

    python examples/slicer_walkthrough.py

It writes these files in ``slicer_module/Resources/Walkthrough/``, or in the folder
that ``--output-dir`` names:

- ``smoothing-before-after.png``: the aorta before and after smoothing at
  sigma = 2 mm, coloured by the absolute mean curvature |H|;
- ``registration-result.png``: the moving and fixed aortas before registration,
  then the registered model, coloured by its distance to the fixed one, with the
  centerline moved by the grid transform and by the known deformation.

With ``--icon`` it also writes the module icon
``slicer_module/VesselDiffusion/Resources/Icons/VesselDiffusion.png`` (128 x 128).

The fixed aorta is the moving one bent by a known smooth deformation. When
``sinkshape.registration`` is installed the registration is real. Otherwise the
known deformation replaces it, and the picture's title states that.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pyvista as pv
import slicer
import vtk
from vtk.util import numpy_support

REPOSITORY = Path(__file__).resolve().parents[1]
MODULE_DIR = REPOSITORY / "slicer_module" / "VesselDiffusion"
sys.path.insert(0, str(MODULE_DIR))

from VesselDiffusionLib.logic import CoreLogic  # noqa: E402
from VesselDiffusionLib.progress import Progress  # noqa: E402
from VesselDiffusionLib.registration import RegistrationOutput  # noqa: E402
from VesselDiffusionLib.settings import RegistrationSettings, SmoothingSettings  # noqa: E402

from sinkshape import datasets  # noqa: E402

SMOOTHING_SIGMA_MM = 2.0
REGISTRATION_SIGMA_MM = 10.0
REGISTRATION_ITERATIONS = 20
CONTROL_POINTS = 300
BOW_MM = 6.0
CURVATURE_RANGE = (0.0, 0.6)
CURVATURE_TITLE = "|H| (1/mm)"
DISTANCE_TITLE = "distance (mm)"
PANEL_SIZE = (640, 800)


def bow(points: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """Return ``points`` bent sideways (along R) by up to BOW_MM, smoothly along A.

    The displacement is BOW_MM * sin(pi * t)^2 * (1, 0, 0.3), where t runs from 0
    to 1 along the anterior axis between ``bounds``. Both ends stay in place.
    """
    low, high = bounds
    t = np.clip((points[:, 1] - low) / (high - low), 0.0, 1.0)
    amplitude = BOW_MM * np.sin(np.pi * t) ** 2
    return points + amplitude[:, None] * np.array([1.0, 0.0, 0.3])


def add_model(scene, polydata: vtk.vtkPolyData, name: str):
    """Add a model node holding a copy of ``polydata``."""
    copy = vtk.vtkPolyData()
    copy.DeepCopy(polydata)
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
    node.SetAndObservePolyData(copy)
    node.CreateDefaultDisplayNodes()
    return node


def as_pyvista(node) -> pv.PolyData:
    """Return a pyvista copy of a model node's polydata."""
    return pv.wrap(node.GetPolyData()).copy()


def abs_mean_curvature(mesh: pv.PolyData) -> np.ndarray:
    """Return |mean curvature| in 1/mm, as a point array for colouring."""
    return np.abs(mesh.curvature("mean"))


def render_smoothing(aorta_node, result, path: Path) -> None:
    """Picture the aorta before and after smoothing, side by side."""
    before = as_pyvista(aorta_node)
    after = as_pyvista(result.output_node)
    before[CURVATURE_TITLE] = abs_mean_curvature(before)
    after[CURVATURE_TITLE] = abs_mean_curvature(after)

    plotter = pv.Plotter(off_screen=True, shape=(1, 2), window_size=(2 * PANEL_SIZE[0], PANEL_SIZE[1]))
    titles = (
        "Before: marching-cubes staircase",
        f"After: sigma {SMOOTHING_SIGMA_MM:g} mm, volume change "
        f"{100 * result.volume_change:+.2f} %",
    )
    for column, (mesh, title) in enumerate(zip((before, after), titles)):
        plotter.subplot(0, column)
        plotter.add_mesh(
            mesh,
            scalars=CURVATURE_TITLE,
            clim=CURVATURE_RANGE,
            cmap="viridis",
            smooth_shading=True,
            show_scalar_bar=column == 1,
            scalar_bar_args={"vertical": True, "position_x": 0.8, "position_y": 0.25, "height": 0.5},
        )
        plotter.add_text(title, font_size=11)
        plotter.view_xy()
        plotter.camera.zoom(1.3)
    plotter.link_views()
    plotter.screenshot(str(path))
    plotter.close()


def progress_printer(interval: float = 10.0):
    """Return a progress callback that prints at most every ``interval`` seconds."""
    last_print = -interval

    def report(fraction: float, message: str) -> None:
        nonlocal last_print
        now = time.monotonic()
        if now - last_print >= interval or fraction >= 1.0:
            last_print = now
            print(f"{100 * fraction:5.1f} % {message}", flush=True)

    return report


def stand_in_backend(bounds):
    """Return a registration backend that applies the known bow exactly."""

    def backend(moving, fixed, settings, progress):
        progress.report(0.5, "Stand-in registration: the known deformation")
        return RegistrationOutput(
            registered_points=bow(moving.points, bounds),
            deform=lambda points: bow(points, bounds),
        )

    return backend


def render_registration(nodes: dict, result, title: str, path: Path) -> None:
    """Picture the models before registration, and the result with the centerlines."""
    moving = as_pyvista(nodes["moving"])
    fixed = as_pyvista(nodes["fixed"])
    registered = as_pyvista(result.registered_node)
    registered[DISTANCE_TITLE] = np.abs(registered.compute_implicit_distance(fixed)["implicit_distance"])
    tube_radius = 0.5

    plotter = pv.Plotter(off_screen=True, shape=(1, 2), window_size=(2 * PANEL_SIZE[0], PANEL_SIZE[1]))
    plotter.subplot(0, 0)
    plotter.add_mesh(fixed, color="tomato", opacity=0.35, smooth_shading=True)
    plotter.add_mesh(moving, color="steelblue", opacity=0.35, smooth_shading=True)
    plotter.add_mesh(as_pyvista(nodes["centerline"]).tube(radius=tube_radius), color="black")
    plotter.add_text(f"Before: mean surface distance {result.mean_distance[0]:.2f} mm", font_size=11)
    plotter.add_text(
        "red: fixed aorta\nblue: moving aorta\nblack: moving centerline",
        position="lower_left",
        font_size=10,
    )
    plotter.view_xy()
    plotter.camera.zoom(1.3)

    plotter.subplot(0, 1)
    plotter.add_mesh(
        registered,
        scalars=DISTANCE_TITLE,
        clim=(0.0, 0.3),
        cmap="viridis",
        opacity=0.45,
        smooth_shading=True,
        scalar_bar_args={"vertical": True, "position_x": 0.8, "position_y": 0.3, "height": 0.4},
    )
    plotter.add_mesh(as_pyvista(nodes["centerline expected"]).tube(radius=tube_radius), color="tomato")
    plotter.add_mesh(as_pyvista(nodes["centerline moved"]).tube(radius=tube_radius), color="black")
    plotter.add_text(
        f"{title}\nAfter: mean {result.mean_distance[1]:.2f} mm, max {result.max_distance[1]:.2f} mm",
        font_size=11,
    )
    plotter.add_text(
        "colour: registered aorta, distance to the fixed one\n"
        "black: centerline moved by the grid transform\n"
        "red: centerline moved by the known deformation",
        position="lower_left",
        font_size=10,
    )
    plotter.view_xy()
    plotter.camera.zoom(1.3)
    plotter.link_views()
    plotter.screenshot(str(path))
    plotter.close()


def render_icon(smoothed_node, path: Path) -> None:
    """Render the smoothed aorta on a transparent 128 x 128 background."""
    plotter = pv.Plotter(off_screen=True, window_size=(128, 128))
    plotter.add_mesh(as_pyvista(smoothed_node), color="#c8323c", smooth_shading=True, specular=0.4)
    plotter.view_xy()
    plotter.camera.zoom(1.45)
    plotter.screenshot(str(path), transparent_background=True)
    plotter.close()


def smooth_aorta(logic, aorta, output_dir: Path, *, icon: bool):
    """Smooth panel: the aorta at sigma = 2 mm, into a new model."""
    smoothing = logic.smooth(aorta, SmoothingSettings(sigma=SMOOTHING_SIGMA_MM))
    print("Smoothing:", smoothing.summary().replace("\n", "; "))
    render_smoothing(aorta, smoothing, output_dir / "smoothing-before-after.png")
    if icon:
        render_icon(smoothing.output_node, MODULE_DIR / "Resources" / "Icons" / "VesselDiffusion.png")
    return smoothing


def register_aorta(logic, scene, smoothed_node):
    """Register panel: the smoothed aorta to a bent copy of itself."""
    moving_polydata = smoothed_node.GetPolyData()
    moving_points = numpy_support.vtk_to_numpy(moving_polydata.GetPoints().GetData()).astype(float)
    bounds = (moving_points[:, 1].min(), moving_points[:, 1].max())
    nodes = {"moving": add_model(scene, moving_polydata, "Aorta moving")}
    nodes["fixed"] = add_model(scene, moving_polydata, "Aorta fixed")
    fixed_points = numpy_support.vtk_to_numpy(nodes["fixed"].GetPolyData().GetPoints().GetData())
    fixed_points[:] = bow(moving_points, bounds)
    nodes["fixed"].GetPolyData().GetPoints().Modified()

    if importlib.util.find_spec("sinkshape.registration") is not None:
        title = "sinkshape registration"
    else:
        logic.registration_backend = stand_in_backend(bounds)
        title = "Stand-in: the known deformation, not a registration"
    settings = RegistrationSettings(
        sigma=REGISTRATION_SIGMA_MM,
        iterations=REGISTRATION_ITERATIONS,
        control_points=CONTROL_POINTS,
        grid_spacing=2.0,
    )
    progress = Progress(progress_printer())
    registration = logic.register(nodes["moving"], nodes["fixed"], settings, progress=progress)
    print("Registration:", title, "|", registration.summary().replace("\n", "; "))
    return nodes, registration, title, bounds


def move_centerline(logic, scene, nodes: dict, registration, bounds) -> None:
    """Harden the grid transform on the centerline, and compare with the known bend."""
    centerline = pv.read(datasets.fetch("aorta-centerline"))
    nodes["centerline"] = add_model(scene, centerline, "Centerline")
    nodes["centerline moved"] = add_model(scene, centerline, "Centerline moved")
    logic.apply_transform(registration.transform_node, nodes["centerline moved"], harden=True)

    expected = centerline.copy()
    expected.points = bow(np.asarray(centerline.points, dtype=float), bounds)
    nodes["centerline expected"] = add_model(scene, expected, "Centerline expected")
    moved = numpy_support.vtk_to_numpy(nodes["centerline moved"].GetPolyData().GetPoints().GetData())
    gap = np.linalg.norm(moved - np.asarray(expected.points), axis=1)
    print(
        "Centerline moved by the grid transform vs the known deformation: "
        f"mean {gap.mean():.2f} mm, max {gap.max():.2f} mm"
    )


def main(argv=None) -> int:
    """Run the walkthrough and write the pictures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=REPOSITORY / "slicer_module" / "Resources" / "Walkthrough",
        help="folder for the pictures (created if missing)",
    )
    parser.add_argument("--icon", action="store_true", help="also write the module icon")
    parser.add_argument(
        "--smoothing-only",
        action="store_true",
        help="skip the registration, which takes minutes, and its picture",
    )
    arguments = parser.parse_args(argv)
    arguments.output_dir.mkdir(parents=True, exist_ok=True)

    scene = slicer.vtkMRMLScene()
    logic = CoreLogic()
    aorta = add_model(scene, pv.read(datasets.fetch("aorta-surface")), "Aorta")

    smoothing = smooth_aorta(logic, aorta, arguments.output_dir, icon=arguments.icon)
    if arguments.smoothing_only:
        print("Picture written to", arguments.output_dir)
        return 0
    nodes, registration, title, bounds = register_aorta(logic, scene, smoothing.output_node)
    move_centerline(logic, scene, nodes, registration, bounds)
    render_registration(nodes, registration, title, arguments.output_dir / "registration-result.png")
    print("Pictures written to", arguments.output_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
