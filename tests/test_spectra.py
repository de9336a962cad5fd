"""Specification of the eigen-solvers and time conversions (sinkshape.spectra)."""

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
import torch
from scipy.spatial import ConvexHull

from sinkshape import (
    DenseKernel,
    DiffusionOperator,
    InputError,
    SparseKernel,
    diffusion_operator,
    mesh_graph_kernel,
)
from sinkshape.reference import ImplicitHeatOperator, KernelOperator, cotangent_laplacian
from sinkshape.smoothing import diffusion_time
from sinkshape.spectra import (
    DENSE_EIGEN_MAX_POINTS,
    circle_gaussian_eigenvalues,
    diffusion_spectrum,
    gaussian_step_time,
    graph_step_time,
    laplacian_eigenvalues,
    laplacian_spectrum,
    sphere_gaussian_eigenvalues,
)


def fibonacci_sphere(n_points):
    index = np.arange(n_points) + 0.5
    z = 1.0 - 2.0 * index / n_points
    angle = np.pi * (1.0 + 5.0**0.5) * index
    ring = np.sqrt(1.0 - z**2)
    return np.column_stack([ring * np.cos(angle), ring * np.sin(angle), z])


def regular_circle(n_points):
    angle = 2 * np.pi * np.arange(n_points) / n_points
    return np.column_stack([np.cos(angle), np.sin(angle)])


def dense_symmetric_form(operator):
    dense = operator.to_dense().detach().to(torch.float64).numpy()
    root = np.sqrt(operator.masses.detach().to(torch.float64).numpy())
    symmetric = root[:, None] * dense / root[None, :]
    return 0.5 * (symmetric + symmetric.T)


def dense_largest(operator, count):
    symmetric = dense_symmetric_form(operator)
    last = symmetric.shape[0] - 1
    values = scipy.linalg.eigh(symmetric, eigvals_only=True, subset_by_index=[last - count + 1, last])
    return values[::-1]


@pytest.fixture(scope="module")
def sphere_operator():
    points = fibonacci_sphere(800)
    masses = np.random.default_rng(0).uniform(0.5, 1.5, size=800)
    return diffusion_operator(points, 0.3, masses=masses, backend="sparse")


# --- diffusion_spectrum -----------------------------------------------------------


def test_sparse_path_matches_dense_eigh(sphere_operator):
    spectrum = diffusion_spectrum(sphere_operator, 10)

    np.testing.assert_allclose(
        spectrum.eigenvalues, dense_largest(sphere_operator, 10), rtol=1e-9
    )


def test_dense_kernel_path_matches_dense_eigh():
    points = np.random.default_rng(2).uniform(size=(500, 2))
    operator = DiffusionOperator(DenseKernel.from_points(points, 0.08))

    spectrum = diffusion_spectrum(operator, 6)

    np.testing.assert_allclose(spectrum.eigenvalues, dense_largest(operator, 6), rtol=1e-9)


def test_linear_operator_path_matches_matrix_path(sphere_operator):
    class SymmetricOnly:
        # Offers only the generic interface, so the solver cannot assemble a matrix.
        n_points = sphere_operator.n_points
        masses = sphere_operator.masses

        def symmetric_linear_operator(self):
            return sphere_operator.symmetric_linear_operator()

    generic = diffusion_spectrum(SymmetricOnly(), 10)
    assembled = diffusion_spectrum(sphere_operator, 10)

    np.testing.assert_allclose(generic.eigenvalues, assembled.eigenvalues, rtol=1e-9)


def test_eigenvalues_in_unit_interval(sphere_operator):
    eigenvalues = diffusion_spectrum(sphere_operator, 10).eigenvalues

    assert eigenvalues.min() > 0
    assert eigenvalues.max() <= 1 + 1e-6


def test_eigenvalues_decrease(sphere_operator):
    eigenvalues = diffusion_spectrum(sphere_operator, 10).eigenvalues

    assert (np.diff(eigenvalues) <= 0).all()


def test_eigenvectors_mass_orthonormal(sphere_operator):
    spectrum = diffusion_spectrum(sphere_operator, 10)
    vectors = spectrum.eigenvectors
    gram = vectors.T @ (spectrum.masses[:, None] * vectors)

    np.testing.assert_allclose(gram, np.eye(10), atol=1e-10)


def test_eigenvectors_are_eigenvectors(sphere_operator):
    spectrum = diffusion_spectrum(sphere_operator, 10)
    product = sphere_operator.apply(spectrum.eigenvectors)

    np.testing.assert_allclose(
        product, spectrum.eigenvectors * spectrum.eigenvalues[None, :], atol=1e-8
    )


def test_residuals_reported(sphere_operator):
    spectrum = diffusion_spectrum(sphere_operator, 10)

    assert spectrum.residual_norms.shape == (10,)
    assert spectrum.residual_norms.max() < 1e-8


def test_first_eigenvector_constant(sphere_operator):
    # Q 1 = 1 only within the solver's marginal error (1e-6), so this is as close.
    first = diffusion_spectrum(sphere_operator, 3).eigenvectors[:, 0]

    np.testing.assert_allclose(first, first.mean(), rtol=1e-5)


def test_sign_rule(sphere_operator):
    vectors = diffusion_spectrum(sphere_operator, 5).eigenvectors
    largest = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(5)]

    assert (largest > 0).all()


def test_repeated_eigenvalues_found():
    # A regular polygon: cos(k theta) and sin(k theta) share an eigenvalue
    # exactly, the case in which a single Lanczos run can miss a vector.
    points = regular_circle(1000)
    operator = diffusion_operator(points, 0.05, backend="sparse")

    converted = diffusion_spectrum(operator, 9).laplacian_eigenvalues(
        gaussian_step_time(0.05)
    )

    np.testing.assert_allclose(converted[1:3], 1.0, rtol=2e-3)
    np.testing.assert_allclose(converted[3:5], 4.0, rtol=2e-3)
    np.testing.assert_allclose(converted[5:7], 9.0, rtol=2e-3)
    np.testing.assert_allclose(converted[7:9], 16.0, rtol=2e-3)


def test_small_operator_uses_dense_path():
    points = regular_circle(DENSE_EIGEN_MAX_POINTS // 2)
    operator = diffusion_operator(points, 0.1)

    spectrum = diffusion_spectrum(operator, 5)

    np.testing.assert_allclose(spectrum.eigenvalues, dense_largest(operator, 5), rtol=1e-10)


def test_reference_operator_spectrum():
    points = fibonacci_sphere(400)
    laplacian = cotangent_laplacian(points, triangles=ConvexHull(points).simplices)
    heat = ImplicitHeatOperator(laplacian, 0.1)

    eigenvalues = diffusion_spectrum(heat, 4).eigenvalues
    expected = 1.0 / (1.0 + 0.1 * laplacian.spectrum(4).eigenvalues)

    np.testing.assert_allclose(eigenvalues, expected, rtol=1e-8)


def test_row_normalized_rejected():
    kernel = DenseKernel.from_points(regular_circle(50), 0.2)

    with pytest.raises(InputError, match="not self-adjoint"):
        diffusion_spectrum(KernelOperator(kernel, normalization="row"), 3)


def test_operator_without_symmetric_form_rejected():
    class Plain:
        n_points = 50
        masses = torch.ones(50, dtype=torch.float64)

    with pytest.raises(InputError, match="symmetric_linear_operator"):
        diffusion_spectrum(Plain(), 3)


@pytest.mark.parametrize("count", [0, 800, 2.5])
def test_rejects_eigenpair_count(sphere_operator, count):
    with pytest.raises(InputError, match="n_eigenpairs"):
        diffusion_spectrum(sphere_operator, count)


# --- laplacian_spectrum -----------------------------------------------------------


def test_laplacian_spectrum_matches_dense_eigh():
    points = fibonacci_sphere(500)
    laplacian = cotangent_laplacian(points, triangles=ConvexHull(points).simplices)
    root = np.sqrt(laplacian.masses)
    standard = laplacian.stiffness.toarray() / root[:, None] / root[None, :]
    expected = scipy.linalg.eigh(standard, eigvals_only=True, subset_by_index=[0, 11])

    spectrum = laplacian_spectrum(laplacian.stiffness, laplacian.masses, 12)

    np.testing.assert_allclose(spectrum.eigenvalues[1:], expected[1:], rtol=1e-8)
    assert abs(spectrum.eigenvalues[0]) < 1e-8


def test_laplacian_eigenvectors_mass_orthonormal():
    points = fibonacci_sphere(500)
    laplacian = cotangent_laplacian(points, triangles=ConvexHull(points).simplices)
    spectrum = laplacian.spectrum(8)
    vectors = spectrum.eigenvectors
    gram = vectors.T @ (spectrum.masses[:, None] * vectors)

    np.testing.assert_allclose(gram, np.eye(8), atol=1e-10)


def test_heat_eigenvalues():
    points = fibonacci_sphere(500)
    spectrum = cotangent_laplacian(points, triangles=ConvexHull(points).simplices).spectrum(4)

    np.testing.assert_allclose(
        spectrum.heat_eigenvalues(0.5), np.exp(-0.5 * spectrum.eigenvalues)
    )


def test_laplacian_spectrum_rejects_mismatch():
    with pytest.raises(InputError, match="masses must match"):
        laplacian_spectrum(scipy.sparse.identity(5), np.ones(4), 2)


# --- conversions and exact answers ------------------------------------------------


def test_conversion_formula():
    mu = np.exp(-np.array([0.0, 0.02, 0.06]))

    np.testing.assert_allclose(laplacian_eigenvalues(mu, time=0.01), [0.0, 2.0, 6.0])


def test_conversion_of_nonpositive_is_inf():
    converted = laplacian_eigenvalues([0.0, -1e-3], time=0.01)

    assert np.isinf(converted).all()


def test_conversion_rejects_bad_time():
    with pytest.raises(InputError, match="time"):
        laplacian_eigenvalues([0.5], time=-1.0)


def test_gaussian_step_time():
    assert gaussian_step_time(0.2) == pytest.approx(0.02)


def test_graph_step_time_is_diffusion_time():
    points = fibonacci_sphere(300)
    triangles = ConvexHull(points).simplices
    operator = DiffusionOperator(mesh_graph_kernel(points, triangles))

    measured = graph_step_time(operator, points)

    assert measured == pytest.approx(diffusion_time(operator, torch.from_numpy(points)))


def test_graph_step_time_rejects_wrong_points():
    points = fibonacci_sphere(300)
    operator = DiffusionOperator(mesh_graph_kernel(points, ConvexHull(points).simplices))

    with pytest.raises(InputError, match="300 rows"):
        graph_step_time(operator, points[:10])


def test_sphere_exact_degree_zero():
    assert sphere_gaussian_eigenvalues([0], 0.1)[0] == pytest.approx(1.0)


def test_sphere_exact_small_sigma_limit():
    # -log(mu_l) * 2 / sigma^2 -> l (l + 1) (1 + sigma^2 / 2) for small sigma.
    degrees = np.arange(1, 5)
    converted = laplacian_eigenvalues(
        sphere_gaussian_eigenvalues(degrees, 0.05), time=gaussian_step_time(0.05)
    )

    np.testing.assert_allclose(converted, degrees * (degrees + 1) * (1 + 0.05**2 / 2), rtol=1e-4)


def test_sphere_exact_matches_quasi_uniform_sample():
    operator = diffusion_operator(fibonacci_sphere(3000), 0.2, backend="sparse")
    measured = diffusion_spectrum(operator, 9).eigenvalues
    degrees = np.array([0, 1, 1, 1, 2, 2, 2, 2, 2])

    np.testing.assert_allclose(measured, sphere_gaussian_eigenvalues(degrees, 0.2), rtol=1e-4)


def test_sphere_exact_scales_with_radius():
    np.testing.assert_allclose(
        sphere_gaussian_eigenvalues([2], 0.3, radius=3.0),
        sphere_gaussian_eigenvalues([2], 0.1),
    )


def test_circle_exact_matches_regular_polygon():
    operator = diffusion_operator(regular_circle(600), 0.1)
    measured = diffusion_spectrum(operator, 5).eigenvalues

    np.testing.assert_allclose(
        measured, circle_gaussian_eigenvalues([0, 1, 1, 2, 2], 0.1), rtol=1e-10
    )


def test_sparse_kernel_from_graph_spectrum():
    # D + A of a path graph: eigenvalues of Q follow from the dense reference.
    n_nodes = 400
    adjacency = scipy.sparse.diags([np.ones(n_nodes - 1), np.ones(n_nodes - 1)], [-1, 1])
    degrees = np.asarray(adjacency.sum(axis=1)).ravel()
    operator = DiffusionOperator(SparseKernel.from_matrix(scipy.sparse.diags(degrees) + adjacency))

    spectrum = diffusion_spectrum(operator, 6)

    np.testing.assert_allclose(spectrum.eigenvalues, dense_largest(operator, 6), rtol=1e-9)
