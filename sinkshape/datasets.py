"""Example meshes and images, loaded by name.

Each dataset is a file from a public repository at a pinned commit, checked
against its sha256. :func:`fetch` looks for the file in two places:

1. the folder named by the environment variable ``SINKSHAPE_DATA_DIR``, at the
   dataset's relative path (for example ``vmtk_aorta/aorta-surface.vtp``);
2. a download cache managed by pooch, in ``SINKSHAPE_CACHE_DIR`` if set and
   otherwise in ``pooch.os_cache("sinkshape")``. A file missing from the cache
   is downloaded on first use.

pooch is imported only when a download is needed, and pyvista (which imports
pooch) only by :func:`load`, so this module imports without either.

Examples
--------
>>> from sinkshape import datasets
>>> datasets.names()[:2]
['aorta-surface', 'aorta-surface-open-ends']
>>> surface = datasets.load("aorta-surface")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sinkshape.errors import InputError

if TYPE_CHECKING:
    import pyvista as pv

__all__ = ["DATA_DIR_VARIABLE", "CACHE_DIR_VARIABLE", "fetch", "load", "names"]

log = logging.getLogger(__name__)

DATA_DIR_VARIABLE = "SINKSHAPE_DATA_DIR"
"""Environment variable naming a local folder that :func:`fetch` reads first."""

CACHE_DIR_VARIABLE = "SINKSHAPE_CACHE_DIR"
"""Environment variable naming the download cache folder."""

_VMTK_COMMIT = "7f5abc07a33e1037a106fa4e0ac6c320adb1baa1"
_VTK_DATA_COMMIT = "126ee906165a8b2f984f08259a4a2d32cf3b3409"
# NOTE: these URLs follow the raw.githubusercontent.com layout at the pinned
# commits but no download from them has run in the test suite. A wrong address
# fails in pooch, and a wrong file fails its sha256 check.
_VMTK_URL = f"https://raw.githubusercontent.com/vmtk/vmtk-test-data/{_VMTK_COMMIT}/input"
_VTK_DATA_URL = f"https://raw.githubusercontent.com/pyvista/vtk-data/{_VTK_DATA_COMMIT}/Data"

_HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class _DataFile:
    """Registry entry: where a dataset lives locally and upstream."""

    relative_path: str
    url: str
    sha256: str


def _vmtk_file(file_name: str, sha256: str) -> _DataFile:
    return _DataFile(f"vmtk_aorta/{file_name}", f"{_VMTK_URL}/{file_name}", sha256)


# Abdominal aorta with iliac bifurcation from vmtk's test data (BSD licence),
# lengths in millimetres, and the carotid volume from VTK's data (BSD licence).
_REGISTRY: dict[str, _DataFile] = {
    "aorta-surface": _vmtk_file(
        "aorta-surface.vtp",
        "18f4d019c7cc553ef20452f27fb5c2713637607c5e2ca7745579753fc89335ab",
    ),
    "aorta-surface-open-ends": _vmtk_file(
        "aorta-surface-open-ends.stl",
        "a44fe03b3a4de30a2711eb51a1a216301def46555a417dd5fae65c87d0c1e51b",
    ),
    "aorta-surface-two-segments": _vmtk_file(
        "aorta-surface-two-segments.vtp",
        "f715ba7625515038dad72a9807230da1c8a4c1e9c0c0bf52792bdab197995b90",
    ),
    "aorta-surface-branch-split": _vmtk_file(
        "aorta-surface-branch-split.vtp",
        "aa26ac4542467f61070d1700ad709edffc3e6fe24005459e6c8ec521b445d0c7",
    ),
    "aorta-centerline": _vmtk_file(
        "aorta-centerline.vtp",
        "6c540671dbef5575561fc5a9b4447ccff29e99261a8ec33d16aa213b6d24d2ca",
    ),
    "aorta-ct": _vmtk_file(
        "aorta.mha",
        "435c368b6ce04011b94bceb9f9a62110d49934417a96b73aafec57aba41cfca0",
    ),
    "aorta-levelset": _vmtk_file(
        "aorta-final-levelset.mha",
        "bf376aa5b4f72b68630e14266fdd060cfdb148ff1532f056fd11fadea42d1961",
    ),
    "fixture": _vmtk_file(
        "fixture.stl",
        "943a3a869b92ed884c43c8f16d184468e24c69c197069adf73082ea5cb3df448",
    ),
    "carotid": _DataFile(
        "vtk_carotid/carotid.vtk",
        f"{_VTK_DATA_URL}/carotid.vtk",
        "3f5dac7baa8ed60fa094f67b918d55add4d55f1d498fad587d1850915f60032d",
    ),
}

# sha256 of files already hashed, keyed by (resolved path, mtime in ns, size),
# so that loading the same unchanged file again does not read it again.
_hash_cache: dict[tuple[str, int, int], str] = {}


def names() -> list[str]:
    """Return the names of the registered datasets.

    Returns
    -------
    list of str
        Names accepted by :func:`fetch` and :func:`load`, in registry order.
    """
    return list(_REGISTRY)


def fetch(name: str) -> Path:
    """Find or download a dataset file and verify its sha256.

    Parameters
    ----------
    name : str
        A name from :func:`names`, for example ``"aorta-surface"``.

    Returns
    -------
    pathlib.Path
        Path of the verified local file. It is inside ``SINKSHAPE_DATA_DIR``
        when that folder contains the file, and in the download cache otherwise.

    Raises
    ------
    InputError
        If ``name`` is not registered, or if the file in ``SINKSHAPE_DATA_DIR``
        does not match the registered sha256.
    ImportError
        If pooch is not installed and the file is neither in
        ``SINKSHAPE_DATA_DIR`` nor in ``SINKSHAPE_CACHE_DIR``.
    ValueError
        Raised by pooch if a downloaded file does not match the registered
        sha256. Network errors from the download also propagate.
    """
    entry = _lookup(name)

    local_path = _find_in_data_dir(entry)
    if local_path is not None:
        _verify_sha256(local_path, entry, name=name)
        log.debug("Using dataset %r from %s", name, local_path)
        return local_path

    return _download(entry, name=name)


def load(name: str) -> pv.DataSet:
    """Fetch a dataset with :func:`fetch` and read it with :func:`pyvista.read`.

    Parameters
    ----------
    name : str
        A name from :func:`names`, for example ``"aorta-surface"``.

    Returns
    -------
    pyvista.DataSet
        ``pyvista.PolyData`` for the surfaces and the centerline,
        ``pyvista.ImageData`` for ``"aorta-ct"``, ``"aorta-levelset"`` and
        ``"carotid"``.

    Raises
    ------
    InputError
        If ``name`` is not registered or the local file fails its sha256 check.
    """
    path = fetch(name)

    # pyvista 0.49 imports pooch at import time, so it is imported here and not
    # at module level, where it would make pooch a dependency of this module.
    import pyvista as pv  # noqa: PLC0415

    return pv.read(path)


def _lookup(name: str) -> _DataFile:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        valid = ", ".join(_REGISTRY)
        msg = f"unknown dataset name {name!r}; use one of: {valid}"
        raise InputError(msg) from None


def _find_in_data_dir(entry: _DataFile) -> Path | None:
    data_dir = os.environ.get(DATA_DIR_VARIABLE)
    if not data_dir:
        return None

    candidate = Path(data_dir) / entry.relative_path
    if candidate.is_file():
        return candidate

    log.debug("%s=%s does not contain %s", DATA_DIR_VARIABLE, data_dir, entry.relative_path)
    return None


def _cache_dir() -> Path:
    cache_dir = os.environ.get(CACHE_DIR_VARIABLE)
    if cache_dir:
        return Path(cache_dir)

    return Path(_import_pooch().os_cache("sinkshape"))


def _import_pooch():
    # pooch is an optional dependency, needed only to download.
    try:
        import pooch  # noqa: PLC0415
    except ImportError as error:
        msg = (
            f"downloading datasets needs pooch; install pooch, or set "
            f"{DATA_DIR_VARIABLE} to a folder that contains the data files"
        )
        raise ImportError(msg) from error
    return pooch


def _download(entry: _DataFile, *, name: str) -> Path:
    cached_path = _cache_dir() / entry.relative_path
    if cached_path.is_file() and _file_sha256(cached_path) == entry.sha256:
        log.debug("Using cached dataset %r from %s", name, cached_path)
        return cached_path

    pooch = _import_pooch()

    # pooch downloads a missing file, downloads again over a cached file whose
    # hash differs, and raises ValueError when the download does not match
    # known_hash.
    log.info("Downloading dataset %r from %s", name, entry.url)
    downloaded = Path(
        pooch.retrieve(
            url=entry.url,
            known_hash=f"sha256:{entry.sha256}",
            fname=cached_path.name,
            path=cached_path.parent,
        )
    )
    _remember_sha256(downloaded, entry.sha256)
    return downloaded


def _verify_sha256(path: Path, entry: _DataFile, *, name: str) -> None:
    actual = _file_sha256(path)
    if actual == entry.sha256:
        return

    msg = (
        f"sha256 mismatch for dataset {name!r} at {path}: expected {entry.sha256}, "
        f"got {actual}; replace the file with the original from {entry.url}, "
        f"or unset {DATA_DIR_VARIABLE} to download it"
    )
    raise InputError(msg)


def _cache_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def _file_sha256(path: Path) -> str:
    """Return the sha256 of ``path``, hashing the file only if it changed."""
    key = _cache_key(path)
    digest = _hash_cache.get(key)
    if digest is None:
        digest = _hash_file(path)
        _hash_cache[key] = digest
    return digest


def _remember_sha256(path: Path, digest: str) -> None:
    _hash_cache[_cache_key(path)] = digest


def _hash_file(path: Path) -> str:
    sha256 = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK_BYTES):
            sha256.update(chunk)
    return sha256.hexdigest()
