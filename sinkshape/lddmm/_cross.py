"""Rectangular kernel products between target points x and control points q.

Two reductions over the control points j, for each target point i:

- :func:`cross_kernel_product`: sum_j k(x_i, q_j) u_j;
- :func:`cross_kernel_mean`: sum_j w_ij u_j / sum_j w_ij with
  w_ij = k(x_i, q_j) exp(c_j), computed as a softmax over j of
  log k(x_i, q_j) + c_j, so that it stays finite where every k(x_i, q_j)
  underflows.

Both are differentiable twice in x, q, u and c, with dense, sparse (truncated)
and KeOps backends.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree

from sinkshape.kernels import KernelKind, cutoff_radius, log_kernel_of_distance

__all__ = [
    "cross_kernel_mean",
    "cross_kernel_product",
    "dense_log_kernel",
    "dense_sq_distances",
]

#: Entries of the (rows, N_q) kernel block built at once by the dense backend.
_DENSE_BLOCK_ELEMENTS = 2**23


def cross_kernel_product(
    targets: torch.Tensor,
    points: torch.Tensor,
    values: torch.Tensor,
    *,
    sigma: float,
    kind: KernelKind,
    backend: str = "dense",
    truncation: float = 1e-6,
) -> torch.Tensor:
    """Return sum_j k(x_i, q_j) u_j, shape (M, C), for values u of shape (N, C)."""
    backend = _resolve(backend, targets, points)
    if backend == "keops":
        return _keops_reduction(targets, points, values, None, sigma=sigma, kind=kind)
    if backend == "sparse":
        return _sparse_reduction(
            targets, points, values, None, sigma=sigma, kind=kind, truncation=truncation
        )
    return _dense_reduction(targets, points, values, None, sigma=sigma, kind=kind)


def cross_kernel_mean(
    targets: torch.Tensor,
    points: torch.Tensor,
    values: torch.Tensor,
    *,
    log_weights: torch.Tensor,
    sigma: float,
    kind: KernelKind,
    backend: str = "dense",
    truncation: float = 1e-6,
) -> torch.Tensor:
    """Return the mean of u_j with weights k(x_i, q_j) exp(c_j), shape (M, C).

    ``log_weights`` is c, shape (N,). The sparse backend averages over the
    control points within the truncation radius and always includes the nearest
    one, so a target far from every control point takes the value of the nearest.
    """
    backend = _resolve(backend, targets, points)
    if backend == "keops":
        return _keops_reduction(targets, points, values, log_weights, sigma=sigma, kind=kind)
    if backend == "sparse":
        return _sparse_reduction(
            targets, points, values, log_weights, sigma=sigma, kind=kind, truncation=truncation
        )
    return _dense_reduction(targets, points, values, log_weights, sigma=sigma, kind=kind)


def _resolve(backend: str, targets: torch.Tensor, points: torch.Tensor) -> str:
    if backend != "auto":
        return backend
    from sinkshape.diffusion import AUTO_DENSE_MAX_POINTS

    return "dense" if points.shape[0] <= AUTO_DENSE_MAX_POINTS else "sparse"


def dense_sq_distances(targets: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Return the (M, N) matrix of |x_i - q_j|^2, differentiable twice.

    It comes from |x|^2 + |q|^2 - 2 x.q, one matrix product, on coordinates
    centred at the detached mean of q. The cancellation error is about
    eps |x|^2, far below sigma^2 when sigma is a fair fraction of the shape's
    size; values are clamped at 0.
    """
    center = points.detach().mean(dim=0)
    x = targets - center
    q = points - center
    sq_distances = (x**2).sum(dim=1)[:, None] + (q**2).sum(dim=1)[None, :] - 2.0 * (x @ q.T)
    return sq_distances.clamp_min(0.0)


def dense_log_kernel(targets, points, sigma: float, kind: KernelKind) -> torch.Tensor:
    """Return the (M, N) matrix log k(x_i, q_j); see :func:`dense_sq_distances`."""
    return log_kernel_of_distance(dense_sq_distances(targets, points), sigma, kind)


def _dense_reduction(targets, points, values, log_weights, *, sigma, kind):
    block = max(1, _DENSE_BLOCK_ELEMENTS // max(1, points.shape[0]))
    blocks = []
    for start in range(0, targets.shape[0], block):
        log_kernel = dense_log_kernel(targets[start : start + block], points, sigma, kind)
        if log_weights is None:
            blocks.append(torch.exp(log_kernel) @ values)
        else:
            weights = torch.softmax(log_kernel + log_weights[None, :], dim=1)
            blocks.append(weights @ values)
    return torch.cat(blocks, dim=0)


def _cross_pairs(targets: np.ndarray, points: np.ndarray, radius: float, *, nearest: bool):
    """Return pairs (i, j) with |x_i - q_j| <= radius, plus each target's nearest q_j."""
    tree = cKDTree(points)
    neighbours = tree.query_ball_point(targets, radius, return_sorted=False)
    counts = np.fromiter((len(n) for n in neighbours), dtype=np.int64, count=len(neighbours))
    rows = np.repeat(np.arange(len(targets), dtype=np.int64), counts)
    cols = (
        np.concatenate([np.asarray(n, dtype=np.int64) for n in neighbours])
        if counts.sum()
        else np.zeros(0, dtype=np.int64)
    )
    if nearest:
        lonely = np.flatnonzero(counts == 0)
        if lonely.size:
            _, closest = tree.query(targets[lonely])
            rows = np.concatenate([rows, lonely])
            cols = np.concatenate([cols, np.asarray(closest, dtype=np.int64)])
    return rows, cols


def _sparse_reduction(targets, points, values, log_weights, *, sigma, kind, truncation):
    radius = cutoff_radius(sigma, kind, truncation)
    rows, cols = _cross_pairs(
        targets.detach().cpu().numpy(),
        points.detach().cpu().numpy(),
        radius,
        nearest=log_weights is not None,
    )
    rows = torch.from_numpy(rows).to(targets.device)
    cols = torch.from_numpy(cols).to(targets.device)

    center = points.detach().mean(dim=0)
    diff = (targets[rows] - center) - (points[cols] - center)
    log_terms = log_kernel_of_distance((diff**2).sum(-1), sigma, kind)
    n_targets = targets.shape[0]
    out_shape = (n_targets, values.shape[1])

    if log_weights is None:
        gathered = torch.exp(log_terms)[:, None] * values[cols]
        out = torch.zeros(out_shape, dtype=values.dtype, device=values.device)
        return out.index_add(0, rows, gathered)

    log_terms = log_terms + log_weights[cols]
    # Shift each row by its maximum, detached: the ratio does not depend on it.
    row_max = torch.full((n_targets,), -math.inf, dtype=log_terms.dtype, device=log_terms.device)
    row_max = row_max.scatter_reduce(0, rows, log_terms.detach(), reduce="amax")
    terms = torch.exp(log_terms - row_max[rows])

    numerator = torch.zeros(out_shape, dtype=values.dtype, device=values.device)
    numerator = numerator.index_add(0, rows, terms[:, None] * values[cols])
    denominator = torch.zeros(n_targets, dtype=terms.dtype, device=terms.device)
    denominator = denominator.index_add(0, rows, terms)
    return numerator / denominator[:, None]


def _keops_reduction(targets, points, values, log_weights, *, sigma, kind):
    from sinkshape.keops import _import_lazy_tensor

    lazy_tensor = _import_lazy_tensor()
    center = points.detach().mean(dim=0)
    scale = math.sqrt(2.0) * sigma if kind == "gaussian" else sigma
    x_i = lazy_tensor(((targets - center) / scale).contiguous()[:, None, :])
    q_j = lazy_tensor(((points - center) / scale).contiguous()[None, :, :])
    log_kernel = -x_i.sqdist(q_j) if kind == "gaussian" else -(x_i - q_j).norm2()
    u_j = lazy_tensor(values.contiguous()[None, :, :])

    if log_weights is None:
        return (log_kernel.exp() * u_j).sum(dim=1)

    # NOTE: one shift for all rows, so a target whose every kernel value
    # underflows (beyond about 37 sigma in float64 and 13 sigma in float32 for
    # the Gaussian) gets 0 / 0. The dense and sparse backends shift each row.
    shift = log_weights.detach().max()
    c_j = lazy_tensor((log_weights - shift).contiguous()[None, :, None])
    terms = (log_kernel + c_j).exp()
    numerator = (terms * u_j).sum(dim=1)
    denominator = terms.sum(dim=1)
    return numerator / denominator
