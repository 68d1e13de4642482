"""Lesion detection: connected components, LTPR and LFDR counted one side each.

A lesion is a connected component of a binarised map (``value >= threshold``, the one rule
:func:`napari_softseg.labels.masks.binarize`): 6, 18 (default) or 26-connectivity in 3-D, 4
or 8 in 2-D. Labels are int32, so more than 255 components never wrap, and soft predictions
are thresholded, never cast to int.

ivadomed computes the lesion false discovery rate as ``FP / (TP + FP)`` with ``TP`` counted
on the truth side (detected truth lesions) and ``FP`` on the prediction side, which is wrong
when predicted and truth lesions are not one-to-one (a lesion split in three pieces, two
lesions merged into one). Here each rate is counted on one side only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_softseg.labels.masks import binarize

#: (ndim, connectivity) → rank of scipy's binary structuring element.
_CONNECTIVITY = {(3, 6): 1, (3, 18): 2, (3, 26): 3, (2, 4): 1, (2, 8): 2}


def connected_components(mask, connectivity: int = 18) -> tuple[np.ndarray, int]:
    """Label connected components of a boolean mask: ``(int32 labels, count)``."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    rank = _CONNECTIVITY.get((mask.ndim, int(connectivity)))
    if rank is None:
        allowed = sorted(c for (nd, c) in _CONNECTIVITY if nd == mask.ndim)
        raise ValueError(f"connectivity {connectivity} is not defined for {mask.ndim}-D masks (use one of {allowed}).")
    structure = ndimage.generate_binary_structure(mask.ndim, rank)
    labels = np.zeros(mask.shape, dtype=np.int32)
    n = ndimage.label(mask, structure=structure, output=labels)
    return labels, int(n)


@dataclass
class LesionDetection:
    """Lesion-wise detection, each rate counted on one side.

    ``ltpr = n_detected / n_truth`` (truth side) and ``lfdr = n_false / n_pred``
    (prediction side), in %. A truth lesion is detected when the binarised prediction covers
    at least ``min(min_overlap, lesion size)`` of its voxels (or ``ceil(fraction · size)``
    when a fraction is given); a predicted lesion is false when it touches no truth voxel.
    """

    n_truth: int
    n_pred: int
    n_detected: int
    n_false: int
    ltpr: float
    lfdr: float
    nan_reasons: dict = field(default_factory=dict)


def lesion_detection(pred, truth, *, threshold: float = 0.5, truth_threshold: float = 0.5, connectivity: int = 18,
                     min_overlap: int = 3, min_overlap_fraction: float | None = None) -> LesionDetection:
    """LTPR and LFDR from connected components (see :class:`LesionDetection`)."""
    p = binarize(np.asarray(pred), threshold)
    t = binarize(np.asarray(truth), truth_threshold)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} and truth shape {t.shape} differ.")
    t_lab, n_t = connected_components(t, connectivity)
    p_lab, n_p = connected_components(p, connectivity)
    sizes = np.bincount(t_lab.ravel(), minlength=n_t + 1)[1:]
    overlap = np.bincount(t_lab[p], minlength=n_t + 1)[1:]
    if min_overlap_fraction is not None:
        required = np.ceil(float(min_overlap_fraction) * sizes - 1e-9)
    else:
        required = np.minimum(int(min_overlap), sizes)
    n_detected = int(np.count_nonzero(overlap >= np.maximum(required, 1)))
    touching = np.bincount(p_lab[t], minlength=n_p + 1)[1:]
    n_false = int(np.count_nonzero(touching == 0))
    reasons = {}
    if n_t == 0:
        reasons["ltpr"] = "the truth has no lesions, so the lesion true positive rate is undefined"
    if n_p == 0:
        reasons["lfdr"] = "the prediction has no lesions, so the lesion false discovery rate is undefined"
    ltpr = 100.0 * n_detected / n_t if n_t else float("nan")
    lfdr = 100.0 * n_false / n_p if n_p else float("nan")
    return LesionDetection(n_t, n_p, n_detected, n_false, ltpr, lfdr, reasons)
