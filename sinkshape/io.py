"""Read and write mesh files for the command line.

:func:`read_mesh` turns a missing, unreadable or empty file, and a mesh
without faces, into an :class:`~sinkshape.errors.InputError` with a one-line
message naming the file. :func:`write_mesh` writes through a temporary file in
the output folder, so an interrupted write leaves the previous output file as
it was.

VTK chooses the mesh reader and writer from the file extension.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import pyvista as pv

from sinkshape.errors import InputError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SUPPORTED_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "check_output_path",
    "read_image",
    "read_mesh",
    "write_mesh",
]

log = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".vtp", ".vtk", ".vtu", ".stl", ".ply", ".obj")
"""File extensions that :func:`read_mesh` reads (compared in lower case)."""

WRITE_EXTENSIONS: tuple[str, ...] = (".vtp", ".vtk", ".stl", ".ply", ".obj")
"""File extensions that :func:`write_mesh` writes (compared in lower case)."""

IMAGE_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz", ".mha", ".mhd")
"""File extensions that :func:`read_image` reads (compared in lower case)."""

# Formats that store the geometry but not the point and cell arrays. The value
# is True where the writer still stores the active normals and the active
# texture coordinates, as the PLY and OBJ writers of VTK 9.6 do.
_FORMATS_WITHOUT_ARRAYS: dict[str, bool] = {".stl": False, ".ply": True, ".obj": True}

_ERROR_DETAIL_MAX_CHARS = 200
_TEMPORARY_NAME_ATTEMPTS = 10


def read_mesh(path: str | os.PathLike[str], *, require_faces: bool = True) -> pv.PolyData:
    """Read a surface mesh file.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.vtp``, ``.vtk``, ``.vtu``, ``.stl``, ``.ply`` or ``.obj`` file.
        Unstructured grids (``.vtu`` and unstructured ``.vtk``) are converted
        to their boundary surface.
    require_faces : bool, default: True
        Reject a mesh without polygons or triangle strips, such as a
        centerline made only of lines.

    Returns
    -------
    pyvista.PolyData
        The mesh, with the point and cell arrays stored in the file.

    Raises
    ------
    InputError
        If the file is missing, empty or unreadable, or its extension is not
        in :data:`SUPPORTED_EXTENSIONS`. Also if the file contains no surface
        (for example a volume image) or no points, and if the mesh has no
        faces while ``require_faces`` is true.
    """
    path = Path(path)
    extension = _check_readable_file(path, SUPPORTED_EXTENSIONS, kind="mesh")

    data = _read_with_pyvista(path, extension)
    mesh = _as_polydata(data, path)

    if mesh.n_points == 0:
        msg = (
            f"mesh file {path} contains no points; the mesh is empty, or the file "
            f"is not a valid {extension} file"
        )
        raise InputError(msg)

    if require_faces and mesh.n_faces + mesh.n_strips == 0:
        msg = (
            f"mesh file {path} has no faces (it has {mesh.n_lines} lines and "
            f"{mesh.n_verts} vertex cells); give a surface mesh with polygons"
        )
        raise InputError(msg)

    return mesh


def write_mesh(
    mesh: pv.PolyData,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = True,
    source: str | os.PathLike[str] | None = None,
) -> None:
    """Write a surface mesh atomically.

    The mesh is written to a temporary file in the output folder, flushed to
    disk, and renamed onto ``path`` with :func:`os.replace`. If writing fails,
    the temporary file is removed and a previous file at ``path`` is left
    unchanged. A replaced file keeps its permission bits.

    Parameters
    ----------
    mesh : pyvista.PolyData
        The mesh to write.
    path : str or os.PathLike
        Output file. Its extension, one of :data:`WRITE_EXTENSIONS`, selects
        the format. ``.stl`` stores no point or cell arrays, and ``.ply`` and
        ``.obj`` store only the normals and the texture coordinates. A logged
        warning names the arrays that such a format drops.
    overwrite : bool, default: True
        Replace an existing file at ``path``. If false, an existing file is an
        error.
    source : str or os.PathLike, optional
        The input file the mesh was read from. Writing onto it is an error, so
        that a failed or wrong run cannot destroy its input.

    Raises
    ------
    InputError
        If the extension is not writable, the output folder does not exist,
        ``path`` is a folder or the ``source`` file, ``path`` exists and
        ``overwrite`` is false, or the mesh has no points and the format
        cannot store an empty mesh.
    TypeError
        If ``mesh`` is not a :class:`pyvista.PolyData`.
    OSError
        If the file system fails while writing or renaming.
    """
    if not isinstance(mesh, pv.PolyData):
        msg = f"mesh must be a pyvista.PolyData, got {type(mesh).__name__}"
        raise TypeError(msg)

    path = Path(path)
    extension = check_output_path(path, overwrite=overwrite, source=source)

    if mesh.n_points == 0 and extension in _FORMATS_WITHOUT_ARRAYS:
        msg = f"cannot write {path}: the mesh has no points, and VTK writes no empty {extension} file"
        raise InputError(msg)

    _warn_dropped_arrays(mesh, path, extension)
    _replace_atomically(mesh, path)
    log.debug("Wrote %s (%d points, %d cells)", path, mesh.n_points, mesh.n_cells)


def read_image(path: str | os.PathLike[str]) -> pv.ImageData:
    """Read a 3D image from a NIfTI or MetaImage file.

    Coordinates are the world coordinates stored in the file, with no change of
    convention: NIfTI stores RAS coordinates and MetaImage files written by ITK
    store LPS coordinates.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.nii`` or ``.nii.gz`` file, read with nibabel and its affine, or a
        ``.mha`` or ``.mhd`` file, read with VTK's MetaImage reader.

    Returns
    -------
    pyvista.ImageData
        The image with one point array: ``"NIFTI"`` for NIfTI files (the name
        VTK's own NIfTI reader gives) and ``"MetaImage"`` for MetaImage files.

    Raises
    ------
    InputError
        If the file is missing, empty or unreadable, if its extension is not in
        :data:`IMAGE_EXTENSIONS`, or if a NIfTI image is not 3D.
    ImportError
        If a NIfTI file is given and nibabel is not installed.
    """
    path = Path(path)
    extension = _check_readable_file(path, IMAGE_EXTENSIONS, kind="image")

    if extension in (".nii", ".nii.gz"):
        return _read_nifti(path)

    # NOTE: VTK's MetaImage reader ignores the TransformMatrix of the header,
    # so an image whose axes are flipped or rotated comes back axis-aligned.
    image = _read_with_pyvista(path, extension)
    if not isinstance(image, pv.ImageData) or image.n_points == 0:
        msg = f"image file {path} contains no image data; check that it is a valid {extension} file"
        raise InputError(msg)
    return image


def _extension(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def _check_readable_file(path: Path, extensions: tuple[str, ...], *, kind: str) -> str:
    if not path.exists():
        msg = f"{kind} file not found: {path}"
        raise InputError(msg)
    if not path.is_file():
        msg = f"{kind} path {path} is not a file"
        raise InputError(msg)

    extension = _extension(path)
    if extension not in extensions:
        supported = ", ".join(extensions)
        msg = (
            f"unsupported {kind} file extension {extension or '(none)'!r} for {path}; "
            f"use one of: {supported}"
        )
        raise InputError(msg)

    if path.stat().st_size == 0:
        msg = f"{kind} file {path} is empty (0 bytes)"
        raise InputError(msg)

    return extension


def _read_with_pyvista(path: Path, extension: str) -> pv.DataObject:
    """Read ``path`` with the pyvista reader for its extension.

    VTK readers report most failures as error events, not exceptions, and some
    return an empty dataset for a file they cannot parse. This function runs
    the VTK reader directly inside a :class:`pyvista.VtkErrorCatcher`, so the
    events reach neither stderr nor the root logger, and raises InputError
    with the most specific event. ``pyvista.read`` is not used because it logs
    every VTK error to the root logger (pyvista 0.49).
    """
    data = None
    failure = None
    with pv.vtk_verbosity("off"), pv.VtkErrorCatcher(send_to_logging=False) as catcher:
        try:
            reader = pv.get_reader(path)
            reader.reader.Update()
            data = pv.wrap(reader.reader.GetOutputDataObject(0))
        except (OSError, RuntimeError, ValueError) as error:
            failure = str(error)

    vtk_errors = [event.alert for event in catcher.error_events]
    vtk_warnings = [event.alert for event in catcher.warning_events]
    if failure is None and vtk_errors:
        failure = _most_specific(vtk_errors + vtk_warnings)
    if failure is None and data is None:
        failure = "the VTK reader produced no output"

    if failure is not None:
        log.debug("Reading %s failed; VTK errors: %s; warnings: %s", path, vtk_errors, vtk_warnings)
        msg = f"cannot read {path} as a {extension} file: {_one_line(failure)}"
        raise InputError(msg)

    for alert in vtk_warnings:
        log.warning("VTK warning while reading %s: %s", path, _one_line(alert))
    return data


def _most_specific(alerts: list[str]) -> str:
    # VTK's pipeline adds "Algorithm vtkXReader (0x...) returned failure for
    # request: ..." after the reader's own message, which names the problem.
    for alert in alerts:
        if not alert.startswith("Algorithm "):
            return alert
    return alerts[0]


def _one_line(text: str) -> str:
    # VTK messages span several lines and may quote the whole pipeline request.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else "unknown error"
    if len(first) > _ERROR_DETAIL_MAX_CHARS:
        first = first[: _ERROR_DETAIL_MAX_CHARS - 3] + "..."
    return first


def _as_polydata(data: pv.DataObject, path: Path) -> pv.PolyData:
    if isinstance(data, pv.PolyData):
        return data
    if isinstance(data, pv.UnstructuredGrid):
        # algorithm=None lets pyvista choose the VTK filter and silences its
        # FutureWarning about the default changing (pyvista 0.47).
        return data.extract_surface(pass_pointid=False, pass_cellid=False, algorithm=None)

    msg = (
        f"mesh file {path} contains {type(data).__name__} data, not a surface mesh; "
        f"extract a surface from it first (for example an isosurface of an image)"
    )
    raise InputError(msg)


def check_output_path(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = True,
    source: str | os.PathLike[str] | None = None,
) -> str:
    """Check that :func:`write_mesh` can write ``path``, and return its extension.

    Raises the same :class:`InputError` as :func:`write_mesh`, so that a command
    can reject a bad output path before it reads or computes anything.
    """
    path = Path(path)
    extension = _extension(path)
    if extension not in WRITE_EXTENSIONS:
        supported = ", ".join(WRITE_EXTENSIONS)
        msg = (
            f"cannot write mesh file {path}: unsupported extension "
            f"{extension or '(none)'!r}; use one of: {supported}"
        )
        raise InputError(msg)

    folder = path.parent
    if not folder.is_dir():
        msg = f"output folder {folder} does not exist; create it before writing {path.name}"
        raise InputError(msg)
    if path.is_dir():
        msg = f"output path {path} is a folder; give a file name ending in {extension}"
        raise InputError(msg)

    if source is not None and _is_same_file(Path(source), path):
        msg = f"output path {path} is the input file {source}; choose another output path"
        raise InputError(msg)

    if not overwrite and path.exists():
        msg = f"output file {path} exists; remove it or pass overwrite=True to replace it"
        raise InputError(msg)

    return extension


def _is_same_file(first: Path, second: Path) -> bool:
    if first.resolve() == second.resolve():
        return True
    # samefile also catches hard links and case-insensitive file systems.
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def _warn_dropped_arrays(mesh: pv.PolyData, path: Path, extension: str) -> None:
    if extension not in _FORMATS_WITHOUT_ARRAYS:
        return

    stored_point_arrays: set[str | None] = set()
    if _FORMATS_WITHOUT_ARRAYS[extension]:
        stored_point_arrays = {
            mesh.point_data.active_normals_name,
            mesh.point_data.active_texture_coordinates_name,
        }
    dropped_point_arrays = [
        name for name in mesh.point_data.keys() if name not in stored_point_arrays
    ]
    dropped_cell_arrays = list(mesh.cell_data.keys())
    if not dropped_point_arrays and not dropped_cell_arrays:
        return

    log.warning(
        "Writing %s drops point arrays %s and cell arrays %s because the %s format "
        "cannot store them; write .vtp or .vtk to keep them",
        path,
        dropped_point_arrays,
        dropped_cell_arrays,
        extension,
    )


def _replace_atomically(mesh: pv.PolyData, path: Path) -> None:
    temporary_path = _create_temporary_file(path)
    try:
        # PolyData.save computes normals in place before writing .stl and .ply
        # (pyvista 0.49), so it saves a shallow copy to leave the mesh unchanged.
        mesh.copy(deep=False).save(temporary_path)
        _fsync_path(temporary_path)
        if path.exists():
            shutil.copymode(path, temporary_path)
        os.replace(temporary_path, path)
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise

    # Flush the rename itself. Failure is only logged because some file systems
    # do not support fsync on a folder.
    try:
        _fsync_path(path.parent)
    except OSError as error:
        log.debug("fsync of folder %s failed: %s", path.parent, error)


def _create_temporary_file(path: Path) -> Path:
    """Create an empty file beside ``path`` with the same extension.

    The file is created with O_EXCL and mode 0o666 filtered by the umask, so the
    written file gets the permission bits of a normally created file.
    """
    extension = _extension(path)
    stem = path.name[: len(path.name) - len(extension)]
    for _ in range(_TEMPORARY_NAME_ATTEMPTS):
        candidate = path.with_name(f".{stem}.{secrets.token_hex(6)}.tmp{extension}")
        try:
            descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(descriptor)
        return candidate

    msg = f"cannot create a temporary file beside {path}: {_TEMPORARY_NAME_ATTEMPTS} names were taken"
    raise FileExistsError(msg)


def _fsync_path(path: Path) -> None:
    # Windows needs write access to fsync a file, and cannot open a folder.
    flags = os.O_RDONLY if path.is_dir() else os.O_RDWR
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _read_nifti(path: Path) -> pv.ImageData:
    try:
        import nibabel  # noqa: PLC0415
        from nibabel.filebasedimages import ImageFileError  # noqa: PLC0415
    except ImportError as error:
        msg = f"reading NIfTI file {path} needs nibabel; install nibabel"
        raise ImportError(msg) from error

    try:
        nifti = nibabel.load(path)
        values = np.asanyarray(nifti.dataobj)
    except (OSError, ValueError, EOFError, ImageFileError) as error:
        msg = f"cannot read {path} as a NIfTI file: {_one_line(str(error))}"
        raise InputError(msg) from error

    # A 4D image with a single volume is common output of conversion tools.
    if values.ndim == 4 and values.shape[3] == 1:
        values = values[..., 0]
    if values.ndim != 3:
        msg = f"NIfTI file {path} has shape {values.shape}; read_image needs a 3D image"
        raise InputError(msg)

    # The affine maps voxel indices to world coordinates: its columns are the
    # axis directions scaled by the voxel spacing.
    affine = nifti.affine
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image = pv.ImageData(
        dimensions=values.shape,
        spacing=spacing,
        origin=affine[:3, 3],
        direction_matrix=affine[:3, :3] / spacing,
    )
    # VTK orders points with x varying fastest, which is Fortran order.
    image.point_data["NIFTI"] = values.ravel(order="F")
    return image
