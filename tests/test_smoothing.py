"""Smoothing of signals and surfaces on the vmtk aorta and on simple shapes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import pyvista as pv
import torch

from sinkshape import diffusion_operator
from sinkshape.errors import InputError
from sinkshape.mesh import as_surface
from sinkshape.smoothing import (
    Smoother,
    diffusion_time,
    smooth_point_data,
    smooth_signal,
    smooth_surface,
)

TOLERANCES = {torch.float64: 1e-6, torch.float32: 1e-5}


def abs_mean_curvature(mesh: pv.PolyData) -> np.ndarray:
    return np.abs(mesh.curvature("mean"))


@pytest.fixture(scope="module")
def aorta_surface():
    from sinkshape import datasets

    return as_surface(datasets.load("aorta-surface"))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", ["dense", "sparse", "graph"])
def test_aorta_backend_reaches_tol(aorta_surface, backend, dtype):
    operator = diffusion_operator(
        aorta_surface.points.to(dtype),
        2.0,
        masses=aorta_surface.masses.to(dtype),
        triangles=aorta_surface.triangles,
        backend=backend,
    )
    signal = torch.randn(aorta_surface.n_points, generator=torch.Generator().manual_seed(0))
    signal = (signal + 3.0).to(dtype)
    smoothed = operator @ signal
    masses = operator.masses.to(torch.float64)
    mass_before = (masses * signal.to(torch.float64)).sum()
    mass_after = (masses * smoothed.to(torch.float64)).sum()

    assert operator.marginal_error <= TOLERANCES[dtype]
    assert abs(float(mass_after / mass_before) - 1.0) <= 1e-6


@pytest.mark.parametrize("backend", ["dense", "sparse"])
def test_aorta_tiny_sigma_identity_rows(aorta_surface, backend):
    sigma = 0.01
    operator = diffusion_operator(
        aorta_surface.points, sigma, masses=aorta_surface.masses, backend=backend
    )
    dense = operator.to_dense().numpy()
    points = aorta_surface.points.numpy()
    from scipy.spatial import cKDTree

    nearest, _ = cKDTree(points).query(points, k=2)
    isolated = nearest[:, 1] > 10 * sigma
    deviation = np.abs(dense[isolated] - np.eye(len(points))[isolated]).max()

    assert np.isfinite(dense).all()
    assert operator.marginal_error <= 1e-6
    assert isolated.sum() > 0.8 * len(points)
    assert deviation <= 1e-6


@pytest.fixture(scope="module")
def aorta_smoothed():
    from sinkshape import datasets

    return smooth_surface(datasets.load("aorta-surface"), 2.0)


def test_surface_keeps_volume(aorta, aorta_smoothed):
    taubin = aorta.smooth_taubin(n_iter=20, pass_band=0.1)
    ours = abs(aorta_smoothed.volume / aorta.volume - 1.0)
    theirs = abs(taubin.volume / aorta.volume - 1.0)

    assert ours <= 0.005
    assert ours <= theirs


def test_surface_lowers_curvature(aorta, aorta_smoothed):
    taubin = aorta.smooth_taubin(n_iter=20, pass_band=0.1)
    ours = abs_mean_curvature(aorta_smoothed)
    theirs = abs_mean_curvature(taubin)

    assert np.percentile(ours, 95) <= 0.35
    assert np.percentile(ours, 95) <= np.percentile(theirs, 95)
    assert ours.max() < abs_mean_curvature(aorta).max()
    assert ours.max() <= theirs.max()


def test_surface_flips_no_triangle(aorta_smoothed):
    assert aorta_smoothed.field_data["sinkshape_flipped_triangles"][0] == 0


def test_surface_records_solver_figures(aorta, aorta_smoothed):
    recorded = aorta_smoothed.field_data

    assert recorded["sinkshape_marginal_error"][0] <= 1e-6
    assert recorded["sinkshape_iterations"][0] >= 1
    assert recorded["sinkshape_volume_change"][0] == pytest.approx(
        aorta_smoothed.volume / aorta.volume - 1.0, abs=1e-6
    )


def test_surface_leaves_input_untouched(aorta):
    before = aorta.copy(deep=True)
    smooth_surface(aorta, 1.0)

    assert np.array_equal(aorta.points, before.points)
    assert aorta.point_data.keys() == before.point_data.keys()
    assert len(aorta.field_data.keys()) == len(before.field_data.keys())


def test_surface_keeps_point_arrays(aorta, aorta_smoothed):
    assert aorta_smoothed.point_data.keys() == aorta.point_data.keys()
    assert aorta_smoothed.n_points == aorta.n_points


def test_plain_diffusion_shrinks(aorta):
    # The filter order is what keeps the volume: order 1 is plain diffusion.
    shrunk = smooth_surface(aorta, 2.0, order=1)
    assert shrunk.volume / aorta.volume - 1.0 < -0.05


@pytest.mark.parametrize(
    "name", ["aorta-surface-open-ends", "aorta-surface-two-segments"]
)
def test_surface_other_aortas_no_flip(name):
    from sinkshape import datasets

    mesh = datasets.load(name)
    smoothed = smooth_surface(mesh, 2.0)

    assert np.isfinite(smoothed.points).all()
    assert smoothed.field_data["sinkshape_flipped_triangles"][0] == 0


def test_signal_numpy_in_numpy_out(aorta):
    signal = np.asarray(aorta.points[:, 2], dtype=np.float32)
    smoothed = smooth_signal(aorta, signal, 1.0)

    assert isinstance(smoothed, np.ndarray)
    assert smoothed.dtype == np.float32
    assert smoothed.shape == signal.shape


def test_signal_tensor_in_tensor_out(aorta):
    signal = torch.as_tensor(np.asarray(aorta.points), dtype=torch.float64)
    smoothed = smooth_signal(aorta, signal, 1.0)

    assert isinstance(smoothed, torch.Tensor)
    assert smoothed.shape == signal.shape


def test_signal_keeps_constants(aorta):
    # Each of the `steps` applications keeps constants within the marginal
    # error, a mass-weighted mean over the vertices.
    smoother = Smoother(aorta, 3.0)
    smoothed = smoother.smooth(np.full(aorta.n_points, 7.0))
    masses = smoother.surface.masses.numpy()
    mean_error = np.average(np.abs(smoothed / 7.0 - 1.0), weights=masses)

    assert mean_error <= smoother.steps * smoother.operator.marginal_error


def test_point_data_smooths_named_array(aorta):
    mesh = aorta.copy()
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(mesh.n_points)
    mesh.point_data["noise"] = noise.copy()
    smoothed = smooth_point_data(mesh, 2.0, "noise")

    assert smoothed["noise"].std() < 0.5 * noise.std()
    assert np.array_equal(smoothed.points, mesh.points)
    assert np.array_equal(mesh["noise"], noise)


def test_point_data_unknown_array(aorta):
    with pytest.raises(InputError, match="'thickness' not found"):
        smooth_point_data(aorta, 2.0, "thickness")


def test_signal_wrong_length(aorta):
    with pytest.raises(InputError, match=r"shape \(6468,\)"):
        smooth_signal(aorta, np.zeros(10), 1.0)


def test_signal_with_nan(aorta):
    signal = np.zeros(aorta.n_points)
    signal[5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        smooth_signal(aorta, signal, 1.0)


def test_graph_without_triangles():
    points = np.random.default_rng(0).uniform(size=(50, 3))
    with pytest.raises(InputError, match="needs a mesh with triangles"):
        Smoother(points, 0.1, backend="graph")


def test_point_cloud_auto_backend():
    points = np.random.default_rng(0).uniform(size=(300, 3))
    smoother = Smoother(points, 0.1)

    assert smoother.backend == "dense"
    assert smoother.steps == 1


@pytest.fixture(scope="module")
def plane():
    return pv.Plane(i_size=40, j_size=40, i_resolution=80, j_resolution=80).triangulate()


def second_moment_of_delta(smoother: Smoother, mesh: pv.PolyData) -> float:
    center = mesh.find_closest_point((0.0, 0.0, 0.0))
    delta = np.zeros(mesh.n_points)
    delta[center] = 1.0 / smoother.surface.masses[center].item()
    spread = smoother.smooth(delta)
    masses = smoother.surface.masses.numpy()
    offsets = np.asarray(mesh.points) - np.asarray(mesh.points[center])
    return float((masses * spread * (offsets**2).sum(axis=1)).sum())


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_graph_matches_gaussian_scale(plane, sigma):
    # A 2-D Gaussian of bandwidth sigma has second moment 2 sigma^2; the graph
    # schedule is matched to the same diffusion time sigma^2 / 2.
    graph = second_moment_of_delta(Smoother(plane, sigma, backend="graph"), plane)
    gaussian = second_moment_of_delta(Smoother(plane, sigma, backend="sparse"), plane)

    assert gaussian == pytest.approx(2 * sigma**2, rel=0.02)
    assert graph == pytest.approx(2 * sigma**2, rel=0.1)


def test_diffusion_time_of_gaussian(plane):
    sigma = 1.5
    operator = diffusion_operator(np.asarray(plane.points), sigma, backend="sparse")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        measured = diffusion_time(operator, torch.as_tensor(np.asarray(plane.points)))
    # The border of the plane diffuses less than its interior, so the mean is
    # a little below sigma^2 / 2.
    assert measured == pytest.approx(sigma**2 / 2, rel=0.1)


def test_skshapes_surface_round_trip(aorta):
    skshapes = pytest.importorskip("skshapes")
    shape = skshapes.PolyData(aorta)
    smoothed = smooth_surface(shape, 2.0)
    expected = smooth_surface(aorta, 2.0)

    assert isinstance(smoothed, skshapes.PolyData)
    assert torch.equal(smoothed.triangles, shape.triangles)
    # skshapes stores float32 points, so the solve runs in float32 (tol 1e-5)
    # while the pyvista path runs in float64.
    assert np.abs(smoothed.points.numpy() - expected.points).max() < 0.01
