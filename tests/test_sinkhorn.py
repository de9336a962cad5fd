"""Specification of the symmetric Sinkhorn solver (sinkshape.sinkhorn)."""

import warnings

import numpy as np
import pytest
import scipy.sparse
import torch

from sinkshape import (
    DenseKernel,
    DiffusionOperator,
    InputError,
    SinkhornConvergenceWarning,
    SparseKernel,
    sinkhorn_scaling,
)
from sinkshape.sinkhorn import default_tol, marginal_error

DTYPES = [torch.float32, torch.float64]
KINDS = ["gaussian", "exponential"]


def uniform_cloud(n_points, dim=3, *, seed=0, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.uniform(size=(n_points, dim)), dtype=dtype)


def random_masses(n_points, *, seed=1, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.uniform(0.5, 2.0, size=n_points), dtype=dtype)


def dense_row_sums(kernel, masses, log_scaling):
    """Return (Q 1)_i = lambda_i sum_j K_ij m_j lambda_j from the dense kernel."""
    scaling = torch.exp(log_scaling)
    return scaling * (kernel.to_dense() @ (masses * scaling))


def weighted_mean_deviation(row_sums, masses):
    """Return the marginal error written out: sum_i m_i |(Q 1)_i - 1| / sum_i m_i."""
    return float((masses * (row_sums - 1).abs()).sum() / masses.sum())


def erdos_renyi_kernel(n_nodes, probability, *, seed):
    """Return D + A of an Erdos-Renyi graph G(n, p) as a scipy CSR matrix."""
    rng = np.random.default_rng(seed)
    upper = np.triu(rng.random((n_nodes, n_nodes)) < probability, k=1)
    adjacency = scipy.sparse.csr_matrix((upper | upper.T).astype(np.float64))
    degrees = np.asarray(adjacency.sum(axis=1)).ravel()
    return scipy.sparse.diags(degrees) + adjacency, degrees


# --- convergence ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("log_domain", [True, False])
def test_solver_reaches_tol(dtype, kind, log_domain):
    points = uniform_cloud(400, dtype=dtype)
    masses = random_masses(400, dtype=dtype)
    kernel = DenseKernel.from_points(points, 0.1, kind=kind)

    result = sinkhorn_scaling(kernel, masses, log_domain=log_domain)
    row_sums = dense_row_sums(kernel, masses, result.log_scaling)

    assert result.converged
    assert result.tol == default_tol(dtype)
    assert result.marginal_error <= result.tol
    assert weighted_mean_deviation(row_sums, masses) <= result.tol
    assert result.log_scaling.dtype == dtype


def test_default_tol_per_dtype():
    assert default_tol(torch.float32) == 1e-5
    assert default_tol(torch.float64) == 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_log_and_multiplicative_agree(kind):
    points = uniform_cloud(300)
    masses = random_masses(300)
    kernel = DenseKernel.from_points(points, 0.1, kind=kind)

    log_result = sinkhorn_scaling(kernel, masses, tol=1e-13, log_domain=True)
    plain_result = sinkhorn_scaling(kernel, masses, tol=1e-13, log_domain=False)

    torch.testing.assert_close(
        log_result.scaling, plain_result.scaling, rtol=1e-10, atol=0
    )


def test_log_domain_on_values_kernel():
    # A kernel given by its values falls back to a max-shifted log-sum-exp.
    points = uniform_cloud(200)
    masses = random_masses(200)
    log_kernel = DenseKernel.from_points(points, 0.2)
    values_kernel = DenseKernel(matrix=log_kernel.to_dense())

    reference = sinkhorn_scaling(log_kernel, masses, tol=1e-13)
    result = sinkhorn_scaling(values_kernel, masses, tol=1e-13, log_domain=True)

    torch.testing.assert_close(result.scaling, reference.scaling, rtol=1e-10, atol=0)


def test_marginal_error_hand_example():
    # Deviations 0.1 and 0.2 with masses 1 and 3: (0.1 + 3 * 0.2) / 4.
    row_sums = torch.tensor([1.1, 0.8], dtype=torch.float64)
    masses = torch.tensor([1.0, 3.0], dtype=torch.float64)

    assert marginal_error(row_sums, masses) == pytest.approx(0.175, rel=1e-12)


def test_scaling_is_exp_of_log_scaling():
    points = uniform_cloud(100)
    result = sinkhorn_scaling(DenseKernel.from_points(points, 0.2), random_masses(100))

    torch.testing.assert_close(result.scaling, torch.exp(result.log_scaling))


# --- error history and rate -----------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_errors_decrease_near_end(dtype, kind):
    points = uniform_cloud(400, dtype=dtype)
    kernel = DenseKernel.from_points(points, 0.1, kind=kind)

    result = sinkhorn_scaling(kernel, random_masses(400, dtype=dtype))
    last = result.errors[-5:]

    assert len(result.errors) == result.n_iter + 1
    assert len(last) == 5
    for before, after in zip(last[:-1], last[1:], strict=True):
        assert after < before


@pytest.mark.parametrize(
    ("kind", "sigma"),
    [("gaussian", 0.05), ("gaussian", 0.3), ("gaussian", 2.0), ("exponential", 0.3)],
)
def test_error_ratio_below_half_psd_kernel(kind, sigma):
    # Near the fixed point the error contracts by (1 - lambda_min(Q)) / 2 <= 1/2
    # when K is positive semi-definite; the margin covers the transient.
    points = uniform_cloud(400, dim=2)
    kernel = DenseKernel.from_points(points, sigma, kind=kind)

    result = sinkhorn_scaling(kernel, random_masses(400), tol=1e-10)
    errors = np.array(result.errors)
    ratios = errors[-4:] / errors[-5:-1]

    assert result.converged
    assert ratios.max() < 0.52


def test_error_ratio_below_half_graph_kernel():
    matrix, _ = erdos_renyi_kernel(500, 0.02, seed=3)
    kernel = SparseKernel.from_matrix(matrix)

    result = sinkhorn_scaling(kernel, torch.full((500,), 1 / 500, dtype=torch.float64))
    errors = np.array(result.errors)
    ratios = errors[-4:] / errors[-5:-1]

    assert result.converged
    assert ratios.max() < 0.52


# --- Erdos-Renyi graph ----------------------------------------------------------------


@pytest.fixture(scope="module")
def erdos_renyi_2000():
    matrix, degrees = erdos_renyi_kernel(2000, 0.005, seed=0)
    # D + A needs a positive diagonal: an isolated node would give a zero row.
    assert degrees.min() > 0
    return matrix


def solve_five_iterations(kernel):
    masses = torch.full((kernel.n_points,), 1 / kernel.n_points, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SinkhornConvergenceWarning)
        return sinkhorn_scaling(kernel, masses, max_iter=5)


def test_erdos_renyi_five_iterations(erdos_renyi_2000):
    result = solve_five_iterations(SparseKernel.from_matrix(erdos_renyi_2000))
    print(
        "Erdos-Renyi D + A, 2000 nodes, 5 iterations: "
        f"marginal error {result.marginal_error:.3e}"
    )

    assert result.n_iter == 5
    assert len(result.errors) == 6
    assert result.marginal_error < 1e-3


def test_erdos_renyi_sparse_matches_dense(erdos_renyi_2000):
    sparse = solve_five_iterations(SparseKernel.from_matrix(erdos_renyi_2000))
    dense_matrix = torch.from_numpy(erdos_renyi_2000.toarray())
    dense = solve_five_iterations(DenseKernel(matrix=dense_matrix))

    np.testing.assert_allclose(sparse.errors, dense.errors, rtol=1e-10)
    torch.testing.assert_close(
        sparse.log_scaling, dense.log_scaling, rtol=1e-12, atol=1e-12
    )


def test_erdos_renyi_operator_matches_dense(erdos_renyi_2000):
    sparse = DiffusionOperator(SparseKernel.from_matrix(erdos_renyi_2000))
    dense = DiffusionOperator(DenseKernel(matrix=erdos_renyi_2000.toarray()))
    signal = np.random.default_rng(5).normal(size=2000)

    assert sparse.marginal_error <= 1e-6
    np.testing.assert_allclose(sparse @ signal, dense @ signal, rtol=1e-10, atol=1e-12)


# --- warm start and max_iter ----------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_warm_start_needs_no_iteration(dtype):
    points = uniform_cloud(300, dtype=dtype)
    masses = random_masses(300, dtype=dtype)
    kernel = DenseKernel.from_points(points, 0.1)

    cold = sinkhorn_scaling(kernel, masses)
    warm = sinkhorn_scaling(kernel, masses, init=cold.log_scaling)

    assert cold.n_iter > 0
    assert warm.n_iter == 0
    assert warm.errors == [cold.marginal_error]


def test_warm_start_accepts_numpy():
    points = uniform_cloud(200)
    masses = random_masses(200)
    kernel = DenseKernel.from_points(points, 0.1)
    cold = sinkhorn_scaling(kernel, masses)

    warm = sinkhorn_scaling(kernel, masses, init=cold.log_scaling.numpy())

    assert warm.n_iter == 0


def test_warm_start_converts_dtype():
    points = uniform_cloud(200, dtype=torch.float32)
    masses = random_masses(200, dtype=torch.float32)
    kernel = DenseKernel.from_points(points, 0.1)
    cold = sinkhorn_scaling(kernel, masses)

    warm = sinkhorn_scaling(kernel, masses, init=cold.log_scaling.to(torch.float64))

    assert warm.log_scaling.dtype == torch.float32


@pytest.mark.parametrize(
    "init", [np.zeros(5), np.full(10, np.nan), np.full(10, np.inf)]
)
def test_invalid_init_raises(init):
    kernel = DenseKernel.from_points(uniform_cloud(10), 0.3)

    with pytest.raises(InputError, match="init"):
        sinkhorn_scaling(kernel, random_masses(10), init=init)


def test_max_iter_warns_with_error():
    points = uniform_cloud(300)
    kernel = DenseKernel.from_points(points, 0.3)

    with pytest.warns(SinkhornConvergenceWarning) as record:
        result = sinkhorn_scaling(kernel, random_masses(300), max_iter=3)
    message = str(record[0].message)

    assert len(record) == 1
    assert result.n_iter == 3
    assert not result.converged
    assert f"{result.marginal_error:.3g}" in message
    assert "max_iter=3" in message


def test_operator_max_iter_warns():
    kernel = DenseKernel.from_points(uniform_cloud(300), 0.3)

    with pytest.warns(SinkhornConvergenceWarning, match="marginal error"):
        operator = DiffusionOperator(kernel, max_iter=2)

    assert operator.n_iter == 2


def test_max_iter_zero_keeps_init():
    kernel = DenseKernel.from_points(uniform_cloud(50), 0.3)

    with pytest.warns(SinkhornConvergenceWarning):
        result = sinkhorn_scaling(kernel, random_masses(50), max_iter=0)

    assert result.n_iter == 0
    assert torch.equal(result.log_scaling, torch.zeros(50, dtype=torch.float64))


def test_converged_solve_does_not_warn():
    kernel = DenseKernel.from_points(uniform_cloud(200), 0.1)

    with warnings.catch_warnings():
        warnings.simplefilter("error", SinkhornConvergenceWarning)
        result = sinkhorn_scaling(kernel, random_masses(200))

    assert result.converged


@pytest.mark.parametrize("tol", [0, -1e-6, float("nan"), float("inf"), "1e-6"])
def test_invalid_tol_raises(tol):
    kernel = DenseKernel.from_points(uniform_cloud(10), 0.3)

    with pytest.raises(InputError, match="tol"):
        sinkhorn_scaling(kernel, random_masses(10), tol=tol)


@pytest.mark.parametrize("max_iter", [-1, 2.5])
def test_invalid_max_iter_raises(max_iter):
    kernel = DenseKernel.from_points(uniform_cloud(10), 0.3)

    with pytest.raises(InputError, match="max_iter"):
        sinkhorn_scaling(kernel, random_masses(10), max_iter=max_iter)


def test_callback_sees_every_error():
    kernel = DenseKernel.from_points(uniform_cloud(200), 0.1)
    calls = []

    result = sinkhorn_scaling(
        kernel, random_masses(200), callback=lambda i, error: calls.append((i, error))
    )

    assert [i for i, _ in calls] == list(range(result.n_iter + 1))
    assert [error for _, error in calls] == result.errors


def test_zero_row_raises_floating_point_error():
    # Row 1 of K is zero, so no scaling can make (Q 1)_1 = 1.
    matrix = scipy.sparse.csr_matrix(np.array([[1.0, 0.0], [0.0, 0.0]]))

    with pytest.raises(FloatingPointError, match="non-finite marginal error"):
        sinkhorn_scaling(
            SparseKernel.from_matrix(matrix), torch.tensor([0.5, 0.5]).double()
        )


def test_solution_is_fixed_point_of_update():
    # lambda_i * (K M lambda)_i = 1 is the defining equation of the scaling.
    points = uniform_cloud(200)
    masses = random_masses(200)
    kernel = DenseKernel.from_points(points, 0.15)

    scaling = sinkhorn_scaling(kernel, masses, tol=1e-13).scaling
    product = kernel.to_dense() @ (masses * scaling)

    torch.testing.assert_close(scaling * product, torch.ones(200, dtype=torch.float64))
