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
* Reading checks the header before any voxel is read: a file whose voxels would need more
  memory than the machine has available is refused with both figures, an uncompressed file
  shorter than its header announces is reported as truncated, and the gzip checksum of a
  ``.nii.gz`` is verified (a damaged file is refused, not opened silently).
* **NaN voxels** (no data, e.g. outside the field of view of a resampled scan) are treated
  as background: they are replaced by ``min(0, smallest finite voxel)`` and a one-line note
  is kept in :attr:`NiftiVolume.notes`. Infinite voxels are refused. Voxels come back in
  the machine's byte order.
* **Soft maps** may overshoot [0, 1] by at most :data:`SOFT_OVERSHOOT` (interpolated
  segmentations do); :func:`clip_soft` clips such values and reports the largest change.
* Writing copies the source header (qform/sform and their codes, units, description), sets
  the data type for the values written and removes intensity scaling so the stored values
  are exact. A volume written back with the geometry of its source (``like``) keeps the
  source's data type when its values allow it exactly (an int16 scan with intensity scaling
  is stored as int16 with the same scaling, a float64 one as float64). A cast that would
  change values (-5 stored as uint8, 0.3 stored as an integer) is refused. Writes are atomic
  (:mod:`napari_softseg.io.atomic`).

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
from napari_softseg.io.checks import check_memory

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: How far a soft map may lie outside [0, 1]: float maps within [-SOFT_OVERSHOOT,
#: 1 + SOFT_OVERSHOOT] are soft maps, clipped to [0, 1] where they are used as such
#: (interpolated segmentations overshoot: sct_mt/mt1_gmseg reaches 1.059, mt1_wmseg 1.108).
SOFT_OVERSHOOT = 0.15
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
    notes : list of str
        One-line notes for the user about how the file was read (NaN voxels taken as
        background).
    """

    data: np.ndarray
    affine: np.ndarray
    header: object = field(repr=False)
    path: Path | None = None
    notes: list = field(default_factory=list, repr=False)

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
    [-SOFT_OVERSHOOT, 1 + SOFT_OVERSHOOT] (:func:`is_soft_range`), otherwise ``"image"``."""
    if data.dtype == bool:
        return "labels"
    if np.issubdtype(data.dtype, np.integer):
        if data.size and (data.min() < 0 or data.max() >= MAX_LABEL_VALUES):
            return "image"
        if np.unique(data).size <= MAX_LABEL_VALUES // 4 and data.max() < MAX_LABEL_VALUES // 4:
            return "labels"
        return "image"
    if np.issubdtype(data.dtype, np.floating) and data.size:
        if is_soft_range(float(np.min(data)), float(np.max(data))):
            return "soft"
    return "image"


def is_soft_range(lo: float, hi: float) -> bool:
    """Whether values from ``lo`` to ``hi`` make a soft map (within the stated overshoot)."""
    return -SOFT_OVERSHOOT <= lo and hi <= 1.0 + SOFT_OVERSHOOT


def clip_soft(data: np.ndarray, name: str) -> tuple[np.ndarray, float]:
    """``data`` clipped to [0, 1] and the largest change that made; a :class:`UserError`
    naming ``name`` when the values overshoot [0, 1] by more than :data:`SOFT_OVERSHOOT`."""
    lo, hi = (float(np.min(data)), float(np.max(data))) if data.size else (0.0, 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise UserError(f"{name} contains NaN or infinite values.")
    if not is_soft_range(lo, hi):
        raise UserError(
            f"{name} has values from {lo:.3g} to {hi:.3g}; a soft map must lie in [0, 1] "
            f"(values at most {SOFT_OVERSHOOT:g} outside it, from interpolation, are clipped)."
        )
    change = max(0.0 - lo, hi - 1.0, 0.0)
    if change == 0.0:
        return data, 0.0
    return np.clip(data, 0, 1).astype(data.dtype, copy=False), change


def clip_note(name: str, change: float) -> str:
    """The one-line report of :func:`clip_soft`'s change."""
    return f"{name}: values outside [0, 1] were clipped (largest change {change:.3g})."


def read_nifti(path: PathLike, *, allow_nonfinite: bool = False) -> NiftiVolume:
    """Read a ``.nii``/``.nii.gz`` file without reorienting it.

    Trailing singleton axes beyond the third are dropped (``(X, Y, Z, 1)`` becomes
    ``(X, Y, Z)``), a 2-D file becomes ``(X, Y, 1)``. NaN voxels become background with a
    note (see the module docstring; kept as they are with ``allow_nonfinite``). Raises
    :class:`UserError` for a missing, truncated, damaged or non-NIfTI file, a file too large
    for the memory, more than four dimensions, an empty axis, infinite voxels (unless
    ``allow_nonfinite``) and a singular or non-finite affine.
    """
    path = Path(path)
    img = _load_image(path)
    label = path.name
    _check_size(img, path)
    data = _read_voxels(img, path)
    data = _scan_axes(data, label)
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    notes: list[str] = []
    if not allow_nonfinite:
        data, notes = _nan_as_background(data, label)
    affine = np.asarray(img.affine, dtype=float)
    geometry.check_affine(affine, label)
    header = img.header.copy()
    slope, inter = _disk_scaling(img)
    if (slope, inter) != (1.0, 0.0):  # nibabel moves the scaling into the proxy; keep it for writing back
        header.set_slope_inter(slope, inter)
    return NiftiVolume(data=data, affine=affine, header=header, path=path, notes=notes)


def _disk_scaling(img) -> tuple[float, float]:
    """The intensity scaling ``(slope, inter)`` the file declares (``(1, 0)`` for none)."""
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    return (slope if np.isfinite(slope) and slope != 0 else 1.0), (inter if np.isfinite(inter) else 0.0)


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
    except (ImageFileError, gzip.BadGzipFile, zlib.error, EOFError, OSError, ValueError, MemoryError) as err:
        raise _gzip_damage(path) or UserError(f"{label} is not a readable NIfTI file ({_short(err)}).") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise UserError(f"{label} is not a NIfTI-1/2 image (it reads as {type(img).__name__}).")
    return img


def _check_size(img, path: Path) -> None:
    """Refuse, from the header alone, voxels that do not fit in memory or in the file."""
    header = img.header
    shape = tuple(int(s) for s in header.get_data_shape())
    disk = np.dtype(header.get_data_dtype())
    n = int(np.prod(shape, dtype=object)) if shape else 0
    scaled = _disk_scaling(img) != (1.0, 0.0)
    nbytes = n * (max(disk.itemsize, 8) if scaled and disk.kind in "iu" else disk.itemsize)
    dims = "×".join(str(s) for s in shape)
    if 0 in shape:
        raise UserError(f"{path.name} has an empty axis (shape {shape}), so it holds no voxels.")
    check_memory(nbytes, f"{path.name} ({dims} voxels of {disk.name})")
    if not path.name.lower().endswith(".gz"):
        offset = getattr(img.dataobj, "offset", None)
        have = path.stat().st_size - int(header.get_data_offset() if offset is None else offset)
        need = n * disk.itemsize
        if have < need:
            raise UserError(
                f"{path.name} is truncated or corrupt: its header announces {need} bytes of voxels "
                f"({dims} of {disk.name}) but the file holds only {max(have, 0)} after the header."
            )


def _read_voxels(img, path: Path) -> np.ndarray:
    """The voxel array; for ``.nii.gz`` read through a gzip stream that is drained to its end,
    so that its checksum and length are verified."""
    label = path.name
    try:
        if not path.name.lower().endswith(".gz"):
            return np.asarray(np.asanyarray(img.dataobj))
        import nibabel as nib

        with gzip.open(path, "rb") as stream:
            holder = nib.FileHolder(filename=str(path), fileobj=stream)
            data = np.asarray(np.asanyarray(type(img).from_file_map({"image": holder, "header": holder}).dataobj))
            while stream.read(1 << 20):
                pass
        return data
    except (EOFError, OSError, zlib.error, ValueError) as err:
        damaged = _checksum_error(label, err)
        raise damaged or UserError(
            f"{label} is truncated or corrupt: its voxel data could not be read completely ({_short(err)}).") from None


def _checksum_error(label: str, err: BaseException) -> UserError | None:
    """The sentence for a gzip stream whose checksum or length does not match its content."""
    text = str(err).lower()
    if isinstance(err, gzip.BadGzipFile) and ("crc" in text or "length" in text):
        return UserError(f"{label} is damaged: its gzip checksum does not match its content, so it was not "
                         "opened (copy the file again from its source).")
    return None


def _gzip_damage(path: Path) -> UserError | None:
    """For a ``.nii.gz`` that nibabel could not open: the checksum sentence when that is why."""
    if not path.name.lower().endswith(".gz"):
        return None
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 20):
                pass
    except (EOFError, OSError, zlib.error) as err:
        return _checksum_error(path.name, err)
    return None


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


def _nan_as_background(data: np.ndarray, label: str) -> tuple[np.ndarray, list[str]]:
    """NaN voxels replaced by the background value, with a note; infinite voxels refused."""
    if data.dtype.kind != "f":
        return data, []
    finite = np.isfinite(data)
    n_bad = int(data.size - np.count_nonzero(finite))
    if not n_bad:
        return data, []
    nan = np.isnan(data)
    n_nan = int(np.count_nonzero(nan))
    if n_bad > n_nan:
        n_inf = n_bad - n_nan
        raise UserError(
            f"{label} contains {n_inf} infinite voxel{'s' if n_inf > 1 else ''}; "
            "replace them (for example with 0) before opening it."
        )
    if n_nan == data.size:
        raise UserError(f"{label} holds only NaN voxels, so it has no image to show.")
    fill = min(0.0, float(np.min(data[finite])))
    data = np.where(nan, data.dtype.type(fill), data)
    return data, [f"{label}: {n_nan} NaN voxel{'s' if n_nan > 1 else ''} (no data, e.g. outside the field of view) "
                  f"are treated as background ({fill:g})."]


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


def _check_cast(path: Path, data: np.ndarray, dtype: np.dtype) -> None:
    """Refuse a conversion of ``data`` to ``dtype`` that would change values."""
    if data.dtype == bool or dtype.kind == "b":
        return
    lo, hi = float(np.min(data)), float(np.max(data))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if lo < info.min or hi > info.max:
            raise UserError(
                f"Cannot write {path.name} as {dtype.name}: its values from {lo:g} to {hi:g} do not fit in "
                f"{dtype.name} ({info.min} to {info.max}) and would wrap around."
            )
        if data.dtype.kind == "f":
            fraction = data[data != np.round(data)]
            if fraction.size:
                raise UserError(
                    f"Cannot write {path.name} as {dtype.name}: values such as {float(fraction.flat[0]):g} "
                    "are not whole numbers, so storing them would change them."
                )
    elif dtype.kind == "f" and max(abs(lo), abs(hi)) > float(np.finfo(dtype).max):
        raise UserError(f"Cannot write {path.name} as {dtype.name}: values up to {max(abs(lo), abs(hi)):g} "
                        f"exceed its range and would become infinite.")


def _source_encoding(data: np.ndarray, header):
    """How the source file stored its voxels, when ``data`` can be stored that way exactly:
    ``(stored array, dtype, slope, inter)`` (slope/inter None: no scaling), else None.

    Integer data keep the source's type when they have it (a scan read and written back);
    float data are stored as the source's integers and scaling when that reproduces every
    value exactly, and as float64 when both the source and the data are float64."""
    from nibabel.volumeutils import apply_read_scaling

    disk = np.dtype(header.get_data_dtype()).newbyteorder("=")
    if data.dtype.kind in "iub":
        exact = data.dtype == disk and header.get_slope_inter() in ((None, None), (1.0, 0.0))
        return (data, disk, None, None) if exact else None
    if disk.kind == "f":
        return (data, disk, None, None) if disk.itemsize > 4 and data.dtype.itemsize > 4 else None
    if disk.kind not in "iu":
        return None
    slope, inter = header.get_slope_inter()
    slope = 1.0 if slope is None else float(slope)
    inter = 0.0 if inter is None else float(inter)
    info = np.iinfo(disk)
    raw = np.rint((data.astype(np.float64) - inter) / slope)
    if float(raw.min()) < info.min or float(raw.max()) > info.max:
        return None
    raw = raw.astype(disk)
    back = apply_read_scaling(raw, np.float64(slope), np.float64(inter))
    if not np.array_equal(np.asarray(back, dtype=np.float64), data.astype(np.float64)):
        return None
    scaled = (slope, inter) != (1.0, 0.0)
    return raw, disk, (slope if scaled else None), (inter if scaled else None)


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
        Stored type. By default a volume written back with its source's geometry keeps the
        source's data type (and intensity scaling) when its values allow it exactly;
        otherwise floats become float32 (soft maps), booleans uint8 and integers the
        smallest of uint8/int16/int32 that holds them (label maps). A type that would change
        the values (wrap around, drop fractions, overflow) is refused.
    """
    path = Path(path)
    data = _writable_data(path, data)
    header = _reference_header(path, data, like, affine)
    encoding = _source_encoding(data, header) if dtype is None and like is not None else None
    if encoding is not None:
        data, out_dtype, slope, inter = encoding
    else:
        out_dtype, slope, inter = _output_dtype(data, dtype), None, None
        _check_cast(path, data, out_dtype)
    img = _image(header, data, out_dtype, keep_pixdim=like is not None)
    if slope is not None:  # stored as the source stored it: raw integers and its scaling
        img.header["scl_slope"], img.header["scl_inter"] = slope, inter
    with atomic_path(path) as tmp:
        img.to_filename(tmp)
    return path


def _image(header, data: np.ndarray, out_dtype: np.dtype, *, keep_pixdim: bool):
    """A nibabel image of ``data`` stored as ``out_dtype`` with ``header``'s geometry."""
    import nibabel as nib

    pixdim = header["pixdim"].copy()
    set_exact_values(header, out_dtype, data.shape)
    img_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = img_class(data.astype(out_dtype, copy=False), None, header=header)
    # nibabel recomputes nothing from affine=None; make sure qform/sform survive exactly.
    img.header.set_qform(header.get_qform(), code=int(header["qform_code"]))
    img.header.set_sform(header.get_sform(), code=int(header["sform_code"]))
    if keep_pixdim:  # keep the source's time/extra pixdim entries (nibabel resets them to 1)
        restored = img.header["pixdim"].copy()
        restored[4:] = pixdim[4:]
        img.header["pixdim"] = restored
    return img


def _writable_data(path: Path, data) -> np.ndarray:
    """``data`` as a 3-D or 4-D array of finite values, or a :class:`UserError`."""
    if not is_nifti_path(path):
        raise UserError(f"{path.name}: output must end in .nii or .nii.gz.")
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        raise UserError(f"Cannot write {path.name}: its data type is {data.dtype}; only numbers "
                        "(integers, floats or booleans) can be stored.")
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
