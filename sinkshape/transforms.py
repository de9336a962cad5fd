"""Displacement fields on regular grids, written as NRRD grid transforms for 3D Slicer.

A grid transform is a 3-component vector image: at each grid point x it stores the
displacement u(x). 3D Slicer's developer guide (Transforms, "Displacement field
files") states that Slicer loads an NRRD file as a grid transform when

- ``kinds`` is ``vector domain domain domain``;
- the custom field ``intent_code:=1006`` is set (NIfTI's displacement-vector code);
- the ``measurement frame`` is the identity, so that the vectors are expressed in
  the ``space`` of the header;
- the custom field ``displacement field type`` sets how Slicer applies the field:
  ``modeling`` makes it the transform "to parent", x -> x + u(x), which moves a
  model placed under it; ``resampling`` (the ITK convention and Slicer's default)
  makes it the transform "from parent", used to resample images.

NOTE: a Slicer release that predates the ``displacement field type`` field
ignores it and applies the resampling default, that is, the inverse direction.

:func:`write_grid_transform` writes the modeling direction: placing the source
surface under the transform in Slicer shows it registered onto the target.

Coordinates: the file always uses ``space: left-posterior-superior`` (LPS), as
Slicer writes its own files. The meshes passed in may be in LPS (Slicer 4.11 and
later write models in LPS by default) or in RAS; ``coordinates="RAS"`` converts
the grid geometry and the vectors, (x, y, z)_RAS = (-x, -y, z)_LPS.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from sinkshape.errors import InputError

__all__ = [
    "CoordinateSystem",
    "DisplacementGrid",
    "displacement_grid",
    "write_grid_transform",
]

logger = logging.getLogger(__name__)

CoordinateSystem = Literal["LPS", "RAS"]

#: Sign of each axis when converting between LPS and RAS (its own inverse).
_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])

#: Largest number of grid points that :func:`displacement_grid` builds by default.
DEFAULT_MAX_GRID_POINTS = 100_000


@dataclass
class DisplacementGrid:
    """Displacements u at the points of an axis-aligned grid.

    Attributes
    ----------
    displacement : numpy.ndarray
        u at grid point (i, j, k), shape (nx, ny, nz, 3), in the coordinates of
        the meshes.
    origin : numpy.ndarray
        Position of grid point (0, 0, 0), shape (3,).
    spacing : numpy.ndarray
        Distance between grid points along x, y and z, shape (3,).
    """

    displacement: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """Number of grid points along x, y and z."""
        return tuple(self.displacement.shape[:3])

    def points(self) -> np.ndarray:
        """Return the grid points, shape (nx * ny * nz, 3), with i varying slowest."""
        return grid_points(self.origin, self.spacing, self.shape)


def grid_points(origin, spacing, shape) -> np.ndarray:
    """Return the points origin + (i, j, k) * spacing, shape (prod(shape), 3), i slowest."""
    axes = [origin[d] + spacing[d] * np.arange(shape[d]) for d in range(3)]
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([axis.ravel() for axis in mesh], axis=1)


def displacement_grid(
    transform: Callable[[np.ndarray], np.ndarray],
    points,
    *,
    spacing: float | None = None,
    margin: float = 0.0,
    max_points: int = DEFAULT_MAX_GRID_POINTS,
) -> DisplacementGrid:
    """Sample a deformation on a grid that covers ``points``.

    Parameters
    ----------
    transform : callable
        Maps an (M, 3) array of positions to their (M, 3) images, for example
        :meth:`sinkshape.registration.RegistrationResult.transform_points`.
    points : array-like
        (N, 3) points the grid must cover, such as the source surface.
    spacing : float, optional
        Grid spacing, in the unit of the coordinates. By default, and whenever
        the given spacing would exceed ``max_points``, the smallest spacing that
        keeps the grid within ``max_points`` points.
    margin : float
        Distance added around the bounding box of ``points``.
    max_points : int
        Upper bound on the number of grid points.

    Returns
    -------
    DisplacementGrid
    """
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3 or len(x) == 0:
        msg = f"points must have shape (N, 3) with N >= 1, got {x.shape}"
        raise InputError(msg)
    if not math.isfinite(margin) or margin < 0:
        msg = f"margin must be a non-negative number, got {margin!r}"
        raise InputError(msg)

    if spacing is not None and (not math.isfinite(spacing) or spacing <= 0):
        msg = f"spacing must be a positive number, got {spacing!r}"
        raise InputError(msg)
    if int(max_points) != max_points or max_points < 8:
        msg = f"max_points must be an integer of at least 8, got {max_points!r}"
        raise InputError(msg)

    lower = x.min(axis=0) - margin
    extent = np.maximum(x.max(axis=0) + margin - lower, 0.0)
    finest = _finest_spacing(extent, max_points)
    if spacing is None:
        spacing = finest
    elif spacing < finest:
        logger.warning(
            "grid spacing %.3g would exceed %d grid points; using %.3g instead",
            spacing,
            max_points,
            finest,
        )
        spacing = finest

    shape = tuple(int(n) for n in np.ceil(extent / spacing - 1e-9).astype(int) + 1)
    # Centre the grid on the box so that its overshoot is split evenly.
    origin = lower - 0.5 * ((np.array(shape) - 1) * spacing - extent)
    spacings = np.full(3, float(spacing))
    positions = grid_points(origin, spacings, shape)
    # Chunks bound the memory of transforms that build a kernel between the grid
    # points and the control points.
    chunks = []
    for start in range(0, len(positions), _TRANSFORM_CHUNK_POINTS):
        chunk = positions[start : start + _TRANSFORM_CHUNK_POINTS]
        moved_chunk = np.asarray(transform(chunk), dtype=np.float64)
        if moved_chunk.shape != chunk.shape:
            msg = f"transform returned shape {moved_chunk.shape} for {chunk.shape} points"
            raise InputError(msg)
        chunks.append(moved_chunk)
    moved = np.concatenate(chunks)

    displacement = (moved - positions).reshape(*shape, 3)
    logger.info("sampled the deformation on a %s grid with spacing %.3g", shape, spacing)
    return DisplacementGrid(displacement=displacement, origin=origin, spacing=spacings)


#: Grid points passed to the transform at once.
_TRANSFORM_CHUNK_POINTS = 8192


def _finest_spacing(extent: np.ndarray, max_points: int) -> float:
    """Smallest spacing h with prod(extent / h + 2) <= max_points, within 5 %."""
    volume = float(np.prod(np.maximum(extent, 1e-12)))
    spacing = max((volume / max_points) ** (1.0 / 3.0), 1e-12)
    while np.prod(np.floor(extent / spacing) + 2) > max_points:
        spacing *= 1.05
    return spacing


def write_grid_transform(
    path: str | os.PathLike[str],
    grid: DisplacementGrid,
    *,
    coordinates: CoordinateSystem = "LPS",
    overwrite: bool = True,
) -> None:
    """Write ``grid`` as an NRRD displacement field that 3D Slicer loads as a transform.

    The field is written in the modeling direction (``displacement field
    type:=modeling``): a point x of the source maps to x + u(x). The header uses
    LPS coordinates; ``coordinates`` states the frame of ``grid``. The file is
    written to a temporary file in the same folder and renamed onto ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.nrrd`` file.
    grid : DisplacementGrid
        The displacement field.
    coordinates : {"LPS", "RAS"}
        Frame of the grid's origin, spacing and displacements.
    overwrite : bool
        Replace an existing file.

    Raises
    ------
    InputError
        If the extension is not ``.nrrd``, the folder does not exist, or the file
        exists and ``overwrite`` is false.
    """
    import nrrd

    path = Path(path)
    if path.suffix.lower() != ".nrrd":
        msg = f"grid transform file must end in .nrrd, got {path.name!r}"
        raise InputError(msg)
    if not path.parent.is_dir():
        msg = f"output folder {path.parent} does not exist; create it first"
        raise InputError(msg)
    if path.exists() and not overwrite:
        msg = f"{path} exists; remove it or allow overwriting"
        raise InputError(msg)
    if coordinates not in ("LPS", "RAS"):
        msg = f"coordinates must be 'LPS' or 'RAS', got {coordinates!r}"
        raise InputError(msg)

    signs = _RAS_TO_LPS if coordinates == "RAS" else np.ones(3)
    origin = signs * grid.origin
    directions = np.diag(signs * grid.spacing)
    vectors = grid.displacement * signs

    nan_row = np.full((1, 3), np.nan)
    header = {
        "type": "double",
        "dimension": 4,
        "space": "left-posterior-superior",
        "sizes": [3, *grid.shape],
        "space directions": np.vstack([nan_row, directions]),
        "kinds": ["vector", "domain", "domain", "domain"],
        "endian": "little",
        "encoding": "gzip",
        "space origin": origin,
        "measurement frame": np.eye(3),
        "displacement field type": "modeling",
        "intent_code": "1006",
    }
    # NRRD stores the first axis fastest: (component, i, j, k) in Fortran order.
    data = np.ascontiguousarray(np.moveaxis(vectors, -1, 0), dtype=np.float64)

    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".nrrd", dir=path.parent)
    os.close(handle)
    try:
        nrrd.write(temporary, data, header, index_order="F")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.info("wrote grid transform %s (%s points, modeling direction)", path, grid.shape)
