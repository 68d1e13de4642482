"""Segmentation metrics: overlap, volumes, soft errors, lesion detection, ranking, sweeps.

All functions take numpy arrays and are vectorised; calibration and entropy live in
:mod:`napari_softseg.metrics.calibration`, lesion detection in :mod:`napari_softseg.metrics.detection`.

Conventions
-----------
* **Binarisation** is the package's one rule, :func:`napari_softseg.labels.masks.binarize`
  (``value >= threshold``), for predictions and truths alike, so a rater average of 0.5 (one
  of two raters) is foreground, as in the CLI's masks and the review.
* Dice, precision, recall, AVD and RVD are in **percent**, as in the SoftSeg paper
  (Gros et al., MedIA 2021): ``Dice = 2TP / (2TP + FP + FN)``, ``precision = TP / (TP + FP)``,
  ``recall = TP / (TP + FN)``, ``RVD = (V_truth - V_pred) / V_truth`` (negative: the
  prediction is too large), ``AVD = |RVD|``. MSE, Brier score and ECE are fractions.
* Volumes are in mm³: voxel count times the product of ``spacing``
  (:func:`napari_softseg.io.geometry.spacing_volume`); the soft volume is
  :func:`napari_softseg.labels.levels.soft_volume`.
* **Edge cases**: both masks empty → Dice, precision and recall 100; an empty prediction
  with a non-empty truth → precision NaN; an empty truth with a non-empty prediction →
  recall NaN; an empty truth → RVD and AVD NaN. :func:`segmentation_scores` and
  :func:`evaluate` report the reason for every NaN under ``"nan_reasons"``.
* **Inputs** are checked at the boundary with the sentences of the command line
  (:mod:`napari_softseg.io.checks`): predictions and truths are numeric arrays with voxels
  (not empty, not 0-d: Dice of no voxels is no result), of one shape, with values in
  [0, 1] and no NaN; voxel sizes are finite and > 0; thresholds lie strictly between 0 and 1.
* **Lesions** are 3-D connected components (18-connectivity by default; 6/18/26 in 3-D,
  4/8 in 2-D) labelled as int32, so counts above 255 do not wrap. Soft predictions are
  thresholded, never cast to int.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from napari_softseg.errors import UserError
from napari_softseg.io.checks import as_spacing, as_volume, check_threshold, check_unit_interval
from napari_softseg.io.geometry import spacing_volume
from napari_softseg.labels.levels import soft_volume
from napari_softseg.labels.masks import binarize
from napari_softseg.metrics.calibration import N_BINS, ece, image_entropy, rater_average, voxel_entropy_mae
from napari_softseg.metrics.detection import lesion_detection

#: Weights of the composite score (Lemay et al. 2022): higher Dice/precision/recall and lower AVD are better.
COMPOSITE_WEIGHTS: dict[str, float] = {"dice": 1.0, "precision": 1.0, "recall": 1.0, "avd": -1.0}
#: Default thresholds of the sweep: 0.05, 0.10, ..., 0.95.
SWEEP_THRESHOLDS = np.round(np.arange(1, 20) * 0.05, 2)
#: Numeric keys always present in :func:`evaluate`'s result, with their units.
EVALUATE_UNITS: dict[str, str] = {
    **dict.fromkeys(("dice", "precision", "recall", "avd", "rvd", "soft_dice"), "%"),
    **dict.fromkeys(("mse", "brier", "ece"), "fraction"), "ltpr": "%", "lfdr": "%",
    **dict.fromkeys(("n_truth_lesions", "n_pred_lesions", "n_detected_lesions", "n_false_lesions"), "count"),
    **dict.fromkeys(("volume_pred_mm3", "volume_truth_mm3", "soft_volume_pred_mm3"), "mm³"), "threshold": "probability",
}
#: Extra keys when raters are given.
RATER_UNITS: dict[str, str] = {"entropy_mae": "bits", "entropy_voxel_mae": "bits", "image_entropy_pred": "bits", "image_entropy_raters": "bits"}


def checked_pair(pred, truth, what: tuple[str, str] = ("The prediction", "The truth")) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``truth`` as arrays of one shape with values in [0, 1] (see the module
    docstring), or a :class:`~napari_softseg.errors.UserError`; ``what`` names them."""
    p, t = as_volume(pred, what[0]), as_volume(truth, what[1])
    if p.shape != t.shape:
        raise UserError(f"{what[0]} has shape {p.shape} but {what[1][:1].lower() + what[1][1:]} has shape {t.shape}; "
                        "they must lie on one voxel grid.")
    check_unit_interval(p, what[0])
    check_unit_interval(t, what[1])
    return p, t


def volume(mask, spacing: Sequence[float] = (1.0, 1.0, 1.0), *, threshold: float = 0.5) -> float:
    """Volume in mm³ of the binarised ``mask``."""
    mask = as_volume(mask, "The mask")
    return float(np.count_nonzero(binarize(mask, threshold))) * spacing_volume(as_spacing(spacing))


@dataclass
class Counts:
    """Voxel counts of a binary comparison."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def n_pred(self) -> int:
        return self.tp + self.fp

    @property
    def n_truth(self) -> int:
        return self.tp + self.fn


def confusion_counts(pred, truth, *, threshold: float = 0.5, truth_threshold: float = 0.5) -> Counts:
    p, t = checked_pair(pred, truth)
    p, t = binarize(p, threshold), binarize(t, truth_threshold)
    tp = int(np.count_nonzero(p & t))
    n_p, n_t = int(np.count_nonzero(p)), int(np.count_nonzero(t))
    return Counts(tp, n_p - tp, n_t - tp, p.size - n_p - n_t + tp)


def segmentation_scores(pred, truth, *, threshold: float = 0.5, truth_threshold: float = 0.5,
                        spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict:
    """Dice, precision, recall, AVD, RVD (%) and volumes (mm³), with ``nan_reasons``."""
    vv = spacing_volume(as_spacing(spacing))
    c = confusion_counts(pred, truth, threshold=threshold, truth_threshold=truth_threshold)
    reasons: dict[str, str] = {}
    both_empty = c.n_pred == 0 and c.n_truth == 0
    out = {"dice": 100.0 if both_empty else 200.0 * c.tp / (c.n_pred + c.n_truth)}
    if c.n_pred == 0:
        out["precision"] = 100.0 if both_empty else float("nan")
        if not both_empty:
            reasons["precision"] = "the prediction is empty, so precision (TP / predicted voxels) is undefined"
    else:
        out["precision"] = 100.0 * c.tp / c.n_pred
    if c.n_truth == 0:
        out["recall"] = 100.0 if both_empty else float("nan")
        if not both_empty:
            reasons["recall"] = "the truth is empty, so recall (TP / truth voxels) is undefined"
        out["rvd"] = out["avd"] = float("nan")
        reasons["rvd"] = reasons["avd"] = "the truth is empty, so the relative volume difference is undefined"
    else:
        out["recall"] = 100.0 * c.tp / c.n_truth
        out["rvd"] = 100.0 * (c.n_truth - c.n_pred) / c.n_truth
        out["avd"] = abs(out["rvd"])
    out["volume_pred_mm3"] = c.n_pred * vv
    out["volume_truth_mm3"] = c.n_truth * vv
    out["nan_reasons"] = reasons
    return out


def dice(pred, truth, *, threshold: float = 0.5, truth_threshold: float = 0.5) -> float:
    """Dice coefficient in % (both empty → 100)."""
    return segmentation_scores(pred, truth, threshold=threshold, truth_threshold=truth_threshold)["dice"]


def precision(pred, truth, *, threshold: float = 0.5, truth_threshold: float = 0.5) -> float:
    """Precision ``TP / (TP + FP)`` in % (NaN for an empty prediction unless both are empty)."""
    return segmentation_scores(pred, truth, threshold=threshold, truth_threshold=truth_threshold)["precision"]


def recall(pred, truth, *, threshold: float = 0.5, truth_threshold: float = 0.5) -> float:
    """Recall (sensitivity) ``TP / (TP + FN)`` in % (NaN for an empty truth unless both are empty)."""
    return segmentation_scores(pred, truth, threshold=threshold, truth_threshold=truth_threshold)["recall"]


def rvd(pred, truth, *, threshold: float = 0.5, truth_threshold: float = 0.5, spacing=(1.0, 1.0, 1.0)) -> float:
    """Relative volume difference ``(V_truth - V_pred) / V_truth`` in % (NaN for an empty truth)."""
    return segmentation_scores(pred, truth, threshold=threshold, truth_threshold=truth_threshold, spacing=spacing)["rvd"]


def avd(pred, truth, *, threshold: float = 0.5, truth_threshold: float = 0.5, spacing=(1.0, 1.0, 1.0)) -> float:
    """Absolute volume difference ``|RVD|`` in % (NaN for an empty truth)."""
    return abs(rvd(pred, truth, threshold=threshold, truth_threshold=truth_threshold, spacing=spacing))


def mse(pred, truth, *, mask=None) -> float:
    """Mean squared error ``mean((p - t)^2)`` against a (soft) truth."""
    p, t = checked_pair(pred, truth)
    d = p.astype(np.float32, copy=False) - t.astype(np.float32, copy=False)
    if mask is not None:
        d = d[np.asarray(mask, dtype=bool)]
    return float(np.mean(np.square(d), dtype=np.float64)) if d.size else float("nan")


def brier(pred, truth, *, class_axis: int | None = None, mask=None) -> float:
    """Brier score against a (soft) truth, e.g. the rater average.

    Binary maps: ``mean((p - t)^2)`` (the usual binary Brier score, equal to :func:`mse`).
    Multi-class maps: ``mean over voxels of sum_k (p_k - t_k)^2`` over ``class_axis``.
    """
    if class_axis is None:
        return mse(pred, truth, mask=mask)
    d = np.sum(np.square(np.asarray(pred, np.float32) - np.asarray(truth, np.float32)), axis=class_axis)
    if mask is not None:
        d = d[np.asarray(mask, dtype=bool)]
    return float(np.mean(d, dtype=np.float64)) if d.size else float("nan")


def soft_dice(pred, truth) -> float:
    """Soft Dice ``2 sum(p t) / (sum p + sum t)`` in % (100 when both sums are 0)."""
    p, t = checked_pair(pred, truth)
    p, t = p.astype(np.float32, copy=False).ravel(), t.astype(np.float32, copy=False).ravel()
    denom = float(p.sum(dtype=np.float64) + t.sum(dtype=np.float64))
    return 100.0 if denom == 0 else 200.0 * float(np.dot(p.astype(np.float64), t)) / denom


# --------------------------------------------------------------------------- ranking and sweeps


def composite_score(results: Mapping[str, Mapping[str, float]], weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Rank candidates by summed z-scores: ``score_c = sum_m w_m (x_cm - mean_m) / std_m``.

    ``results`` maps a candidate name to its metrics; mean and (population) standard
    deviation are taken across candidates. With the default weights (+1 Dice, precision,
    recall; -1 AVD) higher is better. A metric that is equal for all candidates, or NaN for a
    candidate, contributes 0 to that candidate.
    """
    weights = COMPOSITE_WEIGHTS if weights is None else weights
    names = list(results)
    scores = np.zeros(len(names))
    for metric, w in weights.items():
        x = np.array([float(results[n].get(metric, np.nan)) for n in names])
        ok = np.isfinite(x)
        if ok.sum() < 2:
            continue
        sd = x[ok].std()
        if sd == 0:
            continue
        z = np.where(ok, (x - x[ok].mean()) / sd, 0.0)
        scores += w * z
    return {n: float(s) for n, s in zip(names, scores)}


@dataclass
class ThresholdSweep:
    thresholds: np.ndarray
    dice: np.ndarray
    precision: np.ndarray
    recall: np.ndarray

    @property
    def best_threshold(self) -> float:
        return float(self.thresholds[int(np.nanargmax(self.dice))])

    @property
    def best_dice(self) -> float:
        return float(np.nanmax(self.dice))

    def to_dict(self) -> dict:
        clean = lambda a: [None if not np.isfinite(v) else float(v) for v in a]  # noqa: E731
        return {"thresholds": clean(self.thresholds), "dice": clean(self.dice), "precision": clean(self.precision),
                "recall": clean(self.recall), "best_threshold": self.best_threshold, "best_dice": self.best_dice}


def threshold_sweep(pred, truth, thresholds=None, *, truth_threshold: float = 0.5) -> ThresholdSweep:
    """Dice, precision and recall (%) of ``binarize(pred, t)`` (``pred >= t``) for each threshold
    (default 0.05 … 0.95).

    One pass: each voxel is placed among the sorted thresholds with ``searchsorted``, so the
    cost does not grow with the number of thresholds.
    """
    th = np.asarray(SWEEP_THRESHOLDS if thresholds is None else thresholds, dtype=np.float64)
    order = np.argsort(th)
    p = np.asarray(pred)
    p = p.astype(np.float32) if p.dtype.kind != "f" else p
    th_cast = th[order].astype(p.dtype)
    t = binarize(np.asarray(truth), truth_threshold)
    k_all = np.searchsorted(th_cast, p.ravel(), side="right")  # thresholds at or below each value
    k_tp = k_all[t.ravel()]
    n_th = th.size
    above = np.cumsum(np.bincount(k_all, minlength=n_th + 1)[::-1])[::-1][1:]  # voxels >= th[i]
    tp = np.cumsum(np.bincount(k_tp, minlength=n_th + 1)[::-1])[::-1][1:]
    n_truth = int(k_tp.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(above + n_truth > 0, 200.0 * tp / (above + n_truth), 100.0)
        prec = np.where(above > 0, 100.0 * tp / above, 100.0 if n_truth == 0 else np.nan)
        if n_truth > 0:
            rec = 100.0 * tp / n_truth
        else:
            rec = np.where(above == 0, 100.0, np.nan)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(n_th)
    return ThresholdSweep(th, d[inverse], prec[inverse], rec[inverse])


# --------------------------------------------------------------------------- one call


def evaluate(pred, truth, *, raters: Sequence[np.ndarray] | None = None, spacing: Sequence[float] = (1.0, 1.0, 1.0),
             threshold: float = 0.5, truth_threshold: float = 0.5, connectivity: int = 18, min_overlap: int = 3,
             min_overlap_fraction: float | None = None, n_bins: int = N_BINS, mask=None) -> dict:
    """All metrics of the SoftSeg and label-fusion papers for one (soft) prediction.

    Parameters
    ----------
    pred : array
        Soft prediction in [0, 1] (or a binary mask).
    truth : array
        Binary or soft truth (e.g. a rater average or STAPLE); binarised with
        ``>= truth_threshold`` for the overlap and lesion metrics, used as is for MSE and ECE.
    raters : sequence of arrays, optional
        Individual raters: adds ``entropy_mae`` (|image entropy of pred − image entropy of the
        rater average|), ``entropy_voxel_mae`` and the two image entropies, and makes
        ``brier`` the Brier score against the rater average (otherwise against ``truth``).
    spacing : 3 floats
        Voxel size in mm for the volumes.
    mask : array of bool, optional
        Restricts the voxel-wise soft metrics (MSE, Brier, ECE, entropies) to these voxels.

    Returns
    -------
    dict
        The keys of :data:`EVALUATE_UNITS` (plus :data:`RATER_UNITS` with raters) as floats,
        and ``nan_reasons`` (metric → sentence) for every NaN.
    """
    pred, truth = checked_pair(pred, truth)
    spacing = as_spacing(spacing)
    check_threshold(threshold, "threshold")
    check_threshold(truth_threshold, "truth_threshold")
    raters = [checked_pair(pred, r, ("The prediction", f"Rater {j}"))[1] for j, r in enumerate(raters or [], 1)] or None
    out = segmentation_scores(pred, truth, threshold=threshold, truth_threshold=truth_threshold, spacing=spacing)
    reasons = out.pop("nan_reasons")
    p_soft = pred if pred.dtype.kind == "f" else pred.astype(np.float32)
    out["soft_dice"] = soft_dice(p_soft, truth)
    out["soft_volume_pred_mm3"] = soft_volume(p_soft, spacing_volume(spacing))
    out["mse"] = mse(p_soft, truth, mask=mask)
    out["ece"] = ece(p_soft, truth, n_bins=n_bins, mask=mask)
    det = lesion_detection(pred, truth, threshold=threshold, truth_threshold=truth_threshold, connectivity=connectivity,
                           min_overlap=min_overlap, min_overlap_fraction=min_overlap_fraction)
    reasons.update(det.nan_reasons)
    out.update(ltpr=det.ltpr, lfdr=det.lfdr, n_truth_lesions=det.n_truth, n_pred_lesions=det.n_pred,
               n_detected_lesions=det.n_detected, n_false_lesions=det.n_false)
    if raters is not None:
        avg = rater_average(raters)
        out["brier"] = brier(p_soft, avg, mask=mask)
        out["image_entropy_pred"] = image_entropy(p_soft, mask=mask)
        out["image_entropy_raters"] = image_entropy(avg, mask=mask)
        out["entropy_mae"] = abs(out["image_entropy_pred"] - out["image_entropy_raters"])
        out["entropy_voxel_mae"] = voxel_entropy_mae(p_soft, avg, mask=mask)
    else:
        out["brier"] = out["mse"]
    out["threshold"] = float(threshold)
    out = {k: (float(v) if not isinstance(v, (int, np.integer)) else int(v)) for k, v in out.items()}
    out["nan_reasons"] = reasons
    return out
