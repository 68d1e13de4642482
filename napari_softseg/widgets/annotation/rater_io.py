"""Import rater masks as rater layers and export rater layers as soft NIfTI (no Qt)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from napari_softseg.errors import UserError
from napari_softseg.io.nifti import nifti_stem, read_nifti
from napari_softseg.labels.levels import N_LEVELS, levels_to_soft, mask_to_levels
from napari_softseg.plugin.roles import is_rater
from napari_softseg.widgets.annotation import rater_layers as rl
from napari_softseg.widgets.base import layer_geometry


def _load_mask(scan, geo, p: Path):
    """One mask file as confidence levels, checked against the scan's grid."""
    vol = read_nifti(p)
    if vol.data.ndim != 3 or vol.spatial_shape != geo.shape:
        raise UserError(f"{p.name} has shape {vol.data.shape}, but the scan {scan.name} is "
                        f"{geo.shape}; a rater mask must lie on the scan's grid.")
    diff = float(np.max(np.abs(vol.affine - geo.affine)))
    if diff > 1e-3:
        raise UserError(f"{p.name} does not lie on the grid of {scan.name}: their affines "
                        f"differ by up to {diff:.3g} mm.")
    return mask_to_levels(vol.data, name=p.name)


def import_masks(scan, paths, add_rater: Callable) -> tuple[list, str]:
    """Read binary/soft NIfTI masks on ``scan``'s grid and add each with ``add_rater(name, levels)``.

    Soft values go to the nearest of the ten levels (values slightly outside [0, 1] are
    clipped first, by the one rule of :func:`napari_softseg.io.nifti.clip_soft`). Every file
    gets its own line in the report: what was imported and the largest change, or why a file
    was skipped; the good files are imported even when others are not. A :class:`UserError`
    (with every file's reason) only when no file could be imported.
    """
    if scan is None:
        raise UserError("Open or select the scan the masks belong to before importing them.")
    geo = layer_geometry(scan)
    loaded, skipped = [], []
    for p in map(Path, paths):
        try:
            loaded.append((p, _load_mask(scan, geo, p)))
        except UserError as err:
            skipped.append(str(err))
    if not loaded:
        raise UserError(skipped[0] if len(skipped) == 1 else "No mask was imported: " + " ".join(skipped))
    layers, notes, worst = [], [], 0.0
    for p, q in loaded:
        layers.append(add_rater(nifti_stem(p), q.levels))
        worst = max(worst, q.max_error)
        note = f"{layers[-1].name}: {q.kind}"
        if q.kind == "soft":
            note += f", max rounding error {q.max_error:.3f}"
        if q.n_clipped:
            note += f", {q.n_clipped} values outside [0, 1] clipped (largest change {q.clip_change:.3f})"
        notes.append(note)
    msg = f"Imported {len(layers)} rater(s) — " + "; ".join(notes) + "."
    if worst > 1e-6:
        msg += f" Rounding to {N_LEVELS} levels lost up to {worst:.3f} per voxel."
    else:
        msg += " No information was lost."
    if skipped:
        msg += " Not imported: " + " ".join(skipped)
    return layers, msg


def export_rater(layer, path) -> Path:
    """Write one rater as a float32 soft NIfTI (``level / 10``) with its scan's geometry."""
    if not is_rater(layer):
        raise UserError("Select a rater layer to export.")
    geo = rl.rater_geometry(layer)
    return geo.write(path, levels_to_soft(layer.data), dtype=np.float32)


def export_all(raters, folder, scan_name: str) -> list[Path]:
    """Export ``raters`` as ``<scan>_<rater>_soft.nii.gz`` into ``folder``."""
    folder = Path(folder)
    if not raters:
        raise UserError("The selected scan has no rater layers to export.")
    if not folder.is_dir():
        raise UserError(f"Cannot export: folder {folder} does not exist.")
    stem = nifti_stem(rl.rater_geometry(raters[0]).path or scan_name)
    outs = []
    for lay in raters:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in lay.name)
        outs.append(export_rater(lay, folder / f"{stem}_{safe}_soft.nii.gz"))
    return outs
