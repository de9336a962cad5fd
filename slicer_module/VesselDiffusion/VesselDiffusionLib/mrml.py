"""Copy surfaces out of MRML nodes, and write results into new nodes.

Everything that reads the scene or writes to it lives here and runs on the thread
that owns the scene (the GUI thread inside Slicer). The copies it returns hold only
numpy arrays and VTK data objects, so the numerical work can run on another thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

__all__ = [
    "SurfaceData",
    "add_model_node",
    "add_table_node",
    "numeric_point_array_names",
    "polydata_with_points",
    "surface_distances",
    "surface_from_model",
    "surface_from_segment",
]


@dataclass
class SurfaceData:
    """A triangle surface copied out of the scene.

    Attributes
    ----------
    name : str
        Name of the node (and segment) it came from.
    polydata : vtk.vtkPolyData
        Deep copy of the surface, in the node's own coordinates, or in world
        coordinates when it was read with ``world=True``.
    points : numpy.ndarray
        (N, 3) float64 coordinates of ``polydata``, in mm.
    triangles : numpy.ndarray
        (F, 3) int64 vertex indices; polygons with more than three vertices and
        triangle strips are split into triangles.
    parent_transform_id : str or None
        ID of the transform node the source node sits under. None when there is
        none, or when the surface was read in world coordinates.
    color : tuple of float or None
        Display color of the source node, if it has one.
    """

    name: str
    polydata: vtk.vtkPolyData
    points: np.ndarray
    triangles: np.ndarray
    parent_transform_id: str | None
    color: tuple[float, float, float] | None = None


def surface_from_model(node, *, world: bool = False) -> SurfaceData:
    """Copy the surface of a vtkMRMLModelNode.

    With ``world=True`` the parent transforms are applied, so that surfaces under
    different transforms can be compared.
    """
    if node is None:
        msg = "no model selected; select an input model"
        raise ValueError(msg)
    source = node.GetPolyData()
    if source is None or source.GetNumberOfPoints() == 0:
        msg = f"model {node.GetName()!r} is empty: it has no points"
        raise ValueError(msg)

    polydata = vtk.vtkPolyData()
    polydata.DeepCopy(source)
    display = node.GetDisplayNode()
    color = tuple(display.GetColor()) if display is not None else None
    return _surface(node, node.GetName(), polydata, color=color, world=world)


def surface_from_segment(segmentation_node, segment_id: str, *, world: bool = False) -> SurfaceData:
    """Copy the closed surface of one segment.

    When the segmentation has no closed surface representation yet, it is
    computed for this copy only, and the segmentation node is left unchanged.
    """
    if segmentation_node is None:
        msg = "no segmentation selected; select a segmentation and a segment"
        raise ValueError(msg)
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id or "")
    if segment is None:
        msg = (
            f"segment {segment_id!r} not found in segmentation "
            f"{segmentation_node.GetName()!r}; select one of its segments"
        )
        raise ValueError(msg)

    polydata = vtk.vtkPolyData()
    converted = slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentClosedSurfaceRepresentation(
        segmentation_node, segment_id, polydata, False
    )
    if not converted or polydata.GetNumberOfPoints() == 0:
        msg = (
            f"segment {segment.GetName()!r} has no closed surface; check that the "
            "segment is not empty"
        )
        raise ValueError(msg)

    name = f"{segmentation_node.GetName()} {segment.GetName()}"
    return _surface(segmentation_node, name, polydata, color=tuple(segment.GetColor()), world=world)


def _surface(node, name, polydata, *, color, world: bool) -> SurfaceData:
    parent = node.GetParentTransformNode()
    parent_id = parent.GetID() if parent is not None else None
    if world and parent is not None:
        polydata = _to_world(polydata, parent)
        parent_id = None

    points = numpy_support.vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64)
    triangles = _triangles(polydata)
    if len(triangles) == 0:
        msg = f"{name!r} has no triangles; smoothing and registration need a surface mesh"
        raise ValueError(msg)
    return SurfaceData(name, polydata, points, triangles, parent_id, color)


def _to_world(polydata, parent_transform_node):
    to_world = vtk.vtkGeneralTransform()
    parent_transform_node.GetTransformToWorld(to_world)
    transformer = vtk.vtkTransformPolyDataFilter()
    transformer.SetInputData(polydata)
    transformer.SetTransform(to_world)
    transformer.Update()
    world = vtk.vtkPolyData()
    world.DeepCopy(transformer.GetOutput())
    return world


def _triangles(polydata) -> np.ndarray:
    polys = polydata.GetPolys()
    only_triangles = (
        polydata.GetNumberOfStrips() == 0
        and polys.GetNumberOfCells() > 0
        and polys.IsHomogeneous() == 3
    )
    if not only_triangles:
        # vtkTriangleFilter keeps the points, so the indices still refer to them.
        triangulate = vtk.vtkTriangleFilter()
        triangulate.SetInputData(polydata)
        triangulate.PassVertsOff()
        triangulate.PassLinesOff()
        triangulate.Update()
        polys = triangulate.GetOutput().GetPolys()
    if polys.GetNumberOfCells() == 0:
        return np.zeros((0, 3), dtype=np.int64)
    connectivity = numpy_support.vtk_to_numpy(polys.GetConnectivityArray())
    return connectivity.astype(np.int64).reshape(-1, 3)


def numeric_point_array_names(node) -> list[str]:
    """Return the names of the numeric point arrays of a model node."""
    polydata = node.GetPolyData() if node is not None else None
    if polydata is None:
        return []
    point_data = polydata.GetPointData()
    names = []
    for index in range(point_data.GetNumberOfArrays()):
        array = point_data.GetArray(index)
        if array is not None and array.GetName():
            names.append(array.GetName())
    return names


def polydata_with_points(surface: SurfaceData, points: np.ndarray) -> vtk.vtkPolyData:
    """Return a copy of the surface's polydata with new point coordinates.

    Point normals, if any, are computed again for the new points. Cell normals
    would be stale too and are removed.
    """
    polydata = vtk.vtkPolyData()
    polydata.DeepCopy(surface.polydata)
    vtk_points = vtk.vtkPoints()
    vtk_points.SetData(numpy_support.numpy_to_vtk(np.asarray(points, dtype=np.float64), deep=True))
    polydata.SetPoints(vtk_points)

    if polydata.GetCellData().GetNormals() is not None:
        polydata.GetCellData().SetNormals(None)
    old_normals = polydata.GetPointData().GetNormals()
    if old_normals is not None:
        # vtkPolyDataNormals (VTK 9.6) passes existing normals through unchanged,
        # so the stale ones are removed first.
        name = old_normals.GetName()
        polydata.GetPointData().SetNormals(None)
        if name:
            polydata.GetPointData().RemoveArray(name)
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputData(polydata)
        normals.SplittingOff()
        normals.ConsistencyOff()
        normals.ComputePointNormalsOn()
        normals.ComputeCellNormalsOff()
        normals.Update()
        new_normals = normals.GetOutput().GetPointData().GetNormals()
        new_normals.SetName(name)
        polydata.GetPointData().SetNormals(new_normals)
    return polydata


def add_model_node(
    scene,
    polydata,
    *,
    name: str,
    parent_transform_id: str | None = None,
    color: Sequence[float] | None = None,
):
    """Add a new vtkMRMLModelNode that shows ``polydata``."""
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", scene.GenerateUniqueName(name))
    node.SetAndObservePolyData(polydata)
    node.CreateDefaultDisplayNodes()
    if color is not None:
        node.GetDisplayNode().SetColor(*color)
    if parent_transform_id is not None:
        node.SetAndObserveTransformNodeID(parent_transform_id)
    return node


def add_table_node(scene, *, name: str, labels: Sequence[str], columns: dict[str, Sequence[float]]):
    """Add a vtkMRMLTableNode with a text column "Measure" and numeric columns."""
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    table = node.GetTable()

    measure = vtk.vtkStringArray()
    measure.SetName("Measure")
    for label in labels:
        measure.InsertNextValue(label)
    table.AddColumn(measure)

    for column_name, values in columns.items():
        column = vtk.vtkDoubleArray()
        column.SetName(column_name)
        for value in values:
            column.InsertNextValue(float(value))
        table.AddColumn(column)
        node.SetColumnUnitLabel(column_name, "mm")
    node.Modified()
    return node


def surface_distances(first, second) -> tuple[np.ndarray, np.ndarray]:
    """Return the distances from each vertex of one surface to the other surface.

    Both arguments are vtkPolyData in the same coordinates. The first array
    contains, for each vertex of ``first``, the distance in mm to the closest point
    of ``second``, on a vertex, an edge or inside a triangle. The second array
    contains the distances the other way round.
    """
    distance = vtk.vtkDistancePolyDataFilter()
    distance.SetInputData(0, first)
    distance.SetInputData(1, second)
    distance.SignedDistanceOff()
    distance.ComputeSecondDistanceOn()
    distance.ComputeCellCenterDistanceOff()
    distance.Update()

    to_second = distance.GetOutput().GetPointData().GetArray("Distance")
    to_first = distance.GetSecondDistanceOutput().GetPointData().GetArray("Distance")
    return (
        numpy_support.vtk_to_numpy(to_second).astype(np.float64),
        numpy_support.vtk_to_numpy(to_first).astype(np.float64),
    )
