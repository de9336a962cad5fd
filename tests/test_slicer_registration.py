"""Register panel of the 3D Slicer module on real MRML classes (slicer-core).

One short registration by ``sinkshape.registration.register`` on a decimated
aorta, and stand-in backends for the paths that do not depend on its quality.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer_core")

import slicer  # noqa: E402
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

MODULE_DIR = Path(__file__).parents[1] / "slicer_module" / "VesselDiffusion"
sys.path.insert(0, str(MODULE_DIR))

from VesselDiffusionLib.grid import transform_points  # noqa: E402
from VesselDiffusionLib.logic import CoreLogic  # noqa: E402
from VesselDiffusionLib.progress import Cancelled, Progress  # noqa: E402
from VesselDiffusionLib.registration import RegistrationOutput  # noqa: E402
from VesselDiffusionLib.settings import RegistrationSettings  # noqa: E402

from sinkshape import datasets  # noqa: E402

BOW_MM = 4.0


def points_of(node) -> np.ndarray:
    return numpy_support.vtk_to_numpy(node.GetPolyData().GetPoints().GetData()).astype(np.float64)


def add_model(scene, polydata, name, points=None):
    copy = vtk.vtkPolyData()
    copy.DeepCopy(polydata)
    if points is not None:
        vtk_points = vtk.vtkPoints()
        vtk_points.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(points), deep=True))
        copy.SetPoints(vtk_points)
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
    node.SetAndObservePolyData(copy)
    node.CreateDefaultDisplayNodes()
    return node


def bow(points: np.ndarray, low: float, high: float) -> np.ndarray:
    """Bend points sideways by up to BOW_MM, smoothly along the anterior axis."""
    t = np.clip((points[:, 1] - low) / (high - low), 0.0, 1.0)
    return points + (BOW_MM * np.sin(np.pi * t) ** 2)[:, None] * np.array([1.0, 0.0, 0.3])


@pytest.fixture(scope="module")
def small_aorta():
    """The aorta decimated to about 200 vertices."""
    reader = vtk.vtkXMLPolyDataReader()
    reader.SetFileName(str(datasets.fetch("aorta-surface")))
    reader.Update()
    decimate = vtk.vtkQuadricDecimation()
    decimate.SetInputData(reader.GetOutput())
    decimate.SetTargetReduction(0.97)
    decimate.Update()
    return decimate.GetOutput()


@pytest.fixture(scope="module")
def bent_pair(small_aorta):
    """Scene with the small aorta (moving) and a bent copy of it (fixed)."""
    scene = slicer.vtkMRMLScene()
    moving = add_model(scene, small_aorta, "Moving")
    points = points_of(moving)
    fixed = add_model(scene, small_aorta, "Fixed", points=bow(points, points[:, 1].min(), points[:, 1].max()))
    return scene, moving, fixed


@pytest.fixture(scope="module")
def sinkshape_registration(bent_pair):
    """A short real registration: point-to-point loss, 3 iterations, 4 time steps, a coarse grid."""
    pytest.importorskip("sinkshape.registration")
    scene, moving, fixed = bent_pair
    messages = []
    progress = Progress(lambda fraction, message: messages.append((fraction, message)))
    settings = RegistrationSettings(
        sigma=10.0, iterations=3, n_steps=4, loss="point-to-point", grid_spacing=4.0, margin=5.0
    )
    result = CoreLogic().register(moving, fixed, settings, progress=progress)
    return {"scene": scene, "moving": moving, "fixed": fixed, "result": result, "messages": messages}


def test_registration_hardened_matches(sinkshape_registration, small_aorta):
    scene = sinkshape_registration["scene"]
    result = sinkshape_registration["result"]
    copy = add_model(scene, small_aorta, "Copy")

    CoreLogic.apply_transform(result.transform_node, copy, harden=True)
    error = np.linalg.norm(points_of(copy) - points_of(result.registered_node), axis=1)

    assert error.max() < 0.1
    assert result.transform_residual == pytest.approx(error.max(), abs=1e-6)


def test_registration_reduces_distance(sinkshape_registration):
    result = sinkshape_registration["result"]

    assert result.mean_distance[1] < 0.5 * result.mean_distance[0]
    assert result.max_distance[1] < result.max_distance[0]
    assert len(result.losses) > 1
    assert result.losses[-1] < result.losses[0]


def test_registration_nodes_added(sinkshape_registration):
    scene = sinkshape_registration["scene"]
    result = sinkshape_registration["result"]

    assert result.registered_node.GetName() == "Moving registered"
    assert result.transform_node.GetName() == "Moving to Fixed"
    assert result.table_node.GetName() == "Moving to Fixed surface distance"
    assert scene.GetNumberOfNodesByClass("vtkMRMLGridTransformNode") == 1
    assert sinkshape_registration["moving"].GetTransformNodeID() is None


def test_registration_progress_messages(sinkshape_registration):
    messages = sinkshape_registration["messages"]
    fractions = [fraction for fraction, _ in messages]

    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert any(message.startswith("Registration: scale 1, evaluation") for _, message in messages)


def test_registration_cancel_adds_nothing(bent_pair):
    pytest.importorskip("sinkshape.registration")
    scene, moving, fixed = bent_pair
    models_before = scene.GetNumberOfNodesByClass("vtkMRMLModelNode")
    progress = Progress()

    def cancel_at_second_evaluation(fraction, message):
        if message.startswith("Registration: scale 1, evaluation 2"):
            progress.cancel()

    progress._callback = cancel_at_second_evaluation
    settings = RegistrationSettings(sigma=10.0, iterations=50, n_steps=4, loss="point-to-point")

    with pytest.raises(Cancelled):
        CoreLogic().register(moving, fixed, settings, progress=progress)
    assert scene.GetNumberOfNodesByClass("vtkMRMLModelNode") == models_before


def test_fallback_residual_reported(bent_pair, small_aorta):
    """A backend that returns only the moving vertices, so the grid is a kernel extension."""
    scene, moving, fixed = bent_pair
    points = points_of(moving)

    def vertices_only(moving_surface, fixed_surface, settings, progress):
        return RegistrationOutput(registered_points=points_of(fixed))

    logic = CoreLogic()
    logic.registration_backend = vertices_only
    result = logic.register(moving, fixed, RegistrationSettings(sigma=10.0, grid_spacing=2.0))
    copy = add_model(scene, small_aorta, "Copy for fallback")
    CoreLogic.apply_transform(result.transform_node, copy, harden=True)
    error = np.linalg.norm(points_of(copy) - points_of(fixed), axis=1)

    np.testing.assert_allclose(points_of(result.registered_node), points_of(fixed))
    assert result.transform_residual == pytest.approx(error.max(), abs=1e-6)
    assert error.max() < 0.5
    assert np.abs(points_of(copy) - points).max() > 1.0


def test_registration_in_world_coordinates(small_aorta):
    scene = slicer.vtkMRMLScene()
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Shift")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 30.0)
    shift.SetMatrixTransformToParent(matrix)
    moving = add_model(scene, small_aorta, "Moving")
    moving.SetAndObserveTransformNodeID(shift.GetID())
    fixed = add_model(scene, small_aorta, "Fixed")
    seen = {}

    def identity(moving_surface, fixed_surface, settings, progress):
        seen["moving"] = moving_surface.points
        return RegistrationOutput(registered_points=moving_surface.points, deform=lambda p: p)

    logic = CoreLogic()
    logic.registration_backend = identity
    result = logic.register(moving, fixed, RegistrationSettings(sigma=10.0))

    np.testing.assert_allclose(seen["moving"], points_of(moving) + [30.0, 0.0, 0.0])
    np.testing.assert_allclose(points_of(result.registered_node), points_of(moving) + [30.0, 0.0, 0.0])
    assert result.mean_distance[0] > 10.0


def test_registration_rejects_same_model(bent_pair):
    _, moving, _ = bent_pair

    with pytest.raises(ValueError, match="same node"):
        CoreLogic().register(moving, moving, RegistrationSettings())


def test_registration_rejects_missing_model(bent_pair):
    _, moving, _ = bent_pair

    with pytest.raises(ValueError, match="select both a moving model and a fixed model"):
        CoreLogic().register(moving, None, RegistrationSettings())


def test_registration_rejects_wrong_point_count(bent_pair):
    _, moving, fixed = bent_pair
    logic = CoreLogic()
    logic.registration_backend = lambda m, f, s, p: RegistrationOutput(registered_points=np.zeros((3, 3)))

    with pytest.raises(RuntimeError, match="registered points"):
        logic.register(moving, fixed, RegistrationSettings())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"iterations": 0}, "iterations must be an integer of at least 1"),
        ({"control_points": -5}, "control points must be an integer of at least 0"),
        ({"grid_spacing": -1.0}, "grid spacing must be a positive number"),
        ({"loss": "l2"}, "loss must be one of"),
        ({"margin": -2.0}, "margin must be a non-negative number"),
    ],
)
def test_registration_settings_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        RegistrationSettings(**options)


def test_grid_spacing_coarsened(bent_pair, monkeypatch):
    """A spacing that needs more than MAX_GRID_NODES nodes is coarsened, and reported."""
    from VesselDiffusionLib import grid

    _, moving, fixed = bent_pair
    monkeypatch.setattr(grid, "MAX_GRID_NODES", 5_000)
    logic = CoreLogic()
    logic.registration_backend = lambda m, f, s, p: RegistrationOutput(
        registered_points=m.points, deform=lambda points: points
    )

    result = logic.register(moving, fixed, RegistrationSettings(grid_spacing=0.5, margin=5.0))

    assert result.grid_spacing > 0.5
    assert np.prod(result.grid_shape) <= 5_000
    assert f"spacing {result.grid_spacing:.3g} mm" in result.summary()


@pytest.mark.parametrize("coordinates", ["RAS", "LPS"])
def test_nrrd_transform_loads_in_mrml(coordinates, tmp_path):
    """The NRRD that sinkshape.transforms writes (the command line's output) loads in
    Slicer's transform storage node as the same modeling-direction transform."""
    pytest.importorskip("nrrd")
    from sinkshape.transforms import displacement_grid, write_grid_transform

    to_file = np.array([-1.0, -1.0, 1.0]) if coordinates == "LPS" else np.ones(3)

    def displacement_ras(points_ras):
        return np.stack(
            [3.0 * np.sin(points_ras[:, 1] / 10.0), 2.0 * np.cos(points_ras[:, 0] / 8.0), np.ones(len(points_ras))],
            axis=1,
        )

    def deform_in_file_frame(points):
        return points + to_file * displacement_ras(points * to_file)

    points_ras = np.random.default_rng(0).uniform(0.0, 40.0, (200, 3))
    grid = displacement_grid(deform_in_file_frame, points_ras * to_file, spacing=1.5, margin=5.0)
    path = tmp_path / "registration.nrrd"
    write_grid_transform(path, grid, coordinates=coordinates)

    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "From file")
    storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    storage.SetFileName(str(path))
    inside = points_ras[(points_ras > 5.0).all(axis=1) & (points_ras < 35.0).all(axis=1)]

    assert storage.ReadData(node) == 1
    np.testing.assert_allclose(
        transform_points(node, inside), inside + displacement_ras(inside), atol=0.05
    )
