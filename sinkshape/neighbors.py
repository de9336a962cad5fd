"""Pairs of points within a radius, each pair once, as CSR rows.

:func:`neighbor_pairs` finds every unordered pair {i, j}, i != j, with
|x_i - x_j| <= radius. Three choices keep it fast at a million points:

- the points are first sorted by cell of a grid of side ``radius``, so that
  neighbours get nearby positions and products with a kernel on the pairs
  read memory almost in order;
- the pairs come from the dual-tree search of
  :meth:`scipy.spatial.cKDTree.query_pairs`, compiled code that returns each
  pair once;
- the rows are grouped by a counting sort (scipy's COO to CSR conversion),
  linear in the number of pairs, with no sort within a row.

A uniform grid with candidates filtered in numpy was tried as well and was
about five times slower than the k-d tree search at 500,000 points on a
surface (``docs/benchmarks.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse
from scipy.spatial import cKDTree

__all__ = ["NeighborPairs", "neighbor_pairs", "spatial_order"]

#: Pairs whose squared distances are computed at once, to bound temporaries.
_DISTANCE_BLOCK = 2**22


@dataclass
class NeighborPairs:
    """Pairs within a radius, each once, as CSR rows over the points in a spatial order.

    Attributes
    ----------
    order : numpy.ndarray
        (N,) int64 permutation: position p is point ``order[p]``.
    indptr : numpy.ndarray
        (N + 1,) row pointers over positions.
    indices : numpy.ndarray
        (P,) positions of the second point of each pair, not sorted within a
        row. A pair {p, q} is stored in row p or in row q, never in both.
    sq_distances : numpy.ndarray
        (P,) squared distances |x_i - x_j|^2, in the dtype of the points.
    """

    order: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    sq_distances: np.ndarray

    @property
    def n_points(self) -> int:
        """N, the number of points."""
        return len(self.order)

    @property
    def n_pairs(self) -> int:
        """P, the number of unordered pairs."""
        return len(self.indices)


def neighbor_pairs(points, radius: float) -> NeighborPairs:
    """Find the unordered pairs of distinct points at most ``radius`` apart.

    Parameters
    ----------
    points : numpy.ndarray
        (N, D) coordinates, float32 or float64. Squared distances are computed
        by exact differences in this dtype: centre coordinates that sit far
        from the origin first.
    radius : float
        Largest distance kept. The k-d tree compares distances in float64, so
        a pair within rounding of ``radius`` may fall on either side.

    Returns
    -------
    NeighborPairs
        The pairs as CSR rows over the points in a spatial order.

    Examples
    --------
    >>> import numpy as np
    >>> pairs = neighbor_pairs(np.array([[0.0], [1.0], [3.0]]), 1.5)
    >>> pairs.n_pairs, pairs.sq_distances.tolist()
    (1, [1.0])
    """
    x = np.asarray(points)
    if x.ndim != 2 or x.shape[0] == 0:
        msg = f"points must have shape (N, D) with N >= 1, got shape {x.shape}"
        raise ValueError(msg)
    if not np.isfinite(radius) or radius <= 0:
        msg = f"radius must be a positive finite number, got {radius!r}"
        raise ValueError(msg)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)

    order = spatial_order(x, radius)
    sorted_points = x[order]
    # balanced_tree=False splits at the midpoint of the widest side. It builds
    # faster, and on a 500,000-point sphere it queried no slower than the median
    # split.
    tree = cKDTree(sorted_points, balanced_tree=False, compact_nodes=False)
    pairs = tree.query_pairs(radius, output_type="ndarray")

    n_points = len(order)
    index_dtype = np.int32 if max(len(pairs), n_points) < 2**31 else np.int64
    first = pairs[:, 0].astype(index_dtype)
    second = pairs[:, 1].astype(index_dtype)
    del pairs
    sq_distances = _pair_sq_distances(sorted_points, first, second)

    indptr, indices, sq_distances = _group_by_row(first, second, sq_distances, n_points)
    return NeighborPairs(order=order, indptr=indptr, indices=indices, sq_distances=sq_distances)


def spatial_order(points: np.ndarray, cell_side: float) -> np.ndarray:
    """Return a permutation that sorts the points by cell of a grid of side ``cell_side``.

    Cells are ordered lexicographically with the first axis varying fastest, so
    the points of one cell are contiguous and cells that are neighbours along
    the first axis are adjacent in the order.
    """
    low = points.min(axis=0)
    cells = np.floor((points - low) / cell_side).astype(np.int64)
    shape = cells.max(axis=0) + 1
    # One int64 key when the grid fits in it, otherwise a sort on each axis.
    if float(np.prod(shape.astype(np.float64))) < 2.0**62:
        keys = np.zeros(len(points), dtype=np.int64)
        for axis in reversed(range(cells.shape[1])):
            keys = keys * shape[axis] + cells[:, axis]
        return np.argsort(keys, kind="stable")
    return np.lexsort(cells.T)


def _pair_sq_distances(
    points: np.ndarray, first: np.ndarray, second: np.ndarray
) -> np.ndarray:
    coordinates = [np.ascontiguousarray(points[:, axis]) for axis in range(points.shape[1])]
    sq_distances = np.zeros(len(first), dtype=points.dtype)
    block = min(len(first), _DISTANCE_BLOCK)
    difference_buffer = np.empty(block, dtype=points.dtype)
    gathered_buffer = np.empty(block, dtype=points.dtype)
    for start in range(0, len(first), _DISTANCE_BLOCK):
        stop = min(start + _DISTANCE_BLOCK, len(first))
        difference = difference_buffer[: stop - start]
        gathered = gathered_buffer[: stop - start]
        for coordinate in coordinates:
            # mode="clip" lets take write into the buffer directly; the default
            # mode copies through a temporary to check bounds.
            np.take(coordinate, first[start:stop], out=difference, mode="clip")
            np.take(coordinate, second[start:stop], out=gathered, mode="clip")
            difference -= gathered
            difference *= difference
            sq_distances[start:stop] += difference
    return sq_distances


def _group_by_row(
    first: np.ndarray, second: np.ndarray, values: np.ndarray, n_points: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the CSR rows (indptr, indices, values) of the pairs (first, second)."""
    coo = scipy.sparse.coo_matrix((values, (first, second)), shape=(n_points, n_points))
    # The pairs are distinct, so nothing needs summing. Marking the COO as
    # canonical makes tocsr keep its linear counting sort over the rows and skip
    # the sort within each row that merging duplicates would need.
    coo.has_canonical_format = True
    csr = coo.tocsr()
    return csr.indptr, csr.indices, csr.data
