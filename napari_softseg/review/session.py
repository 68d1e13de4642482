"""Review of a soft prediction's lesions: threshold, manual edits, decisions and export.

A :class:`Review` holds one prediction (soft map, optional uncertainty samples) and the
reviewer's work on it, without any GUI, so that everything the Segment dock does can be
scripted and tested:

* **Flags** are computed once, at the **model's** threshold
  (:mod:`napari_softseg.review.screening` with the model's
  :class:`~napari_softseg.review.flags.FlagModel`), and carried onto the lesions at the
  reviewer's threshold, so they do not move with the slider. Sub-threshold blobs likely to
  be missed lesions are listed as ``candidate`` rows.
* **Working mask** at threshold ``t`` (lesions are components of ``soft >= t``, the one
  binarisation rule :func:`napari_softseg.labels.masks.binarize`, shared with the lesion
  analysis, the metrics and the CLI), with the reviewer's painted edits kept as two voxel
  sets, *added* and *removed*, that survive a threshold change::

      final(t) = ((soft >= t) \\ rejected(t)  ∪  accepted candidates  ∪  added) \\ removed

  where ``rejected(t)`` is the union of the components (at ``t``) of the rejected lesions; a
  candidate is in the final mask only once accepted (or edited).
* **Decisions** (:data:`DECISIONS`: pending, accepted, rejected, edited) and comments, each
  remembered with the voxels the lesion had when it was decided. After a new analysis (new
  threshold, new flag rule) a decision moves to the new component that holds most of those
  voxels, so decisions are not lost when the components are renumbered.
* **Export** (:meth:`Review.export`): the lesion table as CSV and JSON (every lesion's
  statistics, flag score, decision and comment, the model's identity, the threshold and
  flag rule, and a summary of the final mask) and the final soft and binary masks as NIfTI
  on the scan's grid. The final soft map is the prediction with rejected lesions and removed
  voxels set to 0 and added voxels and accepted candidates set to 1 (the reviewer drew or
  confirmed them), so that ``final_soft >= t`` equals the final binary mask.
  **Final counts come from the final mask**: each of its voxels belongs to exactly one row
  (:meth:`Review.rows`): the kept lesion or accepted candidate it lies in, or, for painted
  voxels, the kept lesion they connect to (the nearest along the mask; ties to the highest
  id); painted parts that connect to none become ``"drawn"`` rows. So ``final_voxels``
  summed over the rows equals the exported mask, and a rejected lesion has 0.
* **Tissue models** (``target="tissue"``) have no lesion table: the summary holds the
  structure's volumes and uncertainty (:func:`napari_softseg.review.structure.structure_summary`).
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from napari_softseg.io.atomic import atomic_open
from napari_softseg.io.geometry import spacing_volume
from napari_softseg.io.jsondoc import write_json
from napari_softseg.labels.masks import binarize
from napari_softseg.review.flags import FlagModel
from napari_softseg.review.lesions import FlagRule, LesionRecord, LesionTable, analyse_lesions, region_records
from napari_softseg.review.screening import Screening, screen
from napari_softseg.review.structure import CSV_KEYS, structure_summary

__all__ = ["DECISIONS", "Decision", "Review", "EXPORT_SUFFIXES", "TARGETS"]

#: what a model segments: objects to review one by one, or one structure to measure
TARGETS = {"lesions": "objects to review one by one (lesions, tumours ...)",
           "tissue": "one tissue or structure, measured as a whole (grey matter, spinal cord ...)"}

#: decision -> meaning (shown as tooltips and written to the JSON export).
DECISIONS: dict[str, str] = {
    "pending": "not reviewed yet; kept in the final mask (a candidate: left out)",
    "accepted": "confirmed by the reviewer; kept in the final mask (a candidate: added to it)",
    "rejected": "a false positive; removed from the final mask",
    "edited": "kept, with its outline corrected by painting on the mask",
}
#: columns written after a record's own by :meth:`Review.write_csv`
EXTRA_COLUMNS = ("decision", "comment", "final_voxels", "final_volume_mm3")

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
        Initial binarisation threshold (the model's by default).
    samples : array (N, X, Y, Z), optional
        MC-dropout / test-time-augmentation soft maps, for the per-lesion uncertainty.
    rule : FlagRule, optional
        Which lesions are flagged; default: the flag model's fitted operating points.
    connectivity : int
        Lesion connectivity (6, 18 or 26).
    model_threshold : float, optional
        The model's own threshold, at which flags are computed (default: ``threshold``).
    flags : FlagModel, optional
        The model's flag model (:mod:`napari_softseg.review.profile`); without one, lesions
        have no flag score (only the rule's hand criteria flag) and no candidates.
    sampling : str
        "none", "tta", "mc" or "mc+tta": how ``samples`` were drawn (default "none" without
        samples, "mc" with).
    target : str
        "lesions" or "tissue" (:data:`TARGETS`).
    affine : 4x4 array, optional
        The scan's voxel-to-world affine: lesion centres are also given in world mm.
    """

    def __init__(self, soft, *, spacing: Sequence[float] = (1.0, 1.0, 1.0), threshold: float = 0.5,
                 samples=None, rule: FlagRule | None = None, connectivity: int = 18,
                 model_threshold: float | None = None, flags: FlagModel | None = None, sampling: str | None = None,
                 target: str = "lesions", affine=None) -> None:
        self.soft = np.asarray(soft, dtype=np.float32)
        if self.soft.ndim != 3:
            raise ValueError(f"the soft prediction must be 3-D, got shape {self.soft.shape}")
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
        self.spacing = tuple(float(s) for s in spacing)
        self.samples = samples
        self.sampling = sampling or ("none" if samples is None else "mc")
        self.flags = flags
        self.target = target
        self.affine = None if affine is None else np.asarray(affine, dtype=np.float64)
        self.rule = rule if rule is not None else (flags.rule(self.sampling) if flags is not None else FlagRule())
        self.connectivity = int(connectivity)
        self.threshold = float(threshold)
        self.model_threshold = float(threshold if model_threshold is None else model_threshold)
        self.added = np.zeros(self.soft.shape, bool)
        self.removed = np.zeros(self.soft.shape, bool)
        self.table: LesionTable | None = None
        self._screening: Screening | None = None
        self._decisions: list[Decision] = []  # remembered with their voxels
        self._by_id: dict[int, Decision] = {}  # current lesion id -> decision
        self._rejected_vox = np.zeros(self.soft.shape, bool)
        self._accepted_vox = np.zeros(self.soft.shape, bool)  # accepted candidates

    # ------------------------------------------------------------------ analysis

    @property
    def screening(self) -> Screening:
        """Flag scores and blobs at the model's threshold (computed once, on first use)."""
        if self._screening is None:
            self._screening = screen(self.soft, threshold=self.model_threshold, spacing=self.spacing,
                                     flags=self.flags, sampling=self.sampling, samples=self.samples,
                                     connectivity=self.connectivity)
        return self._screening

    def table_at(self, threshold: float | None = None, rule: FlagRule | None = None) -> LesionTable:
        """The lesion table at ``threshold`` judged by ``rule`` (defaults: the current ones),
        with flag scores and candidates; changes nothing (safe in a worker thread)."""
        t = self.threshold if threshold is None else float(threshold)
        rule = self.rule if rule is None else rule
        if self.target == "tissue":
            return LesionTable([], np.zeros(self.soft.shape, np.int32), t, self.spacing, rule, self._n_samples())
        table = analyse_lesions(self.soft, threshold=t, spacing=self.spacing, samples=self.samples, rule=rule,
                                connectivity=self.connectivity)
        return self._located(self.screening.apply(table, rule))

    def analyse(self, threshold: float | None = None, rule: FlagRule | None = None) -> LesionTable:
        """(Re)compute the lesion table at ``threshold`` with ``rule`` and re-attach decisions."""
        self.set_table(self.table_at(threshold, rule))
        return self.table

    def set_table(self, table: LesionTable) -> None:
        """Adopt a table computed elsewhere (e.g. by :meth:`table_at` in a worker thread) and
        re-attach decisions."""
        self.table = table
        self.threshold = float(table.threshold)
        self.rule = table.rule
        self._attach_decisions()

    def reflag(self, rule: FlagRule) -> LesionTable:
        """Judge the same lesions by another flag rule (no new lesion analysis)."""
        if self.table is None:
            return self.analyse(rule=rule)
        self.table = self._located(self.screening.apply(self.table, rule))
        self.rule = rule
        self._attach_decisions()
        return self.table

    def _located(self, table: LesionTable) -> LesionTable:
        """The table with world centres (mm) when the scan's affine is known."""
        if self.affine is None or not table.records:
            return table
        records = [replace(r, centroid_mm=self._world(r.centroid)) for r in table.records]
        return replace(table, records=records)

    def _world(self, voxel) -> tuple:
        xyz = self.affine[:3, :3] @ np.asarray(voxel, np.float64) + self.affine[:3, 3]
        return tuple(round(float(v), 3) for v in xyz)

    def _n_samples(self) -> int:
        return 0 if self.samples is None else len(self.samples)

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
        self._decided_voxels()

    def _decided_voxels(self) -> None:
        """The voxels of the rejected lesions and of the accepted (or edited) candidates."""
        labels = self.table.labels
        kinds = {r.id: r.kind for r in self.table.records}
        rejected = [i for i, d in self._by_id.items() if d.status == "rejected"]
        accepted = [i for i, d in self._by_id.items()
                    if kinds.get(i) == "candidate" and d.status in ("accepted", "edited")]
        self._rejected_vox = np.isin(labels, rejected) if rejected else np.zeros(labels.shape, bool)
        self._accepted_vox = np.isin(labels, accepted) if accepted else np.zeros(labels.shape, bool)

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
        mask |= self._accepted_vox
        mask |= self.added
        mask &= ~self.removed
        return mask

    def final_soft(self) -> np.ndarray:
        """The prediction with rejected and removed voxels set to 0 and added voxels and
        accepted candidates set to 1."""
        out = self.soft.copy()
        out[self._rejected_vox & ~self.added] = 0.0
        out[(self.added | self._accepted_vox) & ~self.removed] = 1.0
        out[self.removed] = 0.0
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
        kinds = {r.id: r.kind for r in self.table.records}
        return [int(i) for i in ids if kinds.get(int(i)) == "lesion"]  # painting near a candidate does not accept it

    # ------------------------------------------------------------------ decisions

    def records(self, kind: str | None = None) -> list[LesionRecord]:
        """The current table's records (of one ``kind`` when given: "lesion", "candidate")."""
        if self.table is None:
            return []
        return [r for r in self.table.records if kind is None or r.kind == kind]

    def decision(self, lesion_id: int) -> Decision:
        return self._by_id.get(int(lesion_id)) or Decision()

    def decide(self, lesion_id: int, status: str | None = None, comment: str | None = None) -> Decision:
        """Set the decision and/or comment of a lesion (or candidate) of the current table."""
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
        self._decided_voxels()
        return dec

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in DECISIONS}
        for r in self.records():
            out[self.decision(r.id).status] += 1
        return out

    # ------------------------------------------------------------------ export

    def final_owner(self) -> tuple[np.ndarray, list[LesionRecord]]:
        """Which row each voxel of the final mask belongs to (see the module docstring).

        Returns ``(owner, drawn)``: an int32 image that is 0 outside the final mask and a row
        id inside it (a lesion's or candidate's id, or a drawn part's), and the records of
        the drawn parts (kind "drawn", ids after the table's).
        """
        from napari_softseg.metrics.detection import connected_components

        final = self.final_mask()
        labels = self.table.labels if self.table is not None else np.zeros(final.shape, np.int32)
        kept = [r.id for r in self.records() if self._kept(r)]
        owner = np.where(final & np.isin(labels, kept), labels, 0).astype(np.int32)
        rest = final & (owner == 0)
        if rest.any():
            _grow_along(owner, rest, self.connectivity)
        rest = final & (owner == 0)
        drawn_labels, n_drawn = connected_components(rest, self.connectivity)
        first = int(labels.max()) + 1
        drawn = [replace(r, id=first + i, centroid_mm=self._world(r.centroid) if self.affine is not None else ())
                 for i, r in enumerate(region_records(self.soft, drawn_labels, n_drawn, self.spacing, kind="drawn"))]
        owner[rest] = drawn_labels[rest] + first - 1
        return owner, drawn

    def _kept(self, r: LesionRecord) -> bool:
        status = self.decision(r.id).status
        return status != "rejected" if r.kind == "lesion" else status in ("accepted", "edited")

    def final_rows(self) -> list[tuple[LesionRecord, dict]]:
        """Each lesion and candidate, then each drawn part, with its decision, comment and
        voxels / volume in the final mask (:data:`EXTRA_COLUMNS`)."""
        if self.table is None or self.target == "tissue":
            return []
        owner, drawn = self.final_owner()
        final_counts = np.bincount(owner.ravel(), minlength=int(owner.max()) + 1)
        vv = spacing_volume(self.spacing)
        out = []
        for r in self.records() + drawn:
            dec = self.decision(r.id) if r.kind != "drawn" else Decision("edited", "drawn by the reviewer")
            n = int(final_counts[r.id]) if r.id < final_counts.size else 0
            out.append((r, {"decision": dec.status, "comment": dec.comment, "final_voxels": n,
                            "final_volume_mm3": n * vv}))
        return out

    def rows(self) -> list[dict]:
        """:meth:`final_rows` as JSON-ready dicts (the JSON export's ``lesions``)."""
        return [{**r.to_dict(), **extra} for r, extra in self.final_rows()]

    def summary(self) -> dict:
        final = self.final_mask()
        vv = spacing_volume(self.spacing)
        out = {
            "target": self.target,
            "n_lesions": len(self.records("lesion")),
            "n_flagged": sum(1 for r in self.records("lesion") if r.flagged),
            "n_candidates": len(self.records("candidate")),
            "decisions": self.counts(),
            "final_voxels": int(final.sum()),
            "final_volume_mm3": float(final.sum()) * vv,
            "added_voxels": int((self.added & ~self.removed).sum()),
            "removed_voxels": int(self.removed.sum()),
        }
        if self.target == "tissue":
            out["structure"] = structure_summary(self.final_soft(), final, threshold=self.threshold,
                                                 spacing=self.spacing, samples=self.samples)
        return out

    def write_csv(self, path) -> Path:
        """The rows of :meth:`rows` (a tissue model: one row, the structure's summary)."""
        path = Path(path)
        with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            if self.target == "tissue":
                structure = self.summary()["structure"]
                w.writerow(CSV_KEYS)
                w.writerow(["" if structure.get(k) is None else structure.get(k) for k in CSV_KEYS])
                return path
            w.writerow(LesionRecord.csv_header(3) + list(EXTRA_COLUMNS))
            for record, extra in self.final_rows():
                w.writerow(record.csv_row() + [extra[k] for k in EXTRA_COLUMNS])
        return path

    def to_json(self, **extra) -> dict:
        return {
            "threshold": self.threshold,
            "model_threshold": self.model_threshold,
            "spacing": list(self.spacing),
            "connectivity": self.connectivity,
            "target": self.target,
            "n_samples": self._n_samples(),
            "sampling": self.sampling,
            "rule": asdict(self.rule),
            "flag_model": self.flags.label if self.flags is not None else None,
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


def _grow_along(owner: np.ndarray, rest: np.ndarray, connectivity: int) -> None:
    """Give the voxels of ``rest`` the id of the nearest owned voxel reachable through
    ``rest`` (breadth-first, one neighbourhood step at a time; ties to the highest id),
    in place; voxels that reach none stay 0."""
    from scipy import ndimage

    idx = np.nonzero(rest)
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in idx)
    structure = np.ones((3,) * owner.ndim, bool)
    if connectivity != 26:
        structure = ndimage.generate_binary_structure(owner.ndim, {6: 1, 18: 2}.get(connectivity, 2))
    sub, todo = owner[box], rest[box].copy()  # a view: ``owner`` is filled in place
    while todo.any():
        grown = ndimage.grey_dilation(sub, footprint=structure)
        new = todo & (grown > 0)
        if not new.any():
            break
        sub[new] = grown[new]
        todo &= ~new
