"""SoftSeg against the conventional pipeline on the lesion-phantom cohort, against an exact truth.

The phantom (:func:`napari_softseg.io.phantom.build_phantom`) knows every voxel's lesion
fraction exactly (each ellipsoid is rendered at 1/8 mm and averaged down). The cohort
(:data:`benchmarks._common.COHORT`, ``vary=True``: mirrored anatomy, contrast, noise, bias
field and lesion load differ between subjects) gives 4 subjects to the trainer, which holds
one out for validation and early stopping (which one is drawn by the run's seed), and 2
unseen test subjects plus the lesion-free scan of the first. SoftSeg (soft labels = the
true fractions) and the conventional pipeline (the same labels binarised at 0.5) are
trained with the same protocol and predict the test scans. For every test scan:

* the **soft volume** Σp against the true volume (false positives included), and where the
  error comes from: Σp in the lesion-free slices, false positives in lesion slices, the faint
  lesions and the other lesions (each lesion's neighbourhood: the voxels within
  ``RADIUS_MM`` of its support); Σp in the lesion-free slices and how many of them reach
  p ≥ 0.5; per lesion, the soft and the binarised (p ≥ 0.5) volume;
* lesion detection: LTPR on the non-faint lesions (all ≥ 3 mm) and LFDR on all, Dice against
  the truth ≥ 0.5, at 0.5 **and at the model's own threshold** (chosen on its validation
  subject); ECE against the binarised and the soft truth;
* the lesion-free scan: its largest p, Σp and its slices reaching p ≥ 0.5;
* the prediction with batch sizes 1 and 16 (largest difference).

Errors are ``(V_pred − V_true) / V_true`` in %; mean ± std over seeds of the mean over the
test subjects.

    python -m benchmarks.bench_partial_volume [--quick] [--out DIR]
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import _common as C

PIPELINES = ("softseg", "conventional")
TITLES = {"softseg": "SoftSeg", "conventional": "conventional"}
RADIUS_MM = 3.0


def settings(quick: bool) -> dict:
    """Training protocol and seeds of the phantom studies (this one and ``bench_fusion``)."""
    if quick:
        return {"budget": C.Budget(epochs=2, patience=1, batch_size=16, depth=2, base_features=4, val_fraction=0.5),
                "seeds": 2, "workers": 1}  # fusion: 1 (see bench_fusion)
    # patience scaled from the thesis's 50 epochs to 20, at most 100 epochs: the conventional sizing run plateaued at
    # 94 epochs (README, sizing); a run that does not is reported as such. Steps on 64 x 64 patches of the 112 x 136
    # box (3.7x fewer pixels per step than whole slices; validation on whole slices)
    return {"budget": C.Budget(epochs=100, patience=20, batch_size=8, val_fraction=0.25, patch_size=(64, 64)),
            "seeds": 5, "workers": C.WORKERS}


def lesion_owner(subj: C.Subject) -> tuple[np.ndarray, dict]:
    """Per voxel of the cropped subject: the id of the lesion it is assigned to (0: none; a
    voxel near two lesions goes to the nearer, touching lesions split their shared voxels by
    the larger true fraction), and each lesion's true volume in voxels."""
    from scipy import ndimage

    from napari_softseg.io.phantom import render_fraction

    shape = subj.truth.shape
    best = np.zeros(shape, np.float32)
    owner = np.zeros(shape, np.int32)
    true_voxels = {}
    for les in subj.lesions:
        box, frac = render_fraction(les, subj.full_shape)
        true_voxels[les.id] = float(frac.sum())
        local = tuple(slice(b.start - o, b.stop - o) for b, o in zip(box, subj.offset))
        if any(s.start < 0 or s.stop > n for s, n in zip(local, shape)):
            raise ValueError(f"lesion {les.id} leaves the cropped grid")
        sub_best, sub_owner = best[local], owner[local]
        take = frac > sub_best
        sub_best[take], sub_owner[take] = frac[take], les.id
    if not subj.lesions:
        return owner, true_voxels
    dist, idx = ndimage.distance_transform_edt(owner == 0, sampling=subj.spacing, return_indices=True)
    near = owner[tuple(idx)]
    return np.where(dist <= RADIUS_MM, near, 0).astype(np.int32), true_voxels


def breakdown(pred: np.ndarray, subj: C.Subject, owner: np.ndarray, true_voxels: dict) -> dict:
    """Where the total Σp error comes from (mm³; the parts add up to Σp − truth)."""
    vv = float(np.prod(subj.spacing))
    m, truth = subj.mask, subj.truth
    lesion_slice = (truth * m).sum(axis=(0, 1)) > 0
    away = m & (owner == 0)
    faint = {les.id for les in subj.lesions if les.faint}
    ids = np.arange(max(int(owner.max()), 0) + 1)
    in_m = np.bincount(owner[m], weights=pred[m].astype(np.float64), minlength=ids.size) * vv
    parts = {
        "lesion_free_slices": float(pred[away & ~lesion_slice].sum(dtype=np.float64)) * vv,
        "away_in_lesion_slices": float(pred[away & lesion_slice].sum(dtype=np.float64)) * vv,
        "faint_lesions": float(sum(in_m[i] - true_voxels[i] * vv for i in faint)),
        "other_lesions": float(sum(in_m[les.id] - true_voxels[les.id] * vv for les in subj.lesions if les.id not in faint)),
    }
    true_total = float(truth[m].sum(dtype=np.float64)) * vv
    parts["rest"] = (float(pred[m].sum(dtype=np.float64)) * vv - true_total) - sum(parts.values())
    free = np.nonzero(~lesion_slice & m.any(axis=(0, 1)))[0]
    free_max = [float(pred[..., z][m[..., z]].max(initial=0.0)) for z in free]
    return {"parts_mm3": parts, "parts_pct": {k: 100.0 * v / true_total for k, v in parts.items()},
            "n_lesion_free_slices": int(free.size), "n_lesion_free_slices_at_1": int(sum(x >= 0.999 for x in free_max)),
            "faint_true_mm3": float(sum(true_voxels[i] for i in faint)) * vv}


def per_lesion(pred: np.ndarray, subj: C.Subject, owner: np.ndarray, true_voxels: dict) -> dict:
    vv = float(np.prod(subj.spacing))
    n = max(int(owner.max()), 0) + 1
    soft = np.bincount(owner.ravel(), weights=pred.ravel().astype(np.float64), minlength=n)
    hard = np.bincount(owner.ravel(), weights=(pred.ravel() >= 0.5).astype(np.float64), minlength=n)
    out = {}
    for les in subj.lesions:
        t = true_voxels[les.id] * vv
        out[les.id] = {"true_mm3": t, "soft_mm3": soft[les.id] * vv, "binarised_mm3": hard[les.id] * vv,
                       "soft_err": 100.0 * (soft[les.id] * vv - t) / t, "binarised_err": 100.0 * (hard[les.id] * vv - t) / t}
    return out


def detection(pred: np.ndarray, subj: C.Subject, threshold: float) -> dict:
    """LTPR on the non-faint lesions, LFDR on all, Dice against the truth >= 0.5 (inside the
    brain), at ``threshold``."""
    from napari_softseg.labels.masks import binarize
    from napari_softseg.metrics.detection import lesion_detection
    from napari_softseg.metrics.segmentation import dice

    m = subj.mask
    nonfaint = np.where(subj.faint, 0.0, subj.truth)
    return {"ltpr": lesion_detection(pred, nonfaint, threshold=threshold).ltpr,
            "lfdr": lesion_detection(pred, subj.truth, threshold=threshold).lfdr,
            "dice": dice(np.where(m, pred, 0.0), np.where(m, subj.truth, 0.0), threshold=threshold),
            "n_pred_voxels": int(np.count_nonzero(binarize(pred[m], threshold)))}


def scan_scores(pred: np.ndarray, subj: C.Subject, owner: np.ndarray, true_voxels: dict, threshold: float) -> dict:
    """Every number of one test scan (see the module docstring)."""
    from napari_softseg.labels.masks import binarize
    from napari_softseg.metrics.calibration import ece
    from napari_softseg.review.lesions import analyse_lesions

    vv = float(np.prod(subj.spacing))
    m, truth = subj.mask, subj.truth
    true_total = float(truth[m].sum(dtype=np.float64)) * vv
    soft_total = float(pred[m].sum(dtype=np.float64)) * vv
    hard_total = float(np.count_nonzero(binarize(pred[m]))) * vv
    review = float(sum(r.soft_volume_mm3 for r in analyse_lesions(pred * m, threshold=0.5, spacing=subj.spacing)))
    lesion_slice = (truth * m).sum(axis=(0, 1)) > 0
    free = m & ~lesion_slice
    free_max = [float(pred[..., z][m[..., z]].max(initial=0.0)) for z in np.nonzero(~lesion_slice & m.any(axis=(0, 1)))[0]]
    at05, own = detection(pred, subj, 0.5), detection(pred, subj, threshold)
    lesions = per_lesion(pred, subj, owner, true_voxels)
    return {
        "true_mm3": true_total, "soft_mm3": soft_total, "soft_err": 100.0 * (soft_total - true_total) / true_total,
        "binarised_err": 100.0 * (hard_total - true_total) / true_total,
        "review_soft_err": 100.0 * (review - true_total) / true_total,
        "free_sum_p_pct": 100.0 * float(pred[free].sum(dtype=np.float64)) * vv / true_total,
        "free_haze_voxels": int(np.count_nonzero((pred[free] >= 0.01) & (pred[free] < 0.2))),
        "free_slices_ge_05": int(sum(x >= 0.5 for x in free_max)), "n_free_slices": len(free_max),
        "ltpr_05": at05["ltpr"], "lfdr_05": at05["lfdr"], "dice_05": at05["dice"],
        "ltpr_own": own["ltpr"], "lfdr_own": own["lfdr"], "dice_own": own["dice"], "threshold_own": threshold,
        "ece_bin": ece(pred, binarize(truth).astype(np.float32), mask=m), "ece_soft": ece(pred, truth, mask=m),
        "max_p": float(pred[m].max()),
        "mean_abs_lesion_soft_err": float(np.mean([abs(v["soft_err"]) for v in lesions.values()])),
        "mean_abs_lesion_binarised_err": float(np.mean([abs(v["binarised_err"]) for v in lesions.values()])),
        "per_lesion": lesions, "breakdown": breakdown(pred, subj, owner, true_voxels),
    }


def free_scan_scores(pred: np.ndarray, subj: C.Subject) -> dict:
    m = subj.mask
    zmax = [float(pred[..., z][m[..., z]].max(initial=0.0)) for z in range(pred.shape[2]) if m[..., z].any()]
    return {"max_p": float(pred[m].max()), "sum_p_mm3": float(pred[m].sum(dtype=np.float64)) * float(np.prod(subj.spacing)),
            "slices_ge_05": int(sum(x >= 0.5 for x in zmax)), "n_slices": len(zmax)}


def phantom_jobs(data: dict, pipelines, seeds, budget: C.Budget, labels_of, label_source: str = "label",
                 batch_check: bool = True) -> list[C.Job]:
    """One job per (seed, pipeline): train on the cohort's fit subjects (labels from
    ``labels_of(subject, pipeline)``), predict every test subject and the lesion-free scan."""
    fit = data["fit"]
    predict = {f"test{i}": s.image for i, s in enumerate(data["test"])}
    predict["free"] = data["free"].image
    jobs = []
    for seed in seeds:
        for pipe in pipelines:
            jobs.append(C.Job({"pipeline": pipe, "seed": seed}, [s.image for s in fit], [labels_of(s, pipe) for s in fit],
                              fit[0].spacing, pipe, seed, budget, label_source=label_source, predict=dict(predict),
                              batch_check="test0" if batch_check and (pipe == "softseg" or seed == 0) else None))
    return jobs


def run(quick: bool = False, out_dir: Path = C.RESULTS) -> dict:
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    s = settings(quick)
    data = C.cohort(quick)
    owners = [lesion_owner(subj) for subj in data["test"]]
    jobs = phantom_jobs(data, PIPELINES, range(s["seeds"]), s["budget"], lambda subj, pipe: subj.truth)
    runs = []
    for r in C.run_jobs(jobs, s["workers"], (lambda *a: None) if quick else print):
        scans = [scan_scores(r["soft"][f"test{i}"], subj, *owners[i], r["threshold_val"])
                 for i, subj in enumerate(data["test"])]
        runs.append({**r["key"], "scans": scans, "free_scan": free_scan_scores(r["soft"]["free"], data["free"]),
                     **{k: r[k] for k in ("convergence", "train_s", "train_cpu_s", "threshold_checkpoint", "threshold_val",
                                          "batch_1_vs_16", "n_train_slices", "n_val_slices", "val_loss")}})
    result = {"quick": quick, "budget": vars(s["budget"]).copy(), "budget_text": s["budget"].describe(), "seeds": s["seeds"],
              "radius_mm": RADIUS_MM, "cohort": cohort_text(data), "spacing": list(data["test"][0].spacing),
              "test_shape": list(data["test"][0].truth.shape),
              "lesions": [{"id": les.id, "diameter_mm": les.diameter_mm, "faint": les.faint, "touching": les.touching,
                           "analytic_mm3": les.volume_mm3} for les in data["test"][0].lesions],
              "summary": summarise(runs), "runs": runs, "seconds": time.perf_counter() - t0}
    C.write_json(out_dir / "partial_volume.json", result)
    figure(result, out_dir)
    C.write_text(out_dir / "partial_volume.md", markdown(result))
    return result


def cohort_text(data: dict) -> str:
    s = data["test"][0]
    return (f"fit (training + 1 validation): {', '.join(x.name for x in data['fit'])}; test: "
            f"{', '.join(x.name for x in data['test'])} and {data['free'].name}; "
            f"{'x'.join(map(str, s.truth.shape))} voxels of {'x'.join(f'{v:g}' for v in s.spacing)} mm each")


SCAN_KEYS = ("soft_err", "binarised_err", "review_soft_err", "free_sum_p_pct", "free_haze_voxels", "free_slices_ge_05",
             "ltpr_05", "ltpr_own", "lfdr_05", "lfdr_own", "dice_05", "dice_own", "threshold_own", "ece_bin", "ece_soft",
             "max_p", "mean_abs_lesion_soft_err", "mean_abs_lesion_binarised_err")
PARTS = ("lesion_free_slices", "away_in_lesion_slices", "faint_lesions", "other_lesions", "rest")


def run_mean(run: dict, key: str) -> float:
    """The mean over a run's test scans (NaN ignored)."""
    return C.mean_std([s[key] for s in run["scans"]])[0]


def summarise(runs: list[dict]) -> dict:
    """Per pipeline: mean ± std over seeds of the per-run means over the test scans; counts
    (lesion-free slices ≥ 0.5, all-zero runs, plateaued runs) over every run."""
    out = {}
    for pipe in PIPELINES:
        mine = [r for r in runs if r["pipeline"] == pipe]
        if not mine:
            continue
        row = {k: dict(zip(("mean", "std"), C.mean_std([run_mean(r, k) for r in mine]))) for k in SCAN_KEYS}
        row["parts_pct"] = {k: dict(zip(("mean", "std"), C.mean_std(
            [np.mean([s["breakdown"]["parts_pct"][k] for s in r["scans"]]) for r in mine]))) for k in PARTS}
        row["free_slices_ge_05_total"] = int(sum(s["free_slices_ge_05"] for r in mine for s in r["scans"]))
        row["free_slices_at_1"] = [s["breakdown"]["n_lesion_free_slices_at_1"] for r in mine for s in r["scans"]]
        row["n_free_slices"] = [s["n_free_slices"] for s in mine[0]["scans"]]
        row["free_scan"] = {k: dict(zip(("mean", "std"), C.mean_std([r["free_scan"][k] for r in mine])))
                            for k in ("max_p", "sum_p_mm3", "slices_ge_05")}
        row["free_scan_slices_ge_05_total"] = int(sum(r["free_scan"]["slices_ge_05"] for r in mine))
        row["all_zero_runs"] = sum(1 for r in mine if max(s["max_p"] for s in r["scans"]) <= 0.05)
        row["plateaued"] = [bool(r["convergence"]["plateaued"]) for r in mine]
        row["epochs_run"] = [r["convergence"]["epochs_run"] for r in mine]
        row["best_epoch"] = [r["convergence"]["best_epoch"] for r in mine]
        row["n_runs"] = len(mine)
        diffs = [r["batch_1_vs_16"] for r in mine if r["batch_1_vs_16"] is not None]
        row["batch_1_vs_16_max"] = max(diffs) if diffs else None
        row["train_s_mean"] = C.mean_std([r["train_s"] for r in mine])[0]
        row["train_cpu_s_mean"] = C.mean_std([r["train_cpu_s"] for r in mine])[0]
        out[pipe] = row
    return out


def _pm(v: dict, d: int = 1) -> str:
    return f"{C.fmt(v['mean'], d)} ± {C.fmt(v['std'], d)}"


def markdown(r: dict) -> str:
    from .bench_ablation import convergence_cell

    lines = ["## Partial volume and lesion detection on the phantom cohort (exact truth)", ""]
    if r["quick"]:
        lines += ["**Quick smoke run: tiny budget, numbers meaningless.**", ""]
    lines += [f"Cohort: {r['cohort']}. Trained on the true fractions (SoftSeg: soft; conventional: binarised at 0.5); "
              f"protocol per model and seed: {r['budget_text']}. {r['seeds']} seeds (weights, augmentation, batches and "
              "which fit subject validates). Error = (V_pred − V_true) / V_true; mean ± std over seeds of the mean over "
              "the test scans. Own threshold: chosen on the validation subject.", ""]
    header = ["pipeline", "Σp error %", "p≥0.5 error %", "review-dock Σp error %", "Σp in lesion-free slices %",
              "lesion-free slices ≥ 0.5 (all runs)", "LTPR % non-faint (own / 0.5)", "LFDR % (own / 0.5)",
              "Dice % (own / 0.5)", "own threshold", "ECE vs binarised truth", "ECE vs soft truth",
              "lesion-free scan: max p, slices ≥ 0.5 (all runs)", "converged; epochs", "batch 1 vs 16 max diff"]
    rows = []
    for pipe, s in r["summary"].items():
        b = s["batch_1_vs_16_max"]
        rows.append([TITLES[pipe], _pm(s["soft_err"]), _pm(s["binarised_err"]), _pm(s["review_soft_err"]),
                     _pm(s["free_sum_p_pct"], 2), f"{s['free_slices_ge_05_total']} of {sum(s['n_free_slices']) * s['n_runs']}",
                     f"{_pm(s['ltpr_own'])} / {_pm(s['ltpr_05'])}", f"{_pm(s['lfdr_own'])} / {_pm(s['lfdr_05'])}",
                     f"{_pm(s['dice_own'])} / {_pm(s['dice_05'])}", _pm(s["threshold_own"], 2), _pm(s["ece_bin"], 4),
                     _pm(s["ece_soft"], 4), f"{_pm(s['free_scan']['max_p'], 3)}, {s['free_scan_slices_ge_05_total']}",
                     convergence_cell(s), "n/a" if b is None else f"{b:.1e}"])
    lines += [C.md_table(header, rows), ""]
    lines += ["Where the total Σp error comes from, in % of the true volume (the parts add up to the Σp error):", ""]
    titles = (("lesion_free_slices", "Σp in lesion-free slices, away from lesions"),
              ("away_in_lesion_slices", "Σp away from lesions in lesion slices"),
              ("faint_lesions", "faint lesions (Σp − true)"), ("other_lesions", "other lesions (Σp − true)"),
              ("rest", "truth outside the neighbourhoods"))
    rows = [[TITLES[p]] + [f"{s['parts_pct'][k]['mean']:+.1f} ± {s['parts_pct'][k]['std']:.1f}" for k, _ in titles]
            + [f"{min(s['free_slices_at_1'])}–{max(s['free_slices_at_1'])}"] for p, s in r["summary"].items()]
    lines += [C.md_table(["pipeline"] + [t for _, t in titles] + ["lesion-free slices with max p = 1 (per scan)"], rows), ""]
    lines += _per_lesion_lines(r) + ["![partial volume](partial_volume.png)", ""]
    return "\n".join(lines)


def _per_lesion_lines(r: dict) -> list[str]:
    first = {p: next((x for x in r["runs"] if x["pipeline"] == p and x["seed"] == 0), None) for p in PIPELINES}
    if not r["lesions"] or None in first.values():
        return []
    rows = []
    for les in r["lesions"]:
        a = first["softseg"]["scans"][0]["per_lesion"]
        b = first["conventional"]["scans"][0]["per_lesion"]
        k = str(les["id"]) if str(les["id"]) in a else les["id"]
        tag = ("faint " if les["faint"] else "") + (f"touches {les['touching']}" if les["touching"] else "")
        rows.append([les["id"], f"{les['diameter_mm']:.1f}", tag, f"{a[k]['true_mm3']:.1f}", f"{les['analytic_mm3']:.1f}",
                     f"{a[k]['soft_err']:+.1f}", f"{a[k]['binarised_err']:+.1f}", f"{b[k]['soft_err']:+.1f}",
                     f"{b[k]['binarised_err']:+.1f}"])
    return [f"Per lesion of the first test subject (seed 0; neighbourhood {r['radius_mm']:g} mm around each lesion):", "",
            C.md_table(["lesion", "diameter mm", "", "true mm³", "analytic mm³", "SoftSeg Σp err %", "SoftSeg p≥0.5 err %",
                        "conv. Σp err %", "conv. p≥0.5 err %"], rows, "rrlrrrrrr"), ""]


def figure(r: dict, out_dir: Path) -> None:
    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    lo, hi = np.inf, 0.0
    for pipe, color in zip(PIPELINES, ("C0", "C3")):
        for kind, marker in (("soft", "o"), ("binarised", "x")):
            t, p = [], []
            for x in r["runs"]:
                if x["pipeline"] == pipe:
                    for scan in x["scans"]:
                        for v in scan["per_lesion"].values():
                            t.append(v["true_mm3"])
                            p.append(max(v[f"{kind}_mm3"], 0.1))
            if t:
                ax.scatter(t, p, marker=marker, color=color, s=18, alpha=0.6,
                           label=f"{TITLES[pipe]} {'Σp' if kind == 'soft' else 'p≥0.5'}")
                lo, hi = min(lo, min(t), min(p)), max(hi, max(t), max(p))
    if hi > 0:
        ax.plot([lo, hi], [lo, hi], color="0.5", ls="--", lw=1, label="identity")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("true lesion volume (mm³)")
    ax.set_ylabel("predicted volume (mm³)")
    ax.set_title("Per-lesion volume on the unseen phantoms", fontsize=10)
    ax.legend(fontsize=7)
    C.save_figure(fig, out_dir / "partial_volume.png")


if __name__ == "__main__":
    from benchmarks.run_all import bench_cli

    raise SystemExit(bench_cli(__doc__, run, "partial_volume"))
