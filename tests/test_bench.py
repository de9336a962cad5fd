"""Specification of ``sinkshape bench`` at tiny sizes; no timing is checked."""

import json

import numpy as np
import pytest

from sinkshape.cli import main
from sinkshape.cli import bench
from sinkshape.mesh import enclosed_volume


def test_sphere_mesh_closed_and_outward():
    points, triangles = bench.sphere_mesh(300)

    assert points.shape == (300, 3)
    # A closed genus-0 surface has F = 2 V - 4 triangles.
    assert len(triangles) == 2 * 300 - 4
    assert enclosed_volume(points, triangles) > 0
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1.0)


def test_aorta_mesh_has_about_requested_size():
    points, triangles = bench.aorta_mesh(3000)

    # VTK's decimation stops within a few vertices of the target.
    assert abs(len(points) - 3000) <= 30
    assert triangles.max() < len(points)


def test_cached_mesh_reused(tmp_path):
    path = bench.cached_mesh("sphere", 200, tmp_path)
    modified = path.stat().st_mtime_ns

    again = bench.cached_mesh("sphere", 200, tmp_path)

    assert again == path
    assert path.stat().st_mtime_ns == modified
    assert float(np.load(path)["mean_edge"]) > 0


def test_plane_waves_bounded_and_seeded():
    points = np.random.default_rng(0).normal(size=(100, 3))

    signal = bench.plane_waves(points, 2.0)

    assert signal.shape == (100,)
    assert np.abs(signal).max() <= bench.SIGNAL_WAVES
    np.testing.assert_array_equal(signal, bench.plane_waves(points, 2.0))


def test_mass_relative_difference():
    masses = np.array([1.0, 3.0])

    difference = bench.mass_relative_difference(
        np.array([1.0, 1.0]), np.array([1.0, 2.0]), masses
    )

    assert difference == pytest.approx(np.sqrt(3.0 / 13.0))


def test_timed_functions_restores_module():
    import sinkshape.smoothing as smoothing

    original = smoothing.diffusion_time
    stages = bench._Stages()

    with bench._timed_functions(smoothing, {"diffusion_time": "schedule"}, stages):
        assert smoothing.diffusion_time is not original

    assert smoothing.diffusion_time is original


def test_bench_runs_every_method(tmp_path):
    report_path = tmp_path / "report.json"
    markdown_path = tmp_path / "report.md"

    status = main(
        [
            "bench",
            "--surface", "sphere",
            "--sizes", "1000",
            "--truncation", "1e-3",
            "--skshapes-max-points", "1000",
            "--work-dir", str(tmp_path / "work"),
            "--json", str(report_path),
            "--markdown", str(markdown_path),
        ]
    )

    assert status == 0
    cases = json.loads(report_path.read_text())["cases"]
    assert [case["label"] for case in cases] == ["graph", "gaussian 0.001", "lu", "skshapes"]
    for case in cases:
        assert case["status"] == "ok", case
        assert case["total_seconds"] > 0
        assert case["total_peak_mb"] > 0
    assert "| 1,000 | graph |" in markdown_path.read_text()


def test_bench_results_agree_with_heat(tmp_path):
    # At 2,000 vertices and sigma = 2 mean edge lengths every method stays within
    # the validation tolerance of 10% of heat diffusion.
    report_path = tmp_path / "report.json"

    main(
        [
            "bench",
            "--surface", "sphere",
            "--sizes", "2000",
            "--method", "graph",
            "--method", "gaussian",
            "--method", "lu",
            "--work-dir", str(tmp_path / "work"),
            "--json", str(report_path),
        ]
    )

    cases = json.loads(report_path.read_text())["cases"]
    for case in cases:
        assert case["difference_to_heat"] <= 0.10, case["label"]
        # The comparison means something only if diffusion changed the signal.
        assert case["heat_change"] > 0.15


def test_bench_skips_large_skshapes(tmp_path):
    report_path = tmp_path / "report.json"

    main(
        [
            "bench",
            "--surface", "sphere",
            "--sizes", "500",
            "--method", "skshapes",
            "--skshapes-max-points", "400",
            "--work-dir", str(tmp_path / "work"),
            "--json", str(report_path),
        ]
    )

    assert json.loads(report_path.read_text())["cases"] == []


def test_run_isolated_reports_failure(tmp_path):
    config = {
        "surface": "sphere",
        "size": 100,
        "mesh": str(tmp_path / "missing.npz"),
        "method": "graph",
        "label": "graph",
        "sigma_edges": 2.0,
        "dtype": "float32",
        "threads": 1,
        "reference": False,
        "output": str(tmp_path / "sphere-100"),
    }

    result = bench.run_isolated(config, timeout=120)

    assert result["status"].startswith("failed:")
    assert "missing.npz" in result["status"]


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("--sizes", "10,abc", "--sizes"),
        ("--sizes", "50", "at least 100"),
        ("--sigma-edges", "0", "--sigma-edges"),
        ("--truncation", "2", "--truncation"),
        ("--threads", "0", "--threads"),
    ],
)
def test_bench_rejects_invalid_option(tmp_path, capsys, option, value, fragment):
    status = main(["bench", option, value, "--work-dir", str(tmp_path)])

    assert status == 2
    assert fragment in capsys.readouterr().err
