"""Coordinates far from the origin in float32, sigma over four decades on the aorta,
and two vessel walls close in space."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import pyvista as pv
import torch
from scipy.spatial import cKDTree

from sinkshape import SinkhornConvergenceWarning, datasets, diffusion_operator, keops
from sinkshape.kernels import mesh_edges
from sinkshape.mesh import as_surface
from sinkshape.smoothing import Smoother, smooth_surface

# sigma as multiples of the aorta's mean edge length (0.97 mm).
SIGMA_FACTORS = [1e-3, 1e-2, 1e-1, 1.0, 3.0, 10.0]


@pytest.fixture(scope="module")
def aorta_mesh():
    """The vmtk aorta: 6,468 vertices with x from 206 to 240 mm."""
    return datasets.load("aorta-surface")


@pytest.fixture(scope="module")
def aorta_surface(aorta_mesh):
    return as_surface(aorta_mesh)


@pytest.fixture(scope="module")
def mean_edge(aorta_surface):
    edges = mesh_edges(aorta_surface.triangles)
    points = aorta_surface.points.numpy()
    return float(np.linalg.norm(points[edges[:, 0]] - points[edges[:, 1]], axis=1).mean())


def relative_difference(value, reference):
    return float(np.linalg.norm(value - reference) / np.linalg.norm(reference))


# --- float32 far from the origin -----------------------------------------------------------


@pytest.fixture(scope="module")
def aorta_arrays(aorta_mesh):
    points = np.asarray(aorta_mesh.points, dtype=np.float64)
    return points, aorta_mesh.regular_faces, points.mean(axis=0)


@pytest.mark.parametrize("backend", ["graph", "sparse"])
def test_far_float32_signal_matches_centred(aorta_arrays, backend):
    points, triangles, center = aorta_arrays
    signal = np.random.default_rng(0).standard_normal(len(points))

    far = Smoother(
        points.astype(np.float32), 1.0, triangles=triangles, backend=backend,
        dtype=torch.float32,
    )
    centred = Smoother(points - center, 1.0, triangles=triangles, backend=backend)

    assert far.operator.kernel.dtype == torch.float32
    assert relative_difference(far.smooth(signal.astype(np.float32)), centred.smooth(signal)) < 1e-4


@pytest.mark.parametrize("backend", ["graph", "sparse"])
def test_far_float32_points_match_centred(aorta_arrays, backend):
    points, triangles, center = aorta_arrays

    far = Smoother(
        points.astype(np.float32), 1.0, triangles=triangles, backend=backend,
        dtype=torch.float32,
    )
    centred = Smoother(points - center, 1.0, triangles=triangles, backend=backend)
    far_points = far.smooth_points().numpy().astype(np.float64) - center

    assert relative_difference(far_points, centred.smooth_points().numpy()) < 1e-4


def test_far_float32_displacement_sparse(aorta_arrays):
    # The displacement is small (RMS 0.026 mm), so float32 and its solver tolerance
    # of 1e-5 limit its relative precision, with or without the offset.
    points, triangles, center = aorta_arrays
    centred_points = points - center

    reference = Smoother(centred_points, 1.0, triangles=triangles, backend="sparse")
    far = Smoother(
        points.astype(np.float32), 1.0, triangles=triangles, backend="sparse",
        dtype=torch.float32,
    )
    centred = Smoother(
        centred_points.astype(np.float32), 1.0, triangles=triangles, backend="sparse",
        dtype=torch.float32,
    )
    expected = reference.smooth_points().numpy() - centred_points
    far_displacement = far.smooth_points().numpy().astype(np.float64) - points
    centred_displacement = centred.smooth_points().numpy().astype(np.float64) - centred_points

    assert np.sqrt((expected**2).sum(axis=1).mean()) == pytest.approx(0.026, abs=0.001)
    assert relative_difference(far_displacement, expected) < 5e-4
    assert relative_difference(centred_displacement, expected) < 5e-4


# --- sigma from 1e-3 to 10 edge lengths ----------------------------------------------------


@pytest.mark.parametrize("factor", SIGMA_FACTORS)
def test_graph_sigma_range(aorta_mesh, mean_edge, factor):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SinkhornConvergenceWarning)
        smoother = Smoother(aorta_mesh, factor * mean_edge)
    smoothed = smoother.smooth_points()
    signal = smoother.smooth(np.asarray(aorta_mesh.points[:, 0], dtype=np.float64))

    assert smoother.operator.marginal_error <= smoother.operator.result.tol
    assert 0.0 < smoother.alpha <= 1.0
    assert bool(torch.isfinite(smoothed).all())
    assert np.isfinite(signal).all()


@pytest.mark.parametrize("factor", SIGMA_FACTORS[:4])
def test_sparse_sigma_range(aorta_surface, mean_edge, factor):
    # Beyond one edge length, the sparse kernel of 6,468 points nears the dense one in
    # size: 35 million entries at 10 edge lengths. The subsample test covers those.
    with warnings.catch_warnings():
        warnings.simplefilter("error", SinkhornConvergenceWarning)
        operator = diffusion_operator(
            aorta_surface.points, factor * mean_edge, masses=aorta_surface.masses,
            backend="sparse",
        )
    smoothed = operator @ aorta_surface.points.numpy()

    assert operator.marginal_error <= operator.result.tol
    assert np.isfinite(smoothed).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", ["dense", "sparse", "keops"])
@pytest.mark.parametrize("factor", SIGMA_FACTORS)
def test_kernel_sigma_range_subsample(aorta_surface, mean_edge, factor, backend, dtype):
    # KeOps keeps sigma out of its formula, so the six values share one compiled
    # routine per dtype: about 10 s each on first use, cached on disk after.
    if backend == "keops" and keops._keops_failure_reason("cpu") is not None:
        pytest.skip(f"KeOps does not work on the CPU: {keops._keops_failure_reason('cpu')}")
    # Every sixth vertex: 1,078 points, with x around 220 mm.
    points = aorta_surface.points[::6].to(dtype)
    masses = aorta_surface.masses[::6].to(dtype)

    with warnings.catch_warnings():
        warnings.simplefilter("error", SinkhornConvergenceWarning)
        operator = diffusion_operator(points, factor * mean_edge, masses=masses, backend=backend)
    smoothed = operator @ points

    if backend == "keops":
        assert isinstance(operator.kernel, keops.KeOpsKernel)
    assert operator.marginal_error <= operator.result.tol
    assert bool(torch.isfinite(smoothed).all())


# --- two tubes whose walls are 0.5 mm apart --------------------------------------------------


def tube(center_x, *, radius=1.0, n_theta=32, dz=0.2, half_length=3.0):
    """Open tube along z: rings of n_theta vertices every dz, two triangles per quad."""
    theta = 2 * np.pi * np.arange(n_theta) / n_theta
    heights = np.arange(-half_length, half_length + dz / 2, dz)
    theta_grid, z_grid = np.meshgrid(theta, heights)
    points = np.column_stack(
        [
            center_x + radius * np.cos(theta_grid).ravel(),
            radius * np.sin(theta_grid).ravel(),
            z_grid.ravel(),
        ]
    )

    ring = np.arange(n_theta)
    triangles = []
    for level in range(len(heights) - 1):
        a = level * n_theta + ring
        b = level * n_theta + (ring + 1) % n_theta
        triangles.append(np.column_stack([a, b, b + n_theta]))
        triangles.append(np.column_stack([a, b + n_theta, a + n_theta]))
    return points, np.vstack(triangles)


@pytest.fixture(scope="module")
def two_tubes():
    """Tubes of radius 1 mm with centres 2.5 mm apart: 1,984 vertices, 0.2 mm edges."""
    first_points, first_triangles = tube(0.0)
    second_points, second_triangles = tube(2.5)
    points = np.vstack([first_points, second_points])
    triangles = np.vstack([first_triangles, second_triangles + len(first_points)])
    faces = np.column_stack([np.full(len(triangles), 3), triangles]).ravel()
    return pv.PolyData(points, faces), len(first_points)


def wall_gap(points, n_first):
    """Smallest distance between the two tubes, away from their open ends."""
    middle = np.abs(points[:, 2]) <= 1.0
    first = points[:n_first][middle[:n_first]]
    second = points[n_first:][middle[n_first:]]
    return float(cKDTree(second).query(first)[0].min())


def test_tube_gap_before(two_tubes):
    mesh, n_first = two_tubes

    assert wall_gap(np.asarray(mesh.points), n_first) == pytest.approx(0.5, abs=1e-6)


def test_tube_gap_graph_stays_open(two_tubes):
    mesh, n_first = two_tubes

    smoothed = smooth_surface(mesh, 0.5, backend="graph")

    assert wall_gap(np.asarray(smoothed.points), n_first) == pytest.approx(0.5, abs=0.002)


def test_tube_gap_euclidean_closes(two_tubes):
    # The Euclidean Gaussian mixes the facing walls: they move 0.084 mm towards
    # each other, 17% of the gap, at sigma = 0.5 mm with the default filter order.
    mesh, n_first = two_tubes

    smoothed = smooth_surface(mesh, 0.5, backend="dense")

    assert wall_gap(np.asarray(smoothed.points), n_first) == pytest.approx(0.416, abs=0.003)


def test_tube_gap_plain_diffusion(two_tubes):
    # Plain diffusion (order 1) shrinks each tube, which widens the gap on the graph.
    # The Euclidean kernel pulls the walls together faster than the tubes shrink.
    mesh, n_first = two_tubes

    graph = smooth_surface(mesh, 0.5, backend="graph", order=1)
    euclidean = smooth_surface(mesh, 0.5, backend="dense", order=1)

    assert wall_gap(np.asarray(graph.points), n_first) == pytest.approx(0.733, abs=0.003)
    assert wall_gap(np.asarray(euclidean.points), n_first) == pytest.approx(0.318, abs=0.003)
