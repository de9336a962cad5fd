"""Specification of the reference operators (sinkshape.reference)."""

import warnings

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.spatial import ConvexHull

from sinkshape import (
    DenseKernel,
    DiffusionOperator,
    InputError,
    SinkhornConvergenceWarning,
    SparseKernel,
    sinkhorn_scaling,
)
from sinkshape.reference import (
    ImplicitHeatOperator,
    KernelOperator,
    SpectralHeatOperator,
    cotangent_laplacian,
    kernel_operator,
    point_cloud_laplacian,
)
from sinkshape.spectra import LaplacianSpectrum


def fibonacci_sphere(n_points, radius=1.0):
    """Quasi-uniform points on a sphere: the Fibonacci lattice."""
    index = np.arange(n_points) + 0.5
    z = 1.0 - 2.0 * index / n_points
    angle = np.pi * (1.0 + 5.0**0.5) * index
    ring = np.sqrt(1.0 - z**2)
    return radius * np.column_stack([ring * np.cos(angle), ring * np.sin(angle), z])


@pytest.fixture(scope="module")
def sphere_mesh():
    points = fibonacci_sphere(600)
    return points, ConvexHull(points).simplices


@pytest.fixture(scope="module")
def sphere_laplacian(sphere_mesh):
    points, triangles = sphere_mesh
    return cotangent_laplacian(points, triangles=triangles)


def random_cloud(n_points, *, seed=0):
    return np.random.default_rng(seed).uniform(size=(n_points, 2))


def random_masses(n_points, *, seed=1):
    return np.random.default_rng(seed).uniform(0.5, 2.0, size=n_points)


# --- Laplacians ---------------------------------------------------------------------


def test_cotangent_laplacian_kills_constants(sphere_laplacian):
    ones = np.ones(sphere_laplacian.n_points)

    assert np.abs(sphere_laplacian.stiffness @ ones).max() < 1e-10


def test_cotangent_laplacian_symmetric(sphere_laplacian):
    stiffness = sphere_laplacian.stiffness

    assert abs(stiffness - stiffness.T).max() < 1e-12


def test_cotangent_masses_sum_to_area(sphere_laplacian):
    # The convex hull of 600 points on the unit sphere has an area just below 4 pi.
    total = sphere_laplacian.masses.sum()

    assert total < 4 * np.pi
    assert total > 0.99 * 4 * np.pi


def test_cotangent_laplacian_sphere_spectrum(sphere_laplacian):
    eigenvalues = sphere_laplacian.spectrum(9).eigenvalues

    assert abs(eigenvalues[0]) < 1e-8
    np.testing.assert_allclose(eigenvalues[1:4], 2.0, rtol=0.01)
    np.testing.assert_allclose(eigenvalues[4:9], 6.0, rtol=0.02)


def test_cotangent_laplacian_needs_triangles():
    with pytest.raises(InputError, match="point_cloud_laplacian"):
        cotangent_laplacian(fibonacci_sphere(50))


def test_cotangent_laplacian_of_aorta(aorta):
    laplacian = cotangent_laplacian(aorta)

    assert laplacian.n_points == aorta.n_points
    assert laplacian.masses.min() > 0
    np.testing.assert_allclose(laplacian.masses.sum(), aorta.area, rtol=1e-3)


def test_point_cloud_laplacian_sphere_spectrum():
    laplacian = point_cloud_laplacian(fibonacci_sphere(800))
    eigenvalues = laplacian.spectrum(4).eigenvalues

    np.testing.assert_allclose(eigenvalues[1:4], 2.0, rtol=0.02)


def test_point_cloud_laplacian_needs_3d():
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        point_cloud_laplacian(random_cloud(100))


def test_point_cloud_laplacian_neighbour_range():
    with pytest.raises(InputError, match="n_neighbors"):
        point_cloud_laplacian(fibonacci_sphere(20), n_neighbors=30)


# --- kernel operators ---------------------------------------------------------------


@pytest.fixture(scope="module")
def small_kernel():
    return DenseKernel.from_points(random_cloud(200), 0.1)


def test_raw_kernel_matches_dense(small_kernel):
    masses = random_masses(200)
    operator = KernelOperator(small_kernel, masses)
    expected = small_kernel.to_dense().numpy() * masses[None, :]

    np.testing.assert_allclose(operator.to_dense().numpy(), expected, rtol=1e-12)


def test_row_normalization_keeps_constants(small_kernel):
    operator = KernelOperator(small_kernel, random_masses(200), normalization="row")

    np.testing.assert_allclose(operator @ np.ones(200), 1.0, rtol=1e-12)


def test_row_normalization_matches_dense(small_kernel):
    masses = random_masses(200)
    operator = KernelOperator(small_kernel, masses, normalization="row")
    weighted = small_kernel.to_dense().numpy() * masses[None, :]
    expected = weighted / weighted.sum(axis=1, keepdims=True)

    np.testing.assert_allclose(operator.to_dense().numpy(), expected, rtol=1e-12)


def test_symmetric_normalization_is_first_sinkhorn_step(small_kernel):
    # One multiplicative update from lambda = 1 gives lambda = (K m)^(-1/2).
    masses = torch.from_numpy(random_masses(200))
    operator = KernelOperator(small_kernel, masses, normalization="symmetric")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SinkhornConvergenceWarning)
        first_step = sinkhorn_scaling(small_kernel, masses, max_iter=1, log_domain=False)
    scaling = first_step.scaling
    expected = scaling[:, None] * small_kernel.to_dense() * (masses * scaling)[None, :]

    torch.testing.assert_close(operator.to_dense(), expected, rtol=1e-12, atol=0)


def test_symmetric_normalization_self_adjoint(small_kernel):
    masses = random_masses(200)
    dense = KernelOperator(small_kernel, masses, normalization="symmetric").to_dense()
    weighted = masses[:, None] * dense.numpy()

    np.testing.assert_allclose(weighted, weighted.T, rtol=1e-12, atol=1e-15)


def test_symmetric_normalization_rows_not_one(small_kernel):
    operator = KernelOperator(small_kernel, random_masses(200), normalization="symmetric")
    row_sums = operator @ np.ones(200)

    assert np.abs(row_sums - 1.0).max() > 0.05


def test_kernel_operator_sparse_matches_dense():
    points = random_cloud(300)
    sparse = kernel_operator(points, 0.05, backend="sparse", normalization="row")
    dense = kernel_operator(points, 0.05, backend="dense", normalization="row")
    signal = np.sin(6 * points[:, 0])

    np.testing.assert_allclose(sparse @ signal, dense @ signal, rtol=1e-5, atol=1e-6)


def test_kernel_operator_graph_backend(sphere_mesh):
    points, triangles = sphere_mesh
    operator = kernel_operator(points, backend="graph", triangles=triangles, normalization="row")

    assert isinstance(operator.kernel, SparseKernel)
    np.testing.assert_allclose(operator @ np.ones(len(points)), 1.0, rtol=1e-12)


def test_kernel_operator_rejects_normalization(small_kernel):
    with pytest.raises(InputError, match="normalization"):
        KernelOperator(small_kernel, normalization="sinkhorn")


def test_row_normalization_has_no_symmetric_form(small_kernel):
    operator = KernelOperator(small_kernel, normalization="row")

    with pytest.raises(InputError, match="not self-adjoint"):
        operator.symmetric_linear_operator()


# --- the shared interface -----------------------------------------------------------


def test_steps_repeat_the_step(small_kernel):
    operator = KernelOperator(small_kernel, normalization="row")
    signal = random_masses(200)

    np.testing.assert_allclose(
        operator.apply(signal, steps=3), operator @ (operator @ (operator @ signal))
    )


def test_zero_steps_is_identity(sphere_laplacian):
    heat = ImplicitHeatOperator(sphere_laplacian, 0.1)
    signal = np.arange(sphere_laplacian.n_points, dtype=np.float64)

    np.testing.assert_array_equal(heat.apply(signal, steps=0), signal)


def test_tensor_input_keeps_dtype(sphere_laplacian):
    heat = ImplicitHeatOperator(sphere_laplacian, 0.1)
    signal = torch.ones(sphere_laplacian.n_points, dtype=torch.float32)

    result = heat.apply(signal)

    assert isinstance(result, torch.Tensor)
    assert result.dtype == torch.float32


def test_numpy_input_gives_numpy(sphere_laplacian):
    heat = ImplicitHeatOperator(sphere_laplacian, 0.1)

    result = heat.smooth(np.ones(sphere_laplacian.n_points))

    assert isinstance(result, np.ndarray)


def test_multichannel_matches_columns(sphere_mesh, sphere_laplacian):
    points, _ = sphere_mesh
    heat = ImplicitHeatOperator(sphere_laplacian, 0.1)

    together = heat @ points
    apart = np.column_stack([heat @ points[:, axis] for axis in range(3)])

    np.testing.assert_allclose(together, apart, rtol=1e-12)


def test_linear_operator_matches_apply(sphere_mesh, sphere_laplacian):
    points, _ = sphere_mesh
    heat = ImplicitHeatOperator(sphere_laplacian, 0.1)

    np.testing.assert_allclose(
        heat.as_linear_operator() @ points[:, 2], heat @ points[:, 2], rtol=1e-12
    )


@pytest.mark.parametrize("normalization", ["none", "row", "symmetric"])
def test_kernel_transpose_matches_dense(small_kernel, normalization):
    operator = KernelOperator(small_kernel, random_masses(200), normalization=normalization)
    vector = random_masses(200, seed=5)

    np.testing.assert_allclose(
        operator.as_linear_operator().rmatvec(vector),
        operator.to_dense().numpy().T @ vector,
        rtol=1e-10,
    )


@pytest.mark.parametrize("kind", ["implicit", "spectral"])
def test_heat_transpose_matches_dense(sphere_laplacian, kind):
    if kind == "implicit":
        heat = ImplicitHeatOperator(sphere_laplacian, 0.1)
    else:
        heat = SpectralHeatOperator(sphere_laplacian, 0.1, n_eigenpairs=9)
    vector = np.linspace(0.0, 1.0, sphere_laplacian.n_points)

    np.testing.assert_allclose(
        heat.as_linear_operator().rmatvec(vector),
        heat.to_dense().numpy().T @ vector,
        rtol=1e-9,
        atol=1e-12,
    )


def test_rejects_negative_steps(sphere_laplacian):
    heat = ImplicitHeatOperator(sphere_laplacian, 0.1)

    with pytest.raises(InputError, match="steps"):
        heat.apply(np.ones(sphere_laplacian.n_points), steps=-1)


def test_rejects_wrong_length(sphere_laplacian):
    heat = ImplicitHeatOperator(sphere_laplacian, 0.1)

    with pytest.raises(InputError, match="signal must have shape"):
        heat.apply(np.ones(sphere_laplacian.n_points + 1))


def test_swaps_with_diffusion_operator(small_kernel):
    # Code written for DiffusionOperator runs unchanged on a reference operator.
    def smooth_twice(operator, signal):
        return operator.smooth(signal, steps=2), operator.n_points, operator.to_dense().shape

    signal = random_masses(200)
    for operator in (
        DiffusionOperator(small_kernel),
        KernelOperator(small_kernel, normalization="row"),
    ):
        smoothed, n_points, shape = smooth_twice(operator, signal)
        assert smoothed.shape == (200,)
        assert n_points == 200
        assert tuple(shape) == (200, 200)


# --- heat operators -----------------------------------------------------------------


def test_implicit_step_matches_dense_solve(sphere_laplacian):
    stiffness = sphere_laplacian.stiffness.toarray()
    mass_matrix = np.diag(sphere_laplacian.masses)
    expected = np.linalg.solve(mass_matrix + 0.05 * stiffness, mass_matrix)

    dense = ImplicitHeatOperator(sphere_laplacian, 0.05).to_dense().numpy()

    np.testing.assert_allclose(dense, expected, rtol=1e-9, atol=1e-12)


def test_implicit_step_keeps_constants(sphere_laplacian):
    heat = ImplicitHeatOperator(sphere_laplacian, 0.5)

    np.testing.assert_allclose(heat @ np.ones(sphere_laplacian.n_points), 1.0, rtol=1e-10)


def test_implicit_step_keeps_mass(sphere_mesh, sphere_laplacian):
    points, _ = sphere_mesh
    masses = sphere_laplacian.masses
    heat = ImplicitHeatOperator(sphere_laplacian, 0.5)
    signal = np.exp(points[:, 0])

    assert (masses * (heat @ signal)).sum() == pytest.approx((masses * signal).sum(), rel=1e-10)


def test_implicit_step_on_degree_one(sphere_mesh, sphere_laplacian):
    # z is an eigenfunction with eigenvalue 2 on the unit sphere: factor 1 / (1 + 2 t).
    points, _ = sphere_mesh
    heat = ImplicitHeatOperator(sphere_laplacian, 0.1)
    ratio = (heat @ points[:, 2]) @ points[:, 2] / (points[:, 2] @ points[:, 2])

    assert ratio == pytest.approx(1 / 1.2, rel=2e-3)


def test_implicit_steps_approach_spectral(sphere_mesh, sphere_laplacian):
    points, _ = sphere_mesh
    signal = points[:, 0] + points[:, 1] * points[:, 2]
    spectrum = sphere_laplacian.spectrum(9)
    spectral = SpectralHeatOperator(sphere_laplacian, 0.2, spectrum=spectrum) @ signal
    implicit = ImplicitHeatOperator(sphere_laplacian, 0.2 / 64).apply(signal, steps=64)

    difference = np.linalg.norm(implicit - spectral) / np.linalg.norm(spectral)

    assert difference < 0.01


def test_spectral_heat_on_eigenvector(sphere_laplacian):
    spectrum = sphere_laplacian.spectrum(6)
    heat = SpectralHeatOperator(sphere_laplacian, 0.3, spectrum=spectrum)
    vector = spectrum.eigenvectors[:, 4]

    np.testing.assert_allclose(
        heat @ vector, np.exp(-0.3 * spectrum.eigenvalues[4]) * vector, atol=1e-10
    )


def test_spectral_heat_drops_high_modes(sphere_laplacian):
    spectrum = sphere_laplacian.spectrum(10)
    first_four = LaplacianSpectrum(
        eigenvalues=spectrum.eigenvalues[:4],
        eigenvectors=spectrum.eigenvectors[:, :4],
        masses=spectrum.masses,
    )
    heat = SpectralHeatOperator(sphere_laplacian, 0.3, spectrum=first_four)

    np.testing.assert_allclose(heat @ spectrum.eigenvectors[:, 7], 0.0, atol=1e-10)


def test_spectral_heat_rejects_wrong_spectrum(sphere_laplacian):
    other = cotangent_laplacian(
        fibonacci_sphere(100), triangles=ConvexHull(fibonacci_sphere(100)).simplices
    )

    with pytest.raises(InputError, match="eigenvectors of length"):
        SpectralHeatOperator(sphere_laplacian, 0.1, spectrum=other.spectrum(3))


def test_heat_rejects_bad_time(sphere_laplacian):
    with pytest.raises(InputError, match="time"):
        ImplicitHeatOperator(sphere_laplacian, 0.0)


def test_laplacian_from_sparse_matrix_type(sphere_laplacian):
    assert scipy.sparse.issparse(sphere_laplacian.stiffness)
    assert sphere_laplacian.stiffness.dtype == np.float64
