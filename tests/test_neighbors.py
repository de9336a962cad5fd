"""Specification of the radius search and of sparse kernels stored by pairs."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist, squareform

from sinkshape import DenseKernel, DiffusionOperator, SparseKernel, mesh_graph_kernel
from sinkshape.kernels import mesh_edges, radius_pairs
from sinkshape.neighbors import neighbor_pairs, spatial_order


def uniform_cloud(n_points, dim=3, *, seed=0):
    return np.random.default_rng(seed).uniform(size=(n_points, dim))


def stored_pairs(neighbors):
    """Return the set of unordered point pairs {i, j} that ``neighbors`` stores."""
    rows = np.repeat(np.arange(neighbors.n_points), np.diff(neighbors.indptr))
    first = neighbors.order[rows]
    second = neighbors.order[neighbors.indices]
    return {(min(i, j), max(i, j)) for i, j in zip(first.tolist(), second.tolist())}


def brute_force_pairs(points, radius):
    distances = squareform(pdist(points))
    first, second = np.nonzero(np.triu(distances <= radius, k=1))
    return set(zip(first.tolist(), second.tolist()))


# --- neighbor_pairs ---------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_neighbor_pairs_match_brute_force(dim):
    points = uniform_cloud(400, dim)

    neighbors = neighbor_pairs(points, 0.15)

    assert stored_pairs(neighbors) == brute_force_pairs(points, 0.15)


def test_neighbor_pairs_store_each_pair_once():
    neighbors = neighbor_pairs(uniform_cloud(400), 0.2)

    assert neighbors.n_pairs == len(stored_pairs(neighbors))


def test_neighbor_pairs_sq_distances_exact():
    points = uniform_cloud(300)

    neighbors = neighbor_pairs(points, 0.2)

    rows = np.repeat(np.arange(neighbors.n_points), np.diff(neighbors.indptr))
    first = points[neighbors.order[rows]]
    second = points[neighbors.order[neighbors.indices]]
    expected = ((first - second) ** 2).sum(axis=1)
    np.testing.assert_allclose(neighbors.sq_distances, expected, rtol=1e-14)


def test_neighbor_pairs_keep_float32():
    neighbors = neighbor_pairs(uniform_cloud(200).astype(np.float32), 0.2)

    assert neighbors.sq_distances.dtype == np.float32


def test_neighbor_pairs_duplicate_points():
    points = np.vstack([uniform_cloud(50), uniform_cloud(50)])

    neighbors = neighbor_pairs(points, 1e-9)

    assert stored_pairs(neighbors) == {(i, i + 50) for i in range(50)}
    np.testing.assert_array_equal(neighbors.sq_distances, 0.0)


def test_neighbor_pairs_none_within_radius():
    neighbors = neighbor_pairs(np.arange(10.0)[:, None], 0.5)

    assert neighbors.n_pairs == 0
    np.testing.assert_array_equal(neighbors.indptr, 0)


def test_neighbor_pairs_single_point():
    neighbors = neighbor_pairs(np.zeros((1, 3)), 1.0)

    assert neighbors.n_pairs == 0
    assert neighbors.order.tolist() == [0]


@pytest.mark.parametrize("radius", [0.0, -1.0, np.inf, np.nan])
def test_neighbor_pairs_reject_radius(radius):
    with pytest.raises(ValueError, match="radius"):
        neighbor_pairs(uniform_cloud(10), radius)


def test_spatial_order_is_permutation():
    order = spatial_order(uniform_cloud(1000), 0.1)

    np.testing.assert_array_equal(np.sort(order), np.arange(1000))


def test_spatial_order_groups_cells():
    points = uniform_cloud(1000)

    order = spatial_order(points, 0.25)

    # Cells start at the lowest coordinate on each axis.
    cells = np.floor((points[order] - points.min(axis=0)) / 0.25).astype(int)
    keys = [tuple(cell) for cell in cells]
    # Each cell appears as one contiguous run.
    runs = sum(1 for index in range(len(keys)) if index == 0 or keys[index] != keys[index - 1])
    assert runs == len(set(keys))


def test_radius_pairs_include_diagonal_and_both_orders():
    points = uniform_cloud(200)

    rows, cols = radius_pairs(points, 0.2)

    expected = squareform(pdist(points)) <= 0.2
    found = np.zeros_like(expected)
    found[rows, cols] = True
    np.testing.assert_array_equal(found, expected)
    assert len(rows) == expected.sum()


# --- kernels stored by pairs ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pair_kernel_block_product_matches_dense(dtype):
    points = torch.tensor(uniform_cloud(300), dtype=dtype)
    kernel = SparseKernel.from_points(points, 0.08)
    block = torch.tensor(np.random.default_rng(1).normal(size=(300, 3)), dtype=dtype)

    product = kernel.matvec(block)

    assert product.dtype == dtype
    torch.testing.assert_close(product, kernel.to_dense() @ block)


def test_pair_kernel_nnz_counts_both_triangles():
    points = uniform_cloud(300)

    kernel = SparseKernel.from_points(points, 0.05)

    assert kernel.nnz == int((kernel.to_dense() > 0).sum())
    assert kernel.nnz == kernel.rows.numel() == kernel.values.numel()


def test_pair_kernel_to_scipy_matches_dense():
    kernel = SparseKernel.from_points(uniform_cloud(200), 0.05)

    np.testing.assert_array_equal(kernel.to_scipy().toarray(), kernel.to_dense().numpy())


def test_pair_kernel_log_values_match_values():
    kernel = SparseKernel.from_points(uniform_cloud(200), 0.05)

    torch.testing.assert_close(torch.exp(kernel.log_values), kernel.values)


def test_pair_kernel_gradient_matches_dense():
    # The distances of the pairs are recomputed by torch when the points need a
    # gradient; the result must differentiate like the dense kernel.
    points = torch.tensor(uniform_cloud(80), requires_grad=True)
    signal = torch.tensor(np.random.default_rng(2).normal(size=80))

    def energy(kernel_type, **options):
        kernel = kernel_type.from_points(points, 0.2, **options)
        operator = DiffusionOperator(kernel, tol=1e-12, max_iter=500)
        return (signal * (operator @ signal)).sum()

    sparse = torch.autograd.grad(energy(SparseKernel, truncation=1e-300), points)[0]
    dense = torch.autograd.grad(energy(DenseKernel), points)[0]

    torch.testing.assert_close(sparse, dense)


def test_pair_kernel_no_grad_product_detaches():
    points = torch.tensor(uniform_cloud(100), requires_grad=True)
    kernel = SparseKernel.from_points(points, 0.1)
    vector = torch.ones(100, dtype=torch.float64)

    with torch.no_grad():
        product = kernel.matvec(vector)

    assert not product.requires_grad
    torch.testing.assert_close(product, kernel.to_dense().detach() @ vector)


def test_graph_kernel_gradient_matches_dense():
    points, triangles = octahedron()
    x = torch.tensor(points, requires_grad=True)
    signal = torch.tensor(np.arange(6.0))

    kernel = mesh_graph_kernel(x, triangles)
    sparse = torch.autograd.grad((signal * kernel.matvec(signal)).sum(), x)[0]
    dense_kernel = mesh_graph_kernel(x, triangles).to_dense()
    dense = torch.autograd.grad((signal * (dense_kernel @ signal)).sum(), x)[0]

    torch.testing.assert_close(sparse, dense)


def octahedron():
    points = np.array(
        [[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]
    ) * np.array([1.0, 1.2, 0.9])
    triangles = np.array(
        [[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]]
    )
    return points, triangles


def test_mesh_edges_sorted_unique():
    _, triangles = octahedron()
    sides = np.vstack([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    expected = np.unique(np.sort(sides, axis=1), axis=0)
    # A repeated triangle, and a degenerate one whose proper side (0, 2) is
    # already an edge, add nothing.
    triangles = np.vstack([triangles, triangles[:1], [[0, 0, 2]]])

    edges = mesh_edges(triangles)

    np.testing.assert_array_equal(edges, expected)


def test_mesh_edges_empty():
    assert mesh_edges(np.zeros((0, 3), dtype=np.int64)).shape == (0, 2)
