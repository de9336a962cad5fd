"""Displacement grids and the NRRD grid transforms that 3D Slicer loads."""

from __future__ import annotations

import numpy as np
import pytest
import slicerio

from sinkshape.errors import InputError
from sinkshape.transforms import DisplacementGrid, displacement_grid, write_grid_transform

SHIFT = np.array([1.0, 2.0, 3.0])
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


def affine(points: np.ndarray) -> np.ndarray:
    return points + SHIFT + 0.01 * points


@pytest.fixture
def cloud():
    return np.random.default_rng(0).uniform(-10.0, 10.0, size=(200, 3))


@pytest.fixture
def grid(cloud):
    return displacement_grid(affine, cloud, spacing=2.0, margin=1.0)


def test_grid_covers_points(grid, cloud):
    upper = grid.origin + (np.array(grid.shape) - 1) * grid.spacing

    assert (grid.origin <= cloud.min(axis=0) - 1.0 + 1e-9).all()
    assert (upper >= cloud.max(axis=0) + 1.0 - 1e-9).all()


def test_grid_stores_displacement(grid):
    points = grid.points()

    np.testing.assert_allclose(grid.displacement.reshape(-1, 3), affine(points) - points)


def test_grid_point_order(grid):
    points = grid.points().reshape(*grid.shape, 3)

    np.testing.assert_allclose(points[1, 0, 0] - points[0, 0, 0], [2.0, 0.0, 0.0])
    np.testing.assert_allclose(points[0, 0, 1] - points[0, 0, 0], [0.0, 0.0, 2.0])


def test_grid_spacing_coarsened(cloud):
    grid = displacement_grid(affine, cloud, spacing=0.01, max_points=1000)

    assert np.prod(grid.shape) <= 1000
    assert grid.spacing[0] > 0.01


def test_grid_default_spacing_fits(cloud):
    grid = displacement_grid(affine, cloud, max_points=5000)

    assert np.prod(grid.shape) <= 5000


def test_grid_rejects_bad_points():
    with pytest.raises(InputError, match="points must have shape"):
        displacement_grid(affine, np.zeros((4, 2)))


def test_nrrd_header_fields(tmp_path, grid):
    path = tmp_path / "transform.nrrd"
    write_grid_transform(path, grid)

    volume = slicerio.read_volume(str(path))

    assert volume["displacementFieldType"] == "modeling"
    assert volume["intentCode"] == "1006"
    assert volume["component"]["kind"] == "vector"
    assert volume["voxels"].shape == (3, *grid.shape)


def test_nrrd_lps_values(tmp_path, grid, cloud):
    path = tmp_path / "transform.nrrd"
    write_grid_transform(path, grid, coordinates="LPS")
    volume = slicerio.read_volume(str(path))

    sampled = slicerio.sample_volume(volume, cloud)

    np.testing.assert_allclose(sampled, affine(cloud) - cloud, atol=1e-9)


def test_nrrd_ras_converted(tmp_path, grid, cloud):
    path = tmp_path / "transform.nrrd"
    write_grid_transform(path, grid, coordinates="RAS")
    volume = slicerio.read_volume(str(path))

    # A point at RAS position x is at LPS position (-x, -y, z), and so is its
    # displacement vector.
    sampled = slicerio.sample_volume(volume, cloud * RAS_TO_LPS)

    np.testing.assert_allclose(sampled, (affine(cloud) - cloud) * RAS_TO_LPS, atol=1e-9)


def test_nrrd_ras_geometry(tmp_path, grid):
    path = tmp_path / "transform.nrrd"
    write_grid_transform(path, grid, coordinates="RAS")

    volume = slicerio.read_volume(str(path))

    np.testing.assert_allclose(np.diag(volume["ijkToLPS"])[:3], grid.spacing * RAS_TO_LPS)
    np.testing.assert_allclose(volume["ijkToLPS"][:3, 3], grid.origin * RAS_TO_LPS)


def test_nrrd_replaces_atomically(tmp_path, grid):
    path = tmp_path / "transform.nrrd"
    path.write_text("old")

    write_grid_transform(path, grid)

    assert [p.name for p in tmp_path.iterdir()] == ["transform.nrrd"]


def test_nrrd_rejects_extension(tmp_path, grid):
    with pytest.raises(InputError, match=r"must end in \.nrrd"):
        write_grid_transform(tmp_path / "transform.nii", grid)


def test_nrrd_rejects_missing_folder(tmp_path, grid):
    with pytest.raises(InputError, match="does not exist"):
        write_grid_transform(tmp_path / "missing" / "transform.nrrd", grid)


def test_nrrd_rejects_existing_without_overwrite(tmp_path, grid):
    path = tmp_path / "transform.nrrd"
    path.write_text("old")

    with pytest.raises(InputError, match="exists"):
        write_grid_transform(path, grid, overwrite=False)


def test_nrrd_rejects_unknown_frame(tmp_path, grid):
    with pytest.raises(InputError, match="coordinates must be"):
        write_grid_transform(tmp_path / "transform.nrrd", grid, coordinates="XYZ")


def test_grid_shape_property():
    grid = DisplacementGrid(np.zeros((2, 3, 4, 3)), np.zeros(3), np.ones(3))

    assert grid.shape == (2, 3, 4)
