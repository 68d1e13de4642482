"""Crash-safe autosave of rater layers: sidecar folders, atomic writes, a background writer.

Where
-----
The raters of a scan ``/data/sub1_T2w.nii.gz`` are saved in the sidecar folder
``/data/sub1_T2w.softseg/`` when ``/data`` is writable, otherwise in a per-user folder
``<user data dir>/napari-softseg/autosave/<sha256(scan path)[:16]>/`` (user data dir:
``$NAPARI_SOFTSEG_DATA`` if set, else ``$XDG_DATA_HOME`` or ``~/.local/share`` on Linux,
``~/Library/Application Support`` on macOS, ``%LOCALAPPDATA%`` on Windows). Restoring looks
in both places.

What
----
One NIfTI file per rater, ``<quoted rater name>.nii.gz`` (the name is percent-encoded, so
any layer name round-trips), holding the uint8 confidence levels with the scan's header
and affine; any NIfTI viewer opens it. ``scan.json`` records the scan path and shape.

How
---
Each save writes a temporary file in the same folder, flushes it to disk and renames it
over the previous one (:func:`write_levels_atomic`), so a process killed at any instant
leaves either the previous or the new complete file, never a partial one.
:class:`~napari_softseg.labels.autosave_writer.AutosaveWriter` does this in one background thread; the caller hands it a copy
of the array (a 3.6 MB memcpy for a 142x178x142 uint8 volume, about 1 ms) and returns at
once. Snapshots of the same rater that arrive while one is being written are coalesced:
only the newest is written next.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np

from napari_softseg.errors import UserError
from napari_softseg.io.nifti import NiftiVolume, nifti_stem, read_nifti, write_nifti

SIDECAR_SUFFIX = ".softseg"
MANIFEST = "scan.json"
RATER_SUFFIX = ".nii.gz"
APP_NAME = "napari-softseg"


# ---------------------------------------------------------------------------- geometry
@dataclass
class ScanGeometry:
    """What autosave and export need to know about a scan.

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
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def reference(self) -> NiftiVolume | None:
        """A data-less :class:`NiftiVolume` usable as ``write_nifti(..., like=...)``."""
        if self.header is None:
            return None
        dummy = np.broadcast_to(np.zeros((), np.uint8), self.shape)
        return NiftiVolume(data=dummy, affine=self.affine, header=self.header.copy(), path=self.path)

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


# ---------------------------------------------------------------------------- locations
def user_data_dir() -> Path:
    """Per-user data folder for autosaves (see the module docstring)."""
    override = os.environ.get("NAPARI_SOFTSEG_DATA")
    if override:
        return Path(override) / "autosave"
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / APP_NAME / "autosave"


def scan_key(scan_path) -> str:
    """Stable short key of a scan path (sha256 of its absolute path)."""
    text = str(Path(scan_path).expanduser().absolute())
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def sidecar_dir(scan_path) -> Path:
    """The folder next to the scan: ``<folder>/<scan stem>.softseg``."""
    p = Path(scan_path).expanduser().absolute()
    return p.parent / (nifti_stem(p) + SIDECAR_SUFFIX)


def candidate_dirs(scan_path) -> list[Path]:
    """Both places a scan's raters may be saved, next-to-scan first."""
    return [sidecar_dir(scan_path), user_data_dir() / scan_key(scan_path)]


def _writable(folder: Path) -> bool:
    """Writable for us *and* not marked read-only (no write bit): a folder whose owner made
    it read-only is respected even by the super-user, who could write anyway."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(folder, os.W_OK | os.X_OK)


def _writable_folder(folder: Path) -> bool:
    """Create ``folder`` if its parent allows it; True when we may write into it."""
    if not folder.exists():
        parent = folder.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not _writable(parent):
            return False
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False
    return folder.is_dir() and _writable(folder)


def _remove_stale_temps(folder: Path, age_s: float = 120.0) -> None:
    """Delete temporary files left by a write that was killed (older than ``age_s``)."""
    now = time.time()
    for f in folder.glob(".*.tmp*"):
        try:
            if now - f.stat().st_mtime > age_s:
                f.unlink()
        except OSError:
            pass


def rater_filename(name: str) -> str:
    """``<percent-encoded name>.nii.gz``; a leading dot is encoded so the file is never hidden."""
    text = quote(name, safe=" -_.()[]+,")
    if text.startswith("."):
        text = "%2E" + text[1:]
    return text + RATER_SUFFIX


def rater_name(filename: str) -> str | None:
    if not filename.endswith(RATER_SUFFIX) or filename.startswith("."):
        return None
    return unquote(filename[: -len(RATER_SUFFIX)])


@dataclass(frozen=True)
class SavedRater:
    name: str
    path: Path
    mtime: float


class AutosaveStore:
    """The sidecar folder of one scan: where each rater is saved and what is there.

    The folder is created lazily at the first save, next to the scan when that folder is
    writable, else in the per-user folder.
    """

    def __init__(self, scan: ScanGeometry):
        if scan.path is None:
            raise UserError("Autosave needs a scan opened from a NIfTI file.")
        self.scan = scan
        self._folder: Path | None = None
        self._header_block: bytes | None = None

    @property
    def folder(self) -> Path:
        if self._folder is None:
            for cand in candidate_dirs(self.scan.path):
                if _writable_folder(cand):
                    self._folder = cand
                    self._write_manifest(cand)
                    _remove_stale_temps(cand)
                    break
            else:
                raise UserError(f"Cannot autosave: neither {candidate_dirs(self.scan.path)[0]} nor "
                                f"{user_data_dir()} is writable.")
        return self._folder

    def _write_manifest(self, folder: Path) -> None:
        target = folder / MANIFEST
        if target.exists():
            return
        info = {"scan_path": str(Path(self.scan.path).absolute()), "shape": list(self.scan.shape),
                "format": "uint8 confidence levels, soft value = level / 10", "version": 1}
        tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, target)

    def rater_path(self, name: str) -> Path:
        return self.folder / rater_filename(name)

    def save(self, name: str, levels: np.ndarray) -> Path:
        """Write one rater now (atomically), in the calling thread."""
        levels = np.asarray(levels)
        if levels.shape != self.scan.shape:
            raise UserError(f"Cannot autosave rater {name!r}: its shape {levels.shape} differs from "
                            f"the scan's {self.scan.shape}.")
        if self._header_block is None:
            self._header_block = sidecar_header_block(self.scan)
        return write_levels_atomic(self.rater_path(name), levels, self._header_block)

    def remove(self, name: str) -> None:
        for folder in candidate_dirs(self.scan.path):
            try:
                (folder / rater_filename(name)).unlink()
            except OSError:
                pass

    def saved(self) -> list[SavedRater]:
        """Raters saved for this scan (newest file wins when both folders hold a name)."""
        found: dict[str, SavedRater] = {}
        for folder in candidate_dirs(self.scan.path):
            if not folder.is_dir():
                continue
            for f in sorted(folder.iterdir()):
                name = rater_name(f.name)
                if name is None or not f.is_file():
                    continue
                item = SavedRater(name, f, f.stat().st_mtime)
                if name not in found or item.mtime > found[name].mtime:
                    found[name] = item
        return sorted(found.values(), key=lambda r: r.name)

    def load(self, saved: SavedRater) -> np.ndarray:
        """The levels of a saved rater; raises UserError if it no longer fits the scan."""
        vol = read_nifti(saved.path)
        if vol.spatial_shape != self.scan.shape or vol.data.ndim != 3:
            raise UserError(
                f"The autosaved rater {saved.name!r} has shape {vol.data.shape}, but the scan "
                f"is {self.scan.shape}; it was saved for a different version of the scan."
            )
        return np.asarray(vol.data).astype(np.uint8, copy=False)

    def discard(self, names=None) -> Path | None:
        """Move saved raters (all, or ``names``) into a dated ``discarded-*`` sub-folder."""
        items = [s for s in self.saved() if names is None or s.name in names]
        if not items:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = None
        for s in items:
            target = s.path.parent / f"discarded-{stamp}"
            target.mkdir(exist_ok=True)
            os.replace(s.path, target / s.path.name)
        return target


def sidecar_header_block(scan: ScanGeometry) -> bytes:
    """NIfTI header bytes (plus the 4-byte extension flag) for a uint8 volume on ``scan``'s grid:
    the scan's header (qform/sform, codes, units) with the data type, shape and offset set."""
    import nibabel as nib

    if scan.header is not None:
        hdr = scan.header.copy()
    else:
        hdr = nib.Nifti1Header()
        hdr.set_xyzt_units("mm", "sec")
        hdr.set_qform(scan.affine, code=1)
        hdr.set_sform(scan.affine, code=1)
    hdr.set_data_dtype(np.uint8)
    hdr.set_data_shape(scan.shape)
    hdr["scl_slope"] = np.nan
    hdr["scl_inter"] = np.nan
    hdr["cal_min"] = 0
    hdr["cal_max"] = 0
    hdr["vox_offset"] = hdr.single_vox_offset
    hdr["descrip"] = b"napari-softseg confidence levels (soft = level / 10)"
    return hdr.binaryblock + b"\0\0\0\0"


def write_levels_atomic(path: Path, levels: np.ndarray, header_block: bytes) -> Path:
    """Write a ``.nii.gz`` (header + Fortran-order uint8 voxels) via a temporary file,
    ``fsync`` and ``os.replace``.

    Written by hand rather than through nibabel because it runs beside the UI thread:
    the transposing copy (numpy) and the gzip compression (zlib) both release the GIL,
    so the thread holds it only for a handful of calls instead of hundreds of chunks.
    """
    import tempfile
    import zlib

    path = Path(path)
    voxels = np.asfortranarray(levels, dtype=np.uint8)
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: gzip container
    payload = comp.compress(header_block) + comp.compress(voxels.T.reshape(-1)) + comp.flush()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


# The background writer lives in its own module; re-exported here for convenience.
from napari_softseg.labels.autosave_writer import AutosaveWriter, shared_writer  # noqa: E402,F401
