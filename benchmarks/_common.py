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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
THREADS = 2  # the budget machine has 2 cores
WORKERS = 2  # full runs: two single-thread worker processes (see run_jobs)


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


def brain_gm(factor: int = 3) -> Volume:
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


def sct_gm(size: int = 32, factor: int = 2) -> Volume:
    """Spinal-cord grey matter: the shipped T2* scan (``sample_data/sct_t2s``) and its
    expert binary mask, both averaged over ``factor`` x ``factor`` in-plane blocks (the mask
    becomes a partial-volume map with values k / factor², as in the SoftSeg paper's soft
    ground truth from a coarser grid), cropped in-plane to ``size`` x ``size`` around the
    cord (centred on the grey matter's centre of mass)."""
    from scipy import ndimage

    from napari_softseg.io.nifti import read_nifti
    from napari_softseg.io.samples import sample_path

    img = read_nifti(sample_path("sct_t2s", "t2s_uncropped.nii.gz"))
    gm = (read_nifti(sample_path("sct_t2s", "t2s_uncropped_gmseg_manual.nii.gz")).data > 0).astype(np.float32)
    f = (factor, factor, 1)
    image, truth = block_mean(img.data, f), block_mean(gm, f)
    com = np.round(ndimage.center_of_mass(truth)).astype(int)
    box = tuple(slice(int(np.clip(c - size // 2, 0, n - size)), int(np.clip(c - size // 2, 0, n - size)) + size)
                for c, n in zip(com[:2], truth.shape[:2])) + (slice(None),)
    sp = tuple(float(s) * k for s, k in zip(img.spacing, f))
    return Volume("spinal-cord GM", image[box], truth[box], np.ones(truth[box].shape, bool), sp, 2,
                  f"sample_data/sct_t2s t2s_uncropped + gmseg_manual, {factor}x{factor} in-plane block mean "
                  f"({sp[0]:g}x{sp[1]:g}x{sp[2]:g} mm; truth values k/{factor * factor}), {size}x{size} crop around the cord")


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


#: The phantom cohort (seed offsets from ``napari_softseg.io.phantom.SEED``): every subject
#: varied (``vary=True``: mirrored anatomy, tissue and lesion contrast, noise, bias field,
#: lesion load). Training + validation: 4 subjects (the trainer holds one out, drawn by the
#: run's seed); test: 2 unseen subjects and the lesion-free scan of the first.
COHORT = {"fit": (100, 101, 102, 200), "test": (300, 301), "free": 300}
#: In-plane box holding the white matter (hence every lesion) of every, possibly mirrored, subject.
COHORT_BOX = (slice(16, 128), slice(20, 156))


@dataclass
class Subject:
    """A phantom subject cropped for a benchmark (axis 2 = slices, 1 x 1 x 3 mm)."""

    name: str
    image: np.ndarray
    truth: np.ndarray  # exact lesion fractions
    raters: dict  # style -> rater map
    faint: np.ndarray  # bool: voxels of faint lesions (truth > 0)
    mask: np.ndarray  # bool: inside the brain
    spacing: tuple
    lesions: list = field(repr=False, default_factory=list)  # the lesions inside the crop
    offset: tuple = (0, 0, 0)  # crop corner in the full phantom grid
    full_shape: tuple = ()


@functools.lru_cache(maxsize=16)
def cohort_subject(offset: int, with_lesions: bool = True, quick: bool = False) -> Subject:
    """Subject ``SEED + offset`` of the cohort (with the six rater styles, the extra ones
    ``spurious`` and ``sloppy`` included), cropped to :data:`COHORT_BOX`; ``quick``: a
    48 x 48 x 16 box around the subject's largest lesion."""
    from napari_softseg.io.phantom import SEED, build_phantom, render_fraction

    ph = build_phantom(SEED + offset, vary=True, with_lesions=with_lesions, extra_raters=True)
    box = COHORT_BOX
    crop = box + (slice(0, ph.truth.shape[2]),)
    if quick and not with_lesions:  # the same box as the subject with lesions
        crop = tuple(slice(o, o + n) for o, n in zip(cohort_subject(offset, True, True).offset, (48, 48, 16)))
    elif quick:
        c = np.round(max(ph.lesions, key=lambda l: l.volume_mm3).centre).astype(int)
        crop = tuple(slice(int(np.clip(x - k // 2, 0, n - k)), int(np.clip(x - k // 2, 0, n - k)) + k)
                     for x, n, k in zip(c, ph.truth.shape, (48, 48, 16)))
    faint = np.zeros(ph.truth.shape, bool)
    inside = []
    for les in ph.lesions:
        b, frac = render_fraction(les, ph.truth.shape)
        if les.faint:
            faint[b] |= frac > 0
        if all(s.start >= c.start and s.stop <= c.stop for s, c in zip(b, crop)):
            inside.append(les)
    spacing = tuple(float(s) for s in np.sqrt((np.asarray(ph.affine)[:3, :3] ** 2).sum(axis=0)))
    image = ph.image[crop].astype(np.float32)
    return Subject(f"phantom SEED+{offset}" + ("" if with_lesions else " lesion-free"), image,
                   ph.truth[crop].astype(np.float32), {k: v[crop].astype(np.float32) for k, v in ph.raters.items()},
                   faint[crop], image > 0, spacing, inside, tuple(c.start for c in crop), tuple(ph.truth.shape))


def cohort(quick: bool = False) -> dict:
    """The phantom cohort: ``fit`` (training + validation subjects), ``test`` and ``free``
    (the lesion-free scan). Quick mode: two fit subjects (one validates) and one test subject,
    48 x 48 x 16 crops."""
    if quick:
        return {"fit": [cohort_subject(o, True, True) for o in (100, 200)],
                "test": [cohort_subject(300, True, True)], "free": cohort_subject(300, False, True)}
    return {"fit": [cohort_subject(o) for o in COHORT["fit"]], "test": [cohort_subject(o) for o in COHORT["test"]],
            "free": cohort_subject(COHORT["free"], False)}


# ----------------------------------------------------------------------------- training


@dataclass
class Budget:
    """The training protocol of a comparison (the same for every candidate).

    ``epochs`` is the maximum; training stops early after ``patience`` epochs without a
    relative improvement of the validation loss by more than ``eps`` (the thesis's rule,
    50 epochs / 0.001), and the best-validation weights are kept. ``None`` settings take
    the engine's default for the preset (dropout, the Adaptive Wing weight map, the
    NormReLU batch mix and margin).
    """

    epochs: int
    batch_size: int = 8
    crop_size: tuple | None = None
    patch_size: tuple | None = None
    depth: int = 3
    base_features: int = 16
    lr: float = 1e-3
    val_fraction: float = 0.2
    patience: int = 50
    eps: float = 1e-3
    augment: bool = True
    foreground_weight: float | None = None
    dropout: float | None = None
    score_margin: float | None = None
    empty_fraction: float | None = None

    def config(self, preset: str, seed: int, slice_axis: int, threads: int):
        """The :class:`~napari_softseg.engine.training.train.TrainConfig` of one run."""
        from napari_softseg.engine.training.train import TrainConfig

        optional = {k: getattr(self, k) for k in ("foreground_weight", "dropout", "score_margin", "empty_fraction")
                    if getattr(self, k) is not None}
        return TrainConfig(preset=preset, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           crop_size=self.crop_size, patch_size=self.patch_size, depth=self.depth, base_features=self.base_features,
                           val_fraction=self.val_fraction, patience=self.patience, early_stop_eps=self.eps, seed=seed,
                           device="cpu", augment=self.augment, slice_axis=slice_axis, num_threads=threads, **optional)

    def made(self, result: Mapping | None) -> bool:
        """Whether a results file (or one dataset of it) was made with this protocol: its
        ``budget`` is this one as JSON writes it."""
        return bool(result) and result.get("budget") == json.loads(json.dumps(asdict(self)))

    def describe(self) -> str:
        crop = "x".join(map(str, self.crop_size)) if self.crop_size else "whole slices"
        if self.patch_size:
            crop = (f"steps on random {'x'.join(map(str, self.patch_size))} patches of the {crop} (centred near "
                    "the structure in slices that hold some; validation on whole slices)")
        extra = [f"{k.replace('_', ' ')} {getattr(self, k):g}" for k in ("foreground_weight", "dropout", "score_margin",
                                                                        "empty_fraction") if getattr(self, k) is not None]
        return (f"at most {self.epochs} epochs, early stopping after {self.patience} epochs without a relative "
                f"validation-loss gain > {self.eps:g} (best-validation weights kept), validation "
                f"{self.val_fraction:.0%} of the training data, batch {self.batch_size}, {crop}, U-Net depth {self.depth} / "
                f"{self.base_features} features, Adam lr {self.lr:g} cosine-annealed over the maximum, augmentation "
                f"{'on' if self.augment else 'off'}, " + (", ".join(extra) + ", " if extra else "")
                + "other settings the engine's defaults for each preset")


@dataclass
class Job:
    """One training run and what to predict with the trained model (picklable, so that a
    worker process can run it)."""

    key: dict  # what the caller needs to file the result (candidate, seed, ...)
    images: list
    labels: list  # per volume: one map, or a list of rater maps
    spacing: tuple
    preset: str
    seed: int
    budget: Budget
    label_source: str = "label"
    slice_axis: int = 2
    predict: dict = field(default_factory=dict)  # name -> image to predict
    batch_check: str | None = None  # name of a predicted image to predict with batch 1 and 16 too


def convergence(summary: Mapping, patience: int) -> dict:
    """Epochs run, best epoch and whether the validation loss plateaued: the early-stopping
    rule fired (``patience`` epochs without a relative gain > eps). ``last_window_gain``:
    relative drop of the best validation loss over the last ``patience`` epochs (0 for a
    plateau; > 0 when the run hit the epoch cap still improving)."""
    hist = [h.get("val_loss") for h in summary.get("history", [])]
    hist = [v for v in hist if v is not None and math.isfinite(v)]
    gain = None
    if len(hist) > 1:
        best = np.minimum.accumulate(hist)
        before = best[max(0, len(best) - 1 - patience)]
        gain = float((before - best[-1]) / abs(before)) if before else 0.0
    status = summary.get("status")
    return {"epochs_run": summary.get("epochs_run"), "best_epoch": summary.get("best_epoch"), "status": status,
            "plateaued": status == "early_stopped", "last_window_gain": gain}


def validation_threshold(model, data, cfg) -> tuple[float | None, int]:
    """The threshold maximising the mean Dice of the validation volumes (the trainer's rule,
    :func:`~napari_softseg.engine.training.threshold.search_threshold`, on the validation
    part only), from the slices exactly as the trainer prepared and split them; returns
    ``(threshold, number of validation slices)`` (None without a validation set)."""
    import torch

    from napari_softseg.engine.presets import get_preset
    from napari_softseg.engine.training.slices import prepare_slices
    from napari_softseg.engine.training.threshold import search_threshold

    preset = get_preset(cfg.preset)
    d = prepare_slices(data, hard=not preset.soft_labels, slice_axis=cfg.slice_axis, crop_size=cfg.crop_size,
                       multiple=model.multiple, val_fraction=cfg.val_fraction, seed=cfg.seed)
    idx = d.val_idx
    if idx.numel() == 0:
        return None, 0
    with torch.no_grad():
        out = torch.cat([model(d.images.index_select(0, idx[s:s + 16])) for s in range(0, idx.numel(), 16)])
    vols = d.volume.index_select(0, idx).numpy()
    truth = d.truth.index_select(0, idx)
    preds = [out[vols == v].numpy() for v in np.unique(vols)]
    truths = [truth[vols == v].numpy() for v in np.unique(vols)]
    return search_threshold(preds, truths)[0], int(idx.numel())


def run_job(job: Job, threads: int = 1) -> dict:
    """Train ``job`` with the product's trainer, then predict its images with the best
    checkpoint; the checkpoint goes to a temporary folder that is removed afterwards."""
    from napari_softseg.engine.predict import load_model, predict_volume
    from napari_softseg.engine.training.data import TrainingData
    from napari_softseg.engine.training.train import run_training

    set_threads(threads)
    data = TrainingData.from_arrays(job.images, job.labels, spacings=[job.spacing] * len(job.images),
                                    label_source=job.label_source)
    cfg = job.budget.config(job.preset, job.seed, job.slice_axis, threads)
    folder = Path(tempfile.mkdtemp(prefix="softseg-bench-"))
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        done = run_training(cfg, data, checkpoint_path=folder / "model.pt")
        t1, c1 = time.perf_counter(), time.process_time()
        model = load_model(done.checkpoint)
        soft = {name: np.asarray(predict_volume(model, img, slice_axis=job.slice_axis, device="cpu"), np.float32)
                for name, img in job.predict.items()}
        val_thr, n_val = validation_threshold(model, data, cfg)
        diff = None
        if job.batch_check:
            img = job.predict[job.batch_check]
            one = predict_volume(model, img, slice_axis=job.slice_axis, device="cpu", batch_size=1)
            many = predict_volume(model, img, slice_axis=job.slice_axis, device="cpu", batch_size=16)
            diff = float(np.max(np.abs(np.asarray(one, np.float64) - np.asarray(many, np.float64))))
        t2 = time.perf_counter()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    summary = done.summary or {}
    if n_val != summary.get("n_val_slices", n_val):  # not the trainer's split: never score on other slices
        raise RuntimeError(f"validation split differs from the trainer's ({n_val} vs {summary.get('n_val_slices')} slices)")
    conv = convergence(summary, cfg.patience)
    return {"key": job.key, "soft": soft, "threshold_checkpoint": float(done.threshold),
            "threshold_val": val_thr if val_thr is not None else float(done.threshold), "n_val_slices": n_val,
            "convergence": conv, "train_s": t1 - t0, "train_cpu_s": c1 - c0, "predict_s": t2 - t1,
            "batch_1_vs_16": diff, "n_train_slices": summary.get("n_train_slices"),
            "val_loss": [h.get("val_loss") for h in summary.get("history", [])]}


def _worker_init(threads: int) -> None:
    set_threads(threads)


def run_jobs(jobs: Sequence[Job], workers: int = 1, log=print) -> list[dict]:
    """Run the jobs (results in job order): one after the other in this process when
    ``workers`` is 1, else in ``workers`` processes; one torch thread per run either way (for
    these small networks two 1-thread processes use 2 cores better than one 2-thread process,
    and a single thread does not spin on a busy machine). Each run is seeded, so its result
    does not depend on the worker that ran it."""
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for job in jobs:
            out.append(run_job(job, threads=1))
            log(_progress(out[-1], len(out), len(jobs)))
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: list = [None] * len(jobs)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init, initargs=(1,)) as pool:
        futures = {pool.submit(run_job, job, 1): i for i, job in enumerate(jobs)}
        for n, fut in enumerate(as_completed(futures), 1):
            results[futures[fut]] = fut.result()
            log(_progress(results[futures[fut]], n, len(jobs)))
    return results


def _progress(r: dict, n: int, total: int) -> str:
    c = r["convergence"]
    key = " ".join(f"{v}" for v in r["key"].values())
    return (f"   [{n}/{total}] {key}: {c['epochs_run']} epochs (best {c['best_epoch']}, {c['status']}), "
            f"{r['train_s']:.0f} s ({r['train_cpu_s']:.0f} CPU s)")


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
    """Rewrite ``summary.md`` from the ``<name>.md`` tables in ``out_dir`` (those present), in
    name order; ``note`` goes under the header."""
    import pkgutil

    out_dir = Path(out_dir)
    info = json.loads((out_dir / "machine.json").read_text())
    here = Path(__file__).resolve().parent
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    sections = [f"# Benchmarks\n\n{info['date']} on {info['cpu']} ({info['cores']} cores, torch {info['torch']})\n"
                + (f"\n{note}\n" if note else "")]
    for name in names:
        md = out_dir / f"{name}.md"
        if md.exists():
            sections.append(md.read_text())
    return write_text(out_dir / "summary.md", "\n".join(sections))
