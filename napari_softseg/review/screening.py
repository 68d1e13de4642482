"""A prediction judged once at its model's own threshold: flag scores and possible lesions.

:func:`screen` analyses the soft map at the **model's** threshold (the reference lesions)
and scores every reference lesion with the model's flag model
(:class:`~napari_softseg.review.flags.FlagModel`); it also labels the **blobs**, the
components of ``soft >= candidate_floor``, and scores each as a possible lesion.

:meth:`Screening.apply` carries this onto the lesion table at whatever threshold the
reviewer chose, so that scores never depend on the slider:

* a lesion at the chosen threshold gets the highest score of the reference lesions it
  overlaps (a lesion split by a higher threshold keeps its score in every part; lesions
  merged by a lower threshold take the worst of theirs) and that lesion's reason; a lesion
  that holds no reference lesion (only below the model's threshold) is not scored (NaN);
* every blob that does not touch the mask at the chosen threshold and whose possible-lesion
  score reaches the rule's ``candidate_score`` is listed after the lesions as a
  ``"candidate"`` record (ids ``n_lesions + 1 …`` by decreasing score, its voxels in the
  table's label image), flagged "possible missed lesion".
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from napari_softseg.labels.masks import binarize
from napari_softseg.metrics.detection import connected_components
from napari_softseg.review.flags import FlagModel, candidate_features, lesion_features
from napari_softseg.review.lesions import FlagRule, LesionTable, analyse_lesions, region_records

__all__ = ["Screening", "screen", "candidate_blobs"]


@dataclass
class Screening:
    """Reference lesions and blobs of one prediction with their scores (see the module docstring)."""

    threshold: float
    labels: np.ndarray  # reference lesions at ``threshold`` (int32, 0 = background)
    scores: np.ndarray  # (n_reference + 1,) flag score per reference id (index 0: NaN)
    reasons: list  # (n_reference + 1,) words
    blobs: np.ndarray  # components of soft >= candidate floor (int32)
    blob_records: list  # LesionRecord per blob (kind "candidate", flag_score = possible-lesion score)
    reference: LesionTable | None = None

    @property
    def n_reference(self) -> int:
        return len(self.scores) - 1

    def apply(self, table: LesionTable, rule: FlagRule) -> LesionTable:
        """``table`` (lesions at any threshold) with scores, flags and candidate rows (see above)."""
        lesions = [r for r in table.records if r.kind == "lesion"]
        n = len(lesions)
        labels = np.where(table.labels <= n, table.labels, 0).astype(np.int32, copy=False)
        best, owner = self._best_reference(labels, n)
        records = [rule.apply(replace(r, flag_score=float(best[r.id]),
                                      score_reason=self.reasons[owner[r.id]] if owner[r.id] else ""))
                   for r in lesions]
        listed = self._listed_blobs(labels > 0, rule)
        if listed.size:
            lut = np.zeros(len(self.blob_records) + 1, np.int32)
            lut[listed] = np.arange(n + 1, n + 1 + listed.size, dtype=np.int32)
            cand = lut[self.blobs]
            labels = np.where(cand > 0, cand, labels)
            records += [rule.apply(replace(self.blob_records[j - 1], id=int(lut[j]))) for j in listed]
        return replace(table, records=records, labels=labels, rule=rule)

    def _best_reference(self, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Per lesion id of ``labels``: the highest score of the reference lesions it
        overlaps (NaN when none) and that reference id (0 when none)."""
        best = np.full(n + 1, np.nan)
        owner = np.zeros(n + 1, np.int64)
        both = (labels > 0) & (self.labels > 0)
        if not both.any():
            return best, owner
        m = self.n_reference + 1
        pairs = np.unique(labels[both].astype(np.int64) * m + self.labels[both])
        ids, refs = pairs // m, pairs % m
        scores = self.scores[refs]
        order = np.lexsort((np.nan_to_num(scores, nan=-1.0), ids))  # by id, then score
        last = np.r_[ids[order][1:] != ids[order][:-1], True]
        top_ids, top_refs = ids[order][last], refs[order][last]
        best[top_ids], owner[top_ids] = self.scores[top_refs], top_refs
        return best, owner

    def _listed_blobs(self, mask: np.ndarray, rule: FlagRule) -> np.ndarray:
        """Blob ids not touching ``mask`` whose score reaches ``rule.candidate_score``, best first."""
        if rule.candidate_score is None or not self.blob_records:
            return np.zeros(0, np.int64)
        touching = np.bincount(self.blobs[mask], minlength=len(self.blob_records) + 1)[1:] > 0
        scores = np.array([r.flag_score for r in self.blob_records])
        ok = ~touching & (scores >= rule.candidate_score)
        ids = np.flatnonzero(ok) + 1
        return ids[np.argsort(-scores[ok], kind="stable")]


def screen(soft, *, threshold: float, spacing, flags: FlagModel | None, sampling: str = "none", samples=None,
           connectivity: int = 18) -> Screening:
    """Score the lesions of ``soft`` at ``threshold`` (the model's) and its blobs (see the module docstring)."""
    p = np.asarray(soft, dtype=np.float32)
    reference = analyse_lesions(p, threshold=threshold, spacing=spacing, samples=samples, connectivity=connectivity,
                                rule=FlagRule(flag_score=None, candidate_score=None))
    n = len(reference)
    scores, reasons = np.full(n + 1, np.nan), [""] * (n + 1)
    model = flags.lesion_model(sampling) if flags is not None else None
    if model is not None and n:
        x = lesion_features(reference.records, model.features)
        scores[1:] = model.score(x)
        reasons[1:] = model.reasons(x)
    blobs, records = np.zeros(p.shape, np.int32), []
    cand_model = flags.candidate_model(sampling) if flags is not None else None
    if cand_model is not None and flags.candidate_floor < threshold:
        blobs, records = candidate_blobs(p, floor=flags.candidate_floor, threshold=threshold, spacing=spacing,
                                         samples=samples, connectivity=connectivity)
        if records:
            x = candidate_features(records, cand_model.features)
            records = [replace(r, flag_score=float(s), score_reason=w)
                       for r, s, w in zip(records, cand_model.score(x), cand_model.reasons(x))]
    return Screening(float(threshold), reference.labels, scores, reasons, blobs, records, reference)


def candidate_blobs(soft, *, floor: float, threshold: float, spacing, samples=None,
                    connectivity: int = 18) -> tuple[np.ndarray, list]:
    """The components of ``soft >= floor`` (int32 labels) and their records (kind
    "candidate", not scored; ``sample_hits``: the fraction of samples in which the blob holds
    a voxel at or above ``threshold``)."""
    p = np.asarray(soft, dtype=np.float32)
    blobs, m = connected_components(binarize(p, floor), connectivity)
    n_samples = 0 if samples is None else len(samples)
    records = region_records(p, blobs, m, spacing, kind="candidate", n_samples=n_samples)
    if records and n_samples:
        hits = _blob_hits(samples, blobs, m, threshold)
        records = [replace(r, sample_hits=float(h)) for r, h in zip(records, hits)]
    return blobs, records


def _blob_hits(samples, blobs: np.ndarray, m: int, threshold: float) -> np.ndarray:
    """Fraction of samples in which each blob holds a voxel at or above ``threshold``."""
    inside = blobs > 0
    lab = blobs[inside]
    hits = np.zeros(m)
    for sample in samples:
        above = binarize(np.asarray(sample)[inside], threshold)
        hits += np.bincount(lab[above], minlength=m + 1)[1:] > 0
    return hits / len(samples)
