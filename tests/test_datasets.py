"""Tests of the dataset registry: local folder, hash checks and download path.

No test downloads anything: the download path runs against a fake ``pooch``
module placed in ``sys.modules``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import pyvista as pv

from sinkshape import datasets
from sinkshape.errors import InputError

REPOSITORY_ROOT = Path(__file__).parents[1]

VMTK_URL = (
    "https://raw.githubusercontent.com/vmtk/vmtk-test-data/"
    "7f5abc07a33e1037a106fa4e0ac6c320adb1baa1/input"
)
VTK_DATA_URL = (
    "https://raw.githubusercontent.com/pyvista/vtk-data/"
    "126ee906165a8b2f984f08259a4a2d32cf3b3409/Data"
)
AORTA_SURFACE_SHA256 = "18f4d019c7cc553ef20452f27fb5c2713637607c5e2ca7745579753fc89335ab"

# Point counts and image sizes measured on the files at the pinned commits.
SURFACE_POINT_COUNTS = {
    "aorta-surface": 6468,
    "aorta-surface-open-ends": 6068,
    "aorta-surface-two-segments": 18732,
    "aorta-surface-branch-split": 6826,
    "aorta-centerline": 409,
    "fixture": 5500,
}
IMAGE_DIMENSIONS = {
    "aorta-ct": (157, 393, 34),
    "aorta-levelset": (157, 393, 34),
    "carotid": (76, 49, 45),
}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def data_dir() -> Path:
    """The real data folder that conftest.py sets in SINKSHAPE_DATA_DIR."""
    return Path(os.environ[datasets.DATA_DIR_VARIABLE])


@pytest.fixture
def fresh_hash_cache(monkeypatch):
    """Empty the sha256 memo and count the files hashed."""
    monkeypatch.setattr(datasets, "_hash_cache", {})
    hashed_paths = []
    hash_file = datasets._hash_file

    def counting_hash_file(path):
        hashed_paths.append(path)
        return hash_file(path)

    monkeypatch.setattr(datasets, "_hash_file", counting_hash_file)
    return hashed_paths


@pytest.fixture
def fake_pooch(monkeypatch, tmp_path, data_dir):
    """Install a fake pooch that copies files from the real data folder.

    SINKSHAPE_DATA_DIR points to an empty folder, so every fetch takes the
    download path. The fake records each ``retrieve`` call.
    """
    module = types.ModuleType("pooch")
    module.retrieve_calls = []
    module.os_cache_calls = []
    os_cache_dir = tmp_path / "os-cache"
    source_by_url = {
        entry.url: data_dir / entry.relative_path for entry in datasets._REGISTRY.values()
    }

    def retrieve(url, known_hash, fname=None, path=None, **kwargs):
        module.retrieve_calls.append(
            {"url": url, "known_hash": known_hash, "fname": fname, "path": Path(path), **kwargs}
        )
        target = Path(path) / fname
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source_by_url[url], target)
        return str(target)

    def os_cache(project):
        module.os_cache_calls.append(project)
        return os_cache_dir / project

    module.retrieve = retrieve
    module.os_cache = os_cache
    monkeypatch.setitem(sys.modules, "pooch", module)

    empty_data_dir = tmp_path / "empty-data"
    empty_data_dir.mkdir()
    monkeypatch.setenv(datasets.DATA_DIR_VARIABLE, str(empty_data_dir))
    monkeypatch.delenv(datasets.CACHE_DIR_VARIABLE, raising=False)
    monkeypatch.setattr(datasets, "_hash_cache", {})
    return module


def test_names_registry_order():
    assert datasets.names() == [
        "aorta-surface",
        "aorta-surface-open-ends",
        "aorta-surface-two-segments",
        "aorta-surface-branch-split",
        "aorta-centerline",
        "aorta-ct",
        "aorta-levelset",
        "fixture",
        "carotid",
    ]


def test_names_returns_copy():
    names = datasets.names()
    names.clear()

    assert len(datasets.names()) == 9


@pytest.mark.parametrize("name", datasets.names())
def test_fetch_local_file_hash(name, data_dir):
    path = datasets.fetch(name)

    assert path.is_file()
    assert path.parent.parent == data_dir
    assert sha256_of(path) == datasets._REGISTRY[name].sha256


@pytest.mark.parametrize(("name", "n_points"), SURFACE_POINT_COUNTS.items())
def test_load_surface_point_count(name, n_points):
    mesh = datasets.load(name)

    assert isinstance(mesh, pv.PolyData)
    assert mesh.n_points == n_points


@pytest.mark.parametrize(("name", "dimensions"), IMAGE_DIMENSIONS.items())
def test_load_image_dimensions(name, dimensions):
    image = datasets.load(name)

    assert isinstance(image, pv.ImageData)
    assert image.dimensions == dimensions


def test_registry_covers_every_name():
    registered = set(datasets.names())

    assert registered == set(SURFACE_POINT_COUNTS) | set(IMAGE_DIMENSIONS)


def test_aorta_fixture_triangles(aorta):
    assert aorta.n_points == 6468
    assert aorta.n_faces == 12932


def test_fetch_unknown_name():
    with pytest.raises(InputError, match="unknown dataset name 'aorta'") as error:
        datasets.fetch("aorta")

    assert "aorta-surface" in str(error.value)
    assert "carotid" in str(error.value)


def test_load_unknown_name():
    with pytest.raises(InputError, match="unknown dataset name"):
        datasets.load("no-such-dataset")


def test_fetch_unhashable_name():
    with pytest.raises(InputError, match="unknown dataset name"):
        datasets.fetch(["aorta-surface"])


def test_fetch_corrupted_copy(monkeypatch, tmp_path, data_dir):
    corrupted = tmp_path / "vmtk_aorta" / "aorta-surface.vtp"
    corrupted.parent.mkdir()
    content = bytearray((data_dir / "vmtk_aorta" / "aorta-surface.vtp").read_bytes())
    content[len(content) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(content))
    monkeypatch.setenv(datasets.DATA_DIR_VARIABLE, str(tmp_path))

    with pytest.raises(InputError, match="sha256 mismatch") as error:
        datasets.fetch("aorta-surface")

    message = str(error.value)
    assert str(corrupted) in message
    assert f"expected {AORTA_SURFACE_SHA256}" in message
    assert f"got {sha256_of(corrupted)}" in message


def test_fetch_hashes_once(fresh_hash_cache):
    first = datasets.fetch("fixture")
    second = datasets.fetch("fixture")

    assert first == second
    assert len(fresh_hash_cache) == 1


def test_fetch_changed_file_rehashed(monkeypatch, tmp_path, data_dir, fresh_hash_cache):
    copy = tmp_path / "vmtk_aorta" / "fixture.stl"
    copy.parent.mkdir()
    shutil.copyfile(data_dir / "vmtk_aorta" / "fixture.stl", copy)
    monkeypatch.setenv(datasets.DATA_DIR_VARIABLE, str(tmp_path))
    datasets.fetch("fixture")

    with copy.open("ab") as file:
        file.write(b"\0")

    with pytest.raises(InputError, match="sha256 mismatch"):
        datasets.fetch("fixture")
    assert len(fresh_hash_cache) == 2


def test_fetch_downloads_pinned_url(fake_pooch):
    path = datasets.fetch("aorta-surface")

    assert len(fake_pooch.retrieve_calls) == 1
    call = fake_pooch.retrieve_calls[0]
    assert call["url"] == f"{VMTK_URL}/aorta-surface.vtp"
    assert call["known_hash"] == f"sha256:{AORTA_SURFACE_SHA256}"
    assert call["fname"] == "aorta-surface.vtp"
    assert path.is_file()


def test_fetch_download_carotid_url(fake_pooch):
    datasets.fetch("carotid")

    call = fake_pooch.retrieve_calls[0]
    assert call["url"] == f"{VTK_DATA_URL}/carotid.vtk"
    assert call["known_hash"] == f"sha256:{datasets._REGISTRY['carotid'].sha256}"


def test_fetch_download_os_cache(fake_pooch, tmp_path):
    path = datasets.fetch("aorta-surface")

    assert fake_pooch.os_cache_calls == ["sinkshape"]
    expected_folder = tmp_path / "os-cache" / "sinkshape" / "vmtk_aorta"
    assert fake_pooch.retrieve_calls[0]["path"] == expected_folder
    assert path == expected_folder / "aorta-surface.vtp"


def test_fetch_download_cache_variable(fake_pooch, monkeypatch, tmp_path):
    cache_dir = tmp_path / "custom-cache"
    monkeypatch.setenv(datasets.CACHE_DIR_VARIABLE, str(cache_dir))

    path = datasets.fetch("aorta-centerline")

    assert fake_pooch.os_cache_calls == []
    assert path == cache_dir / "vmtk_aorta" / "aorta-centerline.vtp"


def test_fetch_cached_file_skips_pooch(fake_pooch):
    first = datasets.fetch("fixture")
    second = datasets.fetch("fixture")

    assert first == second
    assert len(fake_pooch.retrieve_calls) == 1


def test_fetch_corrupted_cache_downloads_again(fake_pooch):
    cached = datasets.fetch("fixture")
    cached.write_bytes(b"truncated")

    datasets.fetch("fixture")

    assert len(fake_pooch.retrieve_calls) == 2


def test_load_downloaded_file(fake_pooch):
    mesh = datasets.load("aorta-surface")

    assert mesh.n_points == 6468


def test_fetch_without_pooch(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pooch", None)
    monkeypatch.setenv(datasets.DATA_DIR_VARIABLE, str(tmp_path))
    monkeypatch.delenv(datasets.CACHE_DIR_VARIABLE, raising=False)

    with pytest.raises(ImportError, match="needs pooch"):
        datasets.fetch("aorta-surface")


def test_import_without_pooch():
    code = "import sys; sys.modules['pooch'] = None; import sinkshape.datasets"

    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
