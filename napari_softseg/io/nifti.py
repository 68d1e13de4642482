"""NIfTI input/output and geometry, shared by the napari reader/writer, the CLI and the core.

Conventions
-----------
* Arrays keep the **on-disk axis order**; nothing is reoriented. A 4-D file is
  ``(X, Y, Z, C)`` with ``C`` contrasts (channels) or time points.
* The **affine** maps voxel indices ``(i, j, k)`` to world millimetres; it is nibabel's
  ``img.affine`` (the sform when its code is set, else the qform). napari layers get it as
  their ``affine`` so scans of different orientation and voxel size overlay in world space.
  Voxel size and voxel volume are computed from it by :mod:`napari_softseg.io.geometry`;
  :class:`ScanGeometry` is a scan's grid without its voxels (what autosave, export and the
  docks need to write a map on the scan's grid).
* Writing copies the source header (qform/sform and their codes, units, description), sets
  the data type for the values written and removes intensity scaling so the stored values
  are exact. Writes are atomic (:mod:`napari_softseg.io.atomic`).

Every problem a user can cause raises :class:`~napari_softseg.errors.UserError` with a
single sentence that names the file.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from napari_softseg.errors import UserError
from napari_softseg.io import geometry
from napari_softseg.io.atomic import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Float maps whose values lie in [0, 1 + SOFT_TOLERANCE] are soft maps (interpolated
#: segmentations overshoot 1 slightly, e.g. 1.06 in sct_mt/mt1_gmseg).
SOFT_TOLERANCE = 0.1
#: Integer files with at most this many distinct values open as label maps.
MAX_LABEL_VALUES = 256

PathLike = Union[str, os.PathLike]


@dataclass
class NiftiVolume:
    """A NIfTI image in on-disk axis order, with the geometry needed to write it back.

    Attributes
    ----------
    data : numpy.ndarray
        Voxel values, ``(X, Y, Z)`` or ``(X, Y, Z, C)``; scaled values when the file
        declares ``scl_slope``/``scl_inter``, otherwise the on-disk dtype.
    affine : numpy.ndarray
        4x4 voxel-to-world (mm) matrix.
    header : nibabel.Nifti1Header
        A copy of the file's header (qform/sform codes, units, description ...).
    path : pathlib.Path or None
        Where it was read from.
    """

    data: np.ndarray
    affine: np.ndarray
    header: object = field(repr=False)
    path: Path | None = None

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape[:3])  # type: ignore[return-value]

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[3]) if self.data.ndim == 4 else 1

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes (:func:`napari_softseg.io.geometry.spacing`)."""
        return geometry.spacing(self.affine)

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in mm³ (:func:`napari_softseg.io.geometry.voxel_volume`)."""
        return geometry.voxel_volume(self.affine)

    @property
    def name(self) -> str:
        return nifti_stem(self.path) if self.path is not None else "volume"

    def kind(self) -> str:
        """``"labels"``, ``"soft"`` or ``"image"``: how napari should show it (see module doc)."""
        return classify(self.data)

    def geometry_metadata(self) -> dict:
        """What a napari layer keeps in ``metadata`` so that writing back is exact."""
        hdr = self.header
        return {
            "source_path": str(self.path) if self.path is not None else None,
            "affine": np.asarray(self.affine, dtype=float).tolist(),
            "shape": list(self.spatial_shape),
            "spacing": list(self.spacing),
            "qform_code": int(hdr["qform_code"]),
            "sform_code": int(hdr["sform_code"]),
            "units": list(hdr.get_xyzt_units()),
            "orientation": "".join(geometry.axis_codes(self.affine)),
            "nifti_header": hdr.copy(),
        }


def nifti_stem(path: PathLike) -> str:
    """File name without ``.nii`` / ``.nii.gz``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_nifti_path(path: PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def classify(data: np.ndarray) -> str:
    """``"labels"`` for integer/bool data with few values, ``"soft"`` for float data within
    [0, 1 + SOFT_TOLERANCE], otherwise ``"image"``."""
    if data.dtype == bool:
        return "labels"
    if np.issubdtype(data.dtype, np.integer):
        if data.size and (data.min() < 0 or data.max() >= MAX_LABEL_VALUES):
            return "image"
        if np.unique(data).size <= MAX_LABEL_VALUES // 4 and data.max() < MAX_LABEL_VALUES // 4:
            return "labels"
        return "image"
    if np.issubdtype(data.dtype, np.floating) and data.size:
        lo, hi = float(np.min(data)), float(np.max(data))
        if lo >= 0.0 and hi <= 1.0 + SOFT_TOLERANCE:
            return "soft"
    return "image"


def read_nifti(path: PathLike, *, allow_nonfinite: bool = False) -> NiftiVolume:
    """Read a ``.nii``/``.nii.gz`` file without reorienting it.

    Trailing singleton axes beyond the third are dropped (``(X, Y, Z, 1)`` becomes
    ``(X, Y, Z)``), a 2-D file becomes ``(X, Y, 1)``. Raises :class:`UserError` for a missing,
    truncated or non-NIfTI file, more than four dimensions, an empty axis, NaN/Inf voxels
    (unless ``allow_nonfinite``) and a singular or non-finite affine.
    """
    path = Path(path)
    img = _load_image(path)
    label = path.name
    try:
        data = np.asarray(np.asanyarray(img.dataobj))
    except (EOFError, OSError, zlib.error, ValueError, gzip.BadGzipFile) as err:
        raise UserError(f"{label} is truncated or corrupt: its voxel data could not be read completely ({_short(err)}).") from None
    data = _scan_axes(data, label)
    if not allow_nonfinite:
        _check_finite(data, label)
    affine = np.asarray(img.affine, dtype=float)
    geometry.check_affine(affine, label)
    return NiftiVolume(data=data, affine=affine, header=img.header.copy(), path=path)


def _load_image(path: Path):
    """The nibabel image of a NIfTI-1/2 file (voxels not read yet)."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    label = path.name
    if not path.exists():
        raise UserError(f"{label}: no such file.")
    if path.is_dir():
        raise UserError(f"{label} is a folder, not a NIfTI file.")
    if not is_nifti_path(path):
        raise UserError(f"{label} is not a NIfTI file (expected a .nii or .nii.gz name).")
    try:
        img = nib.load(str(path))
    except (ImageFileError, gzip.BadGzipFile, zlib.error, EOFError, OSError, ValueError) as err:
        raise UserError(f"{label} is not a readable NIfTI file ({_short(err)}).") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise UserError(f"{label} is not a NIfTI-1/2 image (it reads as {type(img).__name__}).")
    return img


def _scan_axes(data: np.ndarray, label: str) -> np.ndarray:
    """``(X, Y, Z)`` or ``(X, Y, Z, C)``: trailing singleton axes dropped, 2-D made 3-D."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, np.newaxis]
    if data.ndim > 4:
        raise UserError(
            f"{label} has {data.ndim} dimensions {tuple(data.shape)}; napari_softseg reads 3-D scans "
            "and 4-D files whose last axis holds contrasts."
        )
    if data.ndim < 2 or 0 in data.shape:
        raise UserError(f"{label} has an empty axis (shape {tuple(data.shape)}), so it holds no voxels.")
    return data


def _check_finite(data: np.ndarray, label: str) -> None:
    if not np.issubdtype(data.dtype, np.floating):
        return
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise UserError(
            f"{label} contains {bad} NaN or infinite voxel{'s' if bad > 1 else ''}; "
            "replace them (for example with 0) before opening it."
        )


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:120]


def _output_dtype(data: np.ndarray, dtype) -> np.dtype:
    if dtype is not None:
        return np.dtype(dtype)
    if data.dtype == bool:
        return np.dtype(np.uint8)
    if np.issubdtype(data.dtype, np.integer):
        lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
        for candidate in (np.uint8, np.int16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= lo and hi <= info.max:
                return np.dtype(candidate)
        return np.dtype(np.int64)
    return np.dtype(np.float32)


def fresh_header(affine: np.ndarray):
    """A NIfTI-1 header for ``affine`` alone: qform and sform set with code 1, mm units."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_xyzt_units("mm", "sec")
    header.set_qform(np.asarray(affine, float), code=1)
    header.set_sform(np.asarray(affine, float), code=1)
    return header


def set_exact_values(header, dtype, shape) -> None:
    """Make ``header`` describe ``shape`` voxels of ``dtype`` stored as is (no intensity
    scaling, no display window)."""
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header["scl_slope"] = np.nan
    header["scl_inter"] = np.nan
    header["cal_min"] = 0
    header["cal_max"] = 0


def write_nifti(
    path: PathLike,
    data: np.ndarray,
    like: NiftiVolume | PathLike | None = None,
    *,
    affine: np.ndarray | None = None,
    dtype=None,
) -> Path:
    """Write ``data`` to ``path`` atomically with the geometry of ``like``.

    Parameters
    ----------
    path : str or Path
        Target ``.nii`` or ``.nii.gz``.
    data : array
        ``(X, Y, Z)`` or ``(X, Y, Z, C)`` in the same axis order as ``like``.
    like : NiftiVolume, path or None
        Source of the header and affine (qform/sform and codes are copied unchanged).
        Its spatial shape must equal ``data``'s.
    affine : 4x4 array, optional
        Used when ``like`` is None (a fresh header with sform/qform code 1, mm units).
    dtype : optional
        Stored type. By default floats become float32 (soft maps), booleans uint8 and
        integers the smallest of uint8/int16/int32 that holds them (label maps).
    """
    import nibabel as nib

    path = Path(path)
    data = _writable_data(path, data)
    header = _reference_header(path, data, like, affine)
    out_dtype = _output_dtype(data, dtype)
    pixdim = header["pixdim"].copy()
    set_exact_values(header, out_dtype, data.shape)
    img_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = img_class(data.astype(out_dtype, copy=False), None, header=header)
    # nibabel recomputes nothing from affine=None; make sure qform/sform survive exactly.
    img.header.set_qform(header.get_qform(), code=int(header["qform_code"]))
    img.header.set_sform(header.get_sform(), code=int(header["sform_code"]))
    if like is not None:  # keep the source's time/extra pixdim entries (nibabel resets them to 1)
        restored = img.header["pixdim"].copy()
        restored[4:] = pixdim[4:]
        img.header["pixdim"] = restored
    with atomic_path(path) as tmp:
        img.to_filename(tmp)
    return path


def _writable_data(path: Path, data) -> np.ndarray:
    """``data`` as a 3-D or 4-D array of finite values, or a :class:`UserError`."""
    if not is_nifti_path(path):
        raise UserError(f"{path.name}: output must end in .nii or .nii.gz.")
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[:, :, np.newaxis]
    if data.ndim not in (3, 4) or 0 in data.shape:
        raise UserError(f"Cannot write {path.name}: expected a 3-D or 4-D array with no empty axis, got shape {data.shape}.")
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise UserError(f"Cannot write {path.name}: the data contain NaN or infinite values.")
    return data


def _reference_header(path: Path, data: np.ndarray, like, affine):
    """A copy of ``like``'s header (checked against ``data``'s shape), or a fresh one for ``affine``."""
    if like is not None:
        src = like if isinstance(like, NiftiVolume) else _header_only(like)
        if tuple(data.shape[:3]) != tuple(src.spatial_shape):
            raise UserError(
                f"Cannot write {path.name}: its shape {tuple(data.shape[:3])} differs from "
                f"the reference {src.name} {tuple(src.spatial_shape)}."
            )
        return src.header.copy()
    if affine is None:
        raise UserError(f"Cannot write {path.name}: give a reference image (like=...) or an affine.")
    geometry.check_affine(affine, path.name)
    return fresh_header(affine)


def _dataless(shape, affine: np.ndarray, header, path: Path | None) -> NiftiVolume:
    """A :class:`NiftiVolume` with the geometry of a file but no voxels (a zero-size broadcast)."""
    dummy = np.broadcast_to(np.zeros((), np.uint8), tuple(shape))
    return NiftiVolume(data=dummy, affine=affine, header=header, path=path)


def _header_only(path: PathLike) -> NiftiVolume:
    """Geometry of a NIfTI file without loading its voxels."""
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path.name}: no such file.")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for a bad header
        raise UserError(f"{path.name} is not a readable NIfTI file ({_short(err)}).") from None
    shape = tuple(img.shape[:3]) + (1,) * max(0, 3 - len(img.shape))
    affine = np.asarray(img.affine, dtype=float)
    geometry.check_affine(affine, path.name)
    return _dataless(shape, affine, img.header.copy(), path)


@dataclass
class ScanGeometry:
    """The grid of a scan without its voxels: what autosave, export and the docks need to
    write a map that overlays the scan.

    ``header`` is the scan's NIfTI header (or None: a fresh header from ``affine``).
    """

    path: Path | None
    shape: tuple[int, int, int]
    affine: np.ndarray
    header: object = None

    @classmethod
    def from_metadata(cls, metadata: dict, *, fallback_shape=None, fallback_affine=None) -> "ScanGeometry":
        """From a layer's ``metadata`` as written by the NIfTI reader
        (``source_path``, ``shape``, ``affine``, ``nifti_header``)."""
        md = metadata or {}
        path = md.get("source_path")
        shape = md.get("shape", fallback_shape)
        affine = md.get("affine", fallback_affine)
        if shape is None or affine is None:
            raise UserError("The scan layer has no NIfTI geometry (shape and affine).")
        return cls(
            path=Path(path) if path else None,
            shape=tuple(int(s) for s in list(shape)[:3]),  # type: ignore[arg-type]
            affine=np.asarray(affine, dtype=float),
            header=md.get("nifti_header"),
        )

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in mm³."""
        return geometry.voxel_volume(self.affine)

    def header_or_fresh(self):
        """A copy of the scan's header, or a fresh one made from the affine."""
        return self.header.copy() if self.header is not None else fresh_header(self.affine)

    def reference(self) -> NiftiVolume | None:
        """A data-less :class:`NiftiVolume` usable as ``write_nifti(..., like=...)``."""
        if self.header is None:
            return None
        return _dataless(self.shape, self.affine, self.header.copy(), self.path)

    def write(self, path, data: np.ndarray, *, dtype=None) -> Path:
        """Write ``data`` with this geometry (header copied when known, else the affine)."""
        if tuple(np.shape(data)[:3]) != self.shape:
            raise UserError(
                f"Cannot write {Path(path).name}: its shape {tuple(np.shape(data)[:3])} differs "
                f"from the scan's {self.shape}."
            )
        ref = self.reference()
        if ref is not None:
            return write_nifti(path, data, like=ref, dtype=dtype)
        return write_nifti(path, data, affine=self.affine, dtype=dtype)


def same_grid(a: NiftiVolume, b: NiftiVolume, *, atol: float = 1e-3) -> bool:
    return a.spatial_shape == b.spatial_shape and np.allclose(a.affine, b.affine, atol=atol)


def check_same_grid(reference: NiftiVolume, other: NiftiVolume, *, atol: float = 1e-3) -> None:
    """Raise :class:`UserError` unless ``other`` lies on ``reference``'s voxel grid."""
    if reference.spatial_shape != other.spatial_shape:
        raise UserError(
            f"{other.name} does not match {reference.name}: shape {other.spatial_shape} "
            f"vs {reference.spatial_shape}."
        )
    diff = float(np.max(np.abs(np.asarray(reference.affine) - np.asarray(other.affine))))
    if diff > atol:
        raise UserError(
            f"{other.name} does not match {reference.name}: their affines differ by up to "
            f"{diff:.3g} (orientation, voxel size or position), so the voxels do not overlap."
        )
