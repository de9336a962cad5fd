"""Data terms of LDDMM registration: varifold, point-to-point and optimal transport.

Each loss is built once from the target and called on the deformed source points.
All three are scaled to behave like sum_i m_i |x_i - y_i|^2 (area times squared
length, mm^4 for a mesh in mm) for small displacements, so that one
regularization weight means the same thing whichever loss is used:

- point-to-point: sum_i m_i |x_i - y_i|^2, for meshes whose vertices correspond;
- varifold: ||S - T||^2 / (2 pi) for the unoriented varifolds S and T of the two
  surfaces with the kernel exp(-|x - y|^2 / (2 s^2)) (n_x . n_y)^2; two parallel
  planes of area A at a distance d << s give A d^2;
- optimal transport: 2 A S_eps, with S_eps the debiased Sinkhorn divergence between
  the normalized vertex-area measures for the cost |x - y|^2 / 2 and blur
  eps = s^2, and A the source area; close to A W_2^2.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from sinkshape._checks import check_positive
from sinkshape.errors import InputError
from sinkshape.lddmm._cross import dense_log_kernel, dense_sq_distances

__all__ = [
    "LossName",
    "OptimalTransportLoss",
    "PointToPointLoss",
    "VarifoldLoss",
    "make_loss",
]

LossName = Literal["varifold", "point-to-point", "optimal-transport"]

#: Kernel entries computed at once; larger blocks are recomputed in the backward
#: pass (checkpointing) instead of being stored.
_BLOCK_ELEMENTS = 2**24


class PointToPointLoss:
    """sum_i m_i |x_i - y_i|^2 between corresponding points.

    Parameters
    ----------
    target_points : torch.Tensor
        (N, D) positions y, in the order of the source points.
    masses : torch.Tensor
        (N,) weights m, the source vertex areas.
    """

    def __init__(self, target_points: torch.Tensor, masses: torch.Tensor) -> None:
        self.target_points = target_points
        self.masses = masses

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        return (self.masses * ((points - self.target_points) ** 2).sum(dim=1)).sum()


class VarifoldLoss:
    """Squared distance between the unoriented varifolds of two triangle meshes.

    Each triangle contributes a Dirac at its centroid c with its area a and unit
    normal n. The inner product of two meshes is
    sum_ij a_i a_j exp(-|c_i - c_j|^2 / (2 s^2)) (n_i . n_j)^2, the Gaussian
    kernel times the Cauchy-Binet kernel on normals, which ignores orientation.

    Parameters
    ----------
    source_triangles : numpy.ndarray
        (F, 3) triangles of the deformed mesh.
    target_points, target_triangles
        The target mesh.
    sigma : float
        Kernel width s, in the unit of the coordinates.
    """

    def __init__(self, source_triangles, target_points, target_triangles, *, sigma) -> None:
        self.sigma = check_positive(sigma, name="sigma")
        self.source_triangles = torch.as_tensor(np.asarray(source_triangles), dtype=torch.int64)
        target_triangles = torch.as_tensor(np.asarray(target_triangles), dtype=torch.int64)
        centers, normals = _centers_and_normals(target_points, target_triangles)
        self._target = (centers.detach(), normals.detach())
        self._target_norm = float(_varifold_inner(*self._target, *self._target, self.sigma))

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        centers, normals = _centers_and_normals(points, self.source_triangles.to(points.device))
        source_norm = _varifold_inner(centers, normals, centers, normals, self.sigma)
        cross = _varifold_inner(centers, normals, *self._target, self.sigma)
        return (source_norm - 2.0 * cross + self._target_norm) / (2.0 * math.pi)


class OptimalTransportLoss:
    """Debiased Sinkhorn divergence between two weighted point clouds.

    The potentials are solved without autograd, with epsilon-scaling: the blur
    starts at the diameter of the clouds and halves down to ``sigma``. The
    returned value is the dual objective at those potentials. Its gradient with
    respect to the points is the gradient of the entropic transport cost, by the
    envelope theorem, up to the solver tolerance.

    Parameters
    ----------
    source_masses : torch.Tensor
        (N,) weights of the deformed points, the source vertex areas.
    target_points, target_masses
        (M, D) target points and their (M,) weights.
    sigma : float
        Blur s: the entropic regularization is eps = s^2.
    tol : float
        Stop when the potentials move by less than tol * eps in one iteration.
    max_iter : int
        Maximum iterations per transport problem at the final blur.
    """

    def __init__(
        self,
        source_masses,
        target_points,
        target_masses,
        *,
        sigma,
        tol: float = 1e-6,
        max_iter: int = 1000,
    ) -> None:
        self.sigma = check_positive(sigma, name="sigma")
        self.epsilon = self.sigma**2
        self.tol = check_positive(tol, name="tol")
        self.max_iter = max_iter
        self.area = float(source_masses.sum())
        self.log_a = torch.log(source_masses / source_masses.sum())
        self.target_points = target_points.detach()
        self.log_b = torch.log(target_masses / target_masses.sum())
        self._target_self = float(self._transport(self.target_points, self.log_b, None, None))

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        cross = self._transport(points, self.log_a, self.target_points, self.log_b)
        source_self = self._transport(points, self.log_a, None, None)
        divergence = cross - 0.5 * source_self - 0.5 * self._target_self
        return 2.0 * self.area * divergence

    def _transport(self, x, log_a, y, log_b) -> torch.Tensor:
        """Entropic transport cost OT_eps(a, b) for the cost |x - y|^2 / 2; y=None for (a, a)."""
        symmetric = y is None
        if symmetric:
            y, log_b = x, log_a
        with torch.no_grad():
            cost = 0.5 * dense_sq_distances(x.detach(), y.detach())
            f, g = self._potentials(cost, log_a, log_b, symmetric=symmetric)

        # Dual objective at the fixed potentials: <a, f> + <b, g> - eps <a x b, e^(...) - 1>.
        eps = self.epsilon
        cost = 0.5 * dense_sq_distances(x, y)
        log_plan = (f / eps + log_a)[:, None] + (g / eps + log_b)[None, :] - cost / eps
        value = (log_a.exp() * f).sum() + (log_b.exp() * g).sum()
        return value - eps * (log_plan.exp().sum() - 1.0)

    def _potentials(self, cost, log_a, log_b, *, symmetric):
        def softmin(eps, potential, log_weights, matrix):
            return -eps * torch.logsumexp((potential / eps + log_weights)[None, :] - matrix / eps, dim=1)

        # Blurs from the largest cost down to eps, halving: each level starts
        # from the previous potentials, so the last level needs few iterations.
        blurs = []
        blur = max(float(cost.max()), self.epsilon)
        while blur > self.epsilon:
            blurs.append(blur)
            blur *= 0.5
        blurs.extend([self.epsilon] * self.max_iter)

        f = torch.zeros_like(log_a)
        g = torch.zeros_like(log_b)
        for eps in blurs:
            # Averaged updates: the symmetric problem oscillates under plain ones.
            f_new = 0.5 * (f + softmin(eps, g, log_b, cost))
            g_new = f_new if symmetric else 0.5 * (g + softmin(eps, f, log_a, cost.T))
            change = max(float((f_new - f).abs().max()), float((g_new - g).abs().max()))
            f, g = f_new, g_new
            if eps == self.epsilon and change <= self.tol * self.epsilon:
                break
        return f, g


def make_loss(
    name: LossName,
    *,
    sigma: float,
    source_triangles,
    source_masses: torch.Tensor,
    target_points: torch.Tensor,
    target_triangles,
    target_masses: torch.Tensor,
):
    """Build a loss by name for a source mesh and a target mesh."""
    if name == "point-to-point":
        if target_points.shape[0] != source_masses.shape[0]:
            msg = (
                f"the point-to-point loss needs corresponding vertices, but the source has "
                f"{source_masses.shape[0]} points and the target {target_points.shape[0]}; "
                "use the varifold or optimal-transport loss"
            )
            raise InputError(msg)
        return PointToPointLoss(target_points, source_masses)
    if name == "varifold":
        if source_triangles is None or target_triangles is None:
            msg = "the varifold loss needs triangle meshes; use optimal-transport for point clouds"
            raise InputError(msg)
        return VarifoldLoss(source_triangles, target_points, target_triangles, sigma=sigma)
    if name == "optimal-transport":
        return OptimalTransportLoss(source_masses, target_points, target_masses, sigma=sigma)
    msg = f"loss must be 'varifold', 'point-to-point' or 'optimal-transport', got {name!r}"
    raise InputError(msg)


def _centers_and_normals(points, triangles):
    a, b, c = points[triangles[:, 0]], points[triangles[:, 1]], points[triangles[:, 2]]
    centers = (a + b + c) / 3.0
    normals = 0.5 * torch.linalg.cross(b - a, c - a)
    return centers, normals


def _normal_features(normals: torch.Tensor) -> torch.Tensor:
    """Return a N N^T / |N|^2 = N N^T / a, flattened to (F, 9), for area-weighted normals N.

    Then <F_i, F_j> = a_i a_j (n_i . n_j)^2, the Cauchy-Binet kernel on unit
    normals times the areas, and the varifold inner product is sum_ij K_ij <F_i, F_j>.
    """
    areas = normals.norm(dim=1, keepdim=True).clamp_min(torch.finfo(normals.dtype).tiny)
    return (normals[:, :, None] * normals[:, None, :]).reshape(-1, 9) / areas


def _varifold_block(centers1, features1, centers2, features2, sigma):
    kernel = torch.exp(dense_log_kernel(centers1, centers2, sigma, "gaussian"))
    return (features1 * (kernel @ features2)).sum()


def _varifold_inner(centers1, normals1, centers2, normals2, sigma) -> torch.Tensor:
    features1 = _normal_features(normals1)
    features2 = _normal_features(normals2)
    if centers1.shape[0] * centers2.shape[0] <= _BLOCK_ELEMENTS:
        return _varifold_block(centers1, features1, centers2, features2, sigma)

    block = max(1, _BLOCK_ELEMENTS // max(1, centers2.shape[0]))
    total = centers1.new_zeros(())
    needs_grad = torch.is_grad_enabled() and (centers1.requires_grad or centers2.requires_grad)
    for start in range(0, centers1.shape[0], block):
        rows = slice(start, start + block)
        args = (centers1[rows], features1[rows], centers2, features2, sigma)
        if needs_grad:
            # Recompute each block in the backward pass rather than storing it.
            total = total + checkpoint(_varifold_block, *args, use_reentrant=False)
        else:
            total = total + _varifold_block(*args)
    return total
