"""Specification of the kernels, their backends and the input checks."""

import math

import numpy as np
import pytest
import pyvista
import scipy.sparse
import torch
from scipy.spatial.distance import cdist, pdist
from scipy.special import logsumexp

from sinkshape import (
    DenseKernel,
    DiffusionOperator,
    InputError,
    SparseKernel,
    diffusion_operator,
    make_kernel,
    mesh_graph_kernel,
)
from sinkshape._checks import as_tensor, check_points
from sinkshape.kernels import cutoff_radius

DTYPES = [torch.float32, torch.float64]
KINDS = ["gaussian", "exponential"]
BACKENDS = [DenseKernel, SparseKernel]


def uniform_cloud(n_points, dim=3, *, seed=0):
    return np.random.default_rng(seed).uniform(size=(n_points, dim))


def reference_kernel(points, sigma, kind):
    """Return the dense K of scipy distances, in float64."""
    distances = cdist(points, points)
    if kind == "gaussian":
        return np.exp(-(distances**2) / (2 * sigma**2))
    return np.exp(-distances / sigma)


def sphere_mesh(resolution=30):
    sphere = pyvista.Sphere(theta_resolution=resolution, phi_resolution=resolution)
    points = np.asarray(sphere.points, dtype=np.float64)
    triangles = np.asarray(sphere.faces).reshape(-1, 4)[:, 1:]
    return points, triangles


# --- kernel values --------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_dense_values_match_formula(kind):
    points = uniform_cloud(200)

    kernel = DenseKernel.from_points(points, 0.2, kind=kind)

    np.testing.assert_allclose(
        kernel.to_dense().numpy(),
        reference_kernel(points, 0.2, kind),
        rtol=1e-12,
        atol=0,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_keeps_entries_above_truncation(kind):
    points = uniform_cloud(300)
    reference = reference_kernel(points, 0.05, kind)

    kernel = SparseKernel.from_points(points, 0.05, kind=kind, truncation=1e-6)
    dense = kernel.to_dense().numpy()
    stored = dense > 0
    value_at_cutoff = reference_kernel(
        np.array([[0.0], [cutoff_radius(0.05, kind, 1e-6)]]), 0.05, kind
    )[0, 1]

    np.testing.assert_allclose(dense[stored], reference[stored], rtol=1e-12)
    assert reference[~stored].max() < value_at_cutoff
    assert np.all(stored[reference > value_at_cutoff * 1.001])


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_pairs_within_cutoff(kind):
    points = uniform_cloud(300)
    radius = cutoff_radius(0.05, kind, 1e-6)
    n_close_pairs = int((pdist(points) <= radius).sum())

    kernel = SparseKernel.from_points(points, 0.05, kind=kind, truncation=1e-6)

    assert kernel.nnz == 300 + 2 * n_close_pairs


def test_sparse_is_symmetric():
    kernel = SparseKernel.from_points(uniform_cloud(300), 0.05)
    dense = kernel.to_dense()

    assert torch.equal(dense, dense.T)


def test_cutoff_radius_gaussian_tail():
    # Fraction of a 3-D Gaussian's integral beyond R: erfc(r / sqrt 2) +
    # sqrt(2 / pi) r exp(-r^2 / 2), with r = R / sigma.
    r = cutoff_radius(0.3, "gaussian", 1e-6) / 0.3
    tail = math.erfc(r / math.sqrt(2)) + math.sqrt(2 / math.pi) * r * math.exp(-r * r / 2)

    assert tail == pytest.approx(1e-6, rel=1e-6)


def test_cutoff_radius_exponential_tail():
    # Fraction of a 3-D exponential kernel's integral beyond R: exp(-r) (1 + r + r^2 / 2).
    r = cutoff_radius(0.3, "exponential", 1e-6) / 0.3
    tail = math.exp(-r) * (1 + r + r * r / 2)

    assert tail == pytest.approx(1e-6, rel=1e-6)


@pytest.mark.parametrize("truncation", [0, 1, 2, -1e-6])
def test_cutoff_radius_rejects_truncation(truncation):
    with pytest.raises(InputError, match="truncation"):
        SparseKernel.from_points(uniform_cloud(10), 0.1, truncation=truncation)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_kind_raises(backend):
    with pytest.raises(InputError, match="'laplace'"):
        backend.from_points(uniform_cloud(10), 0.1, kind="laplace")


# --- products -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matvec_matches_dense(backend, dtype):
    points = torch.tensor(uniform_cloud(300), dtype=dtype)
    kernel = backend.from_points(points, 0.1)
    rng = np.random.default_rng(2)
    vector = torch.tensor(rng.normal(size=300), dtype=dtype)
    block = torch.tensor(rng.normal(size=(300, 4)), dtype=dtype)

    product = kernel.matvec(vector)
    block_product = kernel.matvec(block)

    assert product.dtype == dtype
    torch.testing.assert_close(product, kernel.to_dense() @ vector)
    torch.testing.assert_close(block_product, kernel.to_dense() @ block)


def test_sparse_differentiable_matvec_matches_csr():
    kernel = SparseKernel.from_points(uniform_cloud(300), 0.1)
    vector = torch.tensor(np.random.default_rng(3).normal(size=300))

    csr_product = kernel.matvec(vector)
    gather_product = kernel.matvec(vector.clone().requires_grad_(True))

    torch.testing.assert_close(gather_product.detach(), csr_product)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_log_matvec_matches_logsumexp(backend, kind):
    points = uniform_cloud(200)
    kernel = backend.from_points(
        points,
        0.05,
        kind=kind,
        **({"truncation": 1e-300} if backend is SparseKernel else {}),
    )
    log_kernel = np.log(reference_kernel(points, 0.05, kind))
    log_vector = np.random.default_rng(4).normal(scale=30.0, size=200)

    result = kernel.log_matvec(torch.tensor(log_vector))

    expected = logsumexp(log_kernel + log_vector[None, :], axis=1)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-10, atol=1e-10)


def underflowing_log_vector(n_points, dtype):
    """Return log v with one entry at 0 and the others far below exp's range.

    Rows far from point 0 then sum terms that all underflow after the shift by the
    maximum, which the dense backend hands to its log-sum-exp fallback.
    """
    low = -2000.0 if dtype == torch.float64 else -200.0
    log_vector = torch.full((n_points,), low, dtype=dtype)
    log_vector[0] = 0.0
    return log_vector


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_log_matvec_survives_underflow(backend, dtype):
    points = uniform_cloud(100)
    kernel = backend.from_points(torch.tensor(points, dtype=dtype), 0.02)
    log_vector = underflowing_log_vector(100, dtype)

    result = kernel.log_matvec(log_vector)

    # log K written out, with -inf outside the pairs that the kernel stores.
    log_kernel = np.full((100, 100), -np.inf)
    if backend is SparseKernel:
        stored = (kernel.rows.numpy(), kernel.cols.numpy())
    else:
        stored = np.nonzero(np.ones((100, 100), dtype=bool))
    log_kernel[stored] = -(cdist(points, points)[stored] ** 2) / (2 * 0.02**2)
    expected = logsumexp(log_kernel + log_vector.double().numpy()[None, :], axis=1)

    assert torch.isfinite(result).all()
    np.testing.assert_allclose(result.double().numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_log_matvec_gradient_matches_logsumexp(dtype):
    # The matrix-product path and its log-sum-exp fallback must differentiate like
    # the plain log-sum-exp, including on the rows that underflow.
    points = torch.tensor(uniform_cloud(60), dtype=dtype, requires_grad=True)
    log_vector = underflowing_log_vector(60, dtype).requires_grad_(True)
    weights = torch.linspace(0.5, 1.5, 60, dtype=dtype)

    kernel = DenseKernel.from_points(points, 0.02)
    result = (weights * kernel.log_matvec(log_vector)).sum()
    gradients = torch.autograd.grad(result, (points, log_vector))

    reference = DenseKernel.from_points(points, 0.02)._log_matrix
    expected = (weights * torch.logsumexp(reference + log_vector[None, :], dim=1)).sum()
    expected_gradients = torch.autograd.grad(expected, (points, log_vector))

    for gradient, expected_gradient in zip(gradients, expected_gradients, strict=True):
        assert torch.isfinite(gradient).all()
        torch.testing.assert_close(gradient, expected_gradient)


def test_values_kernel_log_matvec_matches_logsumexp():
    points = uniform_cloud(100)
    matrix = reference_kernel(points, 0.2, "gaussian")
    kernel = DenseKernel(matrix=torch.tensor(matrix))
    log_vector = np.random.default_rng(5).normal(scale=30.0, size=100)

    result = kernel.log_matvec(torch.tensor(log_vector))

    expected = logsumexp(np.log(matrix) + log_vector[None, :], axis=1)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-10)


def test_to_scipy_matches_to_dense():
    kernel = SparseKernel.from_points(uniform_cloud(200), 0.05)

    np.testing.assert_array_equal(
        kernel.to_scipy().toarray(), kernel.to_dense().numpy()
    )


# --- dense and sparse operators agree -------------------------------------------------


@pytest.fixture(scope="module")
def cloud_2000():
    return uniform_cloud(2000, seed=7)


def relative_difference(actual, expected):
    return float(torch.linalg.norm(actual - expected) / torch.linalg.norm(expected))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("kind", "sigma", "truncation"),
    [
        ("gaussian", 0.05, 1e-6),
        ("exponential", 0.01, 1e-6),
    ],
)
def test_sparse_operator_matches_dense(cloud_2000, dtype, kind, sigma, truncation):
    points = torch.tensor(cloud_2000, dtype=dtype)
    signal = torch.tensor(np.random.default_rng(8).normal(size=2000), dtype=dtype)
    # Solve below the default float32 tol so that both operators are closer to the
    # exact Q than the 1e-5 asserted here.
    tol = 1e-6

    dense = DiffusionOperator(
        DenseKernel.from_points(points, sigma, kind=kind), tol=tol
    )
    sparse_kernel = SparseKernel.from_points(
        points, sigma, kind=kind, truncation=truncation
    )
    sparse = DiffusionOperator(sparse_kernel, tol=tol)

    assert relative_difference(sparse @ signal, dense @ signal) < 1e-5


def test_sparse_exponential_default_truncation(cloud_2000):
    # The default truncation drops 1e-6 of an exponential row's mass in 3-D.
    points = torch.tensor(cloud_2000)
    signal = torch.tensor(np.random.default_rng(8).normal(size=2000))

    dense = DiffusionOperator(DenseKernel.from_points(points, 0.02, kind="exponential"))
    sparse = DiffusionOperator(
        SparseKernel.from_points(points, 0.02, kind="exponential")
    )

    assert relative_difference(sparse @ signal, dense @ signal) < 1e-5


# --- mesh graph kernel ----------------------------------------------------------------


def reference_graph_kernel(points, triangles, edge_sigma=None):
    """Build D_w + W edge by edge, in float64."""
    n_points = len(points)
    edges = set()
    for a, b, c in triangles:
        for i, j in ((a, b), (b, c), (c, a)):
            if i != j:
                edges.add((min(i, j), max(i, j)))
    edges = np.array(sorted(edges))
    lengths = np.linalg.norm(points[edges[:, 0]] - points[edges[:, 1]], axis=1)
    if edge_sigma is None:
        edge_sigma = lengths.mean()

    weights = np.zeros((n_points, n_points))
    edge_weights = np.exp(-(lengths**2) / (2 * edge_sigma**2))
    weights[edges[:, 0], edges[:, 1]] = edge_weights
    weights[edges[:, 1], edges[:, 0]] = edge_weights
    degrees = weights.sum(axis=1)
    degrees[degrees == 0] = 1.0
    return np.diag(degrees) + weights


@pytest.fixture(scope="module")
def sphere():
    return sphere_mesh()


def test_graph_kernel_matches_edge_sum(sphere):
    points, triangles = sphere

    kernel = mesh_graph_kernel(points, triangles)

    np.testing.assert_allclose(
        kernel.to_dense().numpy(), reference_graph_kernel(points, triangles), rtol=1e-12
    )


def test_graph_kernel_edge_sigma(sphere):
    points, triangles = sphere

    kernel = mesh_graph_kernel(points, triangles, edge_sigma=0.02)

    np.testing.assert_allclose(
        kernel.to_dense().numpy(),
        reference_graph_kernel(points, triangles, edge_sigma=0.02),
        rtol=1e-12,
    )


def test_graph_kernel_is_psd(sphere):
    points, triangles = sphere

    eigenvalues = np.linalg.eigvalsh(
        mesh_graph_kernel(points, triangles).to_dense().numpy()
    )

    assert eigenvalues.min() > -1e-10


def test_graph_operator_matches_dense(sphere):
    points, triangles = sphere
    kernel = mesh_graph_kernel(points, triangles)
    masses = np.random.default_rng(9).uniform(0.5, 2.0, size=len(points))
    signal = np.random.default_rng(10).normal(size=len(points))

    sparse = DiffusionOperator(kernel, masses, tol=1e-13, max_iter=1000)
    dense = DiffusionOperator(
        DenseKernel(matrix=kernel.to_dense()), masses, tol=1e-13, max_iter=1000
    )

    np.testing.assert_allclose(sparse @ signal, dense @ signal, rtol=0, atol=1e-10)


def test_graph_isolated_vertex_is_fixed(sphere):
    points, triangles = sphere
    # One extra vertex that no triangle uses.
    points = np.vstack([points, [[0.0, 0.0, 0.0]]])
    signal = np.random.default_rng(11).normal(size=len(points))

    kernel = mesh_graph_kernel(points, triangles)
    operator = DiffusionOperator(kernel)

    assert kernel.to_dense()[-1, -1] == 1.0
    assert (operator @ signal)[-1] == pytest.approx(signal[-1], rel=1e-12)


def test_graph_disjoint_surfaces_do_not_mix():
    # Two spheres 0.01 apart share no edge, so no signal crosses between them.
    points, triangles = sphere_mesh(resolution=12)
    offset = np.array([1.01, 0.0, 0.0])
    both_points = np.vstack([points, points + offset])
    both_triangles = np.vstack([triangles, triangles + len(points)])
    signal = np.r_[np.ones(len(points)), np.zeros(len(points))]

    operator = DiffusionOperator(mesh_graph_kernel(both_points, both_triangles))

    np.testing.assert_array_equal((operator @ signal)[len(points) :], 0.0)


@pytest.mark.parametrize(
    "triangles", [np.array([[0, 1]]), np.array([[0, 1, 5]]), np.array([[-1, 0, 1]])]
)
def test_graph_invalid_triangles_raise(triangles):
    with pytest.raises(InputError, match="triangles"):
        mesh_graph_kernel(uniform_cloud(5), triangles)


def test_graph_make_kernel_needs_triangles():
    with pytest.raises(InputError, match="triangles"):
        make_kernel(uniform_cloud(5), 0.1, backend="graph")


# --- from_matrix and DenseKernel(matrix=...) ------------------------------------------


def test_from_matrix_keeps_values():
    matrix = scipy.sparse.csr_matrix(
        np.array([[2.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 1.0]])
    )

    kernel = SparseKernel.from_matrix(matrix)

    np.testing.assert_array_equal(kernel.to_dense().numpy(), matrix.toarray())
    assert kernel.nnz == 7


def test_from_matrix_integer_dtype():
    matrix = scipy.sparse.csr_matrix(np.array([[2, 1], [1, 2]]))

    kernel32 = SparseKernel.from_matrix(matrix, dtype=torch.float32)
    kernel64 = SparseKernel.from_matrix(matrix)

    assert kernel32.dtype == torch.float32
    assert kernel64.dtype == torch.float64


@pytest.mark.parametrize(
    ("matrix", "fragment"),
    [
        (np.ones((2, 3)), "square"),
        (np.array([[1.0, -0.5], [-0.5, 1.0]]), "-0.5"),
        (np.array([[1.0, 0.5], [0.2, 1.0]]), "symmetric"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), "nan"),
        (np.array([[np.inf, 0.0], [0.0, 1.0]]), "inf"),
    ],
)
def test_from_matrix_rejects(matrix, fragment):
    with pytest.raises(InputError, match=fragment):
        SparseKernel.from_matrix(scipy.sparse.csr_matrix(matrix))


def test_dense_matrix_accepts_numpy():
    matrix = reference_kernel(uniform_cloud(50), 0.2, "gaussian")

    from_numpy = DenseKernel(matrix=matrix)
    from_tensor = DenseKernel(matrix=torch.tensor(matrix))

    assert from_numpy.dtype == torch.float64
    assert torch.equal(from_numpy.to_dense(), from_tensor.to_dense())


@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"matrix": np.eye(2), "log_matrix": np.zeros((2, 2))},
        {"matrix": np.ones((2, 3))},
    ],
)
def test_dense_matrix_rejects(arguments):
    with pytest.raises(InputError):
        DenseKernel(**arguments)


# --- sigma and points checks ----------------------------------------------------------


@pytest.mark.parametrize(
    "sigma",
    [
        1,
        np.int64(1),
        np.float32(0.25),
        np.float64(0.25),
        np.array(0.25),
        torch.tensor(0.25),
        torch.tensor(0.25, dtype=torch.float32),
    ],
    ids=[
        "int",
        "np.int64",
        "np.float32",
        "np.float64",
        "0-d array",
        "0-d tensor",
        "0-d float32 tensor",
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigma_types_accepted(backend, sigma):
    points = uniform_cloud(50)

    kernel = backend.from_points(points, sigma)
    expected = backend.from_points(points, float(sigma))

    assert torch.equal(kernel.to_dense(), expected.to_dense())


@pytest.mark.parametrize(
    "sigma",
    [0, -1, -0.5, math.nan, math.inf, -math.inf, "0.5", True, False, None],
    ids=repr,
)
@pytest.mark.parametrize(
    "build",
    [
        lambda points, sigma: DenseKernel.from_points(points, sigma),
        lambda points, sigma: SparseKernel.from_points(points, sigma),
        lambda points, sigma: make_kernel(points, sigma),
        lambda points, sigma: diffusion_operator(points, sigma),
    ],
    ids=["DenseKernel", "SparseKernel", "make_kernel", "diffusion_operator"],
)
def test_sigma_invalid_names_value(build, sigma):
    points = uniform_cloud(20)

    with pytest.raises(InputError, match="sigma") as error:
        build(points, sigma)

    assert str(sigma) in str(error.value)


def test_sigma_tensor_of_two_raises():
    with pytest.raises(InputError, match=r"shape \(2,\)"):
        DenseKernel.from_points(uniform_cloud(5), torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("build", ["dense", "sparse", "graph"])
def test_nonfinite_point_names_vertex(build, bad_value):
    points, triangles = sphere_mesh(resolution=8)
    points[7, 1] = bad_value

    with pytest.raises(InputError, match="vertex 7") as error:
        make_kernel(points, 0.1, backend=build, triangles=triangles)

    assert str(bad_value) in str(error.value)


@pytest.mark.parametrize("shape", [(0, 3), (4, 3, 2)])
def test_points_wrong_shape_raises(shape):
    with pytest.raises(InputError, match="shape"):
        DenseKernel.from_points(np.zeros(shape), 0.1)


def test_points_float16_raises():
    with pytest.raises(InputError, match="float16"):
        DenseKernel.from_points(torch.zeros((4, 3), dtype=torch.float16), 0.1)


def test_points_strings_raise():
    with pytest.raises(InputError, match="points"):
        DenseKernel.from_points([["a", "b"]], 0.1)


def test_points_vector_is_one_dimensional_cloud():
    points, _ = check_points(np.array([0.0, 1.0, 3.0]))

    assert points.shape == (3, 1)


def test_points_keep_float32():
    points = uniform_cloud(20).astype(np.float32)

    for backend in BACKENDS:
        assert backend.from_points(points, 0.1).dtype == torch.float32


def test_as_tensor_copies_read_only_array():
    array = np.arange(6, dtype=np.float64)
    array.setflags(write=False)

    tensor, from_numpy = as_tensor(array, name="values")

    assert from_numpy
    assert not np.shares_memory(tensor.numpy(), array)


# --- large coordinates ----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_far_float32_kernel_matches_centred(backend):
    # CT coordinates sit around 220 mm, where float32 keeps about 1.5e-5 mm.
    points = uniform_cloud(500) * 10.0
    far = torch.tensor(points + 220.0, dtype=torch.float32)

    kernel = backend.from_points(far, 1.0).to_dense().double()
    reference = backend.from_points(points - points.mean(axis=0), 1.0).to_dense()

    assert float((kernel - reference).abs().max()) < 1e-4
