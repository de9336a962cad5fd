"""Triangle meshes and point clouds: conversion, vertex masses and mesh checks.

Accepts :class:`pyvista.PolyData`, :class:`vtkPolyData`, :class:`skshapes.PolyData`
or arrays. pyvista and skshapes are imported only when such an object is passed.

:func:`as_surface` handles defects of the input as the Python logging HOWTO
splits them. The caller should repair dropped non-finite vertices and
non-manifold edges and vertices, so these raise a :class:`MeshWarning`
(``warnings.warn``). sinkshape fully handles vertices with zero area and vertices
that no triangle uses, so these are logged.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse
import torch
from scipy.sparse.csgraph import connected_components

from sinkshape._checks import as_tensor, check_masses, check_points
from sinkshape.errors import InputError

__all__ = [
    "MeshWarning",
    "Surface",
    "as_surface",
    "enclosed_volume",
    "flipped_triangles",
    "non_manifold_edges",
    "non_manifold_vertices",
    "to_pyvista",
    "triangle_areas",
    "triangle_normals",
    "vertex_areas",
]

logger = logging.getLogger(__name__)

#: Ids listed in a warning or an error message; the count is always given in full.
_LISTED_IDS = 5

#: Name of the point array that maps output points to input points, as VTK's
#: extraction filters name it.
ORIGINAL_POINT_IDS = "vtkOriginalPointIds"


class MeshWarning(UserWarning):
    """The mesh has a defect that the caller should repair: sinkshape worked around it."""


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
    input_ids : numpy.ndarray or None
        (N,) index in the input of each point, when points were dropped
        (``as_surface(..., drop_invalid=True)``); None when the points are the
        input's.
    dropped_ids : numpy.ndarray
        Indices in the input of the dropped points; empty when none was dropped.
    """

    points: torch.Tensor
    triangles: np.ndarray | None
    masses: torch.Tensor
    source: object = None
    from_numpy: bool = True
    input_ids: np.ndarray | None = None
    dropped_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def n_points(self) -> int:
        """N, the number of points."""
        return self.points.shape[0]

    @property
    def unreferenced_ids(self) -> np.ndarray:
        """Indices of the points that no triangle uses; empty for a point cloud."""
        if self.triangles is None:
            return np.zeros(0, dtype=np.int64)
        used = np.zeros(self.n_points, dtype=bool)
        used[self.triangles.ravel()] = True
        return np.flatnonzero(~used)


def is_pyvista(data) -> bool:
    """Return whether ``data`` is a pyvista or VTK object."""
    module = type(data).__module__
    return module.startswith("pyvista") or module.startswith("vtkmodules")


def _as_pyvista_polydata(data):
    import pyvista

    if type(data).__module__.startswith("vtkmodules"):
        # pyvista.wrap shares the VTK arrays and adds point_data, faces and so on.
        data = pyvista.wrap(data)
    if not isinstance(data, pyvista.PolyData):
        msg = (
            f"a surface must be a pyvista.PolyData, got {type(data).__name__}; "
            "extract its surface first (mesh.extract_surface())"
        )
        raise InputError(msg)
    return data


def is_skshapes(data) -> bool:
    """Return whether ``data`` is a scikit-shapes object."""
    return type(data).__module__.startswith("skshapes")


def pyvista_triangles(mesh) -> np.ndarray:
    """Return the (F, 3) triangles of a pyvista PolyData, triangulating other polygons.

    Triangle strips are split into triangles; lines and vertex cells are ignored.
    The input is not modified.
    """
    if mesh.n_cells == 0 or (mesh.faces.size == 0 and mesh.strips.size == 0):
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
    drop_invalid: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Surface:
    """Read points, triangles and masses from a mesh or from arrays.

    Parameters
    ----------
    data : pyvista.PolyData, vtkPolyData, skshapes.PolyData or array-like
        A surface mesh, or (N, 3) points.
    triangles : array-like, optional
        (F, 3) vertex indices when ``data`` is an array.
    masses : array-like, optional
        Point masses; by default the lumped vertex areas of a mesh with triangles
        (see :func:`vertex_areas`) and 1 / N for a point cloud.
    drop_invalid : bool
        Drop the vertices with a NaN or infinite coordinate, and the triangles
        that use them, with a :class:`MeshWarning`. The surface's ``input_ids``
        then map its points to the input's. By default such a vertex raises an
        :class:`InputError` that names it.
    dtype, device : optional
        Type and device of the returned tensors; float64 on the CPU by default for
        meshes.

    Warns
    -----
    MeshWarning
        When vertices are dropped, and when the mesh has non-manifold edges or
        vertices (see :func:`non_manifold_edges`); the message names the first
        ids. Non-manifold meshes are still read: the graph kernel follows their
        edges as they are.
    """
    source = data
    from_numpy = True
    if is_pyvista(data):
        data = _as_pyvista_polydata(data)
        source = data
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

    x, _ = check_points(
        points,
        dtype=dtype,
        device=device,
        require_finite=not drop_invalid,
        fix=(
            "repair the mesh, or drop such vertices and their triangles with "
            "drop_invalid=True (--drop-invalid on the command line)"
        ),
    )
    if triangles is not None:
        triangles = check_triangles(triangles, n_points=x.shape[0])

    input_ids = None
    dropped_ids = np.zeros(0, dtype=np.int64)
    if drop_invalid:
        x, triangles, masses, input_ids, dropped_ids = _drop_nonfinite(x, triangles, masses)

    if triangles is not None and len(triangles) == 0:
        triangles = None
    if triangles is not None:
        _warn_non_manifold(triangles)

    if masses is None and triangles is not None:
        masses = vertex_areas(x, triangles)
    masses = check_masses(masses, n_points=x.shape[0], like=x)
    return Surface(
        x,
        triangles,
        masses,
        source=source,
        from_numpy=from_numpy,
        input_ids=input_ids,
        dropped_ids=dropped_ids,
    )


def _drop_nonfinite(x: torch.Tensor, triangles: np.ndarray | None, masses):
    finite = torch.isfinite(x).all(dim=1).cpu().numpy()
    dropped_ids = np.flatnonzero(~finite)
    if dropped_ids.size == 0:
        return x, triangles, masses, None, dropped_ids
    if dropped_ids.size == len(finite):
        msg = f"every one of the {len(finite)} vertices has a NaN or infinite coordinate"
        raise InputError(msg)

    input_ids = np.flatnonzero(finite)
    n_triangles = 0
    if triangles is not None:
        kept_triangles = finite[triangles].all(axis=1)
        n_triangles = int((~kept_triangles).sum())
        new_ids = np.cumsum(finite) - 1
        triangles = new_ids[triangles[kept_triangles]]
    if masses is not None:
        masses, _ = as_tensor(masses, name="masses")
        if masses.reshape(-1).shape[0] == len(finite):
            masses = masses.reshape(-1)[torch.from_numpy(input_ids)]

    warnings.warn(
        f"dropped {dropped_ids.size} vertices with a NaN or infinite coordinate "
        f"(first ids: {dropped_ids[:_LISTED_IDS].tolist()}) and the {n_triangles} "
        "triangles that use them; Surface.input_ids, and the point array "
        f"{ORIGINAL_POINT_IDS} of output meshes, map the remaining points to the input",
        MeshWarning,
        stacklevel=3,
    )
    index = torch.from_numpy(input_ids).to(x.device)
    return x[index], triangles, masses, input_ids, dropped_ids


def _warn_non_manifold(triangles: np.ndarray) -> None:
    edges = non_manifold_edges(triangles)
    vertices = non_manifold_vertices(triangles)
    defects = []
    if len(edges):
        defects.append(
            f"{len(edges)} edges shared by more than two triangles "
            f"(first: {edges[:_LISTED_IDS].tolist()})"
        )
    if len(vertices):
        defects.append(
            f"{len(vertices)} vertices where triangle fans meet without sharing an edge "
            f"(first: {vertices[:_LISTED_IDS].tolist()})"
        )
    if not defects:
        return
    warnings.warn(
        f"the mesh is not manifold: it has {' and '.join(defects)}; smoothing follows "
        "the mesh edges as they are, but repair the mesh if these are segmentation errors",
        MeshWarning,
        stacklevel=3,
    )


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
    """Compute lumped vertex areas: a third of the area of each triangle at the vertex.

    The masses are positive and finite, so that no division by a mass fails.
    A vertex whose triangles all have zero area, and a vertex that no triangle
    uses, get the smallest positive vertex area of the mesh. They then weigh as
    little as any real vertex, and a warning with their counts is logged. When
    no triangle has a positive area, every vertex gets 1 / N.
    :class:`~sinkshape.smoothing.Smoother` keeps vertices that no triangle uses
    where they are, so their mass only matters to callers that use the masses
    directly.
    """
    x, _ = check_points(points)
    triangles = check_triangles(triangles, n_points=x.shape[0])
    areas = triangle_areas(x, triangles)

    t = torch.as_tensor(triangles, device=x.device)
    masses = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for corner in range(3):
        masses = masses.index_add(0, t[:, corner], areas / 3.0)

    positive = masses > 0
    if bool(positive.all()):
        return masses

    if not bool(positive.any()):
        fill = torch.tensor(1.0 / x.shape[0], dtype=x.dtype, device=x.device)
        logger.warning(
            "no triangle has a positive area; every vertex gets the mass 1 / N = %.3g",
            float(fill),
        )
        return torch.where(positive, masses, fill)

    used = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    used[t.reshape(-1)] = True
    n_degenerate = int((used & ~positive).sum())
    n_unused = int((~used).sum())
    defects = []
    if n_degenerate:
        defects.append(f"{n_degenerate} vertices lie in zero-area triangles only")
    if n_unused:
        defects.append(f"{n_unused} vertices are used by no triangle")
    fill = masses[positive].min().detach()
    logger.warning(
        "%s; they get the mass %.3g, the smallest positive vertex area",
        " and ".join(defects),
        float(fill),
    )
    return torch.where(positive, masses, fill)


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


def _edge_incidences(triangles: np.ndarray):
    """Return, for each corner pair of each triangle, its edge key and corner ids.

    An edge (a, b) with a < b has key a * N + b, where N bounds the vertex ids.
    Edges from a vertex to itself (in triangles with a repeated vertex) are left out.
    """
    n = int(triangles.max()) + 1
    n_triangles = len(triangles)
    rows = np.arange(n_triangles, dtype=np.int64)
    keys, low_corners, high_corners, owners = [], [], [], []
    for first, second in ((0, 1), (1, 2), (2, 0)):
        a = triangles[:, first]
        b = triangles[:, second]
        proper = a != b
        low_corner = np.where(a < b, 3 * rows + first, 3 * rows + second)
        high_corner = np.where(a < b, 3 * rows + second, 3 * rows + first)
        keys.append((np.minimum(a, b) * n + np.maximum(a, b))[proper])
        low_corners.append(low_corner[proper])
        high_corners.append(high_corner[proper])
        owners.append(rows[proper])
    return (
        np.concatenate(keys),
        np.concatenate(low_corners),
        np.concatenate(high_corners),
        np.concatenate(owners),
        n,
    )


def _sorted_unique(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the sorted distinct values of an int64 array and their counts.

    A radix sort (``kind="stable"`` on integers) followed by a comparison of
    neighbours: numpy 2.4's hash-based ``np.unique`` took 3 s on 6 million
    edge keys where this takes 0.4 s.
    """
    if len(values) == 0:
        return values, np.zeros(0, dtype=np.int64)
    ordered = np.sort(values, kind="stable")
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    counts = np.diff(np.append(starts, len(ordered)))
    return ordered[starts], counts


def _unique_rows(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the distinct rows of the non-negative integer columns (first, second).

    Rows are packed into one int64 key when it cannot overflow, because
    ``np.unique(..., axis=0)`` sorts rows as opaque records, about 10 times slower
    (3 s for 6 million rows).
    """
    if len(first) == 0:
        return first, second
    span = int(second.max()) + 1
    if int(first.max()) < (2**62) // span:
        packed, _ = _sorted_unique(first * span + second)
        return packed // span, packed % span
    rows = np.unique(np.stack([first, second], axis=1), axis=0)
    return rows[:, 0], rows[:, 1]


def non_manifold_edges(triangles) -> np.ndarray:
    """Return the edges (E, 2), with i < j, that more than two triangles share.

    Each triangle counts once per edge, even with a repeated vertex.
    """
    triangles = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    if len(triangles) == 0:
        return np.zeros((0, 2), dtype=np.int64)

    keys, _, _, owners, n = _edge_incidences(triangles)
    edge_keys, _ = _unique_rows(keys, owners)
    unique_keys, counts = _sorted_unique(edge_keys)
    shared = unique_keys[counts > 2]
    return np.stack([shared // n, shared % n], axis=1)


def non_manifold_vertices(triangles) -> np.ndarray:
    """Return the vertices whose triangles form more than one fan.

    Around a manifold vertex, the triangles that use it are connected through
    the edges at that vertex: one disk, or one half-disk on a boundary. Two
    tetrahedra that share only a vertex give that vertex two separate fans
    (a bowtie). Vertices that no triangle uses are not listed.
    """
    triangles = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    if len(triangles) == 0:
        return np.zeros(0, dtype=np.int64)

    # Nodes are the corners (triangle f, position k), numbered 3 f + k. Two
    # corners of the same vertex are linked when their triangles share an edge
    # at that vertex, or when they belong to the same triangle.
    keys, low_corners, high_corners, _, _ = _edge_incidences(triangles)
    order = np.argsort(keys, kind="stable")
    keys, low_corners, high_corners = keys[order], low_corners[order], high_corners[order]
    same_edge = keys[1:] == keys[:-1]
    links = [
        (low_corners[:-1][same_edge], low_corners[1:][same_edge]),
        (high_corners[:-1][same_edge], high_corners[1:][same_edge]),
    ]
    rows = np.arange(len(triangles), dtype=np.int64)
    for first, second in ((0, 1), (1, 2), (2, 0)):
        repeated = triangles[:, first] == triangles[:, second]
        links.append((3 * rows[repeated] + first, 3 * rows[repeated] + second))

    sources = np.concatenate([link[0] for link in links])
    targets = np.concatenate([link[1] for link in links])
    n_corners = 3 * len(triangles)
    graph = scipy.sparse.coo_matrix(
        (np.ones(len(sources)), (sources, targets)), shape=(n_corners, n_corners)
    )
    _, labels = connected_components(graph, directed=False)

    corner_vertices = triangles.reshape(-1)
    fan_vertices, _ = _unique_rows(corner_vertices, labels.astype(np.int64))
    fan_counts = np.bincount(fan_vertices, minlength=int(corner_vertices.max()) + 1)
    return np.flatnonzero(fan_counts > 1)


def to_pyvista(surface: Surface):
    """Build a new pyvista mesh of ``surface``, to which results are written.

    For a pyvista source, a deep copy of it, with its cells and its point, cell
    and field arrays. Where points were dropped (``as_surface(...,
    drop_invalid=True)``), they are removed with every cell that uses them, and
    the point array ``vtkOriginalPointIds`` gives each remaining point's index in
    the source. For other sources, a triangle mesh of the surface's points, or a
    mesh of points only for a point cloud.
    """
    import pyvista

    source = surface.source
    if isinstance(source, pyvista.PolyData):
        if surface.input_ids is None:
            return source.copy(deep=True)
        return _remove_points(source, surface.input_ids)

    points = surface.points.detach().cpu().numpy()
    if surface.triangles is None:
        return pyvista.PolyData(points)
    faces = np.column_stack([np.full(len(surface.triangles), 3), surface.triangles])
    return pyvista.PolyData(points, faces.ravel())


def _split_cells(flat: np.ndarray) -> list[np.ndarray]:
    # A VTK cell array lists each cell as its size followed by its point ids.
    cells = []
    position = 0
    while position < len(flat):
        size = int(flat[position])
        cells.append(flat[position + 1 : position + 1 + size])
        position += size + 1
    return cells


def _remove_points(mesh, kept_ids: np.ndarray):
    """Return a copy of a PolyData with only ``kept_ids`` and the cells they span."""
    import pyvista

    new_ids = np.full(mesh.n_points, -1, dtype=np.int64)
    new_ids[kept_ids] = np.arange(len(kept_ids))

    # vtkPolyData numbers its cells vertices first, then lines, polygons and strips.
    cell_arrays = {}
    cell_is_kept = []
    for kind in ("verts", "lines", "faces", "strips"):
        cells = _split_cells(np.asarray(getattr(mesh, kind), dtype=np.int64))
        is_kept = [bool((new_ids[cell] >= 0).all()) for cell in cells]
        cell_is_kept.extend(is_kept)
        pieces = [
            np.concatenate([[len(cell)], new_ids[cell]])
            for cell, kept in zip(cells, is_kept)
            if kept
        ]
        cell_arrays[kind] = np.concatenate(pieces) if pieces else None

    output = pyvista.PolyData(
        np.asarray(mesh.points)[kept_ids],
        faces=cell_arrays["faces"],
        lines=cell_arrays["lines"],
        strips=cell_arrays["strips"],
        verts=cell_arrays["verts"],
    )
    cell_is_kept = np.asarray(cell_is_kept, dtype=bool)
    for name in mesh.point_data.keys():
        output.point_data[name] = np.asarray(mesh.point_data[name])[kept_ids]
    for name in mesh.cell_data.keys():
        output.cell_data[name] = np.asarray(mesh.cell_data[name])[cell_is_kept]
    for name in mesh.field_data.keys():
        output.field_data[name] = np.array(mesh.field_data[name])
    for attribute in ("active_scalars_name", "active_normals_name"):
        name = getattr(mesh.point_data, attribute)
        if name is not None:
            setattr(output.point_data, attribute, name)
    output.point_data[ORIGINAL_POINT_IDS] = kept_ids.astype(np.int64)
    return output
