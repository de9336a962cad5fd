"""Displacement fields sampled on a regular grid, stored in MRML grid transform nodes.

A registration moves each point x of the moving model to x + u(x). The grid
transform stores the displacement u at the nodes of an axis-aligned grid in world
(RAS) coordinates, in millimetres, and VTK interpolates it linearly between the
nodes. Outside the grid, VTK uses the displacement of the nearest grid node (checked
with VTK 9.6.2), so the grid extends past both models by a margin.

The node stores the field as its transform to parent, which is the modeling
direction: a model, markups or a volume placed under the node moves from the moving
position to the fixed one, and hardening the transform makes the move permanent.
For a volume, Slicer resamples with the inverse, which VTK computes by iteration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

__all__ = [
    "MAX_GRID_NODES",
    "add_grid_transform_node",
    "displacement_by_kernel",
    "grid_transform",
    "move_points",
    "sample_grid",
    "transform_points",
]

#: Largest grid sampled: 4 million nodes hold 96 MB of float64 displacements.
#: For a finer grid spacing, sinkshape.transforms.displacement_grid coarsens the
#: spacing until the grid fits.
MAX_GRID_NODES = 4_000_000

# A deformation may build an (M, Nc) kernel for M nodes and Nc control points:
# 8192 nodes and 2000 control points make 131 MB in float64.
_CHUNK_NODES = 8_192


def sample_grid(
    deform: Callable[[np.ndarray], np.ndarray],
    point_sets: Sequence[np.ndarray],
    *,
    spacing: float,
    margin: float,
    progress: Callable[[float], None] | None = None,
):
    """Sample ``deform(x) - x`` on a grid that covers ``point_sets`` plus ``margin`` mm.

    ``deform`` maps (M, 3) world points to their registered positions. It is
    called on chunks of nodes, and ``progress`` receives the fraction of nodes
    done after each chunk. Returns a ``sinkshape.transforms.DisplacementGrid``.
    """
    from sinkshape.transforms import displacement_grid

    def deform_in_chunks(nodes: np.ndarray) -> np.ndarray:
        moved = np.empty_like(nodes)
        for start in range(0, len(nodes), _CHUNK_NODES):
            stop = min(start + _CHUNK_NODES, len(nodes))
            moved[start:stop] = deform(nodes[start:stop])
            if progress is not None:
                progress(stop / len(nodes))
        return moved

    points = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 3) for p in point_sets])
    return displacement_grid(
        deform_in_chunks, points, spacing=spacing, margin=margin, max_points=MAX_GRID_NODES
    )


def displacement_by_kernel(
    points: np.ndarray,
    displacements: np.ndarray,
    *,
    bandwidth: float,
) -> Callable[[np.ndarray], np.ndarray]:
    """Return a deformation that extends displacements known at ``points`` to space.

    Each query point gets the Gaussian-weighted mean (bandwidth in mm) of the
    displacements of the points within 3 bandwidths, or the displacement of the
    nearest point when none is that close. This is a smoothed extension: at the
    points themselves it differs from the given displacements by about
    bandwidth^2 / 2 times their second derivative.
    """
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64)
    displacements = np.asarray(displacements, dtype=np.float64)
    tree = cKDTree(points)
    radius = 3.0 * bandwidth

    def deform(queries: np.ndarray) -> np.ndarray:
        queries = np.asarray(queries, dtype=np.float64)
        _, nearest = tree.query(queries)
        result = displacements[nearest].copy()

        neighbours = tree.query_ball_point(queries, r=radius)
        counts = np.fromiter((len(n) for n in neighbours), dtype=np.int64, count=len(queries))
        close = np.flatnonzero(counts)
        if close.size:
            rows = np.repeat(close, counts[close])
            columns = np.concatenate([neighbours[i] for i in close]).astype(np.int64)
            squared = ((queries[rows] - points[columns]) ** 2).sum(axis=1)
            weights = np.exp(-squared / (2.0 * bandwidth**2))
            totals = np.bincount(rows, weights=weights, minlength=len(queries))
            for axis in range(3):
                sums = np.bincount(
                    rows, weights=weights * displacements[columns, axis], minlength=len(queries)
                )
                result[close, axis] = sums[close] / totals[close]
        return queries + result

    return deform


def grid_transform(grid):
    """Return a vtkOrientedGridTransform that moves points by a DisplacementGrid.

    The grid axes are the world axes, so no direction matrix is set.
    """
    image = vtk.vtkImageData()
    image.SetOrigin(*grid.origin)
    image.SetSpacing(*grid.spacing)
    image.SetDimensions(*grid.shape)
    # DisplacementGrid indexes (i, j, k) with i slowest; VTK stores i fastest.
    vectors = np.ascontiguousarray(np.transpose(grid.displacement, (2, 1, 0, 3)).reshape(-1, 3))
    array = numpy_support.numpy_to_vtk(vectors.astype(np.float64), deep=True)
    array.SetName("displacement")
    image.GetPointData().SetScalars(array)

    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(image)
    transform.SetInterpolationModeToLinear()
    return transform


def add_grid_transform_node(scene, transform, *, name: str):
    """Add a vtkMRMLGridTransformNode that stores ``transform`` in the modeling direction."""
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", scene.GenerateUniqueName(name))
    node.SetAndObserveTransformToParent(transform)
    return node


def move_points(transform, points: np.ndarray) -> np.ndarray:
    """Return ``points`` (M, 3) moved by a VTK transform."""
    source = vtk.vtkPoints()
    source.SetData(numpy_support.numpy_to_vtk(np.asarray(points, dtype=np.float64), deep=True))
    moved = vtk.vtkPoints()
    transform.TransformPoints(source, moved)
    return numpy_support.vtk_to_numpy(moved.GetData()).astype(np.float64)


def transform_points(transform_node, points: np.ndarray) -> np.ndarray:
    """Return ``points`` moved by a transform node's transform to world."""
    to_world = vtk.vtkGeneralTransform()
    transform_node.GetTransformToWorld(to_world)
    return move_points(to_world, points)
