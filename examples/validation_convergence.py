"""Compare the Sinkhorn convergence rate with (1 - lambda_min(Q)) / 2.

Run from the repository root::

    python examples/validation_convergence.py

Four kernels with uniform masses: D + A of an Erdos-Renyi graph (2,000 nodes,
p = 0.005), D + A of a random geometric graph (2,000 points in the unit
square, radius 0.05), and Gaussian kernels on the unit sphere (1,500 points
of the Fibonacci lattice with sigma = 0.05, and 1,500 random points with
sigma = 0.1). The symmetric log-domain or multiplicative update runs to a
marginal error of 1e-14; the observed rate is the geometric mean of the last
four ratios of successive errors above 1e-12. Prints lambda_min(Q), the
predicted and the observed rate, and writes ``validation-convergence.png``:
the marginal error per iteration with the predicted slope.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
import torch
from scipy.spatial import cKDTree
from validation_samples import fibonacci_sphere, output_path, random_sphere

from sinkshape import DenseKernel, DiffusionOperator, SparseKernel, sinkhorn_scaling

FLOOR = 1e-12
WINDOW = 4


def graph_kernel(adjacency) -> SparseKernel:
    adjacency = scipy.sparse.csr_matrix(adjacency)
    degrees = np.asarray(adjacency.sum(axis=1)).ravel()
    return SparseKernel.from_matrix(scipy.sparse.diags(degrees) + adjacency)


def erdos_renyi_kernel(n_nodes: int, probability: float, *, seed: int) -> SparseKernel:
    rng = np.random.default_rng(seed)
    upper = np.triu(rng.random((n_nodes, n_nodes)) < probability, k=1)
    return graph_kernel((upper | upper.T).astype(np.float64))


def geometric_graph_kernel(n_nodes: int, radius: float, *, seed: int) -> SparseKernel:
    points = np.random.default_rng(seed).uniform(size=(n_nodes, 2))
    pairs = cKDTree(points).query_pairs(radius, output_type="ndarray")
    adjacency = scipy.sparse.coo_matrix(
        (np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n_nodes, n_nodes)
    )
    return graph_kernel(adjacency + adjacency.T)


def smallest_eigenvalue(operator: DiffusionOperator) -> float:
    outer = (operator.scaling * torch.sqrt(operator.masses)).numpy()
    if isinstance(operator.kernel, SparseKernel):
        diagonal = scipy.sparse.diags(outer)
        symmetric = diagonal @ operator.kernel.to_scipy() @ diagonal
        return float(scipy.sparse.linalg.eigsh(symmetric, k=1, which="SA", tol=1e-8)[0][0])
    symmetric = outer[:, None] * operator.kernel.to_dense().numpy() * outer[None, :]
    return float(scipy.linalg.eigh(symmetric, eigvals_only=True, subset_by_index=[0, 0])[0])


def observed_rate(errors: np.ndarray) -> float:
    above = errors[: np.argmax(errors < FLOOR)] if (errors < FLOOR).any() else errors
    return float((above[-1] / above[-1 - WINDOW]) ** (1.0 / WINDOW))


def main() -> None:
    path = output_path(__doc__.splitlines()[0], "validation-convergence.png")
    cases = {
        "Erdos-Renyi D + A": erdos_renyi_kernel(2000, 0.005, seed=0),
        "geometric graph D + A": geometric_graph_kernel(2000, 0.05, seed=0),
        "sphere, Fibonacci, Gaussian sigma = 0.05": DenseKernel.from_points(
            fibonacci_sphere(1500), 0.05
        ),
        "sphere, random, Gaussian sigma = 0.1": DenseKernel.from_points(
            random_sphere(1500, seed=0), 0.1
        ),
    }

    figure, axis = plt.subplots(figsize=(8, 5))
    for label, kernel in cases.items():
        masses = torch.full((kernel.n_points,), 1.0 / kernel.n_points, dtype=torch.float64)
        result = sinkhorn_scaling(kernel, masses, tol=1e-14, max_iter=400)
        operator = DiffusionOperator(kernel, masses, init=result.log_scaling, tol=1e-14)
        lambda_min = smallest_eigenvalue(operator)
        predicted = (1.0 - lambda_min) / 2.0
        errors = np.array(result.errors)
        observed = observed_rate(errors)
        print(f"{label}: {result.n_iter} iterations, lambda_min(Q) {lambda_min:.4f}, "
              f"predicted rate {predicted:.4f}, observed {observed:.4f}, "
              f"difference {observed - predicted:+.4f}")

        line = axis.semilogy(errors, "o-", markersize=3, label=label)[0]
        iterations = np.arange(len(errors))
        anchor = len(errors) // 2
        guide = errors[anchor] * predicted ** (iterations - anchor)
        axis.semilogy(iterations, guide, "--", color=line.get_color(), linewidth=1)

    axis.set_xlabel("iteration")
    axis.set_ylabel("marginal error")
    axis.set_ylim(1e-15, 2)
    axis.set_title("Sinkhorn marginal error; dashed: slope (1 - lambda_min(Q)) / 2")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
