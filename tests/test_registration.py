"""Registration by :func:`sinkshape.registration.register` on spheres and on the aorta."""

from __future__ import annotations

import numpy as np
import pytest
import pyvista as pv
import torch
from scipy.spatial import cKDTree
from vtkmodules.vtkCommonDataModel import vtkPolyData
from vtkmodules.vtkFiltersCore import vtkImplicitPolyDataDistance

from sinkshape import datasets
from sinkshape.errors import InputError
from sinkshape.lddmm.losses import OptimalTransportLoss, VarifoldLoss
from sinkshape.mesh import vertex_areas
from sinkshape.registration import register

RADIUS = 10.0
SHIFT = np.array([4.0, 2.0, -1.0])


def hausdorff(first: np.ndarray, second: np.ndarray) -> float:
    return max(cKDTree(first).query(second)[0].max(), cKDTree(second).query(first)[0].max())


def mean_surface_distance(points: np.ndarray, surface: pv.PolyData) -> float:
    """Mean unsigned distance from points to the triangles of a surface."""
    distance = vtkImplicitPolyDataDistance()
    distance.SetInput(surface)
    return float(np.mean([abs(distance.EvaluateFunction(point)) for point in points]))


@pytest.fixture(scope="module")
def sphere_pair():
    source = pv.Icosphere(radius=RADIUS, nsub=2)
    return source, source.translate(SHIFT)


@pytest.fixture(scope="module")
def sphere_result(sphere_pair):
    source, target = sphere_pair
    return register(source, target, sigma=5.0, loss="point-to-point", n_iter=30)


# --- sphere to a translated copy ----------------------------------------------------------------


def test_sphere_reaches_translate(sphere_result, sphere_pair):
    _, target = sphere_pair

    assert hausdorff(sphere_result.points, np.asarray(target.points)) <= 0.01 * RADIUS


def test_sphere_extrapolates_translation(sphere_result, sphere_pair):
    source, _ = sphere_pair

    extrapolated = sphere_result.transform_points(source.points, time=2.0)

    exact = np.asarray(source.points) + 2.0 * SHIFT
    assert hausdorff(extrapolated, exact) <= 0.01 * RADIUS


def test_sphere_path_ends_at_points(sphere_result):
    assert sphere_result.path_times[0] == 0.0
    assert sphere_result.path_times[-1] == 1.0
    np.testing.assert_allclose(sphere_result.path[0], sphere_result.source_points)
    np.testing.assert_allclose(sphere_result.path[-1], sphere_result.points)


def test_sphere_displacement_is_difference(sphere_result):
    np.testing.assert_allclose(
        sphere_result.displacement, sphere_result.points - sphere_result.source_points
    )


def test_sphere_loss_decreases(sphere_result):
    assert sphere_result.loss_history[-1] < 0.01 * sphere_result.loss_history[0]


def test_transform_at_zero_is_identity(sphere_result):
    points = np.array([[0.0, 0.0, 0.0], [20.0, -3.0, 1.0]])

    np.testing.assert_allclose(sphere_result.transform_points(points, time=0.0), points)


def test_transform_matches_registered_points(sphere_result):
    moved = sphere_result.transform_points(sphere_result.source_points)

    np.testing.assert_allclose(moved, sphere_result.points, atol=1e-9)


def test_raw_kernel_extrapolates_worse(sphere_pair):
    source, target = sphere_pair
    result = register(
        source, target, sigma=5.0, loss="point-to-point", n_iter=30, normalization="none"
    )

    extrapolated = result.transform_points(source.points, time=2.0)

    exact = np.asarray(source.points) + 2.0 * SHIFT
    assert hausdorff(extrapolated, exact) > 0.01 * RADIUS


def test_control_point_count(sphere_pair):
    source, target = sphere_pair

    result = register(source, target, sigma=5.0, loss="point-to-point", n_iter=3, control_points=25)

    area = float(vertex_areas(torch.tensor(source.points, dtype=torch.float64), source.regular_faces).sum())
    assert result.control_points.shape == (25, 3)
    assert result.masses.sum() == pytest.approx(area)


def test_optimal_transport_reaches_translate(sphere_pair):
    source, target = sphere_pair

    result = register(source, target, sigma=5.0, loss="optimal-transport", loss_sigma=2.0, n_iter=20)

    assert hausdorff(result.points, np.asarray(target.points)) <= 0.05 * RADIUS


def test_varifold_matches_surface(sphere_pair):
    source, target = sphere_pair

    result = register(source, target, sigma=5.0, loss="varifold", n_iter=20)

    assert mean_surface_distance(result.points, target) <= 0.02 * RADIUS


def test_point_to_point_rejects_other_vertices(sphere_pair):
    source, _ = sphere_pair

    with pytest.raises(InputError, match="corresponding vertices"):
        register(source, pv.Icosphere(radius=RADIUS, nsub=1), sigma=5.0, loss="point-to-point")


def test_register_rejects_unknown_loss(sphere_pair):
    source, target = sphere_pair

    with pytest.raises(InputError, match="loss must be"):
        register(source, target, sigma=5.0, loss="chamfer")


def test_varifold_rejects_point_clouds():
    points = np.random.default_rng(0).normal(size=(30, 3))

    with pytest.raises(InputError, match="varifold loss needs triangle meshes"):
        register(points, points + 1.0, sigma=1.0, loss="varifold")


# --- aorta straightened by a guidewire --------------------------------------------------------

# Each iliac artery turns about the aortic bifurcation towards the aortic axis by
# this fraction of its angle, and straightens onto a line: a stiff guidewire in
# each iliac artery during an endovascular procedure.
ANGLE_FRACTION = 0.6
# The straightening ramps in over this arc length below the bifurcation (mm).
RAMP_LENGTH = 15.0
# Width of the Gaussian weights that spread the centerline displacements to the wall (mm).
SPREAD = 5.0


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def guidewire_displacement(centerline: pv.PolyData, points: np.ndarray) -> np.ndarray:
    """Displacement of ``points`` when both iliac arteries are straightened.

    The two centerlines share the aorta down to the bifurcation, where they part
    by more than 1 mm. Below it, each centerline point c(s) at arc length s moves
    towards B + s e', where B is the bifurcation and e' turns the iliac direction
    (B to the iliac end) towards the aortic axis by ``ANGLE_FRACTION`` of their
    angle; the move is weighted by smoothstep(s / RAMP_LENGTH). Points of the
    surface take the Gaussian-weighted mean of the centerline displacements.
    """
    lines = [np.asarray(centerline.points[centerline.get_cell(i).point_ids], dtype=float)
             for i in range(centerline.n_cells)]
    first, second = lines
    split = int(np.argmax(cKDTree(second).query(first)[0] > 1.0))
    bifurcation = 0.5 * (first[split] + second[split])
    axis = bifurcation - first[0]
    axis /= np.linalg.norm(axis)

    centers = [first[:split]]
    moves = [np.zeros((split, 3))]
    for line in lines:
        branch = line[split:]
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(branch, axis=0), axis=1))])
        direction = branch[-1] - bifurcation
        direction /= np.linalg.norm(direction)
        angle = np.arccos(np.clip(direction @ axis, -1.0, 1.0))
        normal = direction - (direction @ axis) * axis
        normal /= np.linalg.norm(normal)
        kept_angle = (1.0 - ANGLE_FRACTION) * angle
        straightened = np.cos(kept_angle) * axis + np.sin(kept_angle) * normal
        target = bifurcation + arc[:, None] * straightened
        centers.append(branch)
        moves.append(_smoothstep(arc / RAMP_LENGTH)[:, None] * (target - branch))
    centers = np.concatenate(centers)
    moves = np.concatenate(moves)

    sq_distances = ((points[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    weights = np.exp(-(sq_distances - sq_distances.min(axis=1, keepdims=True)) / (2 * SPREAD**2))
    weights /= weights.sum(axis=1, keepdims=True)
    return weights @ moves


@pytest.fixture(scope="module")
def aorta_pair():
    source = datasets.load("aorta-surface")
    centerline = datasets.load("aorta-centerline")
    truth = np.asarray(source.points, dtype=np.float64)
    truth = truth + guidewire_displacement(centerline, truth)
    target = source.copy(deep=True)
    target.points = truth
    return source, target, truth


@pytest.fixture(scope="module")
def aorta_result(aorta_pair):
    source, target, _ = aorta_pair
    return register(
        source,
        target,
        sigma=10.0,
        loss="varifold",
        loss_sigma=(5.0, 2.5),
        n_iter=25,
        control_points=200,
        loss_triangles=1500,
    )


def test_aorta_deformation_is_large(aorta_pair):
    source, _, truth = aorta_pair

    moved = np.linalg.norm(truth - np.asarray(source.points), axis=1)

    assert moved.mean() > 2.0
    assert moved.max() > 8.0


def test_aorta_mean_surface_distance(aorta_result, aorta_pair):
    _, target, _ = aorta_pair

    assert mean_surface_distance(aorta_result.points, target) <= 0.5


def test_aorta_vertex_error(aorta_result, aorta_pair):
    _, _, truth = aorta_pair

    error = np.linalg.norm(aorta_result.points - truth, axis=1).mean()

    assert error <= 2.0


def test_aorta_vertex_error_below_initial(aorta_result, aorta_pair):
    source, _, truth = aorta_pair

    error = np.linalg.norm(aorta_result.points - truth, axis=1).mean()
    initial = np.linalg.norm(np.asarray(source.points) - truth, axis=1).mean()

    assert error <= 0.5 * initial


def test_aorta_result_is_finite(aorta_result):
    assert np.isfinite(aorta_result.points).all()
    assert aorta_result.time > 0.0


def test_register_float32(sphere_pair):
    source, target = sphere_pair

    result = register(
        source, target, sigma=5.0, loss="point-to-point", n_iter=15, dtype=torch.float32
    )

    assert hausdorff(result.points, np.asarray(target.points)) <= 0.02 * RADIUS



def test_register_accepts_vtk_polydata(sphere_pair):
    source, target = sphere_pair
    plain = vtkPolyData()
    plain.DeepCopy(source)

    result = register(plain, target, sigma=5.0, loss="point-to-point", n_iter=3)

    assert result.points.shape == (source.n_points, 3)


def test_optimal_transport_loss_of_shift(sphere_pair):
    source, _ = sphere_pair
    points = torch.tensor(source.points, dtype=torch.float64)
    masses = vertex_areas(points, source.regular_faces)
    loss = OptimalTransportLoss(masses, points, masses, sigma=2.0)

    shifted = loss(points + torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))

    # A translation by d costs W_2^2 = d^2, and the loss is scaled to A d^2.
    assert float(shifted) == pytest.approx(float(masses.sum()), rel=1e-3)


def test_optimal_transport_loss_of_itself(sphere_pair):
    source, _ = sphere_pair
    points = torch.tensor(source.points, dtype=torch.float64)
    masses = vertex_areas(points, source.regular_faces)

    value = OptimalTransportLoss(masses, points, masses, sigma=1.0)(points)

    assert abs(float(value)) <= 1e-6


def test_varifold_loss_of_itself(sphere_pair):
    source, _ = sphere_pair
    points = torch.tensor(source.points, dtype=torch.float64)
    loss = VarifoldLoss(source.regular_faces, points, source.regular_faces, sigma=2.0)

    assert abs(float(loss(points))) <= 1e-9 * float(loss(points + 1.0))
