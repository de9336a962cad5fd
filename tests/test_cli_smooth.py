"""The ``sinkshape smooth`` command on real aorta files and on bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import pyvista as pv

from sinkshape import datasets
from sinkshape.cli import main


def run_cli(capsys, *argv):
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize(
    "name",
    ["aorta-surface", "aorta-surface-open-ends", "aorta-surface-two-segments"],
)
def test_smooth_real_aortas(capsys, tmp_path, name):
    source = datasets.fetch(name)
    output = tmp_path / f"smoothed{source.suffix}"
    status, out, err = run_cli(capsys, "smooth", source, output, "--sigma", "2")

    assert status == 0, err
    assert output.is_file()
    assert "Sinkhorn iterations, marginal error" in out
    assert "0 flipped triangles" in out
    assert pv.read(output).n_points == pv.read(source).n_points


def test_smooth_prints_volume_change(capsys, tmp_path):
    output = tmp_path / "smoothed.vtp"
    status, out, _ = run_cli(
        capsys, "smooth", datasets.fetch("aorta-surface"), output, "--sigma", "2"
    )
    change = float(out.split("volume change ")[1].split("%")[0])

    assert status == 0
    assert abs(change) <= 0.5


def test_smooth_array_keeps_surface(capsys, tmp_path):
    mesh = datasets.load("aorta-surface")
    mesh.point_data["noise"] = np.random.default_rng(0).standard_normal(mesh.n_points)
    source = tmp_path / "noisy.vtp"
    mesh.save(source)
    output = tmp_path / "smoothed.vtp"
    status, _, err = run_cli(
        capsys, "smooth", source, output, "--sigma", "1", "--array", "noise", "--steps", "2"
    )
    result = pv.read(output)

    assert status == 0, err
    assert np.array_equal(result.points, mesh.points)
    assert result["noise"].std() < 0.5 * mesh["noise"].std()


def test_smooth_rejects_output_equal_input(capsys, tmp_path):
    source = tmp_path / "aorta.vtp"
    shutil.copy(datasets.fetch("aorta-surface"), source)
    before = source.read_bytes()
    status, out, err = run_cli(capsys, "smooth", source, source, "--sigma", "2")

    assert status == 2
    assert "is the input file" in err
    assert len(err.strip().splitlines()) == 1
    assert source.read_bytes() == before


def bad_input_cases(tmp_path):
    aorta = datasets.fetch("aorta-surface")
    garbage = tmp_path / "garbage.vtp"
    garbage.write_bytes(b"not a mesh at all\n" * 10)
    empty = tmp_path / "empty.vtp"
    pv.PolyData().save(empty)
    unknown_extension = tmp_path / "aorta.xyz"
    shutil.copy(aorta, unknown_extension)
    return {
        "missing input": ([tmp_path / "absent.vtp", "--sigma", "2"], "absent.vtp"),
        "unreadable file": ([garbage, "--sigma", "2"], "garbage.vtp"),
        "empty mesh": ([empty, "--sigma", "2"], "empty.vtp"),
        "lines only": ([datasets.fetch("aorta-centerline"), "--sigma", "2"], "polygons"),
        "unknown extension": ([unknown_extension, "--sigma", "2"], "extension '.xyz'"),
        "zero sigma": ([aorta, "--sigma", "0"], "--sigma"),
        "negative sigma": ([aorta, "--sigma=-1"], "--sigma"),
        "nan sigma": ([aorta, "--sigma", "nan"], "--sigma"),
        "text sigma": ([aorta, "--sigma", "two"], "'two'"),
        "unknown array": ([aorta, "--sigma", "2", "--array", "thickness"], "'thickness'"),
    }


CASES = [
    "missing input",
    "unreadable file",
    "empty mesh",
    "lines only",
    "unknown extension",
    "zero sigma",
    "negative sigma",
    "nan sigma",
    "text sigma",
    "unknown array",
]


@pytest.mark.parametrize("case", CASES)
def test_smooth_bad_input(capsys, tmp_path, case):
    arguments, expected = bad_input_cases(tmp_path)[case]
    output = tmp_path / "out" / "result.vtp"
    output.parent.mkdir()
    status, out, err = run_cli(capsys, "smooth", arguments[0], output, *arguments[1:])

    assert status == 2
    assert len(err.strip().splitlines()) == 1
    assert expected in err
    assert not output.exists()
    assert os.listdir(output.parent) == []


def test_smooth_missing_output_folder(capsys, tmp_path):
    output = tmp_path / "absent" / "result.vtp"
    status, _, err = run_cli(
        capsys, "smooth", datasets.fetch("aorta-surface"), output, "--sigma", "2"
    )

    assert status == 2
    assert "does not exist" in err
    assert not output.parent.exists()


def test_module_entry_point(tmp_path):
    output = tmp_path / "smoothed.stl"
    completed = subprocess.run(
        [sys.executable, "-m", "sinkshape", "smooth", datasets.fetch("aorta-surface-open-ends"),
         output, "--sigma", "1", "--backend", "graph"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )

    assert completed.returncode == 0, completed.stderr
    assert output.is_file()
    assert "marginal error" in completed.stdout
