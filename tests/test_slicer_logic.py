"""Logic of the 3D Slicer module on real MRML classes (slicer-core): smoothing and grid transforms.

The Slicer desktop application is not needed: the scene, model, segmentation,
markups, volume, grid transform and table nodes come from the slicer-core wheel.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer_core")

import slicer  # noqa: E402
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

MODULE_DIR = Path(__file__).parents[1] / "slicer_module" / "VesselDiffusion"
sys.path.insert(0, str(MODULE_DIR))

from VesselDiffusionLib.logic import CoreLogic  # noqa: E402
from VesselDiffusionLib.progress import Cancelled, Progress, run_with_progress  # noqa: E402
from VesselDiffusionLib.registration import RegistrationOutput  # noqa: E402
from VesselDiffusionLib.settings import RegistrationSettings, SmoothingSettings  # noqa: E402

from sinkshape import datasets  # noqa: E402


def known_displacement(points: np.ndarray) -> np.ndarray:
    """Smooth displacement of up to 3 mm, with wavelengths of 50 to 80 mm."""
    return np.stack(
        [
            3.0 * np.sin(2 * np.pi * points[:, 1] / 60.0),
            2.0 * np.cos(2 * np.pi * points[:, 0] / 50.0),
            1.5 * np.sin(2 * np.pi * points[:, 2] / 80.0),
        ],
        axis=1,
    )


def known_registration(moving, fixed, settings, progress):
    """Stand-in registration backend that applies the known displacement exactly."""
    progress.report(0.5, "stand-in registration")
    return RegistrationOutput(
        registered_points=moving.points + known_displacement(moving.points),
        deform=lambda points: points + known_displacement(points),
        losses=np.array([1.0, 0.1]),
    )


def points_of(node) -> np.ndarray:
    return numpy_support.vtk_to_numpy(node.GetPolyData().GetPoints().GetData()).astype(np.float64)


def add_model(scene, polydata, name):
    copy = vtk.vtkPolyData()
    copy.DeepCopy(polydata)
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
    node.SetAndObservePolyData(copy)
    node.CreateDefaultDisplayNodes()
    return node


def enclosed_volume(polydata) -> float:
    mass = vtk.vtkMassProperties()
    mass.SetInputData(polydata)
    mass.Update()
    return mass.GetVolume()


@pytest.fixture(scope="module", autouse=True)
def segmentation_converters():
    """Register the conversion rules that Slicer's Segmentations module registers at startup."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


@pytest.fixture(scope="module")
def aorta_polydata():
    reader = vtk.vtkXMLPolyDataReader()
    reader.SetFileName(str(datasets.fetch("aorta-surface")))
    reader.Update()
    return reader.GetOutput()


@pytest.fixture(scope="module")
def small_aorta(aorta_polydata):
    """The aorta decimated to about 650 vertices."""
    decimate = vtk.vtkQuadricDecimation()
    decimate.SetInputData(aorta_polydata)
    decimate.SetTargetReduction(0.9)
    decimate.Update()
    return decimate.GetOutput()


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture(scope="module")
def aorta_smoothing(aorta_polydata):
    """Smooth the full aorta at sigma = 2 mm once; tests read the scene afterwards."""
    scene = slicer.vtkMRMLScene()
    aorta = add_model(scene, aorta_polydata, "Aorta")
    points_before = points_of(aorta).copy()
    reports = []
    progress = Progress(lambda fraction, message: reports.append(fraction))
    result = CoreLogic().smooth(aorta, SmoothingSettings(sigma=2.0), progress=progress)
    return {"scene": scene, "input": aorta, "points_before": points_before, "result": result, "reports": reports}


# Smoothing


def test_smoothing_output_is_new_node(aorta_smoothing):
    scene = aorta_smoothing["scene"]
    output = aorta_smoothing["result"].output_node

    assert output.GetID() != aorta_smoothing["input"].GetID()
    assert scene.GetNumberOfNodesByClass("vtkMRMLModelNode") == 2
    assert output.GetName() == "Aorta smoothed 2 mm"
    assert output.GetDisplayNode() is not None


def test_smoothing_input_unchanged(aorta_smoothing):
    np.testing.assert_array_equal(points_of(aorta_smoothing["input"]), aorta_smoothing["points_before"])


def test_smoothing_moves_points(aorta_smoothing):
    output = aorta_smoothing["result"].output_node
    moved = np.linalg.norm(points_of(output) - aorta_smoothing["points_before"], axis=1)

    assert output.GetPolyData().GetNumberOfPoints() == len(moved)
    assert moved.mean() > 0.02
    assert moved.max() < 2.0


def test_smoothing_volume_change_reported(aorta_smoothing):
    result = aorta_smoothing["result"]
    volume_before = enclosed_volume(aorta_smoothing["input"].GetPolyData())
    volume_after = enclosed_volume(result.output_node.GetPolyData())
    measured = (volume_after - volume_before) / volume_before

    assert abs(result.volume_change) < 1e-3
    assert result.volume_change == pytest.approx(measured, abs=1e-5)
    assert result.flipped_triangles == 0
    assert "Volume change" in result.summary()


def test_smoothing_convergence_reported(aorta_smoothing):
    result = aorta_smoothing["result"]
    output = result.output_node

    assert result.iterations > 0
    assert result.marginal_error <= 1e-6
    assert result.backend == "graph"
    assert float(output.GetAttribute("VesselDiffusion.MarginalError")) == result.marginal_error
    assert output.GetAttribute("VesselDiffusion.Input") == aorta_smoothing["input"].GetID()


def test_smoothing_progress_reaches_one(aorta_smoothing):
    reports = aorta_smoothing["reports"]

    assert reports == sorted(reports)
    assert reports[-1] == 1.0


def test_smoothing_point_normals_recomputed(aorta_smoothing):
    input_normals = aorta_smoothing["input"].GetPolyData().GetPointData().GetNormals()
    output_normals = aorta_smoothing["result"].output_node.GetPolyData().GetPointData().GetNormals()
    before = numpy_support.vtk_to_numpy(input_normals)
    after = numpy_support.vtk_to_numpy(output_normals)

    assert output_normals.GetName() == input_normals.GetName()
    assert np.allclose(np.linalg.norm(after, axis=1), 1.0, atol=1e-4)
    assert not np.allclose(before, after)


def test_smoothing_keeps_parent_transform(scene, small_aorta):
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Shift")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 25.0)
    shift.SetMatrixTransformToParent(matrix)
    aorta = add_model(scene, small_aorta, "Aorta")
    aorta.SetAndObserveTransformNodeID(shift.GetID())

    result = CoreLogic().smooth(aorta, SmoothingSettings(sigma=2.0))

    assert result.output_node.GetTransformNodeID() == shift.GetID()
    assert np.abs(points_of(result.output_node) - points_of(aorta)).mean() < 1.0


def test_smoothing_point_array(scene, small_aorta):
    aorta = add_model(scene, small_aorta, "Aorta")
    points = points_of(aorta)
    rng = np.random.default_rng(0)
    clean = np.sin(points[:, 1] / 8.0)
    noisy = clean + 0.5 * rng.standard_normal(len(points))
    array = numpy_support.numpy_to_vtk(noisy, deep=True)
    array.SetName("wall thickness")
    aorta.GetPolyData().GetPointData().AddArray(array)

    settings = SmoothingSettings(sigma=3.0, target="point_array", array_name="wall thickness")
    result = CoreLogic().smooth(aorta, settings)
    output = result.output_node
    smoothed = numpy_support.vtk_to_numpy(output.GetPolyData().GetPointData().GetArray("wall thickness"))
    stored = numpy_support.vtk_to_numpy(aorta.GetPolyData().GetPointData().GetArray("wall thickness"))

    np.testing.assert_array_equal(stored, noisy)
    np.testing.assert_array_equal(points_of(output), points)
    assert np.sqrt(np.mean((smoothed - clean) ** 2)) < 0.5 * np.sqrt(np.mean((noisy - clean) ** 2))
    assert result.volume_change is None
    assert output.GetDisplayNode().GetActiveScalarName() == "wall thickness"


def test_smoothing_segment_of_labelmap(scene):
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(40, 40, 40)
    image.SetOrigin(-20.0, -20.0, -20.0)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    k, j, i = np.meshgrid(*(np.arange(40),) * 3, indexing="ij")
    ball = ((i - 20) ** 2 + (j - 20) ** 2 + (k - 20) ** 2 < 12**2).astype(np.uint8)
    image.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(ball.ravel()))
    segment_id = segmentation.AddSegmentFromBinaryLabelmapRepresentation(image, "Lumen")

    result = CoreLogic().smooth(segmentation, SmoothingSettings(sigma=1.5), segment_id=segment_id)

    assert result.output_node.IsA("vtkMRMLModelNode")
    assert result.output_node.GetName() == "Segmentation Lumen smoothed 1.5 mm"
    assert abs(result.volume_change) < 0.01
    assert not segmentation.GetSegmentation().ContainsRepresentation("Closed surface")


def test_smoothing_rejects_missing_array(scene, small_aorta):
    aorta = add_model(scene, small_aorta, "Aorta")
    settings = SmoothingSettings(sigma=2.0, target="point_array", array_name="pressure")

    with pytest.raises(ValueError, match="'pressure' not found"):
        CoreLogic().smooth(aorta, settings)
    assert scene.GetNumberOfNodesByClass("vtkMRMLModelNode") == 1


def test_smoothing_rejects_centerline(scene):
    reader = vtk.vtkXMLPolyDataReader()
    reader.SetFileName(str(datasets.fetch("aorta-centerline")))
    reader.Update()
    centerline = add_model(scene, reader.GetOutput(), "Centerline")

    with pytest.raises(ValueError, match="no triangles"):
        CoreLogic().smooth(centerline, SmoothingSettings(sigma=2.0))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sigma": 0.0}, "sigma must be a positive number"),
        ({"sigma": float("nan")}, "sigma must be a positive number"),
        ({"sigma": 2.0, "backend": "cuda"}, "backend must be one of"),
        ({"sigma": 2.0, "order": 0}, "filter order must be an integer of at least 1"),
        ({"sigma": 2.0, "target": "point_array"}, "no point array selected"),
    ],
)
def test_smoothing_settings_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        SmoothingSettings(**options)


def test_smoothing_cancel_adds_nothing(scene, small_aorta):
    aorta = add_model(scene, small_aorta, "Aorta")
    logic = CoreLogic()
    job = logic.prepare_smoothing(aorta, SmoothingSettings(sigma=2.0))
    progress = Progress()
    progress.cancel()

    with pytest.raises(Cancelled):
        logic.compute_smoothing(job, progress)
    assert scene.GetNumberOfNodesByClass("vtkMRMLModelNode") == 1


def test_run_with_progress_cancels():
    progress = Progress()
    events = []

    def compute():
        for step in range(1000):
            progress.report(step / 1000, f"step {step}")
            events.append(step)
            time.sleep(0.001)
        return "finished"

    with pytest.raises(Cancelled):
        run_with_progress(
            compute,
            progress,
            update=lambda fraction, message: None,
            cancel_requested=lambda: True,
            process_events=lambda: None,
            interval=0.001,
        )
    assert len(events) < 1000


def test_run_with_progress_returns_value():
    progress = Progress()
    updates = []

    result = run_with_progress(
        lambda: 42,
        progress,
        update=lambda fraction, message: updates.append(fraction),
        cancel_requested=lambda: False,
        process_events=lambda: None,
    )
    assert result == 42


def test_smoothing_without_pyvista():
    """The Smooth panel's requirements (torch, sinkshape) suffice: pyvista is never imported."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["pyvista"] = None
        sys.path.insert(0, {str(MODULE_DIR)!r})
        import slicer, vtk
        from sinkshape import datasets
        from VesselDiffusionLib.logic import CoreLogic
        from VesselDiffusionLib.settings import SmoothingSettings
        reader = vtk.vtkXMLPolyDataReader()
        reader.SetFileName(str(datasets.fetch("aorta-surface")))
        reader.Update()
        decimate = vtk.vtkQuadricDecimation()
        decimate.SetInputData(reader.GetOutput())
        decimate.SetTargetReduction(0.9)
        decimate.Update()
        scene = slicer.vtkMRMLScene()
        node = scene.AddNewNodeByClass("vtkMRMLModelNode", "Aorta")
        node.SetAndObservePolyData(decimate.GetOutput())
        result = CoreLogic().smooth(node, SmoothingSettings(sigma=2.0))
        print("volume change", result.volume_change)
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "volume change" in completed.stdout


# Grid transform, with a known displacement standing in for a registration


@pytest.fixture(scope="module")
def known_transform(aorta_polydata):
    """Register the aorta with the stand-in backend; keep the scene and the result."""
    scene = slicer.vtkMRMLScene()
    moving = add_model(scene, aorta_polydata, "Moving")
    fixed_polydata = vtk.vtkPolyData()
    fixed_polydata.DeepCopy(aorta_polydata)
    fixed_points = numpy_support.vtk_to_numpy(fixed_polydata.GetPoints().GetData())
    fixed_points += known_displacement(fixed_points.astype(np.float64)).astype(fixed_points.dtype)
    fixed = add_model(scene, fixed_polydata, "Fixed")

    logic = CoreLogic()
    logic.registration_backend = known_registration
    settings = RegistrationSettings(sigma=10.0, grid_spacing=2.0)
    result = logic.register(moving, fixed, settings)
    return {"scene": scene, "logic": logic, "moving": moving, "fixed": fixed, "result": result}


def test_grid_transform_node_modeling_direction(known_transform):
    node = known_transform["result"].transform_node
    points = np.array([[220.0, 120.0, 20.0], [232.0, 160.0, 30.0]])
    moved = points + known_displacement(points)

    to_parent = np.array([node.GetTransformToParent().TransformPoint(p) for p in points])
    from_parent = np.array([node.GetTransformFromParent().TransformPoint(p) for p in moved])

    assert node.IsA("vtkMRMLGridTransformNode")
    assert node.GetTransformToParent().IsA("vtkOrientedGridTransform")
    assert np.abs(to_parent - moved).max() < 0.1
    assert np.abs(from_parent - points).max() < 0.1


def test_grid_transform_hardened_on_model(known_transform, aorta_polydata):
    scene = known_transform["scene"]
    copy = add_model(scene, aorta_polydata, "Copy")
    original = points_of(copy)

    known_transform["logic"].apply_transform(known_transform["result"].transform_node, copy, harden=True)
    error = np.linalg.norm(points_of(copy) - (original + known_displacement(original)), axis=1)

    assert copy.GetTransformNodeID() is None
    assert error.max() < 0.1


def test_grid_transform_registered_node(known_transform):
    moving_points = points_of(known_transform["moving"])
    registered = known_transform["result"].registered_node

    np.testing.assert_allclose(points_of(registered), moving_points + known_displacement(moving_points), atol=1e-4)
    assert registered.GetTransformNodeID() is None
    np.testing.assert_array_equal(points_of(known_transform["moving"]), moving_points)


def test_grid_transform_residual_reported(known_transform, aorta_polydata):
    scene = known_transform["scene"]
    result = known_transform["result"]
    copy = add_model(scene, aorta_polydata, "Copy for residual")
    known_transform["logic"].apply_transform(result.transform_node, copy, harden=True)
    error = np.linalg.norm(points_of(copy) - points_of(result.registered_node), axis=1)

    assert result.transform_residual == pytest.approx(error.max(), abs=1e-6)
    assert float(result.transform_node.GetAttribute("VesselDiffusion.ResidualMax")) == pytest.approx(
        error.max(), rel=1e-5
    )


def test_grid_transform_moves_markups(known_transform):
    scene = known_transform["scene"]
    transform = known_transform["result"].transform_node
    landmarks = np.array([[220.0, 120.0, 20.0], [225.0, 150.0, 25.0], [230.0, 170.0, 30.0]])
    fiducials = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Landmarks")
    curve = scene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", "Centerline")
    for point in landmarks:
        fiducials.AddControlPoint(vtk.vtkVector3d(*point))
        curve.AddControlPoint(vtk.vtkVector3d(*point))

    for node in (fiducials, curve):
        known_transform["logic"].apply_transform(transform, node, harden=True)
        moved = slicer.util.arrayFromMarkupsControlPoints(node)
        error = np.linalg.norm(moved - (landmarks + known_displacement(landmarks)), axis=1)
        assert error.max() < 0.1, node.GetName()


def test_grid_transform_moves_volume(known_transform):
    scene = known_transform["scene"]
    center = np.array([222.0, 140.0, 24.0])
    shape = (30, 30, 30)
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    origin = center - 15.0
    blob = np.exp(-((i - 15.0) ** 2 + (j - 15.0) ** 2 + (k - 15.0) ** 2) / (2 * 3.0**2))
    image = vtk.vtkImageData()
    image.SetDimensions(*shape)
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    image.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(blob.astype(np.float32).ravel()))
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    volume.SetAndObserveImageData(image)
    volume.SetOrigin(*origin)

    voxels = origin + np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    weights = blob.ravel() / blob.sum()
    expected = (weights[:, None] * (voxels + known_displacement(voxels))).sum(axis=0)

    known_transform["logic"].apply_transform(known_transform["result"].transform_node, volume, harden=True)
    values = slicer.util.arrayFromVolume(volume)
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in values.shape), indexing="ij")
    resampled = values / values.sum()
    centroid_ijk = [float((resampled * index).sum()) for index in (ii, jj, kk)] + [1.0]
    centroid = np.array(ijk_to_ras.MultiplyPoint(centroid_ijk)[:3])

    assert np.linalg.norm(centroid - expected) < 0.1


def test_distance_table_before_after(known_transform):
    result = known_transform["result"]
    table = result.table_node.GetTable()

    assert table.GetNumberOfRows() == 2
    assert [table.GetColumnName(c) for c in range(3)] == ["Measure", "Before registration", "After registration"]
    assert table.GetValue(0, 0).ToString() == "Mean surface distance"
    assert table.GetValue(1, 0).ToString() == "Maximum surface distance"
    assert table.GetValue(0, 1).ToDouble() == pytest.approx(result.mean_distance[0])
    assert table.GetValue(1, 2).ToDouble() == pytest.approx(result.max_distance[1])
    assert result.table_node.GetColumnUnitLabel("Before registration") == "mm"


def test_distance_table_values(known_transform):
    result = known_transform["result"]

    assert result.mean_distance[0] > 1.0
    assert result.mean_distance[1] < 1e-3
    assert result.max_distance[1] < 1e-3
    assert result.max_distance[0] > result.mean_distance[0]
