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
from typing import Literal

import numpy as np
import scipy.sparse
import torch
from scipy.spatial import cKDTree

from sinkshape._checks import as_tensor, check_points, check_positive, check_sigma
from sinkshape.errors import InputError

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
    """Distance beyond which a kernel holds a fraction ``truncation`` of its integral.

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
        # into the subnormal range; only such rows take the N-term log-sum-exp,
        # which costs several times the product.
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


class SparseKernel(Kernel):
    """A kernel stored by its non-zero entries (rows, cols) in both triangles.

    Products cost O(nnz) and never form an N x N array.

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

        self.rows = rows
        self.cols = cols
        self.n_points = int(n_points)
        self.has_log = log_values is not None
        self.log_values = log_values
        self.values = values if values is not None else torch.exp(log_values)
        self.dtype = self.values.dtype
        self.device = self.values.device
        self._csr = None

    @property
    def nnz(self) -> int:
        """Number of stored entries."""
        return int(self.rows.numel())

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
        beyond it holds a fraction ``truncation`` of the kernel's 3-D integral.
        Neighbours come from a k-d tree on the CPU.
        """
        sigma = check_sigma(sigma)
        truncation = check_positive(truncation, name="truncation")
        x, _ = check_points(points)
        radius = cutoff_radius(sigma, kind, truncation)

        rows, cols = radius_pairs(x.detach().cpu().numpy(), radius)
        rows = torch.from_numpy(rows).to(x.device)
        cols = torch.from_numpy(cols).to(x.device)

        xc = _centered(x)
        sq_distances = ((xc[rows] - xc[cols]) ** 2).sum(-1)
        log_values = log_kernel_of_distance(sq_distances, sigma, kind)
        return cls(rows, cols, n_points=x.shape[0], log_values=log_values)

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

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        if self.values.requires_grad or v.requires_grad:
            # Differentiable path: gather, weight and scatter back to the rows.
            gathered = v[self.cols] * (
                self.values if v.ndim == 1 else self.values[:, None]
            )
            out = torch.zeros(
                (self.n_points, *v.shape[1:]), dtype=v.dtype, device=v.device
            )
            return out.index_add(0, self.rows, gathered)

        product = self._csr_matrix() @ (v if v.ndim == 2 else v[:, None])
        return product if v.ndim == 2 else product[:, 0]

    def log_matvec(self, log_v: torch.Tensor) -> torch.Tensor:
        if self.log_values is None:
            return super().log_matvec(log_v)

        terms = self.log_values + log_v[self.cols]
        row_max = torch.full(
            (self.n_points,), -math.inf, dtype=terms.dtype, device=terms.device
        )
        row_max = row_max.scatter_reduce(0, self.rows, terms.detach(), reduce="amax")
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))

        sums = torch.zeros_like(row_max).index_add(
            0, self.rows, torch.exp(terms - row_max[self.rows])
        )
        return torch.log(sums) + row_max

    def to_dense(self) -> torch.Tensor:
        dense = torch.zeros(
            (self.n_points, self.n_points), dtype=self.dtype, device=self.device
        )
        return dense.index_put((self.rows, self.cols), self.values, accumulate=True)

    def to_scipy(self) -> scipy.sparse.csr_matrix:
        """Return K as a scipy CSR matrix."""
        return scipy.sparse.csr_matrix(
            (
                self.values.detach().cpu().numpy(),
                (self.rows.cpu().numpy(), self.cols.cpu().numpy()),
            ),
            shape=(self.n_points, self.n_points),
        )


def radius_pairs(points: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Return all ordered pairs (i, j) with |x_i - x_j| <= radius, diagonal included."""
    tree = cKDTree(points)
    pairs = tree.query_pairs(radius, output_type="ndarray")
    n = points.shape[0]
    diagonal = np.arange(n, dtype=np.int64)
    rows = np.concatenate([diagonal, pairs[:, 0], pairs[:, 1]]).astype(np.int64)
    cols = np.concatenate([diagonal, pairs[:, 1], pairs[:, 0]]).astype(np.int64)
    return rows, cols


def mesh_edges(triangles: np.ndarray) -> np.ndarray:
    """Return the unique undirected edges (E, 2), i < j, of a triangle array."""
    triangles = np.asarray(triangles, dtype=np.int64)
    edges = np.concatenate(
        [triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]]
    )
    edges = np.sort(edges, axis=1)
    edges = edges[edges[:, 0] != edges[:, 1]]
    return np.unique(edges, axis=0)


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

    edges = torch.from_numpy(mesh_edges(triangles)).to(x.device)
    xc = _centered(x)
    sq_lengths = ((xc[edges[:, 0]] - xc[edges[:, 1]]) ** 2).sum(-1)
    if edge_sigma is None:
        mean_length = torch.sqrt(sq_lengths.detach()).mean() if len(edges) else 1.0
        edge_sigma = float(mean_length) if float(mean_length) > 0 else 1.0
    edge_sigma = check_positive(edge_sigma, name="edge_sigma")
    weights = torch.exp(sq_lengths / (-2.0 * edge_sigma**2))

    degree = torch.zeros(n, dtype=x.dtype, device=x.device)
    degree = degree.index_add(0, edges[:, 0], weights).index_add(0, edges[:, 1], weights)
    # Isolated vertices keep K_ii = 1, so that the operator leaves them unchanged.
    degree = torch.where(degree > 0, degree, torch.ones_like(degree))

    diagonal = torch.arange(n, device=x.device)
    rows = torch.cat([diagonal, edges[:, 0], edges[:, 1]])
    cols = torch.cat([diagonal, edges[:, 1], edges[:, 0]])
    values = torch.cat([degree, weights, weights])
    return SparseKernel(rows, cols, n_points=n, values=values)
