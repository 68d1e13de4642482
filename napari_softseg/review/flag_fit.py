"""Fitting and measuring flag models on cases with a known truth (validation phantoms).

Truth and labels:

* **true lesions**: the phantom's lesions, each voxel owned by the lesion with the largest
  fraction in it, kept where the total truth fraction is at least 0.5
  (:func:`phantom_truth_labels`);
* a predicted lesion (a component at the model's threshold) **needs a correction**
  (:func:`correction_labels`) when it is *false* (overlaps no true lesion), *merges* true
  lesions (hits two or more), is part of a *split* (its true lesion is hit by two or more
  predicted lesions) or its *extent* is wrong (Dice with the true lesion it overlaps most
  < 0.5). "Hits" is the detection rule of
  :func:`napari_softseg.metrics.detection.lesion_detection`: an overlap of at least
  ``min(3, true lesion size)`` voxels;
* a true lesion is **missed** when no predicted lesion hits it; a **candidate** (a blob of
  ``soft >= floor`` that touches no predicted lesion) is *true* when it overlaps a true
  lesion, and it *recovers* the missed lesions it overlaps.

Fitting (:func:`fit_flag_model`), per sampling kind: the logistic models of
:mod:`napari_softseg.review.flags` on every lesion (candidate) of the cases; the operating
points are chosen on leave-one-case-out scores (so not on scores of the cases a model was
fitted on): the lesion model's is the highest score that still flags ``target_recall`` of
the lesions that need a correction, the candidate model's the highest score among those
that recover the most missed lesions while listing at most ``max_false_candidates`` false
candidates per case (rounded to 0.01, down and up
respectively, as the dock shows them). A candidate model is kept only when, in
cross-validation, it recovers a missed lesion and at least a quarter of the candidates it
lists are true (:data:`MIN_TRUE_CANDIDATES`): otherwise it would mostly list false ones, and
a model whose soft map is exactly 0 where it misses lesions gets no candidate rows. The cross-validated AUROC, recall
and false-flag rate are kept in each model's ``info``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from napari_softseg.labels.masks import binarize
from napari_softseg.review.flags import (
    CANDIDATE_FEATURES, CANDIDATE_SAMPLE_FEATURES, LESION_FEATURES, LESION_SAMPLE_FEATURES, FlagModel, Logistic,
    candidate_features, feature_names, fitted_kind, lesion_features,
)
from napari_softseg.review.lesions import FlagRule, analyse_lesions
from napari_softseg.review.screening import candidate_blobs

ALL_LESION = LESION_FEATURES + LESION_SAMPLE_FEATURES
ALL_CANDIDATE = CANDIDATE_FEATURES + CANDIDATE_SAMPLE_FEATURES
MIN_OVERLAP = 3
#: share of true candidates among those listed (cross-validated) below which no candidate model is kept
MIN_TRUE_CANDIDATES = 0.25


@dataclass
class CaseData:
    """The features and truth of one prediction (one scan, one sampling kind)."""

    name: str
    sampling: str
    lesion_x: np.ndarray  # (n, len(ALL_LESION))
    lesion_y: np.ndarray  # needs a correction
    lesion_why: list
    cand_x: np.ndarray  # (m, len(ALL_CANDIDATE)), blobs touching no predicted lesion
    cand_true: np.ndarray
    cand_recovers: list  # per candidate: the missed true lesion ids it overlaps
    missed: list  # missed true lesion ids
    n_truth: int
    seconds: dict = field(default_factory=dict)


def phantom_truth_labels(phantom) -> np.ndarray:
    """int32 labels of the phantom's true lesions (see the module docstring)."""
    from napari_softseg.io.phantom import render_fraction

    shape = phantom.truth.shape
    best = np.zeros(shape, np.float32)
    owner = np.zeros(shape, np.int32)
    for i, lesion in enumerate(phantom.lesions, start=1):
        box, frac = render_fraction(lesion, shape)
        sub_best, sub_owner = best[box], owner[box]
        take = frac > sub_best
        sub_best[take], sub_owner[take] = frac[take], i
    return np.where(binarize(phantom.truth, 0.5), owner, 0).astype(np.int32)


def _overlaps(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pred ids, truth ids, voxel counts) of every overlapping pair."""
    both = (pred > 0) & (truth > 0)
    m = int(truth.max()) + 1
    keys, counts = np.unique(pred[both].astype(np.int64) * m + truth[both], return_counts=True)
    return keys // m, keys % m, counts


def correction_labels(pred: np.ndarray, n: int, truth: np.ndarray, *, min_dice: float = 0.5) -> tuple[np.ndarray, list]:
    """Per predicted lesion ``1..n``: needs a correction (bool) and why ("false", "merge",
    "split", "extent (Dice 0.xx)" or "")."""
    p_ids, t_ids, counts = _overlaps(pred, truth)
    p_size = np.bincount(pred.ravel(), minlength=n + 1)
    t_size = np.bincount(truth.ravel(), minlength=int(truth.max()) + 1)
    hit = counts >= np.minimum(MIN_OVERLAP, t_size[t_ids])
    hitters = np.bincount(t_ids[hit], minlength=t_size.size)
    why = []
    for i in range(1, n + 1):
        sel = p_ids == i
        if not sel.any():
            why.append("false")
            continue
        if np.count_nonzero(hit & sel) >= 2:
            why.append("merge")
            continue
        if np.any(hitters[t_ids[sel & hit]] >= 2):
            why.append("split")
            continue
        k = np.argmax(np.where(sel, counts, -1))
        dice = 2.0 * counts[k] / (p_size[i] + t_size[t_ids[k]])
        why.append(f"extent (Dice {dice:.2f})" if dice < min_dice else "")
    return np.array([bool(w) for w in why], bool), why


def missed_lesions(pred_mask: np.ndarray, truth: np.ndarray) -> list[int]:
    """True lesion ids that the mask does not hit (fewer than ``min(3, size)`` voxels)."""
    t_size = np.bincount(truth.ravel())
    covered = np.bincount(truth[pred_mask & (truth > 0)], minlength=t_size.size)
    return [int(j) for j in range(1, t_size.size) if t_size[j] and covered[j] < min(MIN_OVERLAP, t_size[j])]


def case_data(name: str, soft, truth: np.ndarray, *, threshold: float, floor: float, spacing, samples=None,
              sampling: str = "none", connectivity: int = 18, seconds: dict | None = None) -> CaseData:
    """Features of the lesions at ``threshold`` and of the candidates at ``floor``, with their truth."""
    p = np.asarray(soft, dtype=np.float32)
    table = analyse_lesions(p, threshold=threshold, spacing=spacing, samples=samples, connectivity=connectivity,
                            rule=FlagRule(flag_score=None, candidate_score=None))
    y, why = correction_labels(table.labels, len(table), truth)
    blobs, records = candidate_blobs(p, floor=floor, threshold=threshold, spacing=spacing, samples=samples,
                                     connectivity=connectivity)
    mask = table.labels > 0
    missed = missed_lesions(mask, truth)
    touching = np.bincount(blobs[mask], minlength=len(records) + 1)[1:] > 0
    keep = [r for r, t in zip(records, touching) if not t]
    b_ids, t_ids, _ = _overlaps(blobs, truth)
    over: dict[int, set] = {}
    for b, t in zip(b_ids, t_ids):
        over.setdefault(int(b), set()).add(int(t))
    return CaseData(name, sampling, lesion_features(table.records, ALL_LESION), y, why,
                    candidate_features(keep, ALL_CANDIDATE), np.array([r.id in over for r in keep], bool),
                    [sorted(over.get(r.id, set()) & set(missed)) for r in keep], missed, int(truth.max()),
                    dict(seconds or {}))


# ----------------------------------------------------------------------------- metrics


def auroc(scores, labels) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN without both classes."""
    from scipy.stats import rankdata

    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def lesion_metrics(scores, labels, operating_point: float) -> dict:
    """AUROC, recall of the lesions that need a correction at the operating point, and the
    share of correct lesions flagged (false-flag rate)."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    flagged = s >= operating_point
    return {"n": int(y.size), "n_needs_correction": int(y.sum()), "auroc": auroc(s, y),
            "recall": float(flagged[y].mean()) if y.any() else math.nan,
            "false_flag_rate": float(flagged[~y].mean()) if (~y).any() else math.nan,
            "n_flagged": int(flagged.sum())}


def candidate_metrics(cases: list[CaseData], scores: list[np.ndarray], operating_point: float) -> dict:
    """Share of the missed true lesions recovered by a listed candidate, and false candidates per case."""
    missed = recovered = false = listed = 0
    for case, s in zip(cases, scores):
        on = np.asarray(s) >= operating_point
        found = set().union(*(set(r) for r, o in zip(case.cand_recovers, on) if o)) if on.any() else set()
        missed += len(case.missed)
        recovered += len(found)
        false += int(np.count_nonzero(on & ~case.cand_true))
        listed += int(on.sum())
    n = max(len(cases), 1)
    return {"n_missed": missed, "recovered": recovered, "recall": recovered / missed if missed else math.nan,
            "false_per_scan": false / n, "listed_per_scan": listed / n}


# ----------------------------------------------------------------------------- fitting


def _columns(names, all_names) -> list[int]:
    return [all_names.index(n) for n in names]


def _cv_scores(xs: list[np.ndarray], ys: list[np.ndarray], names, l2: float) -> list[np.ndarray]:
    """Leave-one-case-out scores (a case's scores from a model fitted on the others)."""
    out = []
    for k in range(len(xs)):
        x = np.concatenate([a for i, a in enumerate(xs) if i != k])
        y = np.concatenate([a for i, a in enumerate(ys) if i != k])
        if y.sum() == 0 or y.sum() == y.size:
            out.append(np.full(len(xs[k]), float(y.mean()) if y.size else 0.5))
            continue
        out.append(Logistic.fit(x, y, names, l2=l2).score(xs[k]) if len(xs[k]) else np.zeros(0))
    return out


def recall_operating_point(scores, labels, target_recall: float) -> float:
    """The highest score threshold that flags at least ``target_recall`` of the positives."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    pos = np.sort(s[y])[::-1]
    if pos.size == 0:
        return 0.5
    k = max(int(math.ceil(target_recall * pos.size)) - 1, 0)
    return float(pos[k])


def candidate_operating_point(cases: list[CaseData], scores: list[np.ndarray], max_false: float) -> float:
    """The score threshold that recovers the most missed lesions while listing at most
    ``max_false`` false candidates per case, the highest such threshold (fewest false ones)."""
    values = np.unique(np.concatenate([np.asarray(s) for s in scores] + [np.array([1.0])]))
    best, best_recovered = 1.0, -1
    for t in values[::-1]:  # descending: on a tie in recovered lesions the higher threshold stays
        m = candidate_metrics(cases, scores, float(t))
        if m["false_per_scan"] <= max_false and m["recovered"] > best_recovered:
            best, best_recovered = float(t), m["recovered"]
    return best


def _design(names: list[str], every: list[str], xs: list, ys: list):
    """Each case's feature columns ``names`` (of ``every``) and the pooled labels, or None when
    either class has fewer than 2 examples (nothing to fit)."""
    cols = _columns(names, every)
    xs = [x[:, cols] for x in xs]
    y = np.concatenate(ys)
    return None if y.sum() < 2 or (~y).sum() < 2 else (xs, y)


def _cross_validated(kind: str, sampling: str, every: tuple, xs: list, ys: list, l2: float):
    """``(names, xs, y, cv)``: the kind's feature columns, the stacked labels and the
    leave-one-case-out scores; None when either class has fewer than two examples."""
    names = feature_names(kind, sampling)
    design = _design(names, every, xs, ys)
    if design is None:
        return None
    xs, y = design
    return names, xs, y, _cv_scores(xs, ys, names, l2)


def _fit_lesions(cs: list[CaseData], sampling: str, target_recall: float, l2: float) -> Logistic | None:
    fitted = _cross_validated("lesion", sampling, ALL_LESION, [c.lesion_x for c in cs], [c.lesion_y for c in cs], l2)
    if fitted is None:
        return None
    names, xs, y, cv = fitted
    model = Logistic.fit(np.concatenate(xs), y, names, l2=l2)
    model.operating_point = math.floor(100 * recall_operating_point(np.concatenate(cv), y, target_recall)) / 100
    model.info.update({"cv": lesion_metrics(np.concatenate(cv), y, model.operating_point),
                       "target_recall": target_recall, "n_cases": len(cs)})
    return model


def _fit_candidates(cs: list[CaseData], sampling: str, max_false: float, l2: float) -> Logistic | None:
    fitted = _cross_validated("candidate", sampling, ALL_CANDIDATE, [c.cand_x for c in cs], [c.cand_true for c in cs], l2)
    if fitted is None:
        return None
    names, xs, y, cv = fitted
    op = min(math.ceil(100 * candidate_operating_point(cs, cv, max_false)) / 100, 1.0)
    metrics = candidate_metrics(cs, cv, op)
    true_share = 1.0 - metrics["false_per_scan"] / metrics["listed_per_scan"] if metrics["listed_per_scan"] else 0.0
    if not metrics["recovered"] or true_share < MIN_TRUE_CANDIDATES:
        return None  # it would mostly list false candidates
    model = Logistic.fit(np.concatenate(xs), y, names, l2=l2)
    model.operating_point = op
    model.info.update({"cv": metrics, "cv_auroc": auroc(np.concatenate(cv), y), "max_false_per_scan": max_false,
                       "n_cases": len(cs)})
    return model


def fit_flag_model(cases: list[CaseData], *, threshold: float, floor: float, label: str, target_recall: float = 0.85,
                   max_false_candidates: float = 2.0, l2: float = 1.0, info: dict | None = None) -> FlagModel:
    """Fit the lesion and candidate models of every sampling kind present in ``cases``."""
    lesion, candidate, skipped = {}, {}, {}
    for sampling in sorted({c.sampling for c in cases}):
        cs = [c for c in cases if c.sampling == sampling]
        les = _fit_lesions(cs, sampling, target_recall, l2)
        cand = _fit_candidates(cs, sampling, max_false_candidates, l2)
        if les is not None:
            lesion[sampling] = les
        if cand is not None:
            candidate[sampling] = cand
        if les is None or cand is None:
            skipped[sampling] = "too few examples, or (candidates) too few true ones among those listed in " \
                "cross-validation: " + ", ".join(w for w, m in (("lesions", les), ("candidates", cand)) if m is None)
    return FlagModel(lesion, candidate, float(threshold), float(floor), label,
                     {**(info or {}), "fitted": time.strftime("%Y-%m-%d"), "not_fitted": skipped})


def evaluate_flags(flags: FlagModel, cases: list[CaseData]) -> dict:
    """Per sampling kind: lesion flag metrics (AUROC, recall, false-flag rate at the fitted
    operating point) and candidate metrics, on ``cases`` (unseen by the fit)."""
    out = {}
    for sampling in sorted({c.sampling for c in cases}):
        cs = [c for c in cases if c.sampling == sampling]
        res: dict = {"n_cases": len(cs)}
        les = flags.lesion_model(sampling)
        if les is not None:
            s = np.concatenate([les.score(c.lesion_x[:, _columns(les.features, ALL_LESION)]) for c in cs])
            res["lesions"] = {**lesion_metrics(s, np.concatenate([c.lesion_y for c in cs]), les.operating_point),
                              "operating_point": les.operating_point, "model": _kind_used(flags.lesion, sampling)}
        cand = flags.candidate_model(sampling)
        if cand is not None:
            s = [cand.score(c.cand_x[:, _columns(cand.features, ALL_CANDIDATE)]) for c in cs]
            res["candidates"] = {**candidate_metrics(cs, s, cand.operating_point),
                                 "operating_point": cand.operating_point,
                                 "model": _kind_used(flags.candidate, sampling)}
        else:  # no candidate model: none is listed
            res["candidates"] = {**candidate_metrics(cs, [np.full(len(c.cand_true), -np.inf) for c in cs], 0.0),
                                 "model": None}
        out[sampling] = res
    return out


def _kind_used(models: dict, sampling: str) -> str:
    return fitted_kind(sampling, models)


# ----------------------------------------------------------------------------- phantom cases

#: predict_volume settings of each sampling kind (TTA: the 4 flipped views; MC: 5 draws)
SAMPLING_SETTINGS = {"none": {}, "tta": {"tta": 4}, "mc": {"mc_samples": 5}}


def default_floor(threshold: float) -> float:
    """The candidate floor used unless told otherwise: a fifth of the model's threshold."""
    return float(threshold) / 5.0


def model_samplings(model) -> tuple[str, ...]:
    """The sampling kinds worth fitting for a model: "mc" only when it has dropout."""
    dropout = float(((getattr(model, "softseg_config", None) or {}).get("architecture") or {}).get("dropout", 0.0))
    return ("none", "tta", "mc") if dropout > 0 else ("none", "tta")


def phantom_cases(model, seeds, *, samplings=None, floor: float | None = None, report=None,
                  cache=None) -> list[CaseData]:
    """:class:`CaseData` of varied phantoms (``build_phantom(seed, vary=True)``) predicted by
    ``model`` with each sampling kind; ``report(text)`` is called after each prediction.
    ``cache``: a folder where each phantom's truth and predictions are kept (and reused)."""
    threshold = float(model.softseg_config.get("threshold", 0.5))
    floor = default_floor(threshold) if floor is None else float(floor)
    cases = []
    for seed in seeds:
        for sampling, (soft, samples, truth, spacing, seconds) in _phantom_predictions(model, int(seed), samplings,
                                                                                      cache):
            t1 = time.perf_counter()
            case = case_data(f"phantom {seed}", soft, truth, threshold=threshold, floor=floor, spacing=spacing,
                             samples=samples, sampling=sampling, seconds={"predict": seconds})
            case.seconds["features"] = time.perf_counter() - t1
            cases.append(case)
            if report is not None:
                report(f"phantom {seed} {sampling}: {len(case.lesion_y)} lesions ({int(case.lesion_y.sum())} need a "
                       f"correction), {len(case.missed)} missed, {len(case.cand_true)} candidates, "
                       f"{seconds:.1f} s")
    return cases


def _phantom_predictions(model, seed: int, samplings, cache):
    """Yield ``(sampling, (soft, samples, truth, spacing, predict seconds))`` for one phantom."""
    from pathlib import Path

    import torch

    from napari_softseg.engine.predict import predict_volume
    from napari_softseg.io import geometry
    from napari_softseg.io.phantom import build_phantom

    phantom = truth = None
    for sampling in samplings or model_samplings(model):
        path = None if cache is None else Path(cache) / f"phantom-{seed}-{sampling}.npz"
        if path is not None and path.is_file():
            with np.load(path) as f:
                samples = f["samples"] if f["samples"].size else None
                yield sampling, (f["soft"], samples, f["truth"], tuple(f["spacing"]), float(f["seconds"]))
            continue
        if phantom is None:
            phantom = build_phantom(seed, vary=True)
            truth = phantom_truth_labels(phantom)
        spacing = geometry.spacing(phantom.affine)
        torch.manual_seed(seed)  # MC-dropout draws: the same fit from the same seeds
        t0 = time.perf_counter()
        pred = predict_volume(model, phantom.image, spacing=spacing, return_prediction=True,
                              **SAMPLING_SETTINGS[sampling])
        seconds = time.perf_counter() - t0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, soft=pred.soft, samples=pred.samples if pred.samples is not None else np.zeros(0),
                                truth=truth, spacing=np.asarray(spacing), seconds=seconds)
        yield sampling, (pred.soft, pred.samples, truth, spacing, seconds)
