"""Tests of mesh file reading and atomic writing."""

from __future__ import annotations

import logging
import os
import shutil
import sys

import nibabel
import numpy as np
import pytest
import pyvista as pv

from sinkshape import datasets
from sinkshape.errors import InputError
from sinkshape.io import (
    IMAGE_EXTENSIONS,
    SUPPORTED_EXTENSIONS,
    WRITE_EXTENSIONS,
    read_image,
    read_mesh,
    write_mesh,
)

GARBAGE = b"this is not a mesh file\n\x00\x01\x02\xff" * 4


@pytest.fixture
def sphere():
    """Small closed triangle mesh with one extra point array."""
    mesh = pv.Sphere(theta_resolution=12, phi_resolution=12)
    mesh.point_data["weight"] = np.arange(mesh.n_points, dtype=float)
    return mesh


def written_files(folder):
    return sorted(path.name for path in folder.iterdir())


# read_mesh


def test_read_mesh_aorta_surface():
    mesh = read_mesh(datasets.fetch("aorta-surface"))

    assert isinstance(mesh, pv.PolyData)
    assert mesh.n_points == 6468
    assert mesh.n_faces == 12932


def test_read_mesh_stl():
    mesh = read_mesh(datasets.fetch("aorta-surface-open-ends"))

    assert mesh.n_points == 6068
    assert mesh.n_faces == 11887


def test_read_mesh_string_path():
    mesh = read_mesh(str(datasets.fetch("fixture")))

    assert mesh.n_points == 5500


def test_read_mesh_uppercase_extension(tmp_path):
    path = tmp_path / "AORTA.VTP"
    shutil.copyfile(datasets.fetch("aorta-surface"), path)

    assert read_mesh(path).n_points == 6468


def test_read_mesh_unstructured_surface(tmp_path, aorta):
    path = tmp_path / "aorta.vtu"
    aorta.cast_to_unstructured_grid().save(path)

    mesh = read_mesh(path)

    assert isinstance(mesh, pv.PolyData)
    assert mesh.n_points == 6468
    assert mesh.n_faces == 12932
    assert "vtkOriginalPointIds" not in mesh.point_data


@pytest.mark.parametrize("extension", [".vtp", ".vtk", ".stl", ".ply", ".obj"])
def test_read_mesh_written_formats(tmp_path, sphere, extension):
    path = tmp_path / f"sphere{extension}"
    sphere.save(path)

    mesh = read_mesh(path)

    assert mesh.n_points == sphere.n_points
    assert mesh.n_faces == sphere.n_faces


def test_read_mesh_missing_file(tmp_path):
    path = tmp_path / "missing.vtp"

    with pytest.raises(InputError, match="mesh file not found") as error:
        read_mesh(path)

    assert str(path) in str(error.value)


def test_read_mesh_folder(tmp_path):
    with pytest.raises(InputError, match="is not a file"):
        read_mesh(tmp_path)


def test_read_mesh_unknown_extension(tmp_path):
    path = tmp_path / "mesh.xyz"
    path.write_text("0 0 0\n")

    with pytest.raises(InputError, match="unsupported mesh file extension '.xyz'") as error:
        read_mesh(path)

    message = str(error.value)
    assert str(path) in message
    for extension in SUPPORTED_EXTENSIONS:
        assert extension in message


def test_read_mesh_no_extension(tmp_path):
    path = tmp_path / "mesh"
    path.write_bytes(GARBAGE)

    with pytest.raises(InputError, match=r"extension '\(none\)'"):
        read_mesh(path)


def test_read_mesh_zero_bytes(tmp_path):
    path = tmp_path / "empty.stl"
    path.touch()

    with pytest.raises(InputError, match=r"is empty \(0 bytes\)"):
        read_mesh(path)


def test_read_mesh_empty_mesh(tmp_path):
    path = tmp_path / "empty.vtp"
    pv.PolyData().save(path)

    with pytest.raises(InputError, match="contains no points") as error:
        read_mesh(path)

    assert str(path) in str(error.value)


def test_read_mesh_lines_only():
    path = datasets.fetch("aorta-centerline")

    with pytest.raises(InputError, match="has no faces") as error:
        read_mesh(path)

    assert "2 lines" in str(error.value)


def test_read_mesh_lines_allowed():
    mesh = read_mesh(datasets.fetch("aorta-centerline"), require_faces=False)

    assert mesh.n_points == 409
    assert mesh.n_lines == 2
    assert "MaximumInscribedSphereRadius" in mesh.point_data


def test_read_mesh_volume_image():
    with pytest.raises(InputError, match="contains ImageData data, not a surface mesh"):
        read_mesh(datasets.fetch("carotid"))


@pytest.mark.parametrize("extension", [".vtp", ".stl", ".vtk", ".vtu", ".ply"])
def test_read_mesh_garbage(tmp_path, extension):
    path = tmp_path / f"garbage{extension}"
    path.write_bytes(GARBAGE)

    with pytest.raises(InputError, match=f"cannot read .* as a {extension} file") as error:
        read_mesh(path)

    message = str(error.value)
    assert str(path) in message
    assert "\n" not in message


def test_read_mesh_garbage_obj(tmp_path):
    # vtkOBJReader skips lines it does not parse and reports no error.
    path = tmp_path / "garbage.obj"
    path.write_bytes(GARBAGE)

    with pytest.raises(InputError, match="contains no points"):
        read_mesh(path)


def test_read_mesh_truncated_vtp(tmp_path):
    path = tmp_path / "truncated.vtp"
    content = datasets.fetch("aorta-surface").read_bytes()
    path.write_bytes(content[: len(content) // 2])

    with pytest.raises(InputError, match="cannot read"):
        read_mesh(path)


def test_read_mesh_garbage_quiet(tmp_path, capfd, caplog):
    path = tmp_path / "garbage.vtp"
    path.write_bytes(GARBAGE)

    with caplog.at_level(logging.WARNING), pytest.raises(InputError):
        read_mesh(path)

    assert capfd.readouterr().err == ""
    assert caplog.records == []


# write_mesh


def test_write_mesh_roundtrip(tmp_path, sphere):
    path = tmp_path / "out.vtp"

    write_mesh(sphere, path)

    mesh = read_mesh(path)
    np.testing.assert_array_equal(mesh.points, sphere.points)
    np.testing.assert_array_equal(mesh.point_data["weight"], sphere.point_data["weight"])
    assert written_files(tmp_path) == ["out.vtp"]


def test_write_mesh_replaces_file(tmp_path, sphere, aorta):
    path = tmp_path / "out.vtp"
    write_mesh(aorta, path)

    write_mesh(sphere, path)

    assert read_mesh(path).n_points == sphere.n_points
    assert written_files(tmp_path) == ["out.vtp"]


@pytest.mark.parametrize("extension", WRITE_EXTENSIONS)
def test_write_mesh_each_format(tmp_path, sphere, extension):
    path = tmp_path / f"out{extension}"

    write_mesh(sphere, path)

    assert read_mesh(path).n_points == sphere.n_points
    assert written_files(tmp_path) == [path.name]


def test_write_mesh_failure_keeps_previous(tmp_path, sphere, monkeypatch):
    path = tmp_path / "out.vtp"
    write_mesh(sphere, path)
    previous = path.read_bytes()

    def failing_save(self, filename, *args, **kwargs):
        with open(filename, "wb") as file:
            file.write(b"<VTKFile partial")
        msg = "simulated disk full"
        raise OSError(msg)

    monkeypatch.setattr(pv.PolyData, "save", failing_save)

    with pytest.raises(OSError, match="simulated disk full"):
        write_mesh(sphere, path)

    assert path.read_bytes() == previous
    assert written_files(tmp_path) == ["out.vtp"]


def test_write_mesh_failure_no_target(tmp_path, sphere, monkeypatch):
    def failing_save(self, filename, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pv.PolyData, "save", failing_save)

    with pytest.raises(KeyboardInterrupt):
        write_mesh(sphere, tmp_path / "out.stl")

    assert written_files(tmp_path) == []


def test_write_mesh_temporary_extension(tmp_path, sphere, monkeypatch):
    saved_names = []
    save = pv.PolyData.save

    def recording_save(self, filename, *args, **kwargs):
        saved_names.append(os.path.basename(filename))
        return save(self, filename, *args, **kwargs)

    monkeypatch.setattr(pv.PolyData, "save", recording_save)

    write_mesh(sphere, tmp_path / "out.ply")

    assert len(saved_names) == 1
    assert saved_names[0].startswith(".out.")
    assert saved_names[0].endswith(".ply")


def test_write_mesh_refuses_source(tmp_path, aorta):
    path = tmp_path / "aorta.vtp"
    aorta.save(path)
    original = path.read_bytes()

    with pytest.raises(InputError, match="is the input file"):
        write_mesh(aorta, path, source=path)

    assert path.read_bytes() == original


def test_write_mesh_refuses_source_alias(tmp_path, aorta):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "aorta.vtp"
    aorta.save(path)

    with pytest.raises(InputError, match="is the input file"):
        write_mesh(aorta, tmp_path / "sub" / ".." / "aorta.vtp", source=str(path))


def test_write_mesh_refuses_source_symlink(tmp_path, aorta):
    path = tmp_path / "aorta.vtp"
    aorta.save(path)
    link = tmp_path / "link.vtp"
    try:
        link.symlink_to(path)
    except OSError:
        pytest.skip("symbolic links are not available")

    with pytest.raises(InputError, match="is the input file"):
        write_mesh(aorta, link, source=path)


def test_write_mesh_refuses_source_hard_link(tmp_path, aorta):
    path = tmp_path / "aorta.vtp"
    aorta.save(path)
    link = tmp_path / "hard-link.vtp"
    try:
        os.link(path, link)
    except OSError:
        pytest.skip("hard links are not available")

    with pytest.raises(InputError, match="is the input file"):
        write_mesh(aorta, link, source=path)


def test_write_mesh_other_source(tmp_path, sphere):
    source = tmp_path / "in.vtp"
    sphere.save(source)

    write_mesh(sphere, tmp_path / "out.vtp", source=source)

    assert written_files(tmp_path) == ["in.vtp", "out.vtp"]


def test_write_mesh_missing_folder(tmp_path, sphere):
    folder = tmp_path / "missing"

    with pytest.raises(InputError, match="output folder .* does not exist") as error:
        write_mesh(sphere, folder / "out.vtp")

    assert str(folder) in str(error.value)
    assert not folder.exists()


def test_write_mesh_path_is_folder(tmp_path, sphere):
    folder = tmp_path / "out.vtp"
    folder.mkdir()

    with pytest.raises(InputError, match="is a folder"):
        write_mesh(sphere, folder)


def test_write_mesh_unknown_extension(tmp_path, sphere):
    with pytest.raises(InputError, match="unsupported extension '.vtu'") as error:
        write_mesh(sphere, tmp_path / "out.vtu")

    for extension in WRITE_EXTENSIONS:
        assert extension in str(error.value)
    assert written_files(tmp_path) == []


def test_write_mesh_no_overwrite(tmp_path, sphere):
    path = tmp_path / "out.vtp"
    path.write_bytes(b"previous")

    with pytest.raises(InputError, match="exists; remove it or pass overwrite=True"):
        write_mesh(sphere, path, overwrite=False)

    assert path.read_bytes() == b"previous"


def test_write_mesh_no_overwrite_new_file(tmp_path, sphere):
    write_mesh(sphere, tmp_path / "out.vtp", overwrite=False)

    assert written_files(tmp_path) == ["out.vtp"]


def test_write_mesh_empty_stl(tmp_path):
    with pytest.raises(InputError, match="the mesh has no points"):
        write_mesh(pv.PolyData(), tmp_path / "out.stl")

    assert written_files(tmp_path) == []


def test_write_mesh_not_polydata(tmp_path, sphere):
    grid = sphere.cast_to_unstructured_grid()

    with pytest.raises(TypeError, match="must be a pyvista.PolyData, got UnstructuredGrid"):
        write_mesh(grid, tmp_path / "out.vtp")


def test_write_mesh_stl_warns_dropped_arrays(tmp_path, sphere, caplog):
    sphere.cell_data["label"] = np.zeros(sphere.n_cells)

    with caplog.at_level(logging.WARNING, logger="sinkshape.io"):
        write_mesh(sphere, tmp_path / "out.stl")

    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "'weight'" in message
    assert "'Normals'" in message
    assert "'label'" in message


def test_write_mesh_obj_keeps_normals(tmp_path, sphere, caplog):
    with caplog.at_level(logging.WARNING, logger="sinkshape.io"):
        write_mesh(sphere, tmp_path / "out.obj")

    message = caplog.records[0].getMessage()
    assert "'weight'" in message
    assert "'Normals'" not in message


def test_write_mesh_vtp_no_warning(tmp_path, sphere, caplog):
    with caplog.at_level(logging.WARNING, logger="sinkshape.io"):
        write_mesh(sphere, tmp_path / "out.vtp")

    assert caplog.records == []


def test_write_mesh_leaves_mesh_unchanged(tmp_path, sphere):
    point_arrays = sphere.point_data.keys()
    cell_arrays = sphere.cell_data.keys()
    faces = sphere.faces.copy()

    write_mesh(sphere, tmp_path / "out.stl")

    assert sphere.point_data.keys() == point_arrays
    assert sphere.cell_data.keys() == cell_arrays
    np.testing.assert_array_equal(sphere.faces, faces)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_write_mesh_keeps_permissions(tmp_path, sphere):
    path = tmp_path / "out.vtp"
    write_mesh(sphere, path)
    path.chmod(0o640)

    write_mesh(sphere, path)

    assert path.stat().st_mode & 0o777 == 0o640


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_write_mesh_new_file_umask(tmp_path, sphere):
    umask = os.umask(0o022)
    os.umask(umask)
    path = tmp_path / "out.vtp"

    write_mesh(sphere, path)

    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# read_image


def test_read_image_metaimage():
    image = read_image(datasets.fetch("aorta-ct"))

    assert isinstance(image, pv.ImageData)
    assert image.dimensions == (157, 393, 34)
    assert "MetaImage" in image.point_data


def test_read_image_nifti_affine(tmp_path):
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    affine = np.array(
        [
            [-2.0, 0.0, 0.0, 10.0],
            [0.0, 3.0, 0.0, 20.0],
            [0.0, 0.0, 4.0, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    path = tmp_path / "image.nii.gz"
    nibabel.save(nibabel.Nifti1Image(values, affine), path)

    image = read_image(path)

    assert image.dimensions == (2, 3, 4)
    voxel = (1, 2, 3)
    world = affine[:3, :3] @ np.array(voxel) + affine[:3, 3]
    point_id = image.find_closest_point(world)
    np.testing.assert_allclose(image.points[point_id], world)
    assert image.point_data["NIFTI"][point_id] == values[voxel]


def test_read_image_nifti_single_volume(tmp_path):
    path = tmp_path / "image.nii"
    nibabel.save(nibabel.Nifti1Image(np.zeros((2, 3, 4, 1), np.float32), np.eye(4)), path)

    assert read_image(path).dimensions == (2, 3, 4)


def test_read_image_nifti_time_series(tmp_path):
    path = tmp_path / "image.nii"
    nibabel.save(nibabel.Nifti1Image(np.zeros((2, 3, 4, 5), np.float32), np.eye(4)), path)

    with pytest.raises(InputError, match=r"has shape \(2, 3, 4, 5\)"):
        read_image(path)


def test_read_image_garbage_nifti(tmp_path):
    path = tmp_path / "image.nii"
    path.write_bytes(GARBAGE * 20)

    with pytest.raises(InputError, match="cannot read .* as a NIfTI file"):
        read_image(path)


def test_read_image_mesh_extension():
    with pytest.raises(InputError, match="unsupported image file extension '.vtp'") as error:
        read_image(datasets.fetch("aorta-surface"))

    for extension in IMAGE_EXTENSIONS:
        assert extension in str(error.value)
