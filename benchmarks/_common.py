"""Shared helpers of the accuracy benchmarks: data, train-and-predict, statistics, writers.

Everything here is plain numpy / torch / matplotlib (Agg) and uses the package's public
engine: :class:`napari_softseg.engine.training.train.TrainConfig`, :func:`napari_softseg.engine.training.train.run_training`,
:class:`napari_softseg.engine.training.data.TrainingData`, :func:`napari_softseg.engine.predict.load_model` and
:func:`napari_softseg.engine.predict.predict_volume`.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
THREADS = 2  # the budget machine has 2 cores


def set_threads(n: int = THREADS) -> None:
    """Pin torch to ``n`` CPU threads (the benchmarks' budget is stated for 2 cores)."""
    import torch

    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- data


def block_mean(a: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Average ``a`` over non-overlapping blocks (``factors`` per axis; a trailing remainder
    is dropped). For a tissue-fraction map this is the exact fraction on the coarser grid."""
    f = [int(x) for x in factors]
    a = np.asarray(a, dtype=np.float32)
    cut = a[tuple(slice(0, (n // k) * k) for n, k in zip(a.shape, f))]
    shape = []
    for n, k in zip(cut.shape, f):
        shape += [n // k, k]
    return cut.reshape(shape).mean(axis=tuple(range(1, 2 * len(f), 2)))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean mask."""
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    return lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)


@dataclass
class Volume:
    """One scan prepared for a benchmark: image, (soft) truth, evaluation mask, voxel size."""

    name: str
    image: np.ndarray  # float32 (X, Y, Z)
    truth: np.ndarray  # float32 in [0, 1]
    mask: np.ndarray  # bool: voxels where soft metrics are computed
    spacing: tuple
    slice_axis: int = 2
    note: str = ""


def brain_gm(factor: int = 2) -> Volume:
    """Brain grey matter: the shipped T1 (``sample_data/brain_t1/bet``) with its FSL FAST
    grey-matter partial-volume map (``pve_1``) as soft truth.

    The two artificial spheres outside the left hemisphere are removed (the brain is the
    largest connected component of ``bet > 0``). Image and truth are averaged over
    ``factor``³ blocks (a ``factor`` mm isotropic acquisition; the truth stays an exact
    tissue fraction), and the axial slices holding brain are kept.
    """
    from napari_softseg.io.nifti import read_nifti
    from napari_softseg.io.samples import sample_path

    bet = read_nifti(sample_path("brain_t1", "bet.nii.gz"))
    gm = read_nifti(sample_path("brain_t1", "pve_1.nii.gz")).data.astype(np.float32)
    brain = largest_component(bet.data > 0)
    img = np.where(brain, bet.data.astype(np.float32), 0.0)
    f = (factor,) * 3
    img, truth, frac = block_mean(img, f), np.clip(block_mean(gm * brain, f), 0, 1), block_mean(brain, f)
    zs = np.nonzero(frac.sum(axis=(0, 1)) > 0)[0]
    z = slice(int(zs[0]), int(zs[-1]) + 1)
    spacing = tuple(float(s) * factor for s in bet.spacing)
    return Volume("brain GM", img[:, :, z], truth[:, :, z], frac[:, :, z] > 0, spacing, 2,
                  f"sample_data/brain_t1 bet + FAST pve_1, {factor}x{factor}x{factor} block mean "
                  f"({spacing[0]:g} mm isotropic), axial slices with brain, spheres removed")


def sct_gm(size: int = 48) -> Volume:
    """Spinal-cord grey matter: the shipped T2* scan (``sample_data/sct_t2s``) and its
    expert binary mask, at native resolution, cropped in-plane to ``size`` x ``size``
    around the cord (centred on the mask's centre of mass)."""
    from scipy import ndimage

    from napari_softseg.io.nifti import read_nifti
    from napari_softseg.io.samples import sample_path

    img = read_nifti(sample_path("sct_t2s", "t2s_uncropped.nii.gz"))
    gm = read_nifti(sample_path("sct_t2s", "t2s_uncropped_gmseg_manual.nii.gz")).data > 0
    com = np.round(ndimage.center_of_mass(gm)).astype(int)
    box = tuple(slice(int(np.clip(c - size // 2, 0, n - size)), int(np.clip(c - size // 2, 0, n - size)) + size)
                for c, n in zip(com[:2], gm.shape[:2]))
    box = box + (slice(None),)
    image = img.data[box].astype(np.float32)
    return Volume("spinal-cord GM", image, gm[box].astype(np.float32), np.ones(image.shape, bool),
                  tuple(float(s) for s in img.spacing), 2,
                  f"sample_data/sct_t2s t2s_uncropped + gmseg_manual (binary), native "
                  f"{img.spacing[0]:g}x{img.spacing[1]:g}x{img.spacing[2]:g} mm, {size}x{size} crop around the cord")


@functools.lru_cache(maxsize=4)
def phantom(seed: int | None = None):
    """The lesion phantom (:func:`napari_softseg.io.phantom.build_phantom`), cached per process."""
    from napari_softseg.io.phantom import SEED, build_phantom

    return build_phantom(SEED if seed is None else seed)


def phantom_box(*truths: np.ndarray, margin: int = 8, multiple: int = 8) -> tuple[slice, slice]:
    """The in-plane box holding every lesion of the given phantom truth maps, widened by
    ``margin`` voxels and to sides that are multiples of ``multiple`` (the network's)."""
    xy = np.argwhere(np.any([np.any(t > 0, axis=2) for t in truths], axis=0))
    shape = truths[0].shape[:2]
    lo, hi = xy.min(axis=0) - margin, xy.max(axis=0) + 1 + margin
    out = []
    for a, b, n in zip(lo, hi, shape):
        size = min(-(-(b - a) // multiple) * multiple, n // multiple * multiple)
        a = int(np.clip(a - (size - (b - a)) // 2, 0, n - size))
        out.append(slice(a, a + size))
    return tuple(out)


def slab_folds(n_slices: int, n_folds: int, gap: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_folds`` contiguous test slabs covering the slices; each fold's training slices
    exclude the slab and ``gap`` slices on either side (against leakage between neighbours)."""
    slabs = np.array_split(np.arange(n_slices), n_folds)
    folds = []
    for s in slabs:
        lo, hi = int(s[0]) - gap, int(s[-1]) + gap
        train = np.array([i for i in range(n_slices) if i < lo or i > hi], dtype=int)
        folds.append((train, s))
    return folds


# ----------------------------------------------------------------------------- training


@dataclass
class Budget:
    """The same training budget for every candidate of a comparison."""

    epochs: int
    batch_size: int = 8
    crop_size: tuple | None = None
    depth: int = 3
    base_features: int = 16
    lr: float = 1e-3
    val_fraction: float = 0.0
    augment: bool = True
    foreground_weight: float = 10.0  # Adaptive Wing weighted loss map (0: unweighted)

    def describe(self) -> str:
        crop = "x".join(map(str, self.crop_size)) if self.crop_size else "whole slice"
        val = f"{self.val_fraction:.0%} validation slab" if self.val_fraction else "no validation set (fixed budget)"
        return (f"{self.epochs} epochs, batch {self.batch_size}, crop {crop}, U-Net depth {self.depth} / "
                f"{self.base_features} features, Adam lr {self.lr:g} cosine-annealed, {val}, "
                f"augmentation {'on' if self.augment else 'off'}, Adaptive Wing loss map W = {self.foreground_weight:g} "
                f"(Adaptive Wing candidates), {THREADS} CPU threads")


@dataclass
class Trained:
    """A train-and-predict result."""

    soft: np.ndarray
    threshold: float
    seconds_train: float
    seconds_predict: float
    summary: dict = field(repr=False, default_factory=dict)


def train_predict(image: np.ndarray, labels, *, preset: str, seed: int, budget: Budget, spacing,
                  predict_on: np.ndarray, slice_axis: int = 2, label_source: str = "label") -> Trained:
    """Train ``preset`` on ``image`` with ``labels`` (one map, or a list of rater maps with a
    fusion/random ``label_source``), then predict the soft map of ``predict_on``.

    The checkpoints go to a temporary folder that is removed afterwards.
    """
    from napari_softseg.engine.training.data import TrainingData
    from napari_softseg.engine.predict import load_model, predict_volume
    from napari_softseg.engine.training.train import TrainConfig, run_training

    set_threads()
    data = TrainingData.from_arrays([image], [labels], spacings=[spacing], label_source=label_source)
    cfg = TrainConfig(preset=preset, epochs=budget.epochs, batch_size=budget.batch_size, lr=budget.lr,
                      crop_size=budget.crop_size, depth=budget.depth, base_features=budget.base_features,
                      val_fraction=budget.val_fraction, patience=10**6, seed=seed, device="cpu",
                      augment=budget.augment, slice_axis=slice_axis, num_threads=THREADS,
                      foreground_weight=budget.foreground_weight)
    folder = Path(tempfile.mkdtemp(prefix="softseg-bench-"))
    try:
        t0 = time.perf_counter()
        done = run_training(cfg, data, checkpoint_path=folder / "model.pt")
        t1 = time.perf_counter()
        model = load_model(done.checkpoint)
        soft = predict_volume(model, predict_on, slice_axis=slice_axis, device="cpu")
        t2 = time.perf_counter()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    summary = {k: v for k, v in (done.summary or {}).items() if k not in ("history", "config", "distributed")}
    return Trained(np.asarray(soft, np.float32), float(done.threshold), t1 - t0, t2 - t1, summary)


def softness(pred: np.ndarray, mask=None, lo: float = 0.05, hi: float = 0.95) -> float:
    """Fraction (in %) of predicted voxels strictly between ``lo`` and ``hi``.

    "Predicted voxels" are those with ``p > lo`` (inside ``mask``): the share of the
    prediction that is soft rather than saturated at 1.
    """
    p = np.asarray(pred)
    if mask is not None:
        p = p[np.asarray(mask, bool)]
    n = np.count_nonzero(p > lo)
    return 100.0 * np.count_nonzero((p > lo) & (p < hi)) / n if n else float("nan")


# ----------------------------------------------------------------------------- statistics


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def wilcoxon_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples (NaN when undefined: fewer
    than two pairs, or all differences zero). With n pairs the smallest possible p is
    ``2 / 2**n`` (0.0625 for n = 5)."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 2 or np.all(a == b):
        return float("nan")
    return float(wilcoxon(a, b).pvalue)


def pooled_reliability(diagrams: Sequence[Mapping]) -> dict:
    """Pool reliability-diagram dicts (``ReliabilityDiagram.to_dict()``) by bin counts."""
    counts = np.sum([np.asarray(d["counts"], float) for d in diagrams], axis=0)
    conf = np.sum([np.nan_to_num(np.asarray(d["confidence"], float)) * np.asarray(d["counts"]) for d in diagrams], axis=0)
    acc = np.sum([np.nan_to_num(np.asarray(d["accuracy"], float)) * np.asarray(d["counts"]) for d in diagrams], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf, acc = np.where(counts > 0, conf / counts, np.nan), np.where(counts > 0, acc / counts, np.nan)
    n = counts.sum()
    ece = float(np.nansum(counts / n * np.abs(acc - conf))) if n else float("nan")
    return {"edges": list(diagrams[0]["edges"]), "counts": counts.tolist(), "confidence": conf.tolist(),
            "accuracy": acc.tolist(), "ece": ece}


# ----------------------------------------------------------------------------- writers


def write_json(path: Path, obj) -> Path:
    from napari_softseg.io.jsondoc import write_json as write_json_document

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_document(path, obj, indent=1)


def write_text(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def fmt(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def fmt_p(p) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    align = align or ("l" + "r" * (len(header) - 1))
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(ax, diagram: Mapping, label: str, **kw) -> None:
    conf, acc = np.asarray(diagram["confidence"], float), np.asarray(diagram["accuracy"], float)
    ok = np.isfinite(conf) & np.isfinite(acc)
    ax.plot(conf[ok], acc[ok], marker="o", ms=3, label=f"{label} (ECE {diagram['ece']:.3f})", **kw)


def reliability_axes(ax, title: str) -> None:
    ax.plot([0.5, 1], [0.5, 1], color="0.6", ls="--", lw=1, label="perfect calibration")
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("confidence (max class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")


def save_figure(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def rebuild_summary(out_dir: Path = RESULTS, note: str = "") -> Path:
    """Rewrite ``summary.md`` from the ``<name>.md`` tables in ``out_dir``, in the order and
    format of ``benchmarks/run_all.py`` (for when some benchmarks were re-run alone);
    ``note`` goes under the header."""
    import pkgutil

    out_dir = Path(out_dir)
    info = json.loads((out_dir / "machine.json").read_text())
    here = Path(__file__).resolve().parent
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    sections = [f"# Benchmarks\n\n{info['date']} on {info['cpu']} ({info['cores']} cores, torch {info['torch']})\n"
                + (f"\n{note}\n" if note else "")]
    for name in names:
        md = out_dir / f"{name}.md"
        sections.append(md.read_text() if md.exists() else f"## {name}\n\n(no table written)\n")
    return write_text(out_dir / "summary.md", "\n".join(sections))
