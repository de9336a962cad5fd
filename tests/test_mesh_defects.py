"""Defective meshes: zero-area triangles, non-finite and unused vertices, non-manifold
edges and vertices, and polygons other than triangles."""

from __future__ import annotations

import logging
import re
import warnings

import numpy as np
import pytest
import pyvista as pv
import torch

from sinkshape import datasets
from sinkshape.errors import InputError
from sinkshape.mesh import (
    ORIGINAL_POINT_IDS,
    MeshWarning,
    as_surface,
    non_manifold_edges,
    non_manifold_vertices,
    pyvista_triangles,
    triangle_areas,
    vertex_areas,
)
from sinkshape.smoothing import Smoother, smooth_point_data, smooth_signal, smooth_surface

# A unit square split into two triangles: the lumped vertex areas are 1/3 at the
# corners on the diagonal (0 and 2) and 1/6 at the two others.
SQUARE_POINTS = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
SQUARE_TRIANGLES = np.array([[0, 1, 2], [0, 2, 3]])

# Two tetrahedra that share vertex 0 only.
TETRAHEDRON = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]])
BOWTIE_TRIANGLES = np.vstack([TETRAHEDRON, np.where(TETRAHEDRON == 0, 0, TETRAHEDRON + 3)])
BOWTIE_POINTS = np.array(
    [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, -1, 0], [0, 0, -1]],
    dtype=float,
)

# Three triangles that share the edge (0, 1).
BOOK_TRIANGLES = np.array([[0, 1, 2], [0, 1, 3], [0, 1, 4]])
BOOK_POINTS = np.array(
    [[0, 0, 0], [1, 0, 0], [0.5, 1, 0], [0.5, -1, 0], [0.5, 0, 1]], dtype=float
)


@pytest.fixture(scope="module")
def fixture_mesh():
    """fixture.stl: 5,500 points, three of its triangles have zero area."""
    return datasets.load("fixture")


def sphere(resolution=12):
    mesh = pv.Sphere(theta_resolution=resolution, phi_resolution=resolution)
    mesh.point_data["weight"] = np.arange(mesh.n_points, dtype=float)
    mesh.cell_data["label"] = np.arange(mesh.n_cells)
    return mesh


def mesh_warnings(caught):
    return [str(warning.message) for warning in caught if warning.category is MeshWarning]


# --- zero-area triangles -----------------------------------------------------------------


def test_fixture_has_zero_area_triangles(fixture_mesh):
    surface = as_surface(fixture_mesh)
    areas = triangle_areas(surface.points, surface.triangles)

    assert int((areas == 0).sum()) == 3


def test_fixture_masses_positive(fixture_mesh):
    masses = as_surface(fixture_mesh).masses

    assert bool(torch.isfinite(masses).all())
    assert float(masses.min()) > 0


def test_fixture_smoothing_finite(fixture_mesh):
    smoothed = smooth_surface(fixture_mesh, 1.0)

    assert np.isfinite(smoothed.points).all()
    assert smoothed.field_data["sinkshape_marginal_error"][0] <= 1e-6
    # NOTE: finite, but folded: the fixture's edge lengths span 1e-4 to 6.9 mm, and
    # the graph backend flips about 549 of its triangles at sigma = 1 mm.
    assert smoothed.field_data["sinkshape_flipped_triangles"][0] == pytest.approx(549, abs=10)


def test_degenerate_vertex_smallest_area(caplog):
    # Vertex 4 sits on vertex 1, so its only triangle has zero area.
    points = np.vstack([SQUARE_POINTS, SQUARE_POINTS[1]])
    triangles = np.vstack([SQUARE_TRIANGLES, [[4, 2, 1]]])

    with caplog.at_level(logging.WARNING, logger="sinkshape.mesh"):
        masses = vertex_areas(points, triangles).numpy()

    np.testing.assert_allclose(masses, [1 / 3, 1 / 6, 1 / 3, 1 / 6, 1 / 6], rtol=1e-15)
    assert caplog.messages == [
        "1 vertices lie in zero-area triangles only; they get the mass 0.167, "
        "the smallest positive vertex area"
    ]


def test_zero_areas_uniform_masses(caplog):
    points = np.full((4, 3), 2.0)

    with caplog.at_level(logging.WARNING, logger="sinkshape.mesh"):
        masses = vertex_areas(points, SQUARE_TRIANGLES).numpy()

    np.testing.assert_array_equal(masses, np.full(4, 0.25))
    assert caplog.messages == [
        "no triangle has a positive area; every vertex gets the mass 1 / N = 0.25"
    ]


def test_repeated_index_triangle_masses():
    # A triangle (0, 0, 1) has zero area and adds nothing to its vertices.
    triangles = np.vstack([SQUARE_TRIANGLES, [[0, 0, 1]]])

    masses = vertex_areas(SQUARE_POINTS, triangles).numpy()

    np.testing.assert_allclose(masses, [1 / 3, 1 / 6, 1 / 3, 1 / 6], rtol=1e-15)


# --- non-finite vertices -------------------------------------------------------------------


NONFINITE_FIX = (
    "repair the mesh, or drop such vertices and their triangles with "
    "drop_invalid=True (--drop-invalid on the command line)"
)


def test_nan_vertex_error_names_index():
    mesh = sphere()
    mesh.points[7] = [np.nan, 0.0, np.inf]

    with pytest.raises(InputError) as error:
        as_surface(mesh)

    assert str(error.value) == (
        "points: vertex 7 has a non-finite coordinate [nan, 0.0, inf] "
        f"(1 such vertices in all); {NONFINITE_FIX}"
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda points: Smoother(points, 0.5, triangles=SQUARE_TRIANGLES),
        lambda points: smooth_surface(points, 0.5, triangles=SQUARE_TRIANGLES),
        lambda points: smooth_signal(points, np.zeros(4), 0.5, backend="dense"),
    ],
    ids=["Smoother", "smooth_surface", "smooth_signal"],
)
def test_inf_vertex_error_names_index(call):
    points = torch.tensor(SQUARE_POINTS)
    points[2, 0] = -torch.inf

    with pytest.raises(InputError, match=re.escape("vertex 2 has a non-finite coordinate")):
        call(points)


def test_drop_invalid_index_map():
    mesh = sphere()
    mesh.points[[3, 20]] = np.nan

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        surface = as_surface(mesh, drop_invalid=True)

    expected_ids = np.delete(np.arange(mesh.n_points), [3, 20])
    np.testing.assert_array_equal(surface.input_ids, expected_ids)
    np.testing.assert_array_equal(surface.dropped_ids, [3, 20])
    np.testing.assert_array_equal(surface.points.numpy(), mesh.points[expected_ids])
    assert mesh_warnings(caught) == [
        "dropped 2 vertices with a NaN or infinite coordinate (first ids: [3, 20]) and "
        "the 12 triangles that use them; Surface.input_ids, and the point array "
        "vtkOriginalPointIds of output meshes, map the remaining points to the input"
    ]


def test_drop_invalid_triangles_refer_to_kept():
    mesh = sphere()
    mesh.points[[3, 20]] = np.nan

    with pytest.warns(MeshWarning):
        surface = as_surface(mesh, drop_invalid=True)

    original = surface.input_ids[surface.triangles]
    kept = pyvista_triangles(mesh)
    kept = kept[~np.isin(kept, [3, 20]).any(axis=1)]
    np.testing.assert_array_equal(original, kept)


def test_drop_invalid_surface_output():
    mesh = sphere()
    mesh.points[[3, 20]] = np.nan

    with pytest.warns(MeshWarning):
        smoothed = smooth_surface(mesh, 0.2, drop_invalid=True)

    kept = np.delete(np.arange(mesh.n_points), [3, 20])
    assert smoothed.n_points == mesh.n_points - 2
    assert smoothed.n_cells == mesh.n_cells - 12
    assert np.isfinite(smoothed.points).all()
    np.testing.assert_array_equal(smoothed.point_data[ORIGINAL_POINT_IDS], kept)
    np.testing.assert_array_equal(smoothed.point_data["weight"], kept.astype(float))
    kept_cells = np.flatnonzero(~np.isin(mesh.regular_faces, [3, 20]).any(axis=1))
    np.testing.assert_array_equal(smoothed.cell_data["label"], kept_cells)


def test_drop_invalid_cells_match_input():
    mesh = sphere()
    mesh.points[3] = np.inf

    with pytest.warns(MeshWarning):
        smoothed = smooth_surface(mesh, 0.2, drop_invalid=True)

    ids = smoothed.point_data[ORIGINAL_POINT_IDS]
    labels = smoothed.cell_data["label"]
    # Each output cell, mapped back to input ids, is the input cell of its label.
    input_faces = mesh.regular_faces
    np.testing.assert_array_equal(ids[smoothed.regular_faces], input_faces[labels])


def test_drop_invalid_skshapes_output():
    skshapes = pytest.importorskip("skshapes")
    mesh = sphere()
    points = torch.tensor(np.asarray(mesh.points))
    points[3] = torch.nan
    shape = skshapes.PolyData(points, triangles=torch.tensor(mesh.regular_faces))

    with pytest.warns(MeshWarning):
        smoothed = smooth_surface(shape, 0.2, drop_invalid=True)

    assert isinstance(smoothed, skshapes.PolyData)
    assert smoothed.points.shape == (mesh.n_points - 1, 3)
    assert bool(torch.isfinite(smoothed.points).all())


def test_drop_invalid_point_data():
    mesh = sphere()
    mesh.points[5] = np.nan

    with pytest.warns(MeshWarning):
        smoothed = smooth_point_data(mesh, 0.2, "weight", drop_invalid=True)

    assert smoothed.n_points == mesh.n_points - 1
    np.testing.assert_array_equal(smoothed.points, np.delete(mesh.points, 5, axis=0))
    assert np.isfinite(smoothed.point_data["weight"]).all()


def test_drop_invalid_signal_on_input_points():
    mesh = sphere()
    mesh.points[5] = np.nan
    signal = np.full(mesh.n_points, 2.0)

    with pytest.warns(MeshWarning):
        smoothed = smooth_signal(mesh, signal, 0.2, drop_invalid=True)

    assert smoothed.shape == (mesh.n_points - 1,)
    np.testing.assert_allclose(smoothed, 2.0, rtol=1e-12)


def test_drop_invalid_masses_follow_points():
    points = np.vstack([SQUARE_POINTS, [[np.nan, 0.0, 0.0]]])
    masses = np.array([1.0, 2.0, 3.0, 4.0, 5.0])

    with pytest.warns(MeshWarning):
        surface = as_surface(points, masses=masses, drop_invalid=True)

    np.testing.assert_array_equal(surface.masses.numpy(), [1.0, 2.0, 3.0, 4.0])


def test_drop_invalid_every_vertex():
    with pytest.raises(InputError) as error:
        as_surface(np.full((3, 3), np.nan), drop_invalid=True)

    assert str(error.value) == "every one of the 3 vertices has a NaN or infinite coordinate"


def test_drop_invalid_finite_mesh_unchanged():
    mesh = sphere()

    with warnings.catch_warnings():
        warnings.simplefilter("error", MeshWarning)
        surface = as_surface(mesh, drop_invalid=True)

    assert surface.input_ids is None
    assert surface.dropped_ids.size == 0


def test_nan_point_array_names_array():
    mesh = sphere()
    mesh.point_data["weight"][9] = np.nan

    with pytest.raises(InputError) as error:
        smooth_point_data(mesh, 0.2, "weight")

    assert str(error.value) == (
        "point array 'weight': signal has a NaN or infinite value at point 9 "
        "(1 such points in all); fill or drop them first"
    )


# --- vertices that no triangle uses --------------------------------------------------------


@pytest.fixture(scope="module")
def sphere_with_stray_point():
    """A sphere and the same sphere with an unused vertex 0.05 from its surface."""
    mesh = pv.Sphere(theta_resolution=16, phi_resolution=16)
    points = np.vstack([mesh.points, [[0.55, 0.0, 0.0]]])
    faces = np.column_stack([np.full(mesh.n_cells, 3), mesh.regular_faces]).ravel()
    return mesh, pv.PolyData(points, faces)


def test_unused_vertex_mass_logged(caplog):
    points = np.vstack([SQUARE_POINTS, [[5.0, 5.0, 5.0]]])

    with caplog.at_level(logging.WARNING, logger="sinkshape.mesh"):
        masses = vertex_areas(points, SQUARE_TRIANGLES).numpy()

    np.testing.assert_allclose(masses, [1 / 3, 1 / 6, 1 / 3, 1 / 6, 1 / 6], rtol=1e-15)
    assert caplog.messages == [
        "1 vertices are used by no triangle; they get the mass 0.167, the smallest "
        "positive vertex area"
    ]


def test_unused_vertex_listed(sphere_with_stray_point):
    _, stray = sphere_with_stray_point

    smoother = Smoother(stray, 0.1)

    np.testing.assert_array_equal(smoother.fixed_ids, [stray.n_points - 1])
    assert smoother.operator.n_points == stray.n_points - 1


def test_unused_vertex_smoothing_logged(sphere_with_stray_point, caplog):
    _, stray = sphere_with_stray_point

    with caplog.at_level(logging.WARNING, logger="sinkshape.smoothing"):
        Smoother(stray, 0.1)
    messages = [
        record.getMessage() for record in caplog.records if record.name == "sinkshape.smoothing"
    ]

    assert messages == [
        f"1 vertices are used by no triangle (first ids: [{stray.n_points - 1}]); "
        "smoothing keeps their values and positions"
    ]


@pytest.mark.parametrize("backend", ["graph", "dense"])
def test_unused_vertex_keeps_position(sphere_with_stray_point, backend):
    mesh, stray = sphere_with_stray_point

    smoothed = smooth_surface(stray, 0.1, backend=backend)
    reference = smooth_surface(mesh, 0.1, backend=backend)

    np.testing.assert_array_equal(smoothed.points[-1], stray.points[-1])
    np.testing.assert_allclose(smoothed.points[:-1], reference.points, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", ["graph", "dense"])
def test_unused_vertex_keeps_value(sphere_with_stray_point, backend):
    mesh, stray = sphere_with_stray_point
    signal = np.asarray(stray.points[:, 2], dtype=np.float64) + 1.0

    smoothed = smooth_signal(stray, signal, 0.1, backend=backend)
    reference = smooth_signal(mesh, signal[:-1], 0.1, backend=backend)

    assert smoothed[-1] == signal[-1]
    np.testing.assert_allclose(smoothed[:-1], reference, rtol=1e-12)


# --- non-manifold meshes -----------------------------------------------------------------


def test_bowtie_vertex_found():
    np.testing.assert_array_equal(non_manifold_vertices(BOWTIE_TRIANGLES), [0])
    assert non_manifold_edges(BOWTIE_TRIANGLES).shape == (0, 2)


def test_book_edge_found():
    np.testing.assert_array_equal(non_manifold_edges(BOOK_TRIANGLES), [[0, 1]])
    assert non_manifold_vertices(BOOK_TRIANGLES).size == 0


@pytest.mark.parametrize("name", ["aorta-surface", "fixture"])
def test_real_meshes_are_manifold(name):
    triangles = pyvista_triangles(datasets.load(name))

    assert non_manifold_edges(triangles).shape == (0, 2)
    assert non_manifold_vertices(triangles).size == 0


def test_open_fan_is_manifold():
    # Boundary vertices of an open square grid have a half-disk of triangles.
    grid = pv.Plane(i_resolution=4, j_resolution=4).triangulate()

    assert non_manifold_vertices(grid.regular_faces).size == 0


def test_bowtie_mesh_path_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        smoothed = smooth_surface(BOWTIE_POINTS, 0.5, triangles=BOWTIE_TRIANGLES)

    assert np.isfinite(smoothed).all()
    assert mesh_warnings(caught) == [
        "the mesh is not manifold: it has 1 vertices where triangle fans meet without "
        "sharing an edge (first: [0]); smoothing follows the mesh edges as they are, "
        "but repair the mesh if these are segmentation errors"
    ]


def test_book_mesh_path_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        smoothed = smooth_surface(BOOK_POINTS, 0.5, triangles=BOOK_TRIANGLES)

    assert np.isfinite(smoothed).all()
    assert mesh_warnings(caught) == [
        "the mesh is not manifold: it has 1 edges shared by more than two triangles "
        "(first: [[0, 1]]); smoothing follows the mesh edges as they are, but repair "
        "the mesh if these are segmentation errors"
    ]


@pytest.mark.parametrize("points", [BOWTIE_POINTS, BOOK_POINTS], ids=["bowtie", "book"])
def test_non_manifold_point_cloud_path(points):
    signal = np.arange(len(points), dtype=float)

    with warnings.catch_warnings():
        warnings.simplefilter("error", MeshWarning)
        smoother = Smoother(points, 0.5, backend="dense")
        smoothed = smoother.smooth(signal)

    assert smoother.operator.marginal_error <= 1e-6
    assert np.isfinite(smoothed).all()
    assert np.average(smoothed) == pytest.approx(np.average(signal), rel=1e-6)


# --- polygons other than triangles ---------------------------------------------------------


@pytest.fixture
def mixed_mesh():
    """Two quads, a pentagon and a triangle, with a point array and a cell array."""
    points = np.array(
        [
            [0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0], [1, 1, 0], [2, 1, 0],
            [3, 0.5, 0], [2.5, 1.5, 0], [1.5, 2, 0],
        ],
        dtype=float,
    )
    faces = [4, 0, 1, 4, 3, 4, 1, 2, 5, 4, 5, 2, 6, 7, 8, 5, 3, 4, 5, 8]
    mesh = pv.PolyData(points, faces)
    mesh.point_data["thickness"] = np.linspace(1.0, 2.0, mesh.n_points)
    mesh.cell_data["region"] = np.array([1, 2, 3, 4])
    return mesh


def test_mixed_polygons_triangulated(mixed_mesh):
    triangles = pyvista_triangles(mixed_mesh)

    # A polygon with k corners gives k - 2 triangles: 2 + 2 + 3 + 1.
    assert triangles.shape == (8, 3)
    assert set(np.unique(triangles)) == set(range(mixed_mesh.n_points))


def test_mixed_polygons_output_keeps_arrays(mixed_mesh):
    smoothed = smooth_surface(mixed_mesh, 0.5)

    np.testing.assert_array_equal(smoothed.faces, mixed_mesh.faces)
    np.testing.assert_array_equal(smoothed["thickness"], mixed_mesh["thickness"])
    np.testing.assert_array_equal(smoothed.cell_data["region"], [1, 2, 3, 4])


def test_mixed_polygons_point_data(mixed_mesh):
    smoothed = smooth_point_data(mixed_mesh, 0.5, "thickness")

    np.testing.assert_array_equal(smoothed.points, mixed_mesh.points)
    np.testing.assert_array_equal(smoothed.faces, mixed_mesh.faces)
    assert np.ptp(smoothed["thickness"]) < np.ptp(mixed_mesh["thickness"])


def test_strips_read_as_triangles():
    strips = pv.Plane(i_resolution=2, j_resolution=2).triangulate().strip()

    surface = as_surface(strips)

    assert surface.triangles.shape == (8, 3)


def test_vtk_polydata_accepted():
    from vtkmodules.vtkCommonDataModel import vtkPolyData

    mesh = sphere()
    plain = vtkPolyData()
    plain.ShallowCopy(mesh)

    surface = as_surface(plain)

    np.testing.assert_array_equal(surface.triangles, mesh.regular_faces)


def test_unstructured_grid_rejected():
    grid = sphere().cast_to_unstructured_grid()

    with pytest.raises(InputError) as error:
        as_surface(grid)

    assert str(error.value) == (
        "a surface must be a pyvista.PolyData, got UnstructuredGrid; "
        "extract its surface first (mesh.extract_surface())"
    )
