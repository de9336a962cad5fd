"""``sinkshape register``: outputs, their conventions and input errors."""

from __future__ import annotations

import numpy as np
import pytest
import pyvista as pv
import slicerio

from sinkshape import datasets
from sinkshape.cli import main

SHIFT = np.array([2.0, 1.0, 0.0])


@pytest.fixture(scope="module")
def sphere_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sphere")
    source = pv.Icosphere(radius=10.0, nsub=2)
    source.save(folder / "source.vtp")
    source.translate(SHIFT).save(folder / "target.vtp")
    status = main(
        [
            "register",
            str(folder / "source.vtp"),
            str(folder / "target.vtp"),
            str(folder / "registered.vtp"),
            "--sigma", "5",
            "--loss", "point-to-point",
            "--iterations", "20",
            "--time-steps", "5",
            "--no-progress",
        ]
    )
    return folder, status


def bump(points: np.ndarray) -> np.ndarray:
    """A smooth 4 mm bump of the aorta near its bifurcation, along +x."""
    center = np.array([222.0, 135.0, 25.0])
    weights = np.exp(-((points - center) ** 2).sum(axis=1) / (2 * 15.0**2))
    return 4.0 * weights[:, None] * np.array([1.0, 0.0, 0.0])


@pytest.fixture(scope="module")
def aorta_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aorta")
    source = datasets.load("aorta-surface")
    target = source.copy(deep=True)
    target.points = np.asarray(source.points, dtype=np.float64) + bump(np.asarray(source.points))
    source.save(folder / "aorta.vtp")
    target.save(folder / "bent.vtp")
    status = main(
        [
            "register",
            str(folder / "aorta.vtp"),
            str(folder / "bent.vtp"),
            str(folder / "registered.vtp"),
            "--sigma", "10",
            "--loss-sigma", "5",
            "--iterations", "15",
            "--time-steps", "5",
            "--control-points", "100",
            "--loss-triangles", "1000",
            "--no-progress",
        ]
    )
    return folder, status


def test_sphere_exit_status(sphere_run):
    _, status = sphere_run

    assert status == 0


def test_sphere_displacement_array(sphere_run):
    folder, _ = sphere_run

    registered = pv.read(folder / "registered.vtp")

    np.testing.assert_allclose(registered.point_data["displacement"].mean(axis=0), SHIFT, atol=0.05)


def test_sphere_path_time_series(sphere_run):
    folder, _ = sphere_run

    reader = pv.get_reader(folder / "registered_path.pvd")

    np.testing.assert_allclose(reader.time_values, np.linspace(0.0, 1.0, 6))


def test_sphere_path_last_frame(sphere_run):
    folder, _ = sphere_run
    reader = pv.get_reader(folder / "registered_path.pvd")
    reader.set_active_time_value(1.0)

    last = reader.read()[0]

    np.testing.assert_allclose(last.points, pv.read(folder / "registered.vtp").points, atol=1e-5)


def test_sphere_transform_sign(sphere_run):
    folder, _ = sphere_run
    volume = slicerio.read_volume(str(folder / "registered_transform.nrrd"))
    source = np.asarray(pv.read(folder / "source.vtp").points, dtype=np.float64)

    sampled = slicerio.sample_volume(volume, source)

    np.testing.assert_allclose(sampled.mean(axis=0), SHIFT, atol=0.05)


def test_aorta_exit_status(aorta_run):
    _, status = aorta_run

    assert status == 0


def test_aorta_transform_is_modeling(aorta_run):
    folder, _ = aorta_run

    volume = slicerio.read_volume(str(folder / "registered_transform.nrrd"))

    assert volume["displacementFieldType"] == "modeling"


def test_aorta_transform_moves_source_to_registered(aorta_run):
    folder, _ = aorta_run
    volume = slicerio.read_volume(str(folder / "registered_transform.nrrd"))
    source = np.asarray(pv.read(folder / "aorta.vtp").points, dtype=np.float64)
    registered = np.asarray(pv.read(folder / "registered.vtp").points, dtype=np.float64)

    # LPS coordinates (the default): the file's vectors are the mesh's vectors.
    moved = source + slicerio.sample_volume(volume, source)

    error = np.linalg.norm(moved - registered, axis=1)
    assert error.mean() <= 0.05
    assert error.max() <= 0.5


def test_aorta_registration_follows_bump(aorta_run):
    folder, _ = aorta_run
    source = np.asarray(pv.read(folder / "aorta.vtp").points, dtype=np.float64)
    registered = np.asarray(pv.read(folder / "registered.vtp").points, dtype=np.float64)

    error = np.linalg.norm(registered - (source + bump(source)), axis=1).mean()
    initial = np.linalg.norm(bump(source), axis=1).mean()

    assert error <= 0.5 * initial


def test_missing_source_exits_2(tmp_path, capsys):
    status = main(["register", str(tmp_path / "no.vtp"), str(tmp_path / "no.vtp"),
                   str(tmp_path / "out.vtp"), "--sigma", "1"])

    assert status == 2
    assert "sinkshape register: error:" in capsys.readouterr().err


def test_negative_sigma_exits_2(sphere_run, capsys):
    folder, _ = sphere_run

    status = main(["register", str(folder / "source.vtp"), str(folder / "target.vtp"),
                   str(folder / "out.vtp"), "--sigma", "-1"])

    assert status == 2
    assert "--sigma" in capsys.readouterr().err


def test_output_onto_source_exits_2(sphere_run):
    folder, _ = sphere_run

    status = main(["register", str(folder / "source.vtp"), str(folder / "target.vtp"),
                   str(folder / "source.vtp"), "--sigma", "5"])

    assert status == 2


def test_bad_transform_extension_exits_2(sphere_run, capsys):
    folder, _ = sphere_run

    status = main(["register", str(folder / "source.vtp"), str(folder / "target.vtp"),
                   str(folder / "out.vtp"), "--sigma", "5", "--transform", "field.nii"])

    assert status == 2
    assert ".nrrd" in capsys.readouterr().err


def test_no_path_no_transform(sphere_run):
    folder, _ = sphere_run

    status = main(["register", str(folder / "source.vtp"), str(folder / "target.vtp"),
                   str(folder / "plain.vtp"), "--sigma", "5", "--loss", "point-to-point",
                   "--iterations", "2", "--no-path", "--no-transform", "--no-progress"])

    assert status == 0
    assert not (folder / "plain_path.pvd").exists()
    assert not (folder / "plain_transform.nrrd").exists()
