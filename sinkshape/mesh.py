"""Triangle meshes and point clouds: conversion, vertex masses and mesh checks.

Accepts :class:`pyvista.PolyData`, :class:`skshapes.PolyData` or arrays. pyvista
and skshapes are imported only when such an object is passed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from sinkshape._checks import check_points
from sinkshape.errors import InputError

__all__ = [
    "Surface",
    "as_surface",
    "enclosed_volume",
    "flipped_triangles",
    "triangle_areas",
    "triangle_normals",
    "vertex_areas",
]

logger = logging.getLogger(__name__)


@dataclass
class Surface:
    """Points of a surface or a cloud, with optional triangles and masses.

    Attributes
    ----------
    points : torch.Tensor
        (N, 3) coordinates.
    triangles : numpy.ndarray or None
        (F, 3) int64 vertex indices; None for a point cloud.
    masses : torch.Tensor
        Positive (N,) masses: lumped vertex areas on a mesh, 1 / N on a cloud,
        unless given.
    source : object
        The object the surface was read from, kept to build the output.
    from_numpy : bool
        Whether the points came as a numpy array or a mesh, rather than a tensor.
    """

    points: torch.Tensor
    triangles: np.ndarray | None
    masses: torch.Tensor
    source: object = None
    from_numpy: bool = True

    @property
    def n_points(self) -> int:
        """N, the number of points."""
        return self.points.shape[0]


def is_pyvista(data) -> bool:
    """Whether ``data`` is a pyvista or VTK object."""
    module = type(data).__module__
    return module.startswith("pyvista") or module.startswith("vtkmodules")


def is_skshapes(data) -> bool:
    """Whether ``data`` is a scikit-shapes object."""
    return type(data).__module__.startswith("skshapes")


def pyvista_triangles(mesh) -> np.ndarray:
    """Return the (F, 3) triangles of a pyvista PolyData, triangulating other polygons.

    Lines and vertex cells are ignored. The input is not modified.
    """
    if mesh.n_cells == 0 or mesh.faces.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if not mesh.is_all_triangles:
        # triangulate() keeps the points, so point arrays stay aligned with them.
        mesh = mesh.triangulate()
    return np.asarray(mesh.regular_faces, dtype=np.int64).reshape(-1, 3)


def as_surface(
    data,
    *,
    triangles=None,
    masses=None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Surface:
    """Read points, triangles and masses from a mesh or from arrays.

    Parameters
    ----------
    data : pyvista.PolyData, skshapes.PolyData or array-like
        A surface mesh, or (N, 3) points.
    triangles : array-like, optional
        (F, 3) vertex indices when ``data`` is an array.
    masses : array-like, optional
        Point masses; by default the lumped vertex areas of a mesh with triangles
        and 1 / N for a point cloud.
    dtype, device : optional
        Type and device of the returned tensors; float64 on the CPU by default for
        meshes.
    """
    source = data
    from_numpy = True
    if is_pyvista(data):
        if data.n_points == 0:
            msg = "the mesh is empty: it has no points"
            raise InputError(msg)
        points = np.asarray(data.points, dtype=np.float64)
        triangles = pyvista_triangles(data) if triangles is None else triangles
    elif is_skshapes(data):
        points = data.points.detach()
        if triangles is None and getattr(data, "triangles", None) is not None:
            triangles = data.triangles.detach().cpu().numpy()
        from_numpy = False
    else:
        points = data
        from_numpy = not isinstance(data, torch.Tensor)

    x, _ = check_points(points, dtype=dtype, device=device)
    if triangles is not None:
        triangles = check_triangles(triangles, n_points=x.shape[0])
        if len(triangles) == 0:
            triangles = None

    if masses is None:
        masses = vertex_areas(x, triangles) if triangles is not None else None
    from sinkshape._checks import check_masses

    masses = check_masses(masses, n_points=x.shape[0], like=x)
    return Surface(x, triangles, masses, source=source, from_numpy=from_numpy)


def check_triangles(triangles, *, n_points: int) -> np.ndarray:
    """Return ``triangles`` as an (F, 3) int64 array of valid vertex indices."""
    if isinstance(triangles, torch.Tensor):
        triangles = triangles.detach().cpu().numpy()
    triangles = np.asarray(triangles)
    if triangles.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if triangles.ndim != 2 or triangles.shape[1] != 3:
        msg = f"triangles must have shape (F, 3), got {triangles.shape}"
        raise InputError(msg)
    if not np.issubdtype(triangles.dtype, np.integer):
        msg = f"triangles must hold integer vertex indices, got dtype {triangles.dtype}"
        raise InputError(msg)
    if triangles.min() < 0 or triangles.max() >= n_points:
        msg = (
            f"triangles refer to vertex indices in [{triangles.min()}, {triangles.max()}]"
            f" but the mesh has {n_points} points"
        )
        raise InputError(msg)
    return triangles.astype(np.int64, copy=False)


def triangle_normals(points, triangles) -> torch.Tensor:
    """Return the (F, 3) area-weighted normals (cross products / 2) of the triangles."""
    x = points if isinstance(points, torch.Tensor) else torch.as_tensor(points)
    t = torch.as_tensor(np.asarray(triangles), device=x.device)
    a, b, c = x[t[:, 0]], x[t[:, 1]], x[t[:, 2]]
    return 0.5 * torch.linalg.cross(b - a, c - a)


def triangle_areas(points, triangles) -> torch.Tensor:
    """Return the (F,) areas of the triangles."""
    return torch.linalg.norm(triangle_normals(points, triangles), dim=1)


def vertex_areas(points, triangles) -> torch.Tensor:
    """Return lumped vertex areas: a third of the area of each triangle at the vertex.

    Masses must be positive. A vertex whose triangles all have zero area, or that
    no triangle uses, gets the mean vertex area of the mesh instead of zero, and
    a warning is logged with their count.
    """
    x, _ = check_points(points)
    triangles = check_triangles(triangles, n_points=x.shape[0])
    areas = triangle_areas(x, triangles)

    t = torch.as_tensor(triangles, device=x.device)
    masses = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for corner in range(3):
        masses = masses.index_add(0, t[:, corner], areas / 3.0)

    positive = masses > 0
    n_bad = int((~positive).sum())
    if n_bad:
        fill = masses[positive].mean() if bool(positive.any()) else torch.ones(())
        logger.warning(
            "%d vertices have zero area (unused or in degenerate triangles only); "
            "they get the mean vertex area %.3g as mass",
            n_bad,
            float(fill),
        )
        masses = torch.where(positive, masses, fill.to(masses))
    return masses


def flipped_triangles(points_before, points_after, triangles) -> np.ndarray:
    """Return the indices of triangles whose normal turned by more than 90 degrees.

    A triangle of zero area before or after counts as flipped only if its normal
    turned; degenerate triangles with no normal are ignored.
    """
    before = triangle_normals(torch.as_tensor(np.asarray(points_before)), triangles)
    after = triangle_normals(torch.as_tensor(np.asarray(points_after)), triangles)
    dots = (before * after).sum(dim=1)
    return torch.nonzero(dots < 0).flatten().cpu().numpy()


def enclosed_volume(points, triangles) -> float:
    """Return the signed volume enclosed by a closed, consistently oriented surface.

    The divergence theorem gives sum over triangles (a, b, c) of a . (b x c) / 6;
    it is positive for outward normals. On an open surface the value depends on
    the origin: use it only to compare shapes that share their boundary.
    """
    x = torch.as_tensor(np.asarray(points) if not isinstance(points, torch.Tensor) else points)
    x = x.to(torch.float64)
    x = x - x.mean(dim=0)
    t = torch.as_tensor(np.asarray(triangles), device=x.device)
    a, b, c = x[t[:, 0]], x[t[:, 1]], x[t[:, 2]]
    return float((a * torch.linalg.cross(b, c)).sum() / 6.0)
