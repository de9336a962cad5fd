"""Control points: choosing them on a shape and giving them masses."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from sinkshape.errors import InputError

__all__ = ["farthest_point_sampling", "lumped_masses"]


def farthest_point_sampling(points, n_samples: int, *, start: int = 0) -> np.ndarray:
    """Return the indices of ``n_samples`` points chosen by farthest-point sampling.

    Starting from ``points[start]``, each new sample is the point farthest from
    those chosen so far, which spreads the samples evenly over the shape.
    Costs O(n_samples N).
    """
    x = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    n_points = x.shape[0]
    if int(n_samples) != n_samples or not 1 <= n_samples <= n_points:
        msg = f"the number of control points must be an integer in [1, {n_points}], got {n_samples!r}"
        raise InputError(msg)

    chosen = np.empty(int(n_samples), dtype=np.int64)
    chosen[0] = start
    distances = ((x - x[start]) ** 2).sum(axis=1)
    for k in range(1, int(n_samples)):
        chosen[k] = int(np.argmax(distances))
        distances = np.minimum(distances, ((x - x[chosen[k]]) ** 2).sum(axis=1))
    return chosen


def lumped_masses(points, point_masses, control_points) -> torch.Tensor:
    """Give each control point the summed masses of the points nearest to it.

    The control masses then sum to the shape's total mass (its area for vertex
    areas). A control point that is nearest to no point gets the smallest
    positive lumped mass instead of zero, since the normalization needs
    positive masses.
    """
    points_np = points.detach().cpu().numpy()
    control_np = control_points.detach().cpu().numpy()
    _, nearest = cKDTree(control_np).query(points_np)
    masses = np.bincount(
        nearest,
        weights=point_masses.detach().cpu().numpy().astype(np.float64),
        minlength=len(control_np),
    )
    if not (masses > 0).any():
        msg = "the points have no positive mass to give to the control points"
        raise InputError(msg)
    masses = np.where(masses > 0, masses, masses[masses > 0].min())
    return torch.as_tensor(masses, dtype=control_points.dtype, device=control_points.device)
