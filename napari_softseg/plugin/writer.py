"""npe2 writers: Image layers (soft maps as float32) and Labels layers (integers) as NIfTI.

The layer's ``metadata["nifti_header"]`` and ``metadata["affine"]`` (kept by the reader)
supply the header and the true affine, so qform/sform, their codes and units are written back
unchanged (the layer's own affine is only the display placement of an oblique grid, see
:mod:`napari_softseg.plugin.planes`); a layer without them, or moved since, is written with
its layer affine. Writes are atomic (see :func:`napari_softseg.io.nifti.write_nifti`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_softseg.errors import UserError
from napari_softseg.io.nifti import NiftiVolume, classify, write_nifti
from napari_softseg.plugin import roles
from napari_softseg.plugin.notify import notify_error
from napari_softseg.plugin.planes import on_grid


def _like(data: np.ndarray, meta: dict[str, Any]):
    """The source file's geometry when the layer still sits where the reader put it (its
    affine is the file's display placement, or the file's affine itself), else None and the
    layer's own affine."""
    md = meta.get("metadata") or {}
    header = md.get("nifti_header")
    affine = np.asarray(meta.get("affine", np.eye(4)), dtype=float)
    if affine.shape != (4, 4):
        affine = np.eye(4)
    if header is not None and tuple(md.get("shape", ())) == tuple(np.shape(data)[:3]):
        true = np.asarray(md.get("affine", affine), float)
        if on_grid(affine, true):
            dummy = np.broadcast_to(np.zeros((), np.uint8), tuple(np.shape(data)[:3]))
            return NiftiVolume(data=dummy, affine=true, header=header.copy(), path=None), None
    return None, affine


def _write(path: str, data: Any, meta: dict, dtype) -> list[str]:
    arr = np.asarray(data)
    if arr.ndim not in (3, 4):
        notify_error(f"Cannot save {Path(path).name}: NIfTI layers must be 3-D (this layer is {arr.ndim}-D).")
        return []
    like, affine = _like(arr, meta)
    try:
        out = write_nifti(path, arr, like=like, affine=affine, dtype=dtype)
    except UserError as err:
        notify_error(str(err))
        return []
    return [str(out)]


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    """Soft maps as float32; a scan written back keeps its source's data type when its values
    allow it (:func:`napari_softseg.io.nifti.write_nifti`), other floats become float32."""
    arr = np.asarray(data)
    dtype = np.float32 if classify(arr) == "soft" else None
    return _write(path, arr, meta, dtype)


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Labels as integers; a rater layer (confidence levels) as its float32 soft map."""
    arr = np.asarray(data)
    if (meta.get("metadata") or {}).get(roles.ROLE_KEY) == roles.RATER:
        from napari_softseg.labels.levels import levels_to_soft

        return _write(path, levels_to_soft(arr), meta, np.float32)
    return _write(path, arr, meta, None)

