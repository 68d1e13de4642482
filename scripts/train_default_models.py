#!/usr/bin/env python
"""Train the default models shipped in ``napari_softseg/models/`` reproducibly.

Usage (from the repository root)::

    .venv/bin/python scripts/train_default_models.py                 # both models
    .venv/bin/python scripts/train_default_models.py --model ms-lesion
    .venv/bin/python scripts/train_default_models.py --model brain-gm --threads 2

Each model is written as ``<name>.pt`` (weights + JSON config, see
:mod:`napari_softseg.engine.checkpoint`) with ``<name>.json`` (command, seed, data, epochs,
timings and final metrics) and ``<name>.md`` (the same, readable) beside it. Results are
deterministic for a given seed, torch version and CPU (bfloat16 autocast is used where the
CPU supports it; the device and precision are recorded).

``ms-lesion`` (FLAIR-like, 1 contrast)
    SoftSeg preset (the engine's defaults: normalised ReLU over the training batch with a
    normaliser stored for prediction, uniform Adaptive Wing with the score-margin hinges,
    batches that always hold lesion slices, dropout 0) trained from scratch in one stage on
    a **varied cohort** of lesion phantoms (:data:`LESION_TRAIN`, ``build_phantom(vary=True)``:
    mirrored anatomy, tissue and lesion contrast, noise, bias field, lesion load; two subjects
    resampled to 1.3 mm in-plane for the blur of a coarser acquisition), with their exact
    partial-volume lesion fractions as soft labels. Two subjects are held out by the
    trainer's split for validation: early stopping, the stored normaliser and the threshold.
    Evaluated on **unseen** varied phantoms (:data:`LESION_TEST`, each also as a lesion-free
    scan) and on the sample phantom the demo opens (not in training) against the exact
    truth, with the issue's targets: LTPR on non-faint lesions, LFDR, the total soft volume
    against the true volume, lesion-free slices reaching p >= 0.5; plus the Dice on a real
    FLAIR (the BraTS case's whole-tumour hyperintensity) as information.

``brain-gm`` (T1-weighted, 1 contrast)
    SoftSeg preset trained on the brain T1 (``sample_data/brain_t1/bet.nii.gz``, the two
    artificial spheres outside the left hemisphere masked out) with FSL FAST's partial-volume
    gray-matter map ``pve_1`` as soft label. A slab of axial slices is **held out** (never
    seen in training, with a gap of two slices on each side) for the soft Dice. To generalise
    beyond this subject, the training slices enter as several *variants*:

    * **field of view**: zero-padded in-plane to 142x178 (as is), 192x208, 240x240 and
      256x256, so that the whole-volume z-score normalisation sees brain fractions from 42 %
      down to 15 % of the volume (a 240x240x155 BraTS-like volume has 11 %);
    * **orientation**: in-plane flips (RAS, LAS, RPS, LPS views of the same anatomy);
    * **contrast**: a random monotonic piecewise-linear intensity curve per variant
      (log-normal slopes on five brain-intensity segments, sigma :data:`CURVE_SIGMA`), so the
    gray/white/CSF contrast
      ratios vary around the training scan's;

    on top of the trainer's random rotation, translation and scaling. Each variant uses
    every other training slice (alternating), which keeps an epoch cheap. The engine's
    SoftSeg defaults apply (batch-wide NormReLU with the stored normaliser, dropout 0,
    uniform Adaptive Wing with the score-margin hinges); no validation set (the held-out
    slab is the test), so the epoch with the lowest training loss is kept.
    The script then checks the model on another T1 (``scripts/check_brain_gm.py``, which
    also runs on its own; ``--check``, default
    ``../shared/data/brats_case/t1n.nii.gz``: LPS, 240x240x155, a glioma case) by (i) the
    gray-matter fraction of the brain outside the tumour and (ii) the soft Dice against a
    FAST-like reference built from that scan alone (a three-class Gaussian mixture of
    the brain intensities, posterior of the middle class), whose own agreement with FAST is
    measured on the training scan for scale; a figure is written to
    ``docs/images/brain-gm-check.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from napari_softseg.engine.training.data import TrainingData, TrainingSubject  # noqa: E402
from napari_softseg.errors import UserError  # noqa: E402
from napari_softseg.engine.training.train import TrainConfig, run_training  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_brain_gm import brain_volumes, check_gm_other_t1  # noqa: E402

MODELS_DIR = REPO / "napari_softseg" / "models"
SEED = 0
GM_EPOCHS = 55
#: held-out axial slab of the brain T1 (z indices, end exclusive) and the gap around it
GM_HELD_OUT = (62, 80)
GM_GAP = 2
CURVE_SIGMA = 0.3
GM_VARIANTS = (  # (in-plane size after zero padding, flip axes, curve seed or None)
    (None, (), None),
    ((192, 208), (0,), 1),
    ((240, 240), (0, 1), 2),
    ((256, 256), (1,), 3),
)


# ----------------------------------------------------------------------------- helpers

def _log(msg: str) -> None:
    print(msg, flush=True)


def _progress(name: str):
    state = {"last": 0.0}

    def callback(event) -> None:
        now = time.perf_counter()
        if event.kind == "epoch" and (now - state["last"] > 20 or event.epoch == event.epochs):
            state["last"] = now
            _log(f"  [{name}] epoch {event.epoch}/{event.epochs} train {event.train_loss:.4f} "
                 f"val {event.val_loss if event.val_loss is None else round(event.val_loss, 4)} "
                 f"best {event.best_epoch} ({event.elapsed_seconds:.0f} s)")
        elif event.kind == "done":
            _log(f"  [{name}] {event.status}: {event.message or 'ok'} threshold {event.threshold}")

    return callback


def _round(d: dict, n: int = 4) -> dict:
    return {k: (round(float(v), n) if isinstance(v, (float, np.floating)) else v) for k, v in d.items()}


def annotate_checkpoint(path: Path, info: dict) -> None:
    """Record what the model was trained on in its checkpoint config (``training.data``,
    ``training.recipe``), which the Segment dock shows; the weights are unchanged."""
    from napari_softseg.engine.checkpoint import build_model, load_checkpoint, save_checkpoint

    state, config = load_checkpoint(path)
    config["training"] = dict(config.get("training") or {}, data=info["data"], recipe=info["command"],
                              label_description=info["label_source"])
    if info.get("dock_note"):
        config["training"]["note"] = info["dock_note"]
    save_checkpoint(path, build_model(config, state), config)


def _write_sidecars(name: str, info: dict, out_dir: Path) -> None:
    (out_dir / f"{name}.json").write_text(json.dumps(info, indent=1) + "\n")
    lines = [f"# Default model `{name}`", "", info["description"], "",
             f"- command: `{info['command']}`", f"- seed: {info['seed']}",
             f"- data: {info['data']}" + (f" ({info['data_details']})" if info.get("data_details") else ""),
             f"- label source: {info['label_source']}",
             f"- preset: {info['preset']}; network: {info['architecture']}",
             f"- epochs: {info['epochs_run']} run, best epoch {info['best_epoch']} (max {info['epochs_max']})",
             f"- threshold: {info['threshold']}",
             f"- training time: {info['training_seconds']:.0f} s wall, {info['training_cpu_seconds']:.0f} s CPU "
             f"on {info['machine']} ({info['precision']}; wall time depends on the machine's load)",
             f"- file size: {info['size_bytes'] / 1e6:.2f} MB, {info['parameters']} parameters; "
             f"SHA-256 {info.get('sha256', '?')}", "",
             "## Final metrics", ""]
    for section, metrics in info["metrics"].items():
        lines.append(f"**{section}**: " + ", ".join(f"{k} = {v}" for k, v in metrics.items()))
        lines.append("")
    if info.get("notes"):
        lines += ["## Notes", "", *info["notes"], ""]
    (out_dir / f"{name}.md").write_text("\n".join(lines))


def _common_info(name: str, event, model_path: Path, config: TrainConfig, seconds: float, cpu_seconds: float) -> dict:
    import torch

    from napari_softseg.engine.checkpoint import load_checkpoint

    _, cfg = load_checkpoint(model_path)
    summary = event.summary or {}
    n_params = sum(int(np.prod(v.shape)) for k, v in torch.load(model_path, weights_only=True)["state_dict"].items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    return {
        "name": name,
        "command": "python scripts/train_default_models.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "seed": config.seed,
        "preset": cfg["preset"],
        "architecture": cfg["architecture"],
        "contrasts": cfg["contrasts"],
        "threshold": cfg["threshold"],
        "epochs_max": config.epochs,
        "epochs_run": summary.get("epochs_run"),
        "best_epoch": summary.get("best_epoch"),
        "status": summary.get("status"),
        "training_seconds": round(seconds, 1),
        "training_cpu_seconds": round(cpu_seconds, 1),
        "precision": summary.get("mixed_precision"),
        "machine": f"{platform.machine()} CPU, {config.num_threads or torch.get_num_threads()} torch thread(s), "
                   f"torch {torch.__version__}",
        "train_config": config.to_dict(),
        "size_bytes": model_path.stat().st_size,
        "parameters": n_params,
    }


# ----------------------------------------------------------------------------- ms-lesion

#: ms-lesion cohort (seed offsets from the sample phantom's seed): varied training subjects
#: (``build_phantom(vary=True)``), of which the trainer's split holds out two for validation
#: and early stopping; unseen test subjects (each also as a lesion-free scan). None of these
#: seeds is used by ``scripts/fit_flags.py`` (validation of the flags) or ``bench_flags``.
LESION_TRAIN = tuple(range(1000, 1008))
#: training subjects resampled to a coarser in-plane grid (mm), so that the model also sees
#: the blur of a 1.3 mm acquisition once the trainer resamples them to 1 mm
LESION_COARSE = {1006: 1.3, 1007: 1.3}
LESION_TEST = tuple(range(2000, 2004))
LESION_EPOCHS = 60


def _coarse(volume: np.ndarray, spacing_mm: float, order: int) -> np.ndarray:
    """``volume`` (1 mm in-plane) as acquired at ``spacing_mm``: in-plane Gaussian
    anti-aliasing (images only) then linear resampling; labels keep their fractions."""
    from scipy import ndimage

    zoom = (1.0 / spacing_mm, 1.0 / spacing_mm, 1.0)
    if order:
        volume = ndimage.gaussian_filter(volume, sigma=(0.4 * spacing_mm, 0.4 * spacing_mm, 0.0))
    return np.clip(ndimage.zoom(volume, zoom, order=1, grid_mode=True, mode="nearest"),
                   0.0 if not order else None, None if order else 1.0).astype(np.float32)


def _lesion_subject(offset: int) -> TrainingSubject:
    """A varied phantom with its exact lesion fractions as the soft label."""
    from napari_softseg.io import geometry
    from napari_softseg.io.phantom import SEED as PHANTOM_SEED, build_phantom

    ph = build_phantom(PHANTOM_SEED + offset, vary=True)
    image, truth, spacing = ph.image, ph.truth, tuple(geometry.spacing(ph.affine))
    if offset in LESION_COARSE:
        mm = LESION_COARSE[offset]
        image, truth = _coarse(image, mm, 1), _coarse(truth, mm, 0)
        spacing = (spacing[0] * mm, spacing[1] * mm, spacing[2])
    return TrainingSubject(image=np.ascontiguousarray(image), labels=[np.ascontiguousarray(truth)],
                           spacing=spacing, name=f"phantom SEED+{offset}", label_names=["partial-volume truth"])


def _held_out_volumes(n_volumes: int, n_slices: int, val_fraction: float, seed: int) -> list[int]:
    """The volumes the trainer's split (:func:`~napari_softseg.engine.preprocess.split_validation`) holds out."""
    from napari_softseg.engine.preprocess import split_validation

    volume = np.repeat(np.arange(n_volumes), n_slices)
    _, val = split_validation(volume, np.ones(volume.size, bool), val_fraction, seed)
    return sorted(int(v) for v in np.unique(volume[val]))


def _free_slice_maxima(soft: np.ndarray, truth: np.ndarray, brain: np.ndarray) -> list[float]:
    lesion_slice = truth.sum(axis=(0, 1)) > 0
    return [float(soft[..., z][brain[..., z]].max(initial=0.0)) for z in range(soft.shape[2])
            if brain[..., z].any() and not lesion_slice[z]]


def evaluate_lesions(model, phantom, threshold: float, free_scan=None) -> dict:
    """The issue's targets of ``model`` on a phantom against its exact truth: LTPR on the
    non-faint lesions, LFDR on all (at the model's threshold and at 0.5), total soft volume
    against the true volume, lesion-free slices reaching p >= 0.5 (and on the lesion-free
    scan ``free_scan`` of the same subject), Dice and soft Dice, and the missed lesions."""
    from napari_softseg.engine.predict import predict_volume
    from napari_softseg.io import geometry
    from napari_softseg.io.phantom import render_fraction
    from napari_softseg.metrics.detection import lesion_detection
    from napari_softseg.metrics.segmentation import dice, soft_dice

    spacing = tuple(geometry.spacing(phantom.affine))
    soft = predict_volume(model, phantom.image, spacing=spacing)
    brain = phantom.image > 0
    faint = np.zeros(phantom.truth.shape, bool)
    missed = []
    for les in phantom.lesions:
        box, frac = render_fraction(les, phantom.truth.shape)
        if les.faint:
            faint[box] |= frac > 0
        core = frac >= 0.5 if np.any(frac >= 0.5) else frac > 0
        if np.count_nonzero(soft[box][core] >= threshold) < min(3, np.count_nonzero(core)):  # the detection rule
            missed.append(f"{les.diameter_mm:g} mm{' faint' if les.faint else ''}")
    nonfaint = np.where(faint, 0.0, phantom.truth)
    own, half = (lesion_detection(soft, t, threshold=thr) for t, thr in ((nonfaint, threshold), (nonfaint, 0.5)))
    true = float(phantom.truth.sum(dtype=np.float64))
    free = _free_slice_maxima(soft, phantom.truth, brain)
    out = {"ltpr_nonfaint_%": own.ltpr, "ltpr_nonfaint_at_0.5_%": half.ltpr,
           "lfdr_%": lesion_detection(soft, phantom.truth, threshold=threshold).lfdr,
           "lfdr_at_0.5_%": lesion_detection(soft, phantom.truth, threshold=0.5).lfdr,
           "n_truth_lesions": len(phantom.lesions), "n_faint": int(sum(l.faint for l in phantom.lesions)),
           "sum_p_error_%": 100.0 * (float(soft[brain].sum(dtype=np.float64)) - true) / true,
           "lesion_free_slices_ge_0.5": int(sum(x >= 0.5 for x in free)), "n_lesion_free_slices": len(free),
           "dice_%": dice(soft, phantom.truth, threshold=threshold), "dice_at_0.5_%": dice(soft, phantom.truth),
           "soft_dice_%": soft_dice(soft, phantom.truth)}
    if free_scan is not None:
        fsoft = predict_volume(model, free_scan.image, spacing=spacing)
        fb = free_scan.image > 0
        zmax = _free_slice_maxima(fsoft, np.zeros_like(free_scan.truth), fb)
        out.update({"lesion_free_scan_max_p": float(fsoft[fb].max()),
                    "lesion_free_scan_slices_ge_0.5": int(sum(x >= 0.5 for x in zmax))})
    out = _round(out, 2)
    out["missed_lesions"] = ", ".join(missed) or "none"
    return out


def _mean_metrics(per_subject: dict) -> dict:
    keys = [k for k, v in next(iter(per_subject.values())).items() if isinstance(v, (int, float))]
    return {k: round(float(np.mean([m[k] for m in per_subject.values()])), 2) for k in keys}


def train_ms_lesion(args) -> dict:
    from napari_softseg.engine.predict import load_model
    from napari_softseg.io.phantom import SEED as PHANTOM_SEED, build_phantom

    val_fraction = 2 / len(LESION_TRAIN)
    held = _held_out_volumes(len(LESION_TRAIN), 47, val_fraction, args.seed)
    _log(f"ms-lesion: building {len(LESION_TRAIN)} varied phantoms (validation: volumes {held}) ...")
    subjects = [_lesion_subject(o) for o in LESION_TRAIN]
    data = TrainingData(subjects, label_source="label", contrasts=["FLAIR"], classes=["lesion"])
    config = TrainConfig(preset="softseg", epochs=args.epochs or LESION_EPOCHS, batch_size=8, lr=1e-3,
                         val_fraction=val_fraction, seed=args.seed, device="cpu", num_threads=args.threads,
                         augment=True, spacing=(1.0, 1.0, 3.0))
    out = args.out / "ms-lesion.pt"
    t0, c0 = time.perf_counter(), time.process_time()
    event = run_training(config, data, checkpoint_path=out, callback=_progress("ms-lesion"))
    info = _common_info("ms-lesion", event, out, config, time.perf_counter() - t0, time.process_time() - c0)
    if event.status != "completed" and event.summary.get("status") not in ("completed", "early_stopped"):
        raise UserError(f"ms-lesion training ended with status {event.summary.get('status')}: {event.message}")
    model = load_model(out)
    _log("ms-lesion: evaluating on unseen phantoms ...")
    tests = {}
    for o in LESION_TEST:
        ph = build_phantom(PHANTOM_SEED + o, vary=True)
        tests[f"SEED+{o}"] = evaluate_lesions(model, ph, info["threshold"], build_phantom(PHANTOM_SEED + o, vary=True,
                                                                                       with_lesions=False))
        _log(f"  SEED+{o}: {tests[f'SEED+{o}']}")
    sample = evaluate_lesions(model, build_phantom(PHANTOM_SEED), info["threshold"])
    flair = _real_flair_dice(model)
    info.update({
        "description": "Multiple-sclerosis-like white-matter lesions on FLAIR-like images (soft map in [0, 1]). "
                       "Trained on synthetic data only (the lesion phantom); fine-tune it on your own raters "
                       "(Train SoftSeg dock: Start = Fine-tune, Model = ms-lesion).",
        "data": f"synthetic: {len(LESION_TRAIN)} varied lesion phantoms, 1x1x3 mm ({len(LESION_COARSE)} resampled to "
                f"{max(LESION_COARSE.values()):g} mm in-plane), {len(held)} of them for validation",
        "data_details": f"build_phantom(SEED+{LESION_TRAIN[0]}..{LESION_TRAIN[-1]}, vary=True): mirrored anatomy, tissue "
                        f"and lesion contrast, noise, bias field, 8-14 isolated lesions plus touching pairs, 142x178x47 at "
                        f"1x1x3 mm; subjects {', '.join(f'SEED+{o}' for o in LESION_COARSE)} resampled to "
                        f"{max(LESION_COARSE.values()):g} mm in-plane; volumes {held} of the list held out for validation "
                        f"(early stopping; the stored normaliser and the threshold are chosen on all {len(LESION_TRAIN)})",
        "label_source": "the phantom's exact partial-volume lesion fraction (soft)",
        "dock_note": "synthetic training data only: fine-tune it on your raters' masks to adapt it "
                     "(Train SoftSeg, Fine-tune).",
        "metrics": {
            f"mean over {len(LESION_TEST)} unseen phantoms": _mean_metrics(tests),
            **{f"unseen phantom {k}": v for k, v in tests.items()},
            f"sample phantom (seed {PHANTOM_SEED}, unseen, the demo's scan)": sample,
            "real FLAIR (information only)": flair,
        },
        "notes": [
            "Metrics against the phantom's exact truth fraction: lesions are 18-connected components of "
            "p >= threshold and of truth >= 0.5; a truth lesion is detected when at least 3 of its voxels (or "
            "all, if smaller) are predicted. LTPR counts the non-faint lesions (faint ones have the intensity of "
            "grey matter); LFDR counts every predicted lesion. Sum of p is taken inside the brain. 'missed_lesions' "
            "lists the phantom lesions with fewer than 3 voxels (or all, if smaller) of their core (fraction >= 0.5) "
            "predicted; touching lesions whose cores merge count as one truth lesion for LTPR.",
            "Engine: SoftSeg preset (normalised ReLU over the batch in training, the stored normaliser at "
            "prediction; uniform Adaptive Wing loss with the score-margin hinges; every batch holds lesion "
            "slices, half of it lesion-free slices; dropout 0), Adam 1e-3 cosine-annealed, early stopping "
            "(patience 50 epochs, relative 0.001), the validation-best weights kept, the threshold chosen on "
            "the training + validation volumes.",
            "Limits: synthetic anatomy from one brain; one slice thickness (3 mm); FLAIR-like contrast only. "
            "On a real FLAIR (the BraTS case) the model sees a glioma's hyperintensity, which is not what it "
            "was trained for; the Dice there is given as information, not as a target.",
            "The model has no dropout, so MC-dropout sampling is refused for it; TTA (flipped views) is the "
            "sampling its review flags are fitted for.",
        ],
    })
    annotate_checkpoint(out, info)
    info.update(size_bytes=out.stat().st_size, sha256=hashlib.sha256(out.read_bytes()).hexdigest())
    _write_sidecars("ms-lesion", info, args.out)
    return info


def _real_flair_dice(model) -> dict:
    """Best Dice of the soft map against the BraTS case's whole-tumour hyperintensity
    (labels > 0 of its segmentation), and the Dice at the model's threshold; information only."""
    from napari_softseg.engine.predict import predict_volume
    from napari_softseg.io.nifti import read_nifti
    from napari_softseg.metrics.segmentation import dice

    folder = REPO.parent / "shared" / "data" / "brats_case"
    if not (folder / "t2f.nii.gz").exists():
        return {"note": "brats_case/t2f.nii.gz not found"}
    scan, seg = read_nifti(folder / "t2f.nii.gz"), read_nifti(folder / "segmentation.nii.gz")
    soft = predict_volume(model, scan.data, spacing=scan.spacing)
    truth = (np.asarray(seg.data) > 0).astype(np.float32)
    thr = float(model.softseg_config["threshold"])
    grid = np.round(np.arange(0.05, 1.0, 0.05), 2)
    dices = [dice(soft, truth, threshold=float(t)) for t in grid]
    return _round({"file": "brats_case/t2f.nii.gz", "dice_at_model_threshold_%": dice(soft, truth, threshold=thr),
                   "best_dice_%": max(dices), "best_threshold": float(grid[int(np.argmax(dices))])}, 2)


# ----------------------------------------------------------------------------- brain-gm

def intensity_curve(image: np.ndarray, brain: np.ndarray, seed: int | None) -> np.ndarray:
    """A random monotonic piecewise-linear remapping of the brain intensities.

    ``u = I / p99(brain)``, knots at u = 0, 0.2, ..., 1 mapped to the cumulative sum of
    log-normal slopes ``0.2 exp(N(0, CURVE_SIGMA))`` normalised to end at 1; background stays 0
    and the result is scaled back to the original range. ``seed=None``: identity.
    """
    if seed is None:
        return image
    rng = np.random.default_rng(1000 + seed)
    hi = float(np.percentile(image[brain], 99))
    knots = np.linspace(0.0, 1.0, 6)
    steps = 0.2 * np.exp(rng.normal(0.0, CURVE_SIGMA, size=5))
    values = np.concatenate([[0.0], np.cumsum(steps)])
    values /= values[-1]
    u = np.clip(image / hi, 0.0, None)
    out = np.interp(u, knots, values)
    last_slope = (values[-1] - values[-2]) / (knots[-1] - knots[-2])
    out = np.where(u > 1.0, 1.0 + (u - 1.0) * last_slope, out)  # continue the last segment
    return np.where(brain, out * hi, 0.0).astype(np.float32)


def _pad_inplane(a: np.ndarray, size) -> np.ndarray:
    if size is None:
        return a
    px, py = size[0] - a.shape[0], size[1] - a.shape[1]
    return np.pad(a, ((px // 2, px - px // 2), (py // 2, py - py // 2), (0, 0)))


def gm_training_data(seed: int) -> tuple[TrainingData, dict]:
    t1, image, label, brain = brain_volumes()
    z = np.arange(image.shape[2])
    lo, hi = GM_HELD_OUT
    train_z = z[(z < lo - GM_GAP) | (z >= hi + GM_GAP)]
    subjects = []
    for v, (size, flips, curve) in enumerate(GM_VARIANTS):
        keep = train_z[(train_z + v) % 2 == 0]
        img = intensity_curve(image, brain, None if curve is None else curve + 100 * seed)[:, :, keep]
        lab = label[:, :, keep]
        img, lab = _pad_inplane(img, size), _pad_inplane(lab, size)
        for ax in flips:
            img, lab = np.flip(img, ax), np.flip(lab, ax)
        subjects.append(TrainingSubject(image=np.ascontiguousarray(img), labels=[np.ascontiguousarray(lab)],
                                        spacing=t1.spacing, name=f"bet variant {v}"))
    data = TrainingData(subjects, label_source="label", contrasts=["T1w"], classes=["gray matter"])
    meta = {"train_slices": int(train_z.size), "held_out_slices": [int(lo), int(hi)], "gap": GM_GAP,
            "variants": [{"inplane_size": s, "flips": list(f), "curve_seed": c} for s, f, c in GM_VARIANTS]}
    return data, meta


def evaluate_gm_held_out(model) -> dict:
    from napari_softseg.engine.predict import predict_volume
    from napari_softseg.metrics.segmentation import soft_dice

    t1, image, label, brain = brain_volumes()
    soft = predict_volume(model, image, spacing=t1.spacing)
    lo, hi = GM_HELD_OUT
    held = (slice(None), slice(None), slice(lo, hi))
    mae = float(np.abs(soft[held] - label[held])[brain[held]].mean())
    return _round({"soft_dice_held_out_%": soft_dice(soft[held], label[held]),
                   "soft_dice_training_slices_%": soft_dice(np.delete(soft, np.s_[lo - GM_GAP:hi + GM_GAP], 2),
                                                            np.delete(label, np.s_[lo - GM_GAP:hi + GM_GAP], 2)),
                   "mae_in_brain_held_out": mae,
                   "gm_fraction_of_brain_pred": float(soft[brain].sum() / brain.sum()),
                   "gm_fraction_of_brain_fast": float(label[brain].sum() / brain.sum())}, 4)


def train_brain_gm(args) -> dict:
    from napari_softseg.engine.predict import load_model

    _log("brain-gm: preparing variants ...")
    data, meta = gm_training_data(args.seed)
    config = TrainConfig(preset="softseg", epochs=args.epochs or GM_EPOCHS, batch_size=8, lr=1e-3,
                         crop_size=(144, 184), val_fraction=0.0, patience=10_000, seed=args.seed, device="cpu",
                         num_threads=args.threads, augment=True)
    out = args.out / "brain-gm.pt"
    t0, c0 = time.perf_counter(), time.process_time()
    event = run_training(config, data, checkpoint_path=out, callback=_progress("brain-gm"))
    info = _common_info("brain-gm", event, out, config, time.perf_counter() - t0, time.process_time() - c0)
    model = load_model(out)
    _log("brain-gm: evaluating ...")
    metrics = {"brain T1, held-out axial slices": evaluate_gm_held_out(model)}
    if args.check and Path(args.check).exists():
        check = Path(args.check)
        seg = check.parent / "segmentation.nii.gz"
        metrics[f"unseen T1 ({check.parent.name}/{check.name})"] = check_gm_other_t1(
            model, check, seg, REPO / "docs" / "images" / "brain-gm-check.png")
    info.update({
        "description": "Brain gray matter on T1-weighted scans after brain extraction (soft partial-volume map in [0, 1]).",
        "data": f"sample_data/brain_t1/bet.nii.gz (spheres masked out) with FAST pve_1; axial slices "
                f"{meta['held_out_slices'][0]}-{meta['held_out_slices'][1] - 1} held out (gap {GM_GAP}); "
                f"{len(GM_VARIANTS)} variants (field of view, flips, intensity curve) of the other "
                f"{meta['train_slices']} slices, each using every other slice",
        "label_source": "FSL FAST partial-volume estimate pve_1 (soft)",
        "variants": meta["variants"],
        "metrics": metrics,
        "notes": ["The GMM reference of the unseen T1 has no spatial prior or partial-volume model; its own "
                  "soft Dice with FAST on the training scan is given for scale."],
    })
    annotate_checkpoint(out, info)
    info.update(size_bytes=out.stat().st_size, sha256=hashlib.sha256(out.read_bytes()).hexdigest())
    _write_sidecars("brain-gm", info, args.out)
    return info


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("all", "ms-lesion", "brain-gm"), default="all")
    p.add_argument("--out", type=Path, default=MODELS_DIR, help="output folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (for quick trials)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared 2-core machine a second thread mostly spins)")
    p.add_argument("--check", default=str(REPO.parent / "shared" / "data" / "brats_case" / "t1n.nii.gz"),
                   help="another T1 to check the brain model on ('' to skip)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        for name, fn in (("ms-lesion", train_ms_lesion), ("brain-gm", train_brain_gm)):
            if args.model in ("all", name):
                info = fn(args)
                _log(f"{name}: {json.dumps(info['metrics'], indent=1)}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
