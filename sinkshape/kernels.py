"""Symmetric non-negative kernels with dense, sparse and KeOps backends.

A kernel is a symmetric matrix K with K_ij >= 0, given either by its values
(graph kernels such as D + A) or by its logarithm (Gaussian and exponential
kernels of the distance). Every backend offers the same two products:

- ``matvec(v)``: K v for v of shape (N,) or (N, C);
- ``log_matvec(log_v)``: log(K exp(log_v)) for log_v of shape (N,), computed
  without underflow, which the log-domain Sinkhorn update needs.

Kernels of points:

- Gaussian: k(x, y) = exp(-|x - y|^2 / (2 sigma^2));
- exponential: k(x, y) = exp(-|x - y| / sigma).
"""

from __future__ import annotations

import logging
import math
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse
import torch

from sinkshape._checks import as_tensor, check_points, check_positive, check_sigma
from sinkshape.errors import InputError
from sinkshape.neighbors import neighbor_pairs

__all__ = [
    "DenseKernel",
    "Kernel",
    "KernelKind",
    "SparseKernel",
    "cutoff_radius",
    "log_kernel_of_distance",
    "mesh_graph_kernel",
]

logger = logging.getLogger(__name__)

KernelKind = Literal["gaussian", "exponential"]

#: Rows of the dense distance matrix computed at once, to bound the memory of the
#: (rows, N, D) difference array.
_DENSE_BLOCK_ELEMENTS = 2**24


class Kernel(ABC):
    """A symmetric non-negative N x N kernel matrix.

    Attributes
    ----------
    n_points : int
        N, the size of the matrix.
    dtype : torch.dtype
        Floating-point type of the products.
    device : torch.device
        Device of the products.
    has_log : bool
        True when the kernel is stored by its logarithm, so that
        :meth:`log_matvec` is exact even where K underflows.
    """

    n_points: int
    dtype: torch.dtype
    device: torch.device
    has_log: bool = False

    @abstractmethod
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Compute K v for v of shape (N,) or (N, C)."""

    def log_matvec(self, log_v: torch.Tensor) -> torch.Tensor:
        """Compute log(K exp(log_v)) for log_v of shape (N,).

        The default shifts ``log_v`` by its maximum before exponentiating; kernels
        stored by their logarithm override it with an exact log-sum-exp.
        """
        shift = log_v.max()
        return torch.log(self.matvec(torch.exp(log_v - shift))) + shift

    @abstractmethod
    def to_dense(self) -> torch.Tensor:
        """Return K as a dense (N, N) tensor; meant for small N and tests."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_points={self.n_points}, dtype={self.dtype})"


def log_kernel_of_distance(
    sq_distances: torch.Tensor, sigma: float, kind: KernelKind
) -> torch.Tensor:
    """Return log k for squared distances, for a Gaussian or an exponential kernel."""
    if kind == "gaussian":
        return sq_distances / (-2.0 * sigma**2)
    if kind == "exponential":
        # The square root has an infinite derivative at 0: clamp before it so that
        # gradients with respect to the points stay finite on the diagonal.
        tiny = torch.finfo(sq_distances.dtype).tiny
        distances = torch.sqrt(sq_distances.clamp_min(tiny))
        distances = torch.where(sq_distances > 0, distances, torch.zeros_like(distances))
        return -distances / sigma
    msg = f"kind must be 'gaussian' or 'exponential', got {kind!r}"
    raise InputError(msg)


def cutoff_radius(sigma: float, kind: KernelKind, truncation: float) -> float:
    """Distance beyond which a kernel contains a fraction ``truncation`` of its integral.

    The fraction is that of the kernel's integral over 3-D space, so it bounds
    the mass that truncation drops from a row in a uniform 3-D cloud; on a
    surface the dropped fraction is smaller. For truncation = 1e-6:

    - Gaussian: the tail of a chi distribution with 3 degrees of freedom,
      5.6 sigma, where the kernel value is 1.5e-7;
    - exponential: the tail of a Gamma(3) distribution,
      exp(-r) (1 + r + r^2 / 2) with r = R / sigma, 19.6 sigma.
    """
    if not 0 < truncation < 1:
        msg = f"truncation must be in (0, 1), got {truncation!r}"
        raise InputError(msg)

    from scipy import stats

    if kind == "gaussian":
        return sigma * float(stats.chi.isf(truncation, 3))
    if kind == "exponential":
        return sigma * float(stats.gamma.isf(truncation, 3))
    msg = f"kind must be 'gaussian' or 'exponential', got {kind!r}"
    raise InputError(msg)


def _centered(points: torch.Tensor) -> torch.Tensor:
    # Distances do not depend on a translation; centring keeps float32 accurate
    # for coordinates far from the origin (CT scanners give x around 200 mm).
    return points - points.detach().mean(dim=0)


class DenseKernel(Kernel):
    """A kernel stored as a dense (N, N) tensor, by its values or by its logarithm.

    Parameters
    ----------
    matrix : torch.Tensor or numpy.ndarray, optional
        Symmetric non-negative values K.
    log_matrix : torch.Tensor or numpy.ndarray, optional
        log K, with -inf for zeros. Give exactly one of the two.
    """

    def __init__(
        self,
        matrix: torch.Tensor | None = None,
        *,
        log_matrix: torch.Tensor | None = None,
    ) -> None:
        if (matrix is None) == (log_matrix is None):
            msg = "give exactly one of matrix and log_matrix"
            raise InputError(msg)
        if matrix is not None:
            matrix, _ = as_tensor(matrix, name="matrix")
        if log_matrix is not None:
            log_matrix, _ = as_tensor(log_matrix, name="log_matrix")

        reference = matrix if matrix is not None else log_matrix
        if reference.ndim != 2 or reference.shape[0] != reference.shape[1]:
            msg = f"a kernel matrix must be square, got shape {tuple(reference.shape)}"
            raise InputError(msg)

        self.n_points = reference.shape[0]
        self.dtype = reference.dtype
        self.device = reference.device
        self.has_log = log_matrix is not None
        self._log_matrix = log_matrix
        self._matrix = matrix if matrix is not None else torch.exp(log_matrix)

    @classmethod
    def from_points(
        cls,
        points,
        sigma,
        *,
        kind: KernelKind = "gaussian",
    ) -> DenseKernel:
        """Build the dense Gaussian or exponential kernel of a point cloud."""
        sigma = check_sigma(sigma)
        x, _ = check_points(points)
        x = _centered(x)

        n = x.shape[0]
        block = max(1, _DENSE_BLOCK_ELEMENTS // max(1, n * x.shape[1]))
        rows = []
        for start in range(0, n, block):
            # Exact differences rather than |x|^2 + |y|^2 - 2 x.y, which cancels
            # catastrophically in float32 for nearby points.
            diff = x[start : start + block, None, :] - x[None, :, :]
            rows.append(log_kernel_of_distance((diff**2).sum(-1), sigma, kind))
        return cls(log_matrix=torch.cat(rows, dim=0))

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._matrix @ v

    def log_matvec(self, log_v: torch.Tensor) -> torch.Tensor:
        if self._log_matrix is None:
            return super().log_matvec(log_v)

        # A matrix product on exp(log_v - max) is exact unless a row's sum falls
        # into the subnormal range. Only such rows take the N-term log-sum-exp,
        # because it costs several times the product.
        shift = log_v.detach().max()
        sums = self._matrix @ torch.exp(log_v - shift)

        finfo = torch.finfo(sums.dtype)
        underflow_mask = ~(sums.detach() > finfo.tiny / finfo.eps)
        # The log-sum-exp below replaces the underflowing rows. A placeholder 1 keeps
        # the gradient of the log finite there, because log(0) would give 0 * inf = NaN.
        sums = torch.where(underflow_mask, torch.ones_like(sums), sums)
        result = torch.log(sums) + shift

        underflow = torch.nonzero(underflow_mask).flatten()
        if underflow.numel():
            exact = torch.logsumexp(self._log_matrix[underflow] + log_v[None, :], dim=1)
            result = result.index_put((underflow,), exact)
        return result

    def to_dense(self) -> torch.Tensor:
        return self._matrix


@dataclass
class _PairPattern:
    """Off-diagonal entries of a symmetric kernel, each unordered pair stored once.

    ``indptr`` and ``indices`` are CSR rows over positions: position p is point
    ``order[p]``, or point p when ``order`` is None. Each pair (p, q) appears in
    one of its two rows only.
    """

    indptr: np.ndarray
    indices: np.ndarray
    order: np.ndarray | None = None

    @property
    def n_points(self) -> int:
        return len(self.indptr) - 1

    @property
    def n_pairs(self) -> int:
        return len(self.indices)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the int64 point indices (first, second) of the pairs, in storage order."""
        first = np.repeat(np.arange(self.n_points, dtype=np.int64), np.diff(self.indptr))
        second = self.indices.astype(np.int64)
        if self.order is None:
            return first, second
        return self.order[first], self.order[second]


class SparseKernel(Kernel):
    """A kernel stored by its non-zero entries (rows, cols) in both triangles.

    Products cost O(nnz) and never form an N x N array. On the CPU, products
    that need no gradient go through scipy CSR matrices built once. Products
    that autograd must differentiate, and products on CUDA, use torch.

    :meth:`from_points` and :func:`mesh_graph_kernel` store each off-diagonal
    pair once, with the diagonal apart, and compute K v as
    diag(K) v + U v + U^T v for the strict upper part U. This takes half the
    memory of both triangles and needs no sort of the pairs. Their ``rows``,
    ``cols``, ``values`` and ``log_values`` list the diagonal, then each pair
    (i, j), then each pair (j, i); they are assembled on first use.

    Parameters
    ----------
    rows, cols : torch.Tensor
        int64 indices of the stored entries; (i, j) and (j, i) both stored.
    values : torch.Tensor, optional
        K_ij > 0 at the stored entries.
    log_values : torch.Tensor, optional
        log K_ij at the stored entries. Give exactly one of the two.
    n_points : int
        N.
    """

    def __init__(
        self,
        rows: torch.Tensor,
        cols: torch.Tensor,
        *,
        n_points: int,
        values: torch.Tensor | None = None,
        log_values: torch.Tensor | None = None,
    ) -> None:
        if (values is None) == (log_values is None):
            msg = "give exactly one of values and log_values"
            raise InputError(msg)
        self._rows = rows
        self._cols = cols
        self._log_values = log_values
        self._values = values if values is not None else torch.exp(log_values)
        self._pattern: _PairPattern | None = None
        self._set_common(n_points, self._values, has_log=log_values is not None)

    @classmethod
    def _from_pairs(
        cls,
        pattern: _PairPattern,
        *,
        diagonal: torch.Tensor,
        pair_values: torch.Tensor | None = None,
        pair_log_values: torch.Tensor | None = None,
        diagonal_log: torch.Tensor | None = None,
    ) -> SparseKernel:
        """Build a kernel from each off-diagonal pair stored once.

        ``pair_values`` (or ``pair_log_values``) follow the pattern's storage
        order; ``diagonal`` (and ``diagonal_log`` with log values) are K_ii for
        the points in their own order.
        """
        kernel = cls.__new__(cls)
        kernel._rows = kernel._cols = None
        kernel._values = kernel._log_values = None
        kernel._pattern = pattern
        kernel._pair_log_values = pair_log_values
        kernel._pair_values = (
            pair_values if pair_values is not None else torch.exp(pair_log_values)
        )
        kernel._diagonal = diagonal
        kernel._diagonal_log = diagonal_log
        kernel._set_common(
            pattern.n_points, kernel._pair_values, has_log=pair_log_values is not None
        )
        return kernel

    def _set_common(self, n_points: int, reference: torch.Tensor, *, has_log: bool) -> None:
        self.n_points = int(n_points)
        self.has_log = has_log
        self.dtype = reference.dtype
        self.device = reference.device
        self._csr = None
        self._scipy_parts = None

    # --- entries in both triangles -------------------------------------------------

    @property
    def rows(self) -> torch.Tensor:
        """int64 row index of each stored entry."""
        if self._rows is None:
            self._set_pairs_both_ways()
        return self._rows

    @property
    def cols(self) -> torch.Tensor:
        """int64 column index of each stored entry."""
        if self._cols is None:
            self._set_pairs_both_ways()
        return self._cols

    @property
    def values(self) -> torch.Tensor:
        """K_ij at the stored entries."""
        if self._values is None:
            pairs = self._pair_values
            self._values = torch.cat([self._diagonal, pairs, pairs])
        return self._values

    @property
    def log_values(self) -> torch.Tensor | None:
        """log K_ij at the stored entries, or None for a kernel given by its values."""
        if self._log_values is None and self.has_log and self._pattern is not None:
            pairs = self._pair_log_values
            self._log_values = torch.cat([self._diagonal_log, pairs, pairs])
        return self._log_values

    def _set_pairs_both_ways(self) -> None:
        first, second = (
            torch.from_numpy(index).to(self.device) for index in self._pattern.pairs()
        )
        diagonal = torch.arange(self.n_points, device=self.device)
        self._rows = torch.cat([diagonal, first, second])
        self._cols = torch.cat([diagonal, second, first])

    @property
    def nnz(self) -> int:
        """Number of stored entries, counting (i, j) and (j, i) apart."""
        if self._pattern is not None:
            return self.n_points + 2 * self._pattern.n_pairs
        return int(self._rows.numel())

    # --- construction --------------------------------------------------------------

    @classmethod
    def from_points(
        cls,
        points,
        sigma,
        *,
        kind: KernelKind = "gaussian",
        truncation: float = 1e-6,
    ) -> SparseKernel:
        """Build a truncated Gaussian or exponential kernel of a point cloud.

        Pairs farther apart than :func:`cutoff_radius` are dropped: the tail
        beyond it contains a fraction ``truncation`` of the kernel's 3-D integral.
        Neighbours come from :func:`sinkshape.neighbors.neighbor_pairs` on the
        CPU, and the pairs are stored with the points in its spatial order.
        """
        sigma = check_sigma(sigma)
        truncation = check_positive(truncation, name="truncation")
        x, _ = check_points(points)
        radius = cutoff_radius(sigma, kind, truncation)

        xc = _centered(x)
        neighbors = neighbor_pairs(xc.detach().cpu().numpy(), radius)
        pattern = _PairPattern(neighbors.indptr, neighbors.indices, neighbors.order)
        zeros = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        # k(x, x) = 1 for both kinds, so log K_ii = 0.
        diagonal_log = log_kernel_of_distance(zeros, sigma, kind)

        if torch.is_grad_enabled() and x.requires_grad:
            # Distances recomputed by torch, so that autograd reaches the points.
            first, second = (torch.from_numpy(index).to(x.device) for index in pattern.pairs())
            sq_distances = ((xc[first] - xc[second]) ** 2).sum(-1)
        else:
            sq_distances = torch.from_numpy(neighbors.sq_distances).to(x.device)
        return cls._from_pairs(
            pattern,
            pair_log_values=log_kernel_of_distance(sq_distances, sigma, kind),
            diagonal=torch.exp(diagonal_log),
            diagonal_log=diagonal_log,
        )

    @classmethod
    def from_matrix(cls, matrix, *, dtype: torch.dtype = torch.float64) -> SparseKernel:
        """Build a kernel from a symmetric non-negative scipy sparse matrix."""
        coo = scipy.sparse.coo_matrix(matrix)
        if coo.shape[0] != coo.shape[1]:
            msg = f"a kernel matrix must be square, got shape {coo.shape}"
            raise InputError(msg)
        coo.sum_duplicates()
        coo.eliminate_zeros()
        if coo.nnz and not np.isfinite(coo.data).all():
            bad = float(coo.data[~np.isfinite(coo.data)][0])
            msg = f"kernel entries must be finite, found {bad!r}"
            raise InputError(msg)
        if coo.nnz and coo.data.min() < 0:
            msg = f"kernel entries must be non-negative, found {float(coo.data.min())!r}"
            raise InputError(msg)
        if abs(coo - coo.T).max() > 1e-12 * max(1.0, abs(coo).max()):
            msg = "the kernel matrix is not symmetric; symmetrize it, e.g. (K + K.T) / 2"
            raise InputError(msg)

        rows = torch.from_numpy(coo.row.astype(np.int64))
        cols = torch.from_numpy(coo.col.astype(np.int64))
        values = torch.from_numpy(coo.data).to(dtype)
        return cls(rows, cols, n_points=coo.shape[0], values=values)

    # --- products ------------------------------------------------------------------

    def _csr_matrix(self) -> torch.Tensor:
        if self._csr is None:
            coo = torch.sparse_coo_tensor(
                torch.stack([self.rows, self.cols]),
                self.values.detach(),
                (self.n_points, self.n_points),
                check_invariants=False,
            )
            with warnings.catch_warnings():
                # torch warns that sparse CSR support is in beta at each conversion.
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
                self._csr = coo.coalesce().to_sparse_csr()
        return self._csr

    def _scipy_matrices(self):
        """Return (upper, diagonal) for pair storage, or (matrix, None), built once."""
        if self._scipy_parts is None:
            shape = (self.n_points, self.n_points)
            if self._pattern is not None:
                pattern = self._pattern
                upper = scipy.sparse.csr_matrix(
                    (self._pair_values.detach().cpu().numpy(), pattern.indices, pattern.indptr),
                    shape=shape,
                )
                diagonal = self._diagonal.detach().cpu().numpy()
                if pattern.order is not None:
                    diagonal = diagonal[pattern.order]
                self._scipy_parts = (upper, diagonal)
            else:
                # Duplicate entries are summed.
                matrix = scipy.sparse.csr_matrix(
                    (
                        self._values.detach().cpu().numpy(),
                        (self._rows.cpu().numpy(), self._cols.cpu().numpy()),
                    ),
                    shape=shape,
                )
                self._scipy_parts = (matrix, None)
        return self._scipy_parts

    def _values_require_grad(self) -> bool:
        if self._pattern is not None:
            return self._pair_values.requires_grad or self._diagonal.requires_grad
        return self._values.requires_grad

    def _needs_autograd(self, v: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (self._values_require_grad() or v.requires_grad)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        if self._needs_autograd(v):
            # Differentiable path: gather, weight and scatter back to the rows.
            gathered = v[self.cols] * (
                self.values if v.ndim == 1 else self.values[:, None]
            )
            out = torch.zeros(
                (self.n_points, *v.shape[1:]), dtype=v.dtype, device=v.device
            )
            return out.index_add(0, self.rows, gathered)

        if self.device.type == "cpu" and v.device.type == "cpu":
            return torch.from_numpy(self._scipy_matvec(v.detach().numpy()))

        product = self._csr_matrix() @ (v if v.ndim == 2 else v[:, None])
        return product if v.ndim == 2 else product[:, 0]

    def _scipy_matvec(self, array: np.ndarray) -> np.ndarray:
        # scipy's CSR products run on one core, but on 1M points they took 0.16 s
        # against 1.1 s for torch's sparse CSR product (scipy 1.17, torch 2.13,
        # benchmarks/sparse_kernels.py).
        matrix, diagonal = self._scipy_matrices()
        if diagonal is None:
            return np.asarray(matrix @ array, dtype=array.dtype)

        order = self._pattern.order
        ordered = array if order is None else array[order]
        diagonal = diagonal if ordered.ndim == 1 else diagonal[:, None]
        product = matrix @ ordered
        product += matrix.T @ ordered
        product += diagonal * ordered
        product = np.asarray(product, dtype=array.dtype)
        if order is None:
            return product
        result = np.empty_like(product)
        result[order] = product
        return result

    def log_matvec(self, log_v: torch.Tensor) -> torch.Tensor:
        if not self.has_log:
            return super().log_matvec(log_v)
        if self._needs_autograd(log_v):
            return _row_logsumexp(
                self.rows, self.log_values + log_v[self.cols], self.n_points
            )

        # A product on exp(log_v - max) is exact unless a row's sum falls into the
        # subnormal range. Only such rows take the log-sum-exp over their entries,
        # because it costs several times the product.
        log_v = log_v.detach()
        shift = log_v.max()
        sums = self.matvec(torch.exp(log_v - shift))

        finfo = torch.finfo(sums.dtype)
        underflow_mask = ~(sums > finfo.tiny / finfo.eps)
        result = torch.log(torch.where(underflow_mask, torch.ones_like(sums), sums)) + shift

        if bool(underflow_mask.any()):
            entries = underflow_mask[self.rows]
            exact = _row_logsumexp(
                self.rows[entries],
                self.log_values.detach()[entries] + log_v[self.cols[entries]],
                self.n_points,
            )
            result = torch.where(underflow_mask, exact, result)
        return result

    def to_dense(self) -> torch.Tensor:
        dense = torch.zeros(
            (self.n_points, self.n_points), dtype=self.dtype, device=self.device
        )
        return dense.index_put((self.rows, self.cols), self.values, accumulate=True)

    def to_scipy(self) -> scipy.sparse.csr_matrix:
        """Return K as a new scipy CSR matrix over the points, duplicate entries summed."""
        return scipy.sparse.csr_matrix(
            (
                self.values.detach().cpu().numpy(),
                (self.rows.cpu().numpy(), self.cols.cpu().numpy()),
            ),
            shape=(self.n_points, self.n_points),
        )


def _row_logsumexp(rows: torch.Tensor, terms: torch.Tensor, n_points: int) -> torch.Tensor:
    """Return log sum_k exp(terms_k) over the terms of each row; -inf for empty rows."""
    row_max = torch.full((n_points,), -math.inf, dtype=terms.dtype, device=terms.device)
    row_max = row_max.scatter_reduce(0, rows, terms.detach(), reduce="amax")
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))

    sums = torch.zeros_like(row_max).index_add(0, rows, torch.exp(terms - row_max[rows]))
    return torch.log(sums) + row_max


def radius_pairs(points: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Return all ordered pairs (i, j) with |x_i - x_j| <= radius, diagonal included."""
    neighbors = neighbor_pairs(np.asarray(points), radius)
    first, second = _PairPattern(neighbors.indptr, neighbors.indices, neighbors.order).pairs()
    diagonal = np.arange(len(neighbors.order), dtype=np.int64)
    return np.concatenate([diagonal, first, second]), np.concatenate([diagonal, second, first])


def mesh_edges(triangles: np.ndarray) -> np.ndarray:
    """Return the unique undirected edges (E, 2), i < j, of a triangle array, sorted.

    The edges come out in lexicographic order, like ``np.unique(edges, axis=0)``.
    """
    triangles = np.asarray(triangles, dtype=np.int64)
    if triangles.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    first, second = _upper_pattern(triangles, int(triangles.max()) + 1).pairs()
    return np.column_stack([first, second])


def _half_edges(triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the (start, end) vertices of each triangle side, degenerate sides left out."""
    starts = triangles.ravel()
    ends = triangles[:, [1, 2, 0]].ravel()
    proper = starts != ends
    return starts[proper], ends[proper]


def _adjacency(rows: np.ndarray, cols: np.ndarray, n_vertices: int) -> scipy.sparse.csr_matrix:
    """Return the CSR pattern of the pairs (rows, cols), duplicates merged, sorted in rows."""
    # The conversion to CSR is a counting sort over the rows, then a sort within
    # each short row, so it is linear in the number of pairs. On the 6 million
    # half-edges of a 1M-vertex mesh, np.unique(edges, axis=0) took 10 s and this
    # under 1.5 s (numpy 2.4, scipy 1.17, 2 shared cores).
    pattern = scipy.sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_vertices, n_vertices)
    )
    pattern.sum_duplicates()
    return pattern


def mesh_graph_kernel(
    points,
    triangles,
    *,
    edge_sigma: float | None = None,
) -> SparseKernel:
    """Build the one-ring kernel K = D_w + W of a triangle mesh.

    W_ij = exp(-|x_i - x_j|^2 / (2 h^2)) on each mesh edge (i, j), with
    h = ``edge_sigma``, by default the mean edge length, and D_w is the diagonal
    of the row sums of W. K is positive semi-definite, since it is the sum over
    edges of w_ij (e_i + e_j)(e_i + e_j)^T, so the normalized operator has its
    spectrum in [0, 1]. Weights follow the mesh connectivity, never the
    Euclidean neighbourhood, so surfaces that come close but do not share edges
    do not exchange signal. A vertex on no edge keeps a diagonal entry of 1.
    """
    x, _ = check_points(points)
    triangles = np.asarray(triangles)
    n = x.shape[0]
    if triangles.ndim != 2 or triangles.shape[1] != 3:
        msg = f"triangles must have shape (F, 3), got {triangles.shape}"
        raise InputError(msg)
    if triangles.size and (triangles.min() < 0 or triangles.max() >= n):
        msg = (
            f"triangles refer to vertex indices in [{triangles.min()}, {triangles.max()}]"
            f" but there are {n} points"
        )
        raise InputError(msg)

    # Each edge once, as the CSR rows of the strict upper triangle.
    pattern = _upper_pattern(np.asarray(triangles, dtype=np.int64).reshape(-1, 3), n)
    first, second = (torch.from_numpy(index).to(x.device) for index in pattern.pairs())

    xc = _centered(x)
    sq_lengths = ((xc[first] - xc[second]) ** 2).sum(-1)
    if edge_sigma is None:
        mean_length = float(torch.sqrt(sq_lengths.detach()).mean()) if len(first) else 1.0
        edge_sigma = mean_length if mean_length > 0 else 1.0
    edge_sigma = check_positive(edge_sigma, name="edge_sigma")
    weights = torch.exp(sq_lengths / (-2.0 * edge_sigma**2))

    degree = torch.zeros(n, dtype=x.dtype, device=x.device)
    degree = degree.index_add(0, first, weights).index_add(0, second, weights)
    # Isolated vertices keep K_ii = 1, so that the operator leaves them unchanged.
    degree = torch.where(degree > 0, degree, torch.ones_like(degree))
    return SparseKernel._from_pairs(pattern, pair_values=weights, diagonal=degree)


def _upper_pattern(triangles: np.ndarray, n_vertices: int) -> _PairPattern:
    if triangles.size == 0:
        empty = np.zeros(0, dtype=np.int32)
        return _PairPattern(np.zeros(n_vertices + 1, dtype=np.int32), empty)
    first, second = _half_edges(triangles)
    upper = _adjacency(np.minimum(first, second), np.maximum(first, second), n_vertices)
    return _PairPattern(upper.indptr, upper.indices)
