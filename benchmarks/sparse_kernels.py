"""Time the neighbour searches and sparse products behind the truncated Gaussian kernel.

On N Fibonacci points of the unit sphere, with sigma = 2 mean edge lengths of
their convex hull and the cutoff radius of ``--truncation``, the script times:

- ``cKDTree.query`` for the 64 nearest neighbours (``--workers`` threads),
  the k-nearest-neighbour search that the benchmark issue started from;
- ``cKDTree.query_pairs`` at the cutoff radius, which returns each pair once;
- :func:`sinkshape.neighbors.neighbor_pairs`, the same search plus the
  squared distances and the CSR rows that the kernel stores;
- :meth:`SparseKernel.from_points`, the whole kernel;
- one product with that kernel through its scipy CSR path, and one through a
  torch sparse CSR matrix of the same entries.

It prints one JSON line and writes it to ``--json`` when given.

Usage::

    python benchmarks/sparse_kernels.py --n 500000 --truncation 1e-3
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch
from scipy.spatial import cKDTree

from sinkshape.cli.bench import machine_description, sphere_mesh
from sinkshape.kernels import SparseKernel, cutoff_radius
from sinkshape.neighbors import neighbor_pairs

#: Neighbours of the k-nearest-neighbour query.
KNN_NEIGHBOURS = 64


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500_000, help="number of points")
    parser.add_argument(
        "--truncation",
        type=float,
        default=1e-6,
        help="fraction of the Gaussian's 3-D integral beyond the cutoff (default 1e-6)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="threads of the k-nearest-neighbour query"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", dest="json_path", help="also write the JSON line here")
    return parser.parse_args()


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main() -> None:
    arguments = parse_arguments()
    torch.set_num_threads(arguments.threads)

    points, triangles = sphere_mesh(arguments.n)
    sides = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]]])
    mean_edge = float(np.linalg.norm(points[sides[:, 0]] - points[sides[:, 1]], axis=1).mean())
    sigma = 2.0 * mean_edge
    radius = cutoff_radius(sigma, "gaussian", arguments.truncation)
    points32 = points.astype(np.float32)

    tree, tree_seconds = timed(lambda: cKDTree(points32))
    _, knn_seconds = timed(
        lambda: tree.query(points32, k=KNN_NEIGHBOURS, workers=arguments.workers)
    )
    pairs, pairs_seconds = timed(lambda: tree.query_pairs(radius, output_type="ndarray"))
    n_pairs = len(pairs)
    del pairs
    _, neighbor_seconds = timed(lambda: neighbor_pairs(points32, radius))
    kernel, kernel_seconds = timed(
        lambda: SparseKernel.from_points(
            torch.from_numpy(points32), sigma, truncation=arguments.truncation
        )
    )

    vector = torch.ones(arguments.n, dtype=torch.float32)
    kernel.matvec(vector)  # builds the scipy matrices once
    _, scipy_seconds = timed(lambda: kernel.matvec(vector))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
        matrix = torch.sparse_coo_tensor(
            torch.stack([kernel.rows, kernel.cols]),
            kernel.values,
            (kernel.n_points, kernel.n_points),
        ).coalesce().to_sparse_csr()
    _, torch_seconds = timed(lambda: matrix @ vector[:, None])

    result = {
        "n_points": arguments.n,
        "sigma": sigma,
        "cutoff_over_sigma": radius / sigma,
        "truncation": arguments.truncation,
        "pairs_per_point": 2 * n_pairs / arguments.n,
        "tree_seconds": tree_seconds,
        f"knn{KNN_NEIGHBOURS}_seconds": knn_seconds,
        "knn_workers": arguments.workers,
        "query_pairs_seconds": pairs_seconds,
        "neighbor_pairs_seconds": neighbor_seconds,
        "from_points_seconds": kernel_seconds,
        "scipy_product_seconds": scipy_seconds,
        "torch_csr_product_seconds": torch_seconds,
        "torch_threads": arguments.threads,
        "machine": machine_description(),
    }
    line = json.dumps(result)
    print(line)
    if arguments.json_path:
        with open(arguments.json_path, "w") as file:
            file.write(line + "\n")


if __name__ == "__main__":
    main()
