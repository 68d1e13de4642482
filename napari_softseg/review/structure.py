"""Review of a tissue / structure map: its volume and how sure the model is of it.

A tissue model (grey matter, a spinal cord...) segments one structure, not objects to
count, so the Segment dock shows this summary instead of a lesion table
(:mod:`napari_softseg.review.profile` says which models are which):

* ``hard_voxels``, ``hard_volume_mm3``: the final mask (``soft >= threshold`` with the
  reviewer's edits); ``soft_volume_mm3 = Σp · voxel volume`` over the final soft map (the
  partial-volume estimate; :func:`napari_softseg.labels.levels.soft_volume`);
* ``boundary_volume_mm3``: the volume of the voxels the model is unsure of
  (``0.2 <= p < 0.8``, i.e. entropy above about 0.72 bits), and ``boundary_fraction`` its share of
  the hard volume; ``mean_entropy_bits``: mean entropy (bits,
  :func:`napari_softseg.metrics.calibration.entropy`) over the voxels with ``p >= 0.05``
  (the structure and its partial-volume edge);
* with MC-dropout / TTA samples: the hard and soft volume of each sample, their
  coefficients of variation, and ``sample_iou``: the IoU of the samples' masks
  (``|∩| / |∪|`` at the threshold).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from napari_softseg.io.geometry import spacing_volume
from napari_softseg.labels.levels import soft_volume
from napari_softseg.labels.masks import binarize
from napari_softseg.metrics.calibration import entropy

#: p range of the "unsure" voxels and the floor of the voxels the mean entropy is taken over
UNSURE = (0.2, 0.8)
EDGE_FLOOR = 0.05


def structure_summary(final_soft, final_mask, *, threshold: float, spacing: Sequence[float], samples=None) -> dict:
    """The structure's volumes and uncertainty (see the module docstring); JSON-ready."""
    p = np.asarray(final_soft, dtype=np.float32)
    mask = np.asarray(final_mask, dtype=bool)
    vv = spacing_volume(tuple(float(s) for s in spacing)[: p.ndim])
    hard = int(np.count_nonzero(mask))
    unsure = int(np.count_nonzero(binarize(p, UNSURE[0]) & ~binarize(p, UNSURE[1])))
    edge = binarize(p, EDGE_FLOOR)
    out = {
        "threshold": float(threshold),
        "hard_voxels": hard,
        "hard_volume_mm3": hard * vv,
        "soft_volume_mm3": soft_volume(p, vv),
        "boundary_volume_mm3": unsure * vv,
        "boundary_fraction": unsure / hard if hard else None,
        "mean_entropy_bits": float(entropy(p[edge]).mean(dtype=np.float64)) if edge.any() else None,
        "n_samples": 0 if samples is None else len(samples),
    }
    if samples is not None and len(samples):
        out.update(_sample_summary(samples, threshold, vv))
    return out


def _sample_summary(samples, threshold: float, vv: float) -> dict:
    hard, soft = [], []
    inter = union = None
    for sample in samples:
        s = np.asarray(sample, dtype=np.float32)
        m = binarize(s, threshold)
        inter = m if inter is None else inter & m
        union = m if union is None else union | m
        hard.append(int(np.count_nonzero(m)) * vv)
        soft.append(soft_volume(s, vv))

    def cv(values) -> float | None:
        v = np.asarray(values, np.float64)
        return float(v.std() / v.mean()) if v.mean() > 0 else None

    n_union = int(np.count_nonzero(union))
    return {"sample_hard_volumes_mm3": hard, "sample_soft_volumes_mm3": soft, "hard_volume_cv": cv(hard),
            "soft_volume_cv": cv(soft), "sample_iou": int(np.count_nonzero(inter)) / n_union if n_union else None}


#: the summary's keys in the order of the one-row CSV (per-sample lists excluded)
CSV_KEYS = ("threshold", "hard_voxels", "hard_volume_mm3", "soft_volume_mm3", "boundary_volume_mm3",
            "boundary_fraction", "mean_entropy_bits", "n_samples", "hard_volume_cv", "soft_volume_cv", "sample_iou")
