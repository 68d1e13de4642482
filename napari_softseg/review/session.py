"""Review of a soft prediction's lesions: threshold, manual edits, decisions and export.

A :class:`Review` holds one prediction (soft map, optional uncertainty samples) and the
reviewer's work on it, without any GUI, so that everything the Segment dock does can be
scripted and tested:

* **Working mask** at threshold ``t`` (lesions are components of ``soft >= t``, the one
  binarisation rule :func:`napari_softseg.labels.masks.binarize`, shared with the lesion
  analysis, the metrics and the CLI), with the reviewer's painted edits kept as two voxel
  sets, *added* and *removed*, that survive a threshold change::

      final(t) = ((soft >= t) \\ rejected(t)  ∪  added) \\ removed

  where ``rejected(t)`` is the union of the components (at ``t``) of the rejected lesions.
* **Decisions** (:data:`DECISIONS`: pending, accepted, rejected, edited) and comments, each
  remembered with the voxels the lesion had when it was decided. After a new analysis (new
  threshold, new flag rule) a decision moves to the new component that holds most of those
  voxels, so decisions are not lost when the components are renumbered.
* **Export** (:meth:`Review.export`): the lesion table as CSV and JSON (every lesion's
  statistics, decision and comment, the model's identity, the threshold and flag rule, and
  a summary of the final mask) and the final soft and binary masks as NIfTI on the scan's
  grid. The final soft map is the prediction with rejected lesions and removed voxels set
  to 0 and added voxels set to 1 (the reviewer drew them), so that ``final_soft >= t``
  equals the final binary mask.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from napari_softseg.io.atomic import atomic_open
from napari_softseg.io.geometry import spacing_volume
from napari_softseg.io.jsondoc import write_json
from napari_softseg.labels.masks import binarize
from napari_softseg.review.lesions import FlagRule, LesionRecord, LesionTable, analyse_lesions

__all__ = ["DECISIONS", "Decision", "Review", "EXPORT_SUFFIXES"]

#: decision -> meaning (shown as tooltips and written to the JSON export).
DECISIONS: dict[str, str] = {
    "pending": "not reviewed yet; kept in the final mask",
    "accepted": "confirmed by the reviewer; kept in the final mask",
    "rejected": "a false positive; removed from the final mask",
    "edited": "kept, with its outline corrected by painting on the mask",
}

#: file name suffixes written by :meth:`Review.export` (after the stem).
EXPORT_SUFFIXES = {
    "csv": "_lesions.csv",
    "json": "_review.json",
    "soft": "_soft.nii.gz",
    "binary": "_mask.nii.gz",
}


@dataclass
class Decision:
    """A reviewer's decision on one lesion and the voxels (flat indices) it was taken on."""

    status: str = "pending"
    comment: str = ""
    voxels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    def __post_init__(self) -> None:
        if self.status not in DECISIONS:
            raise ValueError(f"unknown decision {self.status!r}; choose one of {', '.join(DECISIONS)}")


class Review:
    """The review state of one soft prediction (see the module docstring).

    Parameters
    ----------
    soft : array (X, Y, Z)
        Soft prediction in [0, 1] (kept as float32, not copied when already float32).
    spacing : 3 floats
        Voxel size in mm (array order).
    threshold : float
        Initial binarisation threshold (the model's).
    samples : array (N, X, Y, Z), optional
        MC-dropout / test-time-augmentation soft maps, for the per-lesion uncertainty.
    rule : FlagRule
        Which lesions are flagged.
    connectivity : int
        Lesion connectivity (6, 18 or 26).
    """

    def __init__(self, soft, *, spacing: Sequence[float] = (1.0, 1.0, 1.0), threshold: float = 0.5,
                 samples=None, rule: FlagRule | None = None, connectivity: int = 18) -> None:
        self.soft = np.asarray(soft, dtype=np.float32)
        if self.soft.ndim != 3:
            raise ValueError(f"the soft prediction must be 3-D, got shape {self.soft.shape}")
        self.spacing = tuple(float(s) for s in spacing)
        self.samples = samples
        self.rule = rule if rule is not None else FlagRule()
        self.connectivity = int(connectivity)
        self.threshold = float(threshold)
        self.added = np.zeros(self.soft.shape, bool)
        self.removed = np.zeros(self.soft.shape, bool)
        self.table: LesionTable | None = None
        self._decisions: list[Decision] = []  # remembered with their voxels
        self._by_id: dict[int, Decision] = {}  # current lesion id -> decision
        self._rejected_vox = np.zeros(self.soft.shape, bool)

    # ------------------------------------------------------------------ analysis

    def analyse(self, threshold: float | None = None, rule: FlagRule | None = None) -> LesionTable:
        """(Re)compute the lesion table at ``threshold`` with ``rule`` and re-attach decisions."""
        if threshold is not None:
            self.threshold = float(threshold)
        if rule is not None:
            self.rule = rule
        table = analyse_lesions(self.soft, threshold=self.threshold, spacing=self.spacing, samples=self.samples,
                                rule=self.rule, connectivity=self.connectivity)
        self.set_table(table)
        return table

    def set_table(self, table: LesionTable) -> None:
        """Adopt a table computed elsewhere (e.g. in a worker thread) and re-attach decisions."""
        self.table = table
        self.threshold = float(table.threshold)
        self.rule = table.rule
        self._attach_decisions()

    def reflag(self, rule: FlagRule) -> LesionTable:
        """Judge the same lesions by another flag rule (no new analysis)."""
        if self.table is None:
            return self.analyse(rule=rule)
        self.table = self.table.reflag(rule)
        self.rule = rule
        return self.table

    def _attach_decisions(self) -> None:
        labels = self.table.labels
        flat = labels.ravel()
        best: dict[int, tuple[int, Decision]] = {}
        for dec in self._decisions:
            if dec.voxels.size == 0:
                continue
            ids = flat[dec.voxels]
            ids = ids[ids > 0]
            if ids.size == 0:
                continue
            counts = np.bincount(ids)
            new_id = int(np.argmax(counts))
            if new_id not in best or counts[new_id] > best[new_id][0]:
                best[new_id] = (int(counts[new_id]), dec)
        self._by_id = {i: d for i, (_, d) in best.items()}
        rejected = [i for i, d in self._by_id.items() if d.status == "rejected"]
        self._rejected_vox = np.isin(labels, rejected) if rejected else np.zeros(labels.shape, bool)

    # ------------------------------------------------------------------ masks

    def base_mask(self, threshold: float | None = None) -> np.ndarray:
        t = self.threshold if threshold is None else float(threshold)
        return binarize(self.soft, t)

    def final_mask(self, threshold: float | None = None) -> np.ndarray:
        """Boolean final mask (see the module docstring).

        With another ``threshold`` than the analysed one, the rejected voxels of the last
        analysis are used (the live preview of a slider); :meth:`analyse` makes it exact.
        """
        mask = self.base_mask(threshold)
        mask &= ~self._rejected_vox
        mask |= self.added
        mask &= ~self.removed
        return mask

    def final_soft(self) -> np.ndarray:
        """The prediction with rejected and removed voxels set to 0 and added ones to 1."""
        out = self.soft.copy()
        out[self._rejected_vox & ~self.added] = 0.0
        out[self.removed] = 0.0
        out[self.added & ~self.removed] = 1.0
        return out

    def sync_edits(self, mask) -> np.ndarray:
        """Record what the reviewer painted: ``mask`` is the edited final mask.

        Voxels switched on become *added*, voxels switched off *removed* (each cancels the
        other). Lesions touched by the change (within one voxel) that were pending become
        ``edited``. Returns the ids of the lesions that changed status.
        """
        now = np.asarray(mask) > 0
        before = self.final_mask()
        on = now & ~before
        off = before & ~now
        if not on.any() and not off.any():
            return np.zeros(0, np.int64)
        self.added |= on
        self.removed &= ~on
        self.removed |= off
        self.added &= ~off
        touched = self._touched_lesions(on | off)
        changed = []
        for lesion_id in touched:
            if self.decision(lesion_id).status == "pending":
                self.decide(lesion_id, "edited")
                changed.append(lesion_id)
        return np.asarray(changed, np.int64)

    def _touched_lesions(self, changed: np.ndarray) -> list[int]:
        if self.table is None or not changed.any():
            return []
        from scipy import ndimage

        idx = np.nonzero(changed)
        lo = [max(int(i.min()) - 1, 0) for i in idx]
        hi = [int(i.max()) + 2 for i in idx]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grown = ndimage.binary_dilation(changed[box], structure=np.ones((3, 3, 3), bool))
        ids = np.unique(self.table.labels[box][grown])
        return [int(i) for i in ids if i > 0]

    # ------------------------------------------------------------------ decisions

    def records(self) -> list[LesionRecord]:
        return list(self.table.records) if self.table is not None else []

    def decision(self, lesion_id: int) -> Decision:
        return self._by_id.get(int(lesion_id)) or Decision()

    def decide(self, lesion_id: int, status: str | None = None, comment: str | None = None) -> Decision:
        """Set the decision and/or comment of a lesion of the current table."""
        if self.table is None:
            raise ValueError("analyse the prediction before deciding on lesions")
        lesion_id = int(lesion_id)
        self.table.by_id(lesion_id)  # KeyError for an unknown lesion
        dec = self._by_id.get(lesion_id)
        if dec is None:
            dec = Decision()
            self._decisions.append(dec)
            self._by_id[lesion_id] = dec
        if status is not None:
            if status not in DECISIONS:
                raise ValueError(f"unknown decision {status!r}; choose one of {', '.join(DECISIONS)}")
            dec.status = status
        if comment is not None:
            dec.comment = str(comment)
        dec.voxels = np.flatnonzero(self.table.labels == lesion_id)
        rejected = [i for i, d in self._by_id.items() if d.status == "rejected"]
        self._rejected_vox = np.isin(self.table.labels, rejected) if rejected else np.zeros(self.soft.shape, bool)
        return dec

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in DECISIONS}
        for r in self.records():
            out[self.decision(r.id).status] += 1
        return out

    # ------------------------------------------------------------------ export

    def rows(self) -> list[dict]:
        """One JSON-ready dict per lesion: its statistics, decision, comment and final voxels."""
        out = []
        if self.table is None:
            return out
        final = self.final_mask()
        kept = np.bincount(self.table.labels[final], minlength=len(self.table) + 1)
        for r in self.records():
            d = r.to_dict()
            dec = self.decision(r.id)
            d["decision"] = dec.status
            d["comment"] = dec.comment
            d["final_voxels"] = int(kept[r.id]) if r.id < kept.size else 0
            out.append(d)
        return out

    def summary(self) -> dict:
        final = self.final_mask()
        vv = spacing_volume(self.spacing)
        return {
            "n_lesions": len(self.records()),
            "n_flagged": sum(1 for r in self.records() if r.flagged),
            "decisions": self.counts(),
            "final_voxels": int(final.sum()),
            "final_volume_mm3": float(final.sum()) * vv,
            "added_voxels": int((self.added & ~self.removed).sum()),
            "removed_voxels": int(self.removed.sum()),
        }

    def write_csv(self, path) -> Path:
        path = Path(path)
        header = LesionRecord.csv_header(3) + ["decision", "comment", "final_voxels"]
        with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            final_rows = self.rows()
            for rec, row in zip(self.records(), final_rows):
                w.writerow(rec.csv_row() + [row["decision"], row["comment"], row["final_voxels"]])
        return path

    def to_json(self, **extra) -> dict:
        return {
            "threshold": self.threshold,
            "spacing": list(self.spacing),
            "connectivity": self.connectivity,
            "n_samples": 0 if self.samples is None else len(self.samples),
            "rule": asdict(self.rule),
            "decisions_meaning": DECISIONS,
            **extra,
            "summary": self.summary(),
            "lesions": self.rows(),
        }

    def write_json(self, path, **extra) -> Path:
        return write_json(path, self.to_json(**extra))

    def export(self, folder, stem: str, *, like=None, affine=None, model: dict | None = None,
               scan: str | None = None) -> dict[str, Path]:
        """Write CSV, JSON, final soft and binary NIfTI into ``folder``; return the paths.

        ``like`` (a :class:`~napari_softseg.io.nifti.NiftiVolume` or a NIfTI path) or
        ``affine`` gives the scan's geometry; ``model`` (name, path, preset, threshold...)
        and ``scan`` (its name or path) are recorded in the JSON.
        """
        from napari_softseg.io.nifti import write_nifti

        if self.table is None:
            self.analyse()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {k: folder / f"{stem}{suffix}" for k, suffix in EXPORT_SUFFIXES.items()}
        write_nifti(paths["soft"], self.final_soft(), like=like, affine=affine, dtype=np.float32)
        write_nifti(paths["binary"], self.final_mask().astype(np.uint8), like=like, affine=affine, dtype=np.uint8)
        self.write_csv(paths["csv"])
        files = {k: p.name for k, p in paths.items()}
        self.write_json(paths["json"], model=model or {}, scan=scan, files=files)
        return paths
