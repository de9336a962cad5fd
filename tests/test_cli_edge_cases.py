"""Bad files on the command line, exact messages, and writes that are interrupted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import pyvista as pv

from sinkshape import datasets
from sinkshape.cli import main
from sinkshape.io import write_mesh
from sinkshape.mesh import ORIGINAL_POINT_IDS

TEMPORARY_NAME = re.compile(r"^\.out\.[0-9a-f]{12}\.tmp\.vtp$")


def run_cli(capsys, *argv):
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def small_sphere():
    mesh = pv.Sphere(theta_resolution=10, phi_resolution=10)
    mesh.point_data["weight"] = np.arange(mesh.n_points, dtype=float)
    return mesh


# --- one line on stderr, exit status 2, no file --------------------------------------------


def bad_file_cases(folder):
    """Return {case: (input, output, expected stderr line)} for files under ``folder``."""
    empty = folder / "empty.vtp"
    pv.PolyData().save(empty)
    centerline = datasets.fetch("aorta-centerline")
    unknown = folder / "aorta.xyz"
    unknown.write_text("220.0 100.0 30.0\n")
    aorta = folder / "aorta.vtp"
    datasets.load("aorta-surface").save(aorta)
    nan_mesh = small_sphere()
    nan_mesh.points[7] = np.nan
    nan_path = folder / "nan.vtp"
    nan_mesh.save(nan_path)
    output = folder / "out" / "result.vtp"

    return {
        "empty mesh": (
            empty,
            output,
            f"mesh file {empty} contains no points; the mesh is empty, or the file is "
            "not a valid .vtp file",
        ),
        "lines only": (
            centerline,
            output,
            f"mesh file {centerline} has no faces (it has 2 lines and 0 vertex cells); "
            "give a surface mesh with polygons",
        ),
        "unknown input extension": (
            unknown,
            output,
            f"unsupported mesh file extension '.xyz' for {unknown}; use one of: "
            ".vtp, .vtk, .vtu, .stl, .ply, .obj",
        ),
        "unknown output extension": (
            aorta,
            output.with_suffix(".xyz"),
            f"cannot write mesh file {output.with_suffix('.xyz')}: unsupported extension "
            "'.xyz'; use one of: .vtp, .vtk, .stl, .ply, .obj",
        ),
        "output is input": (
            aorta,
            aorta,
            f"output path {aorta} is the input file {aorta}; choose another output path",
        ),
        "missing output folder": (
            aorta,
            folder / "absent" / "result.vtp",
            f"output folder {folder / 'absent'} does not exist; create it before writing "
            "result.vtp",
        ),
        "nan vertex": (
            nan_path,
            output,
            "points: vertex 7 has a non-finite coordinate [nan, nan, nan] (1 such vertices "
            "in all); repair the mesh, or drop such vertices and their triangles with "
            "drop_invalid=True (--drop-invalid on the command line)",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty mesh",
        "lines only",
        "unknown input extension",
        "unknown output extension",
        "output is input",
        "missing output folder",
        "nan vertex",
    ],
)
def test_bad_file_exact_error(capsys, tmp_path, case):
    source, output, message = bad_file_cases(tmp_path)[case]
    (tmp_path / "out").mkdir()
    before = sorted(path.name for path in tmp_path.rglob("*"))
    source_bytes = source.read_bytes()

    status, out, err = run_cli(capsys, "smooth", source, output, "--sigma", "2")

    assert status == 2
    assert err == f"sinkshape smooth: error: {message}\n"
    assert out == ""
    assert sorted(path.name for path in tmp_path.rglob("*")) == before
    assert source.read_bytes() == source_bytes


def test_unreadable_file_one_line(capsys, tmp_path):
    garbage = tmp_path / "garbage.vtp"
    garbage.write_bytes(b"<VTKFile type='PolyData'>\x00\x01 truncated")
    output = tmp_path / "result.vtp"

    status, _, err = run_cli(capsys, "smooth", garbage, output, "--sigma", "2")

    assert status == 2
    assert err.startswith(f"sinkshape smooth: error: cannot read {garbage} as a .vtp file: ")
    assert err.count("\n") == 1
    assert not output.exists()


def test_infinite_sigma_exact_error(capsys, tmp_path):
    output = tmp_path / "result.vtp"

    status, _, err = run_cli(
        capsys, "smooth", datasets.fetch("aorta-surface"), output, "--sigma", "inf"
    )

    assert status == 2
    assert err == "sinkshape smooth: error: --sigma must be a positive finite number, got inf\n"
    assert not output.exists()


def test_nan_point_array_exact_error(capsys, tmp_path):
    mesh = small_sphere()
    mesh.point_data["weight"][4] = np.inf
    source = tmp_path / "sphere.vtp"
    mesh.save(source)
    output = tmp_path / "result.vtp"

    status, _, err = run_cli(
        capsys, "smooth", source, output, "--sigma", "0.2", "--array", "weight"
    )

    assert status == 2
    assert err == (
        "sinkshape smooth: error: point array 'weight': signal has a NaN or infinite value "
        "at point 4 (1 such points in all); fill or drop them first\n"
    )
    assert not output.exists()


# --- defects that the command line works around -------------------------------------------------


def test_drop_invalid_flag(capsys, tmp_path):
    mesh = small_sphere()
    mesh.points[[7, 30]] = np.nan
    source = tmp_path / "nan.vtp"
    mesh.save(source)
    output = tmp_path / "result.vtp"

    status, out, err = run_cli(
        capsys, "smooth", source, output, "--sigma", "0.2", "--array", "weight",
        "--surface", "--drop-invalid",
    )
    result = pv.read(output)

    assert status == 0
    assert err == (
        "sinkshape smooth: warning: dropped 2 vertices with a NaN or infinite coordinate "
        "(first ids: [7, 30]) and the 12 triangles that use them; Surface.input_ids, "
        "and the point array vtkOriginalPointIds of output meshes, map the remaining "
        "points to the input\n"
    )
    assert out.startswith(f"{mesh.n_points - 2} points, backend graph")
    assert result.n_points == mesh.n_points - 2
    np.testing.assert_array_equal(
        result.point_data[ORIGINAL_POINT_IDS], np.delete(np.arange(mesh.n_points), [7, 30])
    )
    assert np.isfinite(result.points).all()
    assert np.isfinite(result.point_data["weight"]).all()


def test_non_manifold_warning_line(capsys, tmp_path):
    points = np.array([[0, 0, 0], [1, 0, 0], [0.5, 1, 0], [0.5, -1, 0], [0.5, 0, 1.0]])
    faces = np.array([3, 0, 1, 2, 3, 0, 1, 3, 3, 0, 1, 4])
    source = tmp_path / "book.vtp"
    pv.PolyData(points, faces).save(source)
    output = tmp_path / "result.vtp"

    status, _, err = run_cli(capsys, "smooth", source, output, "--sigma", "0.5")

    assert status == 0
    assert err == (
        "sinkshape smooth: warning: the mesh is not manifold: it has 1 edges shared by "
        "more than two triangles (first: [[0, 1]]); smoothing follows the mesh edges as "
        "they are, but repair the mesh if these are segmentation errors\n"
    )
    assert output.is_file()


# --- interrupted writes ------------------------------------------------------------------


def partial_save(exception):
    def save(self, filename, *args, **kwargs):
        with open(filename, "wb") as file:
            file.write(b"<VTKFile partial")
        raise exception

    return save


def test_interrupt_in_writer_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "out.vtp"
    write_mesh(small_sphere(), path)
    previous = path.read_bytes()
    monkeypatch.setattr(pv.PolyData, "save", partial_save(KeyboardInterrupt()))

    with pytest.raises(KeyboardInterrupt):
        write_mesh(pv.Sphere(), path)

    assert path.read_bytes() == previous
    assert os.listdir(tmp_path) == ["out.vtp"]


def test_cli_interrupt_keeps_previous(capsys, tmp_path, monkeypatch):
    output = tmp_path / "out.vtp"
    write_mesh(small_sphere(), output)
    previous = output.read_bytes()
    source = tmp_path / "sphere.vtp"
    small_sphere().save(source)
    monkeypatch.setattr(pv.PolyData, "save", partial_save(KeyboardInterrupt()))

    status, _, err = run_cli(capsys, "smooth", source, output, "--sigma", "0.2")

    assert status == 130
    assert err == "sinkshape smooth: interrupted\n"
    assert output.read_bytes() == previous
    assert sorted(os.listdir(tmp_path)) == ["out.vtp", "sphere.vtp"]


STALLED_WRITER = textwrap.dedent(
    """
    import sys

    import pyvista as pv

    from sinkshape.io import write_mesh


    def stalled_save(self, filename, *args, **kwargs):
        with open(filename, "wb") as file:
            file.write(b"<VTKFile partial")
            file.flush()
        print("writing", flush=True)
        sys.stdin.read()


    pv.PolyData.save = stalled_save
    write_mesh(pv.Sphere(), sys.argv[1])
    """
)


def kill_while_writing(path):
    """Run write_mesh in a child process and kill it with SIGKILL mid-write."""
    child = subprocess.Popen(
        [sys.executable, "-c", STALLED_WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        for line in child.stdout:
            if line == "writing\n":
                break
        child.kill()
    finally:
        child.wait(timeout=60)
        child.stdin.close()
        child.stdout.close()
    return child.returncode


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_writer_keeps_previous(tmp_path):
    path = tmp_path / "out.vtp"
    write_mesh(small_sphere(), path)
    previous = path.read_bytes()

    returncode = kill_while_writing(path)
    leftovers = [name for name in os.listdir(tmp_path) if name != "out.vtp"]

    assert returncode == -9
    assert path.read_bytes() == previous
    # A killed process cannot remove its hidden temporary file.
    assert len(leftovers) == 1
    assert TEMPORARY_NAME.match(leftovers[0])


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_writer_leaves_no_output(tmp_path):
    path = tmp_path / "out.vtp"

    returncode = kill_while_writing(path)

    assert returncode == -9
    assert not path.exists()
