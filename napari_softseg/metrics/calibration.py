"""Calibration and uncertainty: reliability diagrams, ECE, predictive entropy, entropy MAE.

Conventions
-----------
* A **binary** probability map ``p`` stands for the two-class distribution ``[1 - p, p]``;
  a **multi-class** map has its classes on ``class_axis`` (background included).
* Entropies are in **bits** (logarithm base 2), with ``0 · log 0 = 0``: a binary map's
  entropy lies in ``[0, 1]``, that of ``K`` classes in ``[0, log2 K]``. :func:`entropy` is the
  package's one entropy (prediction uncertainty, rater disagreement, lesion review, metrics).
* A **soft truth** (e.g. the average of several raters) is allowed wherever a truth is
  taken: the accuracy of a prediction is then the truth's probability of the predicted
  class (its expected accuracy), which equals the usual 0/1 correctness for a hard truth.

Sources: Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks",
ICML 2017 (reliability diagrams, ECE); Lemay et al., "Label fusion and training methods for
reliable representation of inter-rater uncertainty", MELBA 2022 (entropy MAE against the
rater average).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.special import xlogy

from napari_softseg.labels.masks import binarize

#: Number of equal-width confidence bins of the reliability diagram.
N_BINS = 10


def _as_float(x) -> np.ndarray:
    x = np.asarray(x)
    return x if x.dtype.kind == "f" else x.astype(np.float32)


def entropy(prob, *, class_axis: int | None = None) -> np.ndarray:
    """Voxel-wise predictive entropy in bits (logarithm base 2).

    ``H = -(p log2 p + (1 - p) log2(1 - p))`` for a binary map (in [0, 1], 1 at p = 0.5),
    ``H = -sum_k p_k log2 p_k`` over ``class_axis`` for a multi-class one (in [0, log2 K] for
    K classes, background included). Values are clipped to [0, 1] first. Returns float32
    (float64 input stays float64) with the voxel shape.
    """
    p = np.clip(_as_float(prob), 0.0, 1.0)
    if class_axis is None:
        q = 1.0 - p
        h = -(xlogy(p, p) + xlogy(q, q))
    else:
        h = -np.sum(xlogy(p, p), axis=class_axis)
    return np.multiply(h, 1.0 / np.log(2.0), dtype=p.dtype)


def image_entropy(prob, *, class_axis: int | None = None, mask=None) -> float:
    """Image-level entropy: the mean voxel-wise entropy over ``mask`` (default: all voxels)."""
    h = entropy(prob, class_axis=class_axis)
    if mask is not None:
        h = h[np.asarray(mask, dtype=bool)]
    return float(np.mean(h, dtype=np.float64)) if h.size else float("nan")


def entropy_mae(preds, references, *, class_axis: int | None = None, masks=None) -> float:
    """Mean absolute error between image entropies, across images.

    ``MAE = mean_n |H(pred_n) - H(ref_n)|`` with ``H`` from :func:`image_entropy`;
    ``references`` are typically the rater averages. A single array counts as one image.
    """
    preds, references = _as_list(preds), _as_list(references)
    if len(preds) != len(references):
        raise ValueError(f"entropy_mae: {len(preds)} predictions but {len(references)} references.")
    masks = [None] * len(preds) if masks is None else _as_list(masks)
    errors = [
        abs(image_entropy(p, class_axis=class_axis, mask=m) - image_entropy(r, class_axis=class_axis, mask=m))
        for p, r, m in zip(preds, references, masks)
    ]
    return float(np.mean(errors)) if errors else float("nan")


def voxel_entropy_mae(pred, reference, *, class_axis: int | None = None, mask=None) -> float:
    """Mean over voxels of ``|H_pred(v) - H_ref(v)|`` (one image)."""
    diff = np.abs(entropy(pred, class_axis=class_axis) - entropy(reference, class_axis=class_axis))
    if mask is not None:
        diff = diff[np.asarray(mask, dtype=bool)]
    return float(np.mean(diff, dtype=np.float64)) if diff.size else float("nan")


def _as_list(x) -> list:
    if isinstance(x, np.ndarray):
        return [x]
    return list(x)


@dataclass
class ReliabilityDiagram:
    """Reliability-diagram data over ``K`` equal-width confidence bins.

    Bin ``k`` holds confidences in ``[k/K, (k+1)/K)`` (the last bin also holds 1.0).
    ``accuracy`` and ``confidence`` are NaN for empty bins.
    ``ece = sum_k (n_k / N) |accuracy_k - confidence_k|``.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray
    ece: float

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def to_dict(self) -> dict:
        nan_to_none = lambda a: [None if not np.isfinite(v) else float(v) for v in a]  # noqa: E731
        return {
            "edges": [float(v) for v in self.edges],
            "confidence": nan_to_none(self.confidence),
            "accuracy": nan_to_none(self.accuracy),
            "counts": [int(v) for v in self.counts],
            "ece": None if not np.isfinite(self.ece) else float(self.ece),
        }


def confidence_and_correctness(prob, truth, *, class_axis: int | None = None, mask=None):
    """Per voxel: confidence (maximum class probability) and (expected) correctness.

    Binary: confidence ``max(p, 1 - p)``; predicted class 1 where the binarised map is
    foreground (:func:`~napari_softseg.labels.masks.binarize`, ``p >= 0.5``), else 0;
    correctness ``t`` when 1 is predicted, ``1 - t`` otherwise, with ``t`` the (possibly soft)
    truth. Multi-class: ``truth`` is an integer
    label map (one axis less than ``prob``) or per-class probabilities on ``class_axis``.
    Returns two flat float64 arrays.
    """
    p = np.clip(_as_float(prob), 0.0, 1.0)
    t = np.asarray(truth)
    if class_axis is None:
        if t.shape != p.shape:
            raise ValueError(f"prediction shape {p.shape} and truth shape {t.shape} differ.")
        t = np.clip(_as_float(t), 0.0, 1.0)
        predicted = binarize(p, 0.5)
        conf = np.where(predicted, p, 1.0 - p)
        correct = np.where(predicted, t, 1.0 - t)
    else:
        p = np.moveaxis(p, class_axis, -1)
        pred_class = np.argmax(p, axis=-1)
        conf = np.take_along_axis(p, pred_class[..., None], axis=-1)[..., 0]
        if t.ndim == p.ndim - 1:
            correct = (pred_class == t).astype(np.float64)
        else:
            t = np.clip(_as_float(np.moveaxis(t, class_axis, -1)), 0.0, 1.0)
            if t.shape != p.shape:
                raise ValueError(f"prediction shape {p.shape} and truth shape {t.shape} differ.")
            correct = np.take_along_axis(t, pred_class[..., None], axis=-1)[..., 0]
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        conf, correct = conf[m], correct[m]
    return conf.astype(np.float64).ravel(), np.asarray(correct, dtype=np.float64).ravel()


def reliability_diagram(prob, truth, *, n_bins: int = N_BINS, class_axis: int | None = None, mask=None) -> ReliabilityDiagram:
    """Reliability diagram and expected calibration error (Guo et al. 2017).

    Parameters
    ----------
    prob : array
        Binary probability map, or class probabilities on ``class_axis``.
    truth : array
        Binary or soft truth of ``prob``'s shape; multi-class: label map or class
        probabilities.
    n_bins : int
        Number of equal-width bins on [0, 1] (``K = 10`` by default; binary confidences
        fall in [0.5, 1], so the lower bins stay empty).
    mask : array of bool, optional
        Voxels to include.
    """
    conf, correct = confidence_and_correctness(prob, truth, class_axis=class_axis, mask=mask)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, sum_conf / counts, np.nan)
        mean_acc = np.where(counts > 0, sum_acc / counts, np.nan)
    n = counts.sum()
    if n == 0:
        ece = float("nan")
    else:
        filled = counts > 0
        ece = float(np.sum(counts[filled] / n * np.abs(mean_acc[filled] - mean_conf[filled])))
    return ReliabilityDiagram(edges, mean_conf, mean_acc, counts, ece)


def ece(prob, truth, *, n_bins: int = N_BINS, class_axis: int | None = None, mask=None) -> float:
    """Expected calibration error ``sum_k (n_k / N) |acc_k - conf_k|`` (a fraction, not %)."""
    return reliability_diagram(prob, truth, n_bins=n_bins, class_axis=class_axis, mask=mask).ece


def rater_average(raters: Sequence[np.ndarray]) -> np.ndarray:
    """float32 mean of same-shape rater maps (accumulated without float64 copies)."""
    acc = np.zeros(np.shape(raters[0]), dtype=np.float32)
    for r in raters:
        np.add(acc, r, out=acc, casting="unsafe")
    acc /= np.float32(len(raters))
    return acc
