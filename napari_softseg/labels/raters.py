"""Checks and conversions of rater maps shared by the fusion methods.

A binary or soft rater map holds values in [0, 1] (booleans and 0/1 integers included) and
marks a voxel where :func:`napari_softseg.labels.masks.binarize` says so (``value >= 0.5``).
A multi-class rater map holds integer labels ``0 .. K-1`` (0 = background), at most
:data:`MAX_CLASSES` of them (whole-number floats are accepted as labels).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from napari_softseg.errors import UserError
from napari_softseg.io.checks import as_volume

#: Most labels a multi-class rater map may hold (0-255, a napari label layer's painting range).
MAX_CLASSES = 256


def check_raters(raters: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Return the raters as arrays, raising :class:`UserError` unless they share one shape."""
    raters = list(raters)
    if not raters:
        raise UserError("Label fusion needs at least one rater map.")
    arrays = [as_volume(r, f"Rater {j}") for j, r in enumerate(raters, 1)]
    shape = arrays[0].shape
    for j, a in enumerate(arrays[1:], start=2):
        if a.shape != shape:
            raise UserError(f"Rater {j} has shape {a.shape} but rater 1 has shape {shape}; all raters must share one voxel grid.")
    if 0 in shape:
        raise UserError(f"The rater maps are empty (shape {shape}).")
    return arrays


def check_unit_range(arrays: Sequence[np.ndarray], labels_requested: bool = False) -> None:
    """Raise :class:`UserError` unless every map is a mask or a probability map in [0, 1]."""
    for j, a in enumerate(arrays, 1):
        if a.dtype == bool:
            continue
        lo, hi = float(np.min(a)), float(np.max(a))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise UserError(f"Rater {j} contains NaN or infinite values.")
        if lo < 0 or hi > 1.0 + 1e-6:
            hint = "" if labels_requested else "; for integer label maps ask for multi-class fusion (n_classes)"
            raise UserError(f"Rater {j} has values in [{lo:g}, {hi:g}], not a mask or probability map in [0, 1]{hint}.")


def class_labels(rater: np.ndarray, n_classes: int, index: int) -> np.ndarray:
    """Integer label map as uint8/uint16 after checking it holds labels ``0 .. n_classes-1``."""
    if rater.dtype.kind == "f":
        if not np.all(np.isfinite(rater)) or np.any(rater != np.round(rater)):
            raise UserError(f"Rater {index} holds non-integer values; multi-class fusion needs integer label maps.")
    if n_classes > MAX_CLASSES:
        raise UserError(f"Multi-class fusion takes at most {MAX_CLASSES} labels (0-{MAX_CLASSES - 1}), "
                        f"but {n_classes} were asked for; rater {index} is not a label map of a few structures.")
    lo, hi = rater.min(), rater.max()
    if lo < 0 or hi >= n_classes:
        raise UserError(f"Rater {index} holds labels {int(lo)}..{int(hi)}, outside 0..{n_classes - 1} for {n_classes} classes.")
    return rater.astype(label_dtype(n_classes), copy=False)


def label_dtype(n_classes: int) -> type:
    """uint8 for up to 256 labels, else uint16."""
    return np.uint8 if n_classes <= 256 else np.uint16
