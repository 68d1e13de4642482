"""Label fusion of several raters: average, majority vote, STAPLE and soft STAPLE.

Methods live in the registry :data:`METHODS` (name → class); :func:`fuse` looks them up
there. Every method returns a :class:`FusionResult` with a float32 ``soft`` map and a uint8
``hard`` consensus.

The hard consensus of a binary fusion is the package's one binarisation rule,
:func:`napari_softseg.labels.masks.binarize` (``soft >= threshold``), and soft raters are
binarised by the same rule wherever a method needs decisions.

* ``average`` — the voxel-wise mean of the raters (soft raters stay soft). Hard consensus:
  ``mean >= threshold`` (0.5), so a 1-of-2 split is foreground.
* ``majority`` — each rater is binarised (``>= 0.5``) and a voxel is foreground when
  **more than half** of the raters mark it (a vote count, not a threshold on a soft map); a
  tie (even number of raters, half of them) is background. ``soft`` is the hard vote as
  float32. Multi-class: the most voted label; a tie goes to the **lowest** label.
* ``staple`` — Warfield, Zou & Wells 2004, on binarised raters, defaults as ITK's
  ``STAPLEImageFilter`` (see :mod:`napari_softseg.fusion.staple`); multi-class STAPLE with
  ``n_classes``.
* ``soft-staple`` — STAPLE on the soft values themselves (Kats et al. 2019 formulation,
  :func:`napari_softseg.fusion.staple.soft_staple`); binary/soft maps only.

Multi-class input (integer label maps, e.g. 0 background, 1 gray matter, 2 white matter) is
requested with ``n_classes=K`` or ``multiclass=True`` (``K`` = largest label + 1); ``soft``
then has shape ``(*shape, K)`` (classes last, as 4-D NIfTI) and ``hard`` holds labels.

Also here: :class:`RandomRaterSampler` (a rater drawn per sample per epoch, for training)
and :func:`disagreement_map` (entropy of the rater average).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from napari_softseg.errors import UserError
from napari_softseg.fusion.staple import StapleResult, soft_staple, staple
from napari_softseg.io.checks import check_threshold
from napari_softseg.io.geometry import spacing_volume
from napari_softseg.labels.masks import binarize
from napari_softseg.labels.raters import check_raters, check_unit_range, class_labels, label_dtype
from napari_softseg.metrics.calibration import entropy, rater_average
from napari_softseg.metrics.segmentation import dice

__all__ = ["FusionResult", "METHODS", "fuse", "RandomRaterSampler", "disagreement_map", "rater_statistics"]


@dataclass
class FusionResult:
    """Outcome of :func:`fuse`.

    Attributes
    ----------
    soft : numpy.ndarray
        float32 probability map (binary: the raters' shape; multi-class: ``(*shape, K)``).
    hard : numpy.ndarray
        uint8 consensus (binary 0/1 or class labels).
    sensitivity, specificity : numpy.ndarray or None
        Per rater (``(R,)``; multi-class ``(R, K)`` one-vs-rest) for the STAPLE methods.
    iterations : int or None
        EM iterations (STAPLE methods).
    method : str
        Registry name of the method.
    prior : float, numpy.ndarray or None
        Prior used by STAPLE.
    n_classes : int
        2 for binary fusion.
    converged : bool or None
        Whether STAPLE reached its tolerance.
    """

    soft: np.ndarray
    hard: np.ndarray
    sensitivity: np.ndarray | None
    specificity: np.ndarray | None
    iterations: int | None
    method: str
    prior: float | np.ndarray | None = None
    n_classes: int = 2
    converged: bool | None = None


class FusionMethod:
    """Base class of the registry entries: ``run(raters, n_classes, threshold, **options)``."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ()
    multiclass: ClassVar[bool] = True

    def run(self, raters: list[np.ndarray], n_classes: int, threshold: float, **options) -> FusionResult:
        raise NotImplementedError


class Average(FusionMethod):
    name, label = "average", "Average"

    def run(self, raters, n_classes, threshold, **options):
        if n_classes > 2:
            soft = _vote_fractions(raters, n_classes)
            return FusionResult(soft, np.argmax(soft, axis=-1).astype(label_dtype(n_classes)), None, None, None, self.name, n_classes=n_classes)
        soft = rater_average(raters)
        return FusionResult(soft, binarize(soft, threshold).astype(np.uint8), None, None, None, self.name)


class Majority(FusionMethod):
    name, label = "majority", "Majority vote"

    def run(self, raters, n_classes, threshold, **options):
        if n_classes > 2:
            hard = np.argmax(_vote_counts(raters, n_classes), axis=-1).astype(label_dtype(n_classes))
            soft = np.zeros(hard.shape + (n_classes,), dtype=np.float32)
            np.put_along_axis(soft, hard[..., None].astype(np.int64), 1.0, axis=-1)
            return FusionResult(soft, hard, None, None, None, self.name, n_classes=n_classes)
        votes = np.zeros(raters[0].shape, dtype=np.uint16 if len(raters) < 65535 else np.uint32)
        for r in raters:
            votes += binarize(r, 0.5)
        hard = (2 * votes.astype(np.uint32) > len(raters)).astype(np.uint8)
        return FusionResult(hard.astype(np.float32), hard, None, None, None, self.name)


class Staple(FusionMethod):
    name, label = "staple", "STAPLE"
    options = ("prior", "confidence_weight", "init_sensitivity", "init_specificity", "tol", "max_iter",
               "restrict_to_disagreement")

    def run(self, raters, n_classes, threshold, **options):
        res = staple(raters, n_classes=n_classes if n_classes > 2 else None, **options)
        return _from_staple(res, self.name, threshold)


class SoftStaple(FusionMethod):
    name, label = "soft-staple", "Soft STAPLE"
    options = ("prior", "confidence_weight", "init_sensitivity", "init_specificity", "tol", "max_iter",
               "restrict_to_disagreement")
    multiclass = False

    def run(self, raters, n_classes, threshold, **options):
        return _from_staple(soft_staple(raters, **options), self.name, threshold)


#: name → fusion method class.
METHODS: dict[str, type[FusionMethod]] = {m.name: m for m in (Average, Majority, Staple, SoftStaple)}


def _from_staple(res: StapleResult, name: str, threshold: float) -> FusionResult:
    return FusionResult(res.posterior, res.hard(threshold), res.sensitivity, res.specificity, res.iterations, name,
                        res.prior, res.n_classes, res.converged)


def fuse(raters: Sequence[np.ndarray], method: str = "average", *, n_classes: int | None = None,
         multiclass: bool = False, threshold: float = 0.5, **options) -> FusionResult:
    """Fuse same-shape rater maps with a method of :data:`METHODS`.

    Parameters
    ----------
    raters : sequence of arrays
        Binary masks or soft maps in [0, 1]; integer label maps with ``n_classes`` /
        ``multiclass``.
    method : str
        ``"average"``, ``"majority"``, ``"staple"`` or ``"soft-staple"``.
    n_classes : int, optional
        Number of labels (background included) of multi-class label maps.
    multiclass : bool
        Multi-class with ``n_classes`` = largest label + 1.
    threshold : float
        Hard consensus of binary soft outputs: ``binarize(soft, threshold)`` (``soft >= threshold``).
    **options
        Method options (STAPLE: ``prior``, ``confidence_weight``, ``init_sensitivity``,
        ``init_specificity``, ``tol``, ``max_iter``, ``restrict_to_disagreement``).
    """
    try:
        cls = METHODS[method]
    except KeyError:
        raise UserError(f"Unknown fusion method {method!r}; choose one of {', '.join(METHODS)}.") from None
    check_threshold(threshold, "threshold")
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        raise UserError(f"Fusion method {method!r} does not take option(s) {', '.join(unknown)}.")
    arrays = check_raters(raters)
    K = _n_classes(arrays, n_classes, multiclass)
    if K > 2 and not cls.multiclass:
        raise UserError(f"Fusion method {method!r} handles binary or soft maps only, not {K}-class label maps.")
    if K > 2:
        arrays = [class_labels(a, K, j) for j, a in enumerate(arrays, 1)]
    else:
        check_unit_range(arrays, n_classes is not None or multiclass)
    return cls().run(arrays, K, threshold, **options)


def _n_classes(arrays: list[np.ndarray], n_classes: int | None, multiclass: bool) -> int:
    if n_classes is not None:
        if int(n_classes) < 2:
            raise UserError(f"n_classes must be at least 2, got {n_classes}.")
        return int(n_classes)
    if multiclass:
        return max(2, int(max(np.max(a) for a in arrays)) + 1)
    return 2


def _vote_counts(labels: list[np.ndarray], n_classes: int) -> np.ndarray:
    counts = np.zeros(labels[0].shape + (n_classes,), dtype=np.uint16)
    for lab in labels:
        for k in range(n_classes):
            counts[..., k] += lab == k
    return counts


def _vote_fractions(labels: list[np.ndarray], n_classes: int) -> np.ndarray:
    return _vote_counts(labels, n_classes).astype(np.float32) / np.float32(len(labels))


def disagreement_map(raters: Sequence[np.ndarray], *, n_classes: int | None = None) -> np.ndarray:
    """Voxel-wise entropy (bits) of the rater average; 0 wherever binary raters agree.

    Binary/soft raters: ``H(p) = -(p ln p + (1 - p) ln(1 - p))`` with ``p`` the rater mean.
    Multi-class label maps (``n_classes``): entropy of the vote fractions over classes.
    """
    arrays = check_raters(raters)
    if n_classes is not None and n_classes > 2:
        labels = [class_labels(a, n_classes, j) for j, a in enumerate(arrays, 1)]
        return entropy(_vote_fractions(labels, n_classes), class_axis=-1).astype(np.float32)
    check_unit_range(arrays, False)
    return entropy(rater_average(arrays)).astype(np.float32)


def rater_statistics(raters: Sequence[np.ndarray], result: FusionResult, *, names: Sequence[str] | None = None,
                     spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> list[dict]:
    """Per rater: name, sensitivity/specificity (STAPLE), Dice (%) against the hard consensus
    and volume (mm³). Multi-class: ``dice`` is the mean over foreground labels."""
    arrays = check_raters(raters)
    names = list(names) if names is not None else [f"rater{j}" for j in range(1, len(arrays) + 1)]
    vv = spacing_volume(spacing)
    rows = []
    for j, a in enumerate(arrays):
        row: dict = {"name": names[j]}
        if result.sensitivity is not None:
            row["sensitivity"] = np.asarray(result.sensitivity[j]).tolist()
            row["specificity"] = np.asarray(result.specificity[j]).tolist()
        if result.n_classes > 2:
            lab = np.asarray(a)
            row["dice"] = float(np.mean([dice(lab == k, result.hard == k) for k in range(1, result.n_classes)]))
            row["volume_mm3"] = float(np.count_nonzero(lab)) * vv
        else:
            fg = binarize(np.asarray(a), 0.5)
            row["dice"] = dice(fg, result.hard)
            row["volume_mm3"] = float(np.count_nonzero(fg)) * vv
        rows.append(row)
    return rows


@dataclass(frozen=True)
class RandomRaterSampler:
    """Random sampling of raters for training: one rater per sample, drawn anew each epoch.

    ``draw(epoch, n_samples)`` returns int64 rater indices in ``[0, n_raters)``, uniform and
    independent, from ``numpy.random.default_rng([seed, epoch])``: the same for the same
    ``(seed, epoch)`` on every machine, different from one epoch to the next.
    """

    n_raters: int
    seed: int = 0

    def __post_init__(self):
        if int(self.n_raters) < 1:
            raise UserError(f"Random rater sampling needs at least one rater, got {self.n_raters}.")
        if int(self.seed) < 0:
            raise UserError(f"The sampling seed must be non-negative, got {self.seed}.")

    def draw(self, epoch: int, n_samples: int) -> np.ndarray:
        if epoch < 0 or n_samples < 0:
            raise ValueError("epoch and n_samples must be non-negative.")
        rng = np.random.default_rng([int(self.seed), int(epoch)])
        return rng.integers(0, int(self.n_raters), size=int(n_samples), dtype=np.int64)
