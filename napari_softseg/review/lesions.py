"""Lesion analysis for review: per-lesion statistics of a soft prediction and a flag rule.

A **lesion** is a connected component (18-connectivity by default) of the binarised map
``soft >= threshold`` (:func:`napari_softseg.labels.masks.binarize`).
For each lesion :func:`analyse_lesions` reports

* ``voxels``, ``centroid`` (mean voxel index), ``bbox_min``/``bbox_max`` (inclusive voxel
  indices), ``hard_volume_mm3 = voxels · voxel volume``;
* ``soft_volume_mm3``: the partial-volume estimate ``sum(p) · voxel volume`` over the lesion
  **and its rim**: the sub-threshold voxels (``soft_floor <= p < threshold``) that touch
  the lesion (its 3x3x3 neighbourhood; a rim voxel touching several lesions goes to the
  nearest, in mm). Lesion boundaries hold fractions of lesion, which this sum keeps and the
  hard volume drops; the partial volume of a boundary lies in the voxels the boundary
  crosses, so the rim is one voxel thick. (It used to be every sub-threshold voxel connected
  to the lesion, given to the nearest lesion at any distance: on a tissue map a one-voxel
  part then collected the probability of a whole stretch of sub-threshold tissue, e.g.
  5.7 mm³ for a 1 mm³ part of brain-gm's grey matter.) A small part of a plateau cut by
  the threshold can still have soft > hard volume: that is its partial volume;
* ``mean/min/max_probability`` and ``mean_entropy`` (binary entropy, bits) over the lesion;
* ``sharpness``: mean probability over the lesion's inner boundary (its voxels with a
  6-neighbour outside the mask) minus the mean over its outer boundary (the outside
  6-neighbours): near 1 for a crisp lesion, near 0 when the threshold cuts a smooth slope;
* ``cores``: the number of connected parts of the lesion where p reaches half its peak:
  two (or more) cores are what two touching lesions merged into one component look like;
* ``elongation``: ``sqrt(λ1 / λ2)`` of the two largest eigenvalues of the covariance of the
  lesion's voxel positions in mm (each voxel counted as a uniform box, adding ``s²/12`` per
  axis): 1 for a ball; two touching lesions in one component are elongated. A lesion smaller
  than two balls (discs in 2-D) of :data:`MERGE_MIN_DIAMETER_MM` (the smallest lesions MS
  guidelines count) cannot be two merged lesions, and its shape is mostly its voxels' (one
  1x1x3 mm voxel alone has elongation 3): its elongation is 1;
* with samples (MC dropout or test-time augmentation, ``N x shape`` soft maps), the
  structure-wise uncertainty of ivadomed's ``uncertainty.py`` (Roy et al. 2019; Nair et al.
  2020): in each sample the lesion's structure is the union of the sample's components that
  overlap it; ``sample_iou = |∩ structures| / |∪ structures|``, ``volume_cv`` is the
  coefficient of variation (std / mean, population) of the structure volumes and
  ``sample_hits`` the fraction of samples that have a structure at all. A lesion that no
  sample reproduces has IoU 0 and an undefined (NaN) CV.

``flag_score`` (the learned probability that the lesion needs a correction,
:mod:`napari_softseg.review.flags`) and ``kind`` ("lesion", or "candidate" for a
sub-threshold blob listed as a possible missed lesion) are filled in by
:mod:`napari_softseg.review.screening`; ``centroid_mm`` (world coordinates) by the review when
the scan's affine is known. A :class:`FlagRule` turns these numbers into ``flagged`` and a
readable ``reason``. NaN values (no samples, no score) never trigger a criterion.
``to_dict`` gives JSON-ready values (NaN → None), :meth:`LesionTable.csv_rows` one column
per axis for the tuples.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from napari_softseg.io.atomic import atomic_open, write_text_atomic
from napari_softseg.io.geometry import spacing_volume
from napari_softseg.labels.masks import binarize
from napari_softseg.metrics.calibration import entropy
from napari_softseg.metrics.detection import connected_components

_AXES = "ijklmn"
_WORLD = "xyz"
#: two lesions this wide (mm) merged into one component are the smallest merge the elongation
#: feature can see; below twice their volume a lesion's elongation is 1
MERGE_MIN_DIAMETER_MM = 3.0


@dataclass(frozen=True)
class FlagRule:
    """When a lesion deserves a second look (any criterion suffices). ``None`` disables one.

    The learned flag score is the main criterion; its operating point is fitted with the
    score (:meth:`napari_softseg.review.flags.FlagModel.rule`), the values here are only the
    defaults of a rule built by hand. The other criteria are simple hand rules, off by
    default (each alone flagged most lesions of the shipped lesion model).

    Attributes
    ----------
    flag_score : float or None
        Flag lesions whose flag score (probability of needing a correction) is at least this.
    candidate_score : float or None
        List sub-threshold blobs whose possible-lesion score is at least this as
        "candidate" rows (flagged); None lists none.
    min_mean_probability : float or None
        Flag when the mean probability over the lesion is below this.
    max_mean_entropy : float or None
        Flag when the mean voxel entropy (bits, at most 1 at p = 0.5) exceeds this.
    min_sample_iou : float or None
        Flag when the IoU of the lesion's structures across samples is below this.
    max_volume_cv : float or None
        Flag when the coefficient of variation of the structure volume across samples
        exceeds this.
    min_volume_mm3 : float or None
        Flag lesions smaller than this hard volume.
    """

    flag_score: float | None = 0.5
    candidate_score: float | None = 0.5
    min_mean_probability: float | None = None
    max_mean_entropy: float | None = None
    min_sample_iou: float | None = None
    max_volume_cv: float | None = None
    min_volume_mm3: float | None = None

    def reasons(self, r: "LesionRecord") -> list[str]:
        if r.kind == "candidate":
            if self.candidate_score is not None and r.flag_score >= self.candidate_score:
                return [_scored("possible missed lesion, score", r)]
            return []
        out = []
        if self.flag_score is not None and r.flag_score >= self.flag_score:
            out.append(_scored("flag score", r))
        if self.min_mean_probability is not None and r.mean_probability < self.min_mean_probability:
            out.append(f"mean probability {r.mean_probability:.2f} < {self.min_mean_probability:.2f}")
        if self.max_mean_entropy is not None and r.mean_entropy > self.max_mean_entropy:
            out.append(f"mean entropy {r.mean_entropy:.2f} > {self.max_mean_entropy:.2f}")
        if self.min_sample_iou is not None and r.sample_iou < self.min_sample_iou:
            out.append(f"IoU across {r.n_samples} samples {r.sample_iou:.2f} < {self.min_sample_iou:.2f}")
        if self.max_volume_cv is not None and r.volume_cv > self.max_volume_cv:
            out.append(f"volume CV across {r.n_samples} samples {r.volume_cv:.2f} > {self.max_volume_cv:.2f}")
        if self.min_volume_mm3 is not None and r.hard_volume_mm3 < self.min_volume_mm3:
            out.append(f"volume {r.hard_volume_mm3:.1f} mm³ < {self.min_volume_mm3:g} mm³")
        return out  # comparisons with NaN are False: missing values never flag

    def apply(self, r: "LesionRecord") -> "LesionRecord":
        reasons = self.reasons(r)
        return replace(r, flagged=bool(reasons), reason="; ".join(reasons))


def _scored(what: str, r: "LesionRecord") -> str:
    return f"{what} {r.flag_score:.2f}" + (f": {r.score_reason}" if r.score_reason else "")


#: values of :attr:`LesionRecord.kind`
KINDS = {"lesion": "a component of the mask at the threshold",
         "candidate": "a sub-threshold blob listed as a possible missed lesion (not in the mask unless accepted)",
         "drawn": "a part of the final mask drawn by the reviewer away from every lesion (export only)"}


@dataclass
class LesionRecord:
    """Statistics of one lesion; ``id`` is its value in :attr:`LesionTable.labels`."""

    id: int
    voxels: int
    centroid: tuple
    bbox_min: tuple
    bbox_max: tuple
    hard_volume_mm3: float
    soft_volume_mm3: float
    mean_probability: float
    min_probability: float
    max_probability: float
    mean_entropy: float
    kind: str = "lesion"
    centroid_mm: tuple = ()
    sharpness: float = math.nan
    cores: int = 0
    elongation: float = math.nan
    sample_iou: float = math.nan
    volume_cv: float = math.nan
    sample_hits: float = math.nan
    n_samples: int = 0
    flag_score: float = math.nan
    flagged: bool = False
    reason: str = ""
    score_reason: str = ""

    def to_dict(self) -> dict:
        """JSON-ready: tuples as lists, NaN as None."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
            elif isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        return d

    def csv_row(self) -> list:
        row = []
        for f in _csv_fields():
            v = getattr(self, f.name)
            if f.name == "centroid_mm" and not v:
                v = ("",) * len(self.centroid)  # no affine: blank world coordinates
            if isinstance(v, tuple):
                row.extend(v)
            elif isinstance(v, float) and not math.isfinite(v):
                row.append("")
            else:
                row.append(v)
        return row

    @staticmethod
    def csv_header(ndim: int = 3) -> list[str]:
        names = []
        for f in _csv_fields():
            if f.name in ("centroid", "bbox_min", "bbox_max"):
                names.extend(f"{f.name}_{a}" for a in _AXES[:ndim])
            elif f.name == "centroid_mm":
                names.extend(f"centroid_{a}_mm" for a in _WORLD[:ndim])
            else:
                names.append(f.name)
        return names


def _csv_fields():
    """The record's fields in CSV column order: id and kind first, then as declared."""
    fs = {f.name: f for f in fields(LesionRecord)}
    first = [fs["id"], fs["kind"], fs["voxels"], fs["centroid"], fs["centroid_mm"]]
    return first + [f for f in fs.values() if f not in first]


@dataclass
class LesionTable:
    """The lesions of one prediction: a sequence of :class:`LesionRecord` plus the label image."""

    records: list[LesionRecord]
    labels: np.ndarray
    threshold: float = 0.5
    spacing: tuple = (1.0, 1.0, 1.0)
    rule: FlagRule = field(default_factory=FlagRule)
    n_samples: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[LesionRecord]:
        return iter(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def flagged(self) -> list[LesionRecord]:
        return [r for r in self.records if r.flagged]

    def by_id(self, lesion_id: int) -> LesionRecord:
        for r in self.records:
            if r.id == lesion_id:
                return r
        raise KeyError(lesion_id)

    def sorted_by(self, key: str, *, reverse: bool = False) -> list[LesionRecord]:
        """Records sorted by a field name; missing (NaN) values go last either way."""
        def missing(r) -> bool:
            v = getattr(r, key)
            return isinstance(v, float) and not math.isfinite(v)

        present = [r for r in self.records if not missing(r)]
        return sorted(present, key=lambda r: getattr(r, key), reverse=reverse) + [r for r in self.records if missing(r)]

    def reflag(self, rule: FlagRule) -> "LesionTable":
        """The same statistics judged by another rule."""
        return replace(self, records=[rule.apply(r) for r in self.records], rule=rule)

    def to_dicts(self) -> list[dict]:
        return [r.to_dict() for r in self.records]

    def csv_header(self) -> list[str]:
        return LesionRecord.csv_header(self.labels.ndim)

    def csv_rows(self) -> list[list]:
        return [r.csv_row() for r in self.records]

    def write_csv(self, path) -> Path:
        path = Path(path)
        with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(self.csv_header())
            w.writerows(self.csv_rows())
        return path

    def write_json(self, path, **extra) -> Path:
        doc = {"threshold": self.threshold, "spacing": list(self.spacing), "n_samples": self.n_samples,
               "rule": asdict(self.rule), **extra, "lesions": self.to_dicts()}
        return write_text_atomic(path, json.dumps(doc, indent=2, ensure_ascii=False))


def analyse_lesions(
    soft,
    *,
    threshold: float = 0.5,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    samples=None,
    rule: FlagRule = FlagRule(),
    connectivity: int = 18,
    soft_floor: float = 0.05,
) -> LesionTable:
    """Find the lesions of a soft prediction and describe each (see module docstring).

    Parameters
    ----------
    soft : array
        Soft prediction in [0, 1].
    threshold : float
        Lesions are components of ``soft >= threshold``.
    spacing : floats
        Voxel size in mm (volumes, nearest-lesion distances).
    samples : array ``(N, *soft.shape)`` or sequence of N arrays, optional
        MC-dropout / TTA soft maps, thresholded like ``soft``.
    rule : FlagRule
        Decides ``flagged`` and ``reason``.
    connectivity : int
        6, 18 or 26 in 3-D (4 or 8 in 2-D).
    soft_floor : float
        Rim voxels need ``p >= soft_floor`` to count towards the soft volume.
    """
    p = np.asarray(soft)
    p = p.astype(np.float32) if p.dtype.kind != "f" else p
    spacing = tuple(float(s) for s in spacing)[: p.ndim]
    if len(spacing) != p.ndim:
        raise ValueError(f"spacing needs {p.ndim} values, got {len(spacing)}.")
    hard = binarize(p, threshold)
    labels, n = connected_components(hard, connectivity)
    n_samples = _n_samples(samples)
    if n == 0:
        return LesionTable([], labels, float(threshold), spacing, rule, n_samples)
    stats = _lesion_statistics(p, labels, n)
    stats["rim"] = _rim_mass(p, hard, labels, n, threshold, soft_floor, spacing)
    stats["sharpness"] = _sharpness(p, hard, labels, n)
    stats["cores"] = _cores(p, labels, n, stats["p_max"], connectivity)
    stats["elongation"] = _elongation(labels, n, spacing)
    stats["iou"], stats["cv"], stats["hits"] = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    if n_samples:
        stats["iou"], stats["cv"], stats["hits"] = _sample_uncertainty(samples, labels, n, stats["boxes"], threshold,
                                                                       connectivity, p.shape)
    vv = spacing_volume(spacing)
    records = [rule.apply(_record(stats, i, vv, n_samples)) for i in range(n)]
    return LesionTable(records, labels, float(threshold), spacing, rule, n_samples)


def region_records(soft, labels: np.ndarray, n: int, spacing: Sequence[float], *, kind: str = "candidate",
                   n_samples: int = 0) -> list[LesionRecord]:
    """Records of the regions ``1..n`` of a label image (every id present), without rim,
    boundary or sample statistics: the soft volume is the regions' own ``sum(p)``."""
    p = np.asarray(soft)
    if n == 0:
        return []
    stats = _lesion_statistics(p, labels, n)
    vv = spacing_volume(tuple(float(s) for s in spacing)[: p.ndim])
    return [replace(_record(stats, i, vv, n_samples), kind=kind) for i in range(n)]


def _lesion_statistics(p: np.ndarray, labels: np.ndarray, n: int) -> dict:
    """Per-lesion sums over the lesion voxels only (a small fraction of the volume): voxel
    counts, probability sum, mean entropy, min/max probability, centroids and boxes."""
    from scipy import ndimage

    flat = np.flatnonzero(labels)
    lab = labels.reshape(-1)[flat]
    pv = p.reshape(-1)[flat]
    voxels = np.bincount(lab, minlength=n + 1)[1:]
    order = np.argsort(lab, kind="stable")
    starts = np.concatenate([[0], np.cumsum(voxels)[:-1]])
    coords = np.unravel_index(flat, p.shape)
    return {
        "voxels": voxels,
        "core_sum": np.bincount(lab, weights=pv, minlength=n + 1)[1:],
        "h_mean": np.bincount(lab, weights=entropy(pv), minlength=n + 1)[1:] / voxels,
        "p_min": np.minimum.reduceat(pv[order], starts),
        "p_max": np.maximum.reduceat(pv[order], starts),
        "centroids": np.stack([np.bincount(lab, weights=c, minlength=n + 1)[1:] / voxels for c in coords], axis=1),
        "boxes": ndimage.find_objects(labels),
    }


def _record(stats: dict, i: int, vv: float, n_samples: int) -> LesionRecord:
    """The :class:`LesionRecord` of lesion ``i + 1`` from :func:`_lesion_statistics` and the rim
    and sample measures (not yet flagged)."""
    box = stats["boxes"][i]
    voxels = stats["voxels"][i]
    return LesionRecord(
        id=i + 1,
        voxels=int(voxels),
        centroid=tuple(round(float(c), 3) for c in stats["centroids"][i]),
        bbox_min=tuple(int(s.start) for s in box),
        bbox_max=tuple(int(s.stop) - 1 for s in box),
        hard_volume_mm3=float(voxels) * vv,
        soft_volume_mm3=float(stats["core_sum"][i] + stats.get("rim", np.zeros(i + 1))[i]) * vv,
        mean_probability=float(stats["core_sum"][i] / voxels),
        min_probability=float(stats["p_min"][i]),
        max_probability=float(stats["p_max"][i]),
        mean_entropy=float(stats["h_mean"][i]),
        sharpness=float(stats["sharpness"][i]) if "sharpness" in stats else math.nan,
        cores=int(stats["cores"][i]) if "cores" in stats else 0,
        elongation=float(stats["elongation"][i]) if "elongation" in stats else math.nan,
        sample_iou=float(stats["iou"][i]) if "iou" in stats else math.nan,
        volume_cv=float(stats["cv"][i]) if "cv" in stats else math.nan,
        sample_hits=float(stats["hits"][i]) if "hits" in stats else math.nan,
        n_samples=n_samples,
    )


def _n_samples(samples) -> int:
    return 0 if samples is None else len(samples)


def _rim_mass(p, hard, labels, n, threshold, soft_floor, spacing) -> np.ndarray:
    """Probability mass of each lesion's rim: the sub-threshold voxels (``p >= soft_floor``)
    in the 3x3x3 neighbourhood of the lesion, a voxel touching several lesions going to the
    nearest (in mm; ties to the first neighbour in a fixed order)."""
    from itertools import product

    from scipy import ndimage

    rim_mass = np.zeros(n + 1)
    if soft_floor >= threshold:
        return rim_mass[1:]
    band = ndimage.binary_dilation(hard, structure=np.ones((3,) * p.ndim, bool)) & ~hard
    band &= binarize(p, soft_floor)
    coords = np.nonzero(band)
    if coords[0].size == 0:
        return rim_mass[1:]
    owner = np.zeros(coords[0].size, np.int64)
    steps = [o for o in product((-1, 0, 1), repeat=p.ndim) if any(o)]
    steps.sort(key=lambda o: sum((a * s) ** 2 for a, s in zip(o, spacing)))
    for step in steps:  # nearest neighbours first
        todo = np.flatnonzero(owner == 0)
        if todo.size == 0:
            break
        idx = [c[todo] + o for c, o in zip(coords, step)]
        inside = np.logical_and.reduce([(i >= 0) & (i < size) for i, size in zip(idx, p.shape)])
        found = np.zeros(todo.size, np.int64)
        found[inside] = labels[tuple(i[inside] for i in idx)]
        owner[todo] = found
    rim_mass += np.bincount(owner, weights=p[coords].astype(np.float64), minlength=n + 1)
    return rim_mass[1:]


def _sharpness(p, hard, labels, n) -> np.ndarray:
    """Mean p over each lesion's inner boundary minus the mean over its outer boundary
    (6-neighbourhood; an outside voxel touching several lesions counts for the highest id;
    the volume's border is not a boundary, so a lesion without any boundary gets 0)."""
    from scipy import ndimage

    cross = ndimage.generate_binary_structure(p.ndim, 1)
    inner = hard & ~ndimage.binary_erosion(hard, structure=cross, border_value=1)
    outer_lab = np.where(hard, 0, ndimage.grey_dilation(labels, footprint=cross))
    outer = outer_lab > 0

    def mean(lab, values) -> np.ndarray:
        count = np.bincount(lab, minlength=n + 1)[1:]
        total = np.bincount(lab, weights=values.astype(np.float64), minlength=n + 1)[1:]
        return total / np.maximum(count, 1)

    return mean(labels[inner], p[inner]) - mean(outer_lab[outer], p[outer])


def _cores(p, labels, n, p_max, connectivity) -> np.ndarray:
    """Number of connected parts of each lesion where ``p >= p_max(lesion) / 2``."""
    inside = labels > 0
    level = np.zeros(n + 1, np.float32)
    level[1:] = np.asarray(p_max, np.float32) / 2
    core = np.zeros(p.shape, bool)
    core[inside] = p[inside] >= level[labels[inside]]
    core_lab, m = connected_components(core, connectivity)
    if m == 0:
        return np.zeros(n, np.int64)
    owner = np.zeros(m + 1, np.int64)
    owner[core_lab[core]] = labels[core]  # a core lies inside one lesion
    return np.bincount(owner[1:], minlength=n + 1)[1:]


def _ball_volume(radius: float, ndim: int) -> float:
    """Volume (mm³) of a ball, or area (mm²) of a disc in 2-D."""
    return 4.0 / 3.0 * math.pi * radius**3 if ndim == 3 else math.pi * radius**2


def _elongation(labels, n, spacing) -> np.ndarray:
    """``sqrt(λ1 / λ2)`` of each lesion's voxel-position covariance (mm², voxels as boxes);
    1 for a lesion smaller than two balls of :data:`MERGE_MIN_DIAMETER_MM`."""
    idx = np.nonzero(labels)
    lab = labels[idx]
    count = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)
    small = count * spacing_volume(spacing) < 2.0 * _ball_volume(MERGE_MIN_DIAMETER_MM / 2.0, len(spacing))
    pos = [i * s for i, s in zip(idx, spacing)]
    mean = [np.bincount(lab, weights=x, minlength=n + 1)[1:] / count for x in pos]
    cov = np.zeros((n, len(pos), len(pos)))
    for a in range(len(pos)):
        for b in range(a, len(pos)):
            m = np.bincount(lab, weights=pos[a] * pos[b], minlength=n + 1)[1:] / count - mean[a] * mean[b]
            cov[:, a, b] = cov[:, b, a] = m
        cov[:, a, a] += spacing[a] ** 2 / 12.0
    ev = np.linalg.eigvalsh(cov)  # ascending
    return np.where(small, 1.0, np.sqrt(ev[:, -1] / ev[:, -2]))


def _sample_uncertainty(samples, labels, n, boxes, threshold, connectivity, shape):
    """IoU, volume CV and presence (fraction of samples) of each lesion's structures across samples.

    Pass 1 labels each sample once, links its components to the lesions they overlap and
    keeps only the label crop that holds those components; pass 2 counts, per lesion and
    over the union of its structures' boxes, in how many samples each voxel belongs to the
    lesion's structure.
    """
    from scipy import ndimage

    n_samples = len(samples)
    lo = np.array([[s.start for s in b] for b in boxes])
    hi = np.array([[s.stop for s in b] for b in boxes])
    volumes = np.zeros((n, n_samples))
    kept = []  # per sample: (lesion ids, component ids, label crop, crop origin)
    lesion_mask = labels > 0
    for s in range(n_samples):
        sample = np.asarray(samples[s])
        if sample.shape != tuple(shape):
            raise ValueError(f"sample {s} has shape {sample.shape}, the prediction {tuple(shape)}.")
        s_lab, m = connected_components(binarize(sample, threshold), connectivity)
        both = lesion_mask & (s_lab > 0)
        pairs = np.unique(labels[both].astype(np.int64) * (m + 1) + s_lab[both])
        les, comp = pairs // (m + 1), pairs % (m + 1)
        sizes = np.bincount(s_lab.ravel(), minlength=m + 1)
        np.add.at(volumes[:, s], les - 1, sizes[comp])
        if les.size == 0:
            kept.append((les, comp, None, None))
            continue
        objs = ndimage.find_objects(s_lab)
        c_lo = np.array([[b.start for b in objs[c - 1]] for c in comp])
        c_hi = np.array([[b.stop for b in objs[c - 1]] for c in comp])
        np.minimum.at(lo, les - 1, c_lo)
        np.maximum.at(hi, les - 1, c_hi)
        o_lo, o_hi = c_lo.min(axis=0), c_hi.max(axis=0)
        crop = s_lab[tuple(slice(a, b) for a, b in zip(o_lo, o_hi))].copy()
        kept.append((les, comp, crop, o_lo))
    counts = [np.zeros(tuple(hi[i] - lo[i]), dtype=np.uint16) for i in range(n)]
    for les, comp, crop, origin in kept:
        for l_id in np.unique(les):
            i = l_id - 1
            a, b = np.maximum(lo[i], origin), np.minimum(hi[i], origin + crop.shape)
            if np.any(b <= a):
                continue
            sub = crop[tuple(slice(x - o, y - o) for x, y, o in zip(a, b, origin))]
            counts[i][tuple(slice(x - o, y - o) for x, y, o in zip(a, b, lo[i]))] += np.isin(sub, comp[les == l_id])
    iou = np.zeros(n)
    for i in range(n):
        union = np.count_nonzero(counts[i])
        iou[i] = np.count_nonzero(counts[i] == n_samples) / union if union else 0.0
    mean = volumes.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = np.where(mean > 0, volumes.std(axis=1) / mean, np.nan)
    return iou, cv, (volumes > 0).mean(axis=1)
