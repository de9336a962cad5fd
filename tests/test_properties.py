"""Hypothesis properties of the operator on random graphs, clouds, meshes and masses."""

import contextlib
import logging
import warnings

import numpy as np
import scipy.sparse
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sinkshape import DenseKernel, DiffusionOperator, SparseKernel, mesh_graph_kernel
from sinkshape.mesh import MeshWarning, as_surface
from sinkshape.smoothing import Smoother

# Each example solves a problem of at most 30 points, so these stay fast.
PROPERTY_SETTINGS = settings(max_examples=40, deadline=None)

SIZES = st.integers(min_value=1, max_value=30)


def bounded_floats(low, high):
    return st.floats(
        min_value=low, max_value=high, allow_nan=False, allow_infinity=False
    )


@st.composite
def graph_matrices(draw):
    """Draw D + A + E: a weighted adjacency A, its degrees D and a positive diagonal E.

    The matrix is a sum of PSD terms w_ij (e_i + e_j)(e_i + e_j)^T and E, so the
    operator's spectrum lies in [0, 1].
    """
    n_nodes = draw(SIZES)
    n_pairs = n_nodes * (n_nodes - 1) // 2
    present = draw(arrays(np.bool_, n_pairs))
    weights = draw(arrays(np.float64, n_pairs, elements=bounded_floats(1e-3, 1e3)))
    extra = draw(arrays(np.float64, n_nodes, elements=bounded_floats(1e-3, 10.0)))

    upper_rows, upper_cols = np.triu_indices(n_nodes, k=1)
    adjacency = np.zeros((n_nodes, n_nodes))
    adjacency[upper_rows[present], upper_cols[present]] = weights[present]
    adjacency = adjacency + adjacency.T
    return np.diag(adjacency.sum(axis=1) + extra) + adjacency


@st.composite
def point_clouds(draw):
    """Draw (N, D) coordinates in [-10, 10], a bandwidth from 1e-3 to 1e3 and a kind."""
    n_points = draw(SIZES)
    dim = draw(st.integers(min_value=1, max_value=3))
    coordinates = st.floats(min_value=-10, max_value=10, allow_nan=False)
    points = draw(arrays(np.float64, (n_points, dim), elements=coordinates))
    sigma = 10.0 ** draw(st.floats(min_value=-3, max_value=3))
    kind = draw(st.sampled_from(["gaussian", "exponential"]))
    return points, sigma, kind


@st.composite
def masses_and_signals(draw, n_points):
    masses = draw(arrays(np.float64, n_points, elements=bounded_floats(1e-3, 1e3)))
    signal = draw(arrays(np.float64, n_points, elements=bounded_floats(-1.0, 1.0)))
    return masses, signal


@st.composite
def graph_operators(draw):
    matrix = draw(graph_matrices())
    masses, signal = draw(masses_and_signals(len(matrix)))
    backend = draw(st.sampled_from(["sparse", "dense"]))
    if backend == "sparse":
        kernel = SparseKernel.from_matrix(scipy.sparse.csr_matrix(matrix))
    else:
        kernel = DenseKernel(matrix=matrix)
    return kernel, masses, signal


@st.composite
def cloud_operators(draw):
    points, sigma, kind = draw(point_clouds())
    masses, signal = draw(masses_and_signals(len(points)))
    backend = draw(st.sampled_from([SparseKernel, DenseKernel]))
    return backend.from_points(points, sigma, kind=kind), masses, signal


def check_operator(kernel, masses, signal):
    """Assert the properties that every Sinkhorn-normalized operator has."""
    operator = DiffusionOperator(kernel, masses)
    tol = operator.result.tol
    q = operator.to_dense().numpy()
    mass_q = masses[:, None] * q
    row_sums = q.sum(axis=1)

    assert operator.result.converged
    assert np.isfinite(q).all()
    assert q.min() >= 0.0

    # M Q is symmetric: Q is self-adjoint for <f, g>_m.
    np.testing.assert_allclose(mass_q, mass_q.T, rtol=0, atol=1e-12 * mass_q.max())

    # Q 1 = 1, measured by the marginal error.
    assert masses @ np.abs(row_sums - 1) / masses.sum() <= tol + 1e-12

    # <m, Q f> = <m, f> up to sum_j m_j f_j ((Q 1)_j - 1).
    mass_bound = (tol + 1e-12) * masses.sum() * np.abs(signal).max()
    assert abs(masses @ (operator @ signal) - masses @ signal) <= mass_bound


def check_spectrum(kernel, masses):
    """Assert that M^(1/2) Q M^(-1/2) has its eigenvalues in [0, 1] for a PSD kernel."""
    operator = DiffusionOperator(kernel, masses, tol=1e-12, max_iter=500)
    root = np.sqrt(masses)
    symmetric = root[:, None] * operator.to_dense().numpy() / root[None, :]

    eigenvalues = np.linalg.eigvalsh((symmetric + symmetric.T) / 2)

    assert operator.result.converged
    assert eigenvalues.min() >= -1e-9
    assert eigenvalues.max() <= 1 + 1e-9


@PROPERTY_SETTINGS
@given(graph_operators())
def test_graph_operator_properties(case):
    check_operator(*case)


@PROPERTY_SETTINGS
@given(cloud_operators())
def test_cloud_operator_properties(case):
    check_operator(*case)


@PROPERTY_SETTINGS
@given(graph_operators())
def test_graph_spectrum_in_unit_interval(case):
    kernel, masses, _ = case
    check_spectrum(kernel, masses)


@PROPERTY_SETTINGS
@given(point_clouds(), st.data())
def test_dense_cloud_spectrum_in_unit_interval(cloud, data):
    points, sigma, kind = cloud
    masses, _ = data.draw(masses_and_signals(len(points)))
    check_spectrum(DenseKernel.from_points(points, sigma, kind=kind), masses)


@PROPERTY_SETTINGS
@given(point_clouds())
def test_float32_matches_float64(cloud):
    points, sigma, kind = cloud
    signal = np.linspace(-1.0, 1.0, len(points))

    single = DiffusionOperator(
        DenseKernel.from_points(
            torch.tensor(points, dtype=torch.float32), sigma, kind=kind
        )
    )
    double = DiffusionOperator(DenseKernel.from_points(points, sigma, kind=kind))

    # tol bounds the mass-weighted mean row deviation, not each row. A lone point
    # next to a cluster may keep tol / (its mass share), so the means are compared.
    mean_difference = np.abs((single @ signal) - (double @ signal)).mean()

    assert single.result.converged
    assert mean_difference <= 1e-4


# --- meshes with defects, clouds with duplicates, and the smoothing step -----------------


@st.composite
def triangle_meshes(draw):
    """Draw points on an integer grid and random triangles over them.

    The grid makes duplicate points likely; random index triples give repeated
    vertices, zero-area triangles, unused vertices and non-manifold edges.
    """
    n_points = draw(st.integers(min_value=3, max_value=15))
    points = draw(arrays(np.float64, (n_points, 3), elements=st.integers(0, 4).map(float)))
    n_triangles = draw(st.integers(min_value=1, max_value=20))
    triangles = draw(
        arrays(np.int64, (n_triangles, 3), elements=st.integers(0, n_points - 1))
    )
    return points, triangles


@st.composite
def clouds_with_duplicates(draw):
    points, sigma, kind = draw(point_clouds())
    copies = draw(
        arrays(np.int64, draw(st.integers(1, 5)), elements=st.integers(0, len(points) - 1))
    )
    return np.vstack([points, points[copies]]), sigma, kind


@contextlib.contextmanager
def quiet_mesh_checks():
    """Silence the warnings that defective meshes raise and log by design."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeshWarning)
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


@PROPERTY_SETTINGS
@given(triangle_meshes())
def test_defective_mesh_masses_positive(mesh):
    with quiet_mesh_checks():
        masses = as_surface(mesh[0], triangles=mesh[1]).masses.numpy()

    assert np.isfinite(masses).all()
    assert masses.min() > 0.0


@PROPERTY_SETTINGS
@given(triangle_meshes(), st.data())
def test_defective_mesh_graph_operator(mesh, data):
    with quiet_mesh_checks():
        surface = as_surface(mesh[0], triangles=mesh[1])
    kernel = mesh_graph_kernel(surface.points, surface.triangles)
    _, signal = data.draw(masses_and_signals(surface.n_points))

    check_operator(kernel, surface.masses.numpy(), signal)


@PROPERTY_SETTINGS
@given(clouds_with_duplicates(), st.data())
def test_duplicate_cloud_operator_properties(cloud, data):
    points, sigma, kind = cloud
    masses, signal = data.draw(masses_and_signals(len(points)))
    backend = data.draw(st.sampled_from([SparseKernel, DenseKernel]))

    check_operator(backend.from_points(points, sigma, kind=kind), masses, signal)


@PROPERTY_SETTINGS
@given(triangle_meshes(), bounded_floats(0.1, 3.0))
def test_smoothing_step_properties(mesh, sigma):
    points, triangles = mesh
    with quiet_mesh_checks():
        smoother = Smoother(points, sigma, triangles=triangles, backend="graph")
    n = smoother.surface.n_points
    masses = smoother.surface.masses.numpy()

    # Column j of P is the smoothing of the j-th unit vector.
    p = smoother.smooth(np.eye(n))
    mass_p = masses[:, None] * p

    assert np.isfinite(p).all()
    assert p.min() >= -1e-12
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(masses @ p, masses, rtol=1e-12, atol=0)
    np.testing.assert_allclose(mass_p, mass_p.T, rtol=0, atol=1e-12 * masses.max())
    # Vertices that no triangle uses keep their values and affect no other vertex.
    fixed = smoother.fixed_ids
    np.testing.assert_array_equal(p[fixed], np.eye(n)[fixed])
    np.testing.assert_array_equal(p[:, fixed], np.eye(n)[:, fixed])
