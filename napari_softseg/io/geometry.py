"""Voxel geometry from an affine: voxel size, voxel volume, orientation, validity.

The affine ``A`` maps voxel indices ``(i, j, k)`` to world millimetres; its 3x3 part holds
one column per array axis. Hence

* the **spacing** (voxel size along each array axis) is the length of each column,
  ``‖A[:3, j]‖``, whatever the rotation or axis flips;
* the **voxel volume** is ``|det A[:3, :3]|`` (equal to the product of the spacing when the
  axes are orthogonal, smaller for a sheared grid);
* a **spacing-only** volume (when no affine is at hand, e.g. metrics given a voxel size) is
  the product of the three sizes, :func:`spacing_volume`.

Every layer (readers, metrics, docks, CLI) takes these from here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from napari_softseg.errors import UserError


def spacing(affine) -> tuple[float, float, float]:
    """Voxel size in mm along the three array axes (column norms of ``affine[:3, :3]``)."""
    columns = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    return tuple(float(v) for v in columns)  # type: ignore[return-value]


def voxel_volume(affine) -> float:
    """Volume of one voxel in mm³: ``|det affine[:3, :3]|``."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])))


def spacing_volume(voxel_size: Sequence[float]) -> float:
    """Volume of one voxel in mm³ from its size along each axis (their product)."""
    return float(np.prod(np.asarray(voxel_size, dtype=np.float64)))


def axis_codes(affine) -> tuple[str, ...]:
    """Orientation letters of the array axes (nibabel's ``aff2axcodes``, e.g. ``("R", "A", "S")``)."""
    import nibabel as nib

    return tuple(nib.aff2axcodes(np.asarray(affine)))


def check_affine(affine, what: str) -> None:
    """Raise :class:`UserError` (naming ``what``) for a non-finite or singular affine."""
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise UserError(f"{what} has a non-finite affine (NaN or infinite entries), so its position in space is unknown.")
    det = float(np.linalg.det(affine[:3, :3]))
    scale = float(np.max(np.abs(affine[:3, :3])))
    if scale == 0.0 or abs(det) < 1e-9 * max(scale, 1.0) ** 3:
        raise UserError(f"{what} has a singular affine (zero voxel size or collapsed axes), so its position in space is unknown.")
