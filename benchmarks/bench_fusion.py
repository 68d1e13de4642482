"""Label fusion × training pipeline on the multi-rater phantom cohort (Lemay et al., MELBA
2022, Table 5.1 and Fig. 5.1).

Three ways to train on several raters — STAPLE, the rater average, and random sampling (one
rater drawn per sample and epoch) — each with the conventional pipeline (Hard-Sig-Dice: the
fused label binarised) and with SoftSeg (Soft-ReLU-Wing), the same protocol for all: the
product's trainer with a validation subject and early stopping.

Raters: the phantom's six styles — conservative, generous, jitter, misses-small, and the two
with whom STAPLE and the average differ: ``spurious`` (accurate, plus false blobs) and
``sloppy`` (dilated, misses lesions). With the first four alone STAPLE ≥ 0.5 equals the
average ≥ 0.5 voxel for voxel, so the fusion rows would compare the same target; with six,
STAPLE trusts the generous and sloppy pair that agree on dilated borders and its estimate is
larger than the average's (the table header gives both against the exact truth). Data: the
cohort of :data:`benchmarks._common.COHORT` (4 fit subjects, one of which validates; 2
unseen test subjects). Metrics inside the brain, per test subject, averaged:

* entropy MAE: |mean voxel entropy of the prediction − that of the rater average| over the
  volume, and per slice holding any rater's lesion (the paper's per-image MAE); the signed
  difference says over- (> 0) or under-confident (< 0) in the paper's sense;
* Brier and ECE against the rater average; ECE against the binarised STAPLE (the paper's
  calibration measure);
* Dice, precision, recall, AVD, LTPR, LFDR against the binarised STAPLE of the test raters,
  at the model's own threshold (chosen on its validation subject against its training
  target) and at 0.5; Dice and Σp against the exact truth;
* the composite score (z-scored Dice, precision, recall and −AVD across the six candidates).

A separate study (``make bench-fusion``, ``python -m benchmarks.run_all --only fusion
thesis verdict``): its 30 phantom runs do not fit in ``make bench``'s budget (see
``benchmarks/README.md``).

    python -m benchmarks.bench_fusion [--quick] [--out DIR]
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import _common as C
from .bench_partial_volume import cohort_text, phantom_jobs, settings

SEPARATE = True  # run_all leaves it out unless named with --only
SOURCES = ("staple", "average", "random")
SOURCE_TITLES = {"staple": "STAPLE", "average": "average", "random": "random sampling"}
PIPELINES = ("conventional", "softseg")
PIPELINE_TITLES = {"conventional": "conventional", "softseg": "SoftSeg"}
COLUMNS = (  # key, title, digits
    ("entropy_mae", "entropy MAE (volume)", 4), ("entropy_mae_slices", "entropy MAE (slices)", 4),
    ("entropy_diff_slices", "entropy pred − raters (slices)", 4),
    ("brier", "Brier vs average", 5), ("ece_average", "ECE vs average", 4), ("ece_bin", "ECE vs binarised STAPLE", 4),
    ("dice_own", "Dice % (own)", 1), ("dice", "Dice % (0.5)", 1), ("precision_own", "precision % (own)", 1),
    ("recall_own", "recall % (own)", 1), ("avd_own", "AVD % (own)", 1), ("ltpr_own", "LTPR % (own)", 1),
    ("lfdr_own", "LFDR % (own)", 1), ("threshold_own", "own threshold", 2), ("dice_truth_own", "Dice % vs exact truth (own)", 1),
    ("soft_err_truth", "Σp error % vs exact truth", 1), ("composite", "composite score", 2),
)


def references(subj: C.Subject) -> dict:
    """The test subject's rater references: STAPLE's soft estimate and the rater average."""
    from napari_softseg.fusion.methods import fuse
    from napari_softseg.metrics.calibration import rater_average

    raters = list(subj.raters.values())
    return {"staple": fuse(raters, "staple").soft, "average": rater_average(raters), "raters": raters}


def slice_entropies(pred: np.ndarray, avg: np.ndarray, mask: np.ndarray) -> tuple[list, list]:
    """Mean voxel entropy per axial slice holding any rater's lesion: (predicted, raters)."""
    from napari_softseg.metrics.calibration import image_entropy

    hp, hr = [], []
    for z in range(pred.shape[2]):
        if np.any(avg[..., z] > 0) and np.any(mask[..., z]):
            hp.append(image_entropy(pred[..., z], mask=mask[..., z]))
            hr.append(image_entropy(avg[..., z], mask=mask[..., z]))
    return hp, hr


def scan_metrics(pred: np.ndarray, subj: C.Subject, ref: dict, threshold: float) -> dict:
    from napari_softseg.labels.masks import binarize
    from napari_softseg.metrics.calibration import ece, reliability_diagram
    from napari_softseg.metrics.segmentation import dice, evaluate

    m, vv = subj.mask, float(np.prod(subj.spacing))
    at05 = evaluate(pred, ref["staple"], raters=ref["raters"], spacing=subj.spacing, mask=m)
    own = evaluate(pred, ref["staple"], spacing=subj.spacing, mask=m, threshold=threshold)
    hp, hr = slice_entropies(pred, ref["average"], m)
    out = {k: at05[k] for k in ("entropy_mae", "entropy_voxel_mae", "image_entropy_pred", "image_entropy_raters",
                                "brier", "dice", "precision", "recall", "avd", "ltpr", "lfdr")}
    out.update({f"{k}_own": own[k] for k in ("dice", "precision", "recall", "avd", "ltpr", "lfdr")})
    truth_sum = float(subj.truth[m].sum(dtype=np.float64))
    out.update(threshold_own=threshold, ece_average=ece(pred, ref["average"], mask=m),
               ece_bin=ece(pred, binarize(ref["staple"]).astype(np.float32), mask=m),
               entropy_mae_slices=float(np.mean(np.abs(np.subtract(hp, hr)))) if hp else float("nan"),
               entropy_diff_slices=float(np.mean(np.subtract(hp, hr))) if hp else float("nan"),
               dice_truth_own=dice(np.where(m, pred, 0.0), np.where(m, subj.truth, 0.0), threshold=threshold),
               soft_err_truth=100.0 * (float(pred[m].sum(dtype=np.float64)) - truth_sum) / truth_sum,
               max_p=float(pred[m].max()))
    return {"metrics": out, "slice_entropy_pred": hp, "slice_entropy_raters": hr,
            "reliability_average": reliability_diagram(pred, ref["average"], mask=m).to_dict(), "volume_mm3": vv}


def run(quick: bool = False, out_dir: Path = C.RESULTS) -> dict:
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    s = settings(quick)
    if quick:
        s["seeds"] = 1  # 6 candidates: one seed keeps the smoke run short
    data = C.cohort(quick)
    refs = [references(subj) for subj in data["test"]]
    jobs = []
    for source in SOURCES:
        for job in phantom_jobs(data, PIPELINES, range(s["seeds"]), s["budget"], lambda subj, pipe: list(subj.raters.values()),
                                label_source=source, batch_check=False):
            job.key["source"] = source
            jobs.append(job)
    runs = []
    for r in C.run_jobs(jobs, s["workers"], (lambda *a: None) if quick else print):
        scans = [scan_metrics(r["soft"][f"test{i}"], subj, refs[i], r["threshold_val"]) for i, subj in enumerate(data["test"])]
        metrics = {k: C.mean_std([sc["metrics"][k] for sc in scans])[0] for k in scans[0]["metrics"]}
        runs.append({**r["key"], "metrics": metrics, "scans": scans,
                     **{k: r[k] for k in ("convergence", "train_s", "train_cpu_s", "threshold_checkpoint", "n_val_slices")}})
    result = {
        "quick": quick, "budget": vars(s["budget"]).copy(), "budget_text": s["budget"].describe(), "seeds": s["seeds"],
        "raters": list(data["test"][0].raters), "cohort": cohort_text(data),
        "references": reference_agreement(data, refs), "table": summarise(runs), "runs": runs,
        "seconds": time.perf_counter() - t0,
    }
    C.write_json(out_dir / "fusion.json", result)
    figures(result, out_dir)
    C.write_text(out_dir / "fusion.md", markdown(result))
    return result


def reference_agreement(data: dict, refs: list[dict]) -> dict:
    """How the two fused references of the test raters differ, and how each matches the exact
    truth (voxels ≥ 0.5 inside the brain; Dice in %)."""
    from napari_softseg.metrics.segmentation import dice

    rows = []
    for subj, ref in zip(data["test"], refs):
        m = subj.mask
        st, av, tr = (np.where(m, a, 0.0) for a in (ref["staple"], ref["average"], subj.truth))
        rows.append({"staple_voxels": int(np.count_nonzero(st >= 0.5)), "average_voxels": int(np.count_nonzero(av >= 0.5)),
                     "differing_voxels": int(np.count_nonzero((st >= 0.5) != (av >= 0.5))),
                     "dice_staple_average": dice(st, av), "dice_staple_truth": dice(st, tr), "dice_average_truth": dice(av, tr)})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def _name(source: str, pipe: str) -> str:
    return f"{SOURCE_TITLES[source]} / {PIPELINE_TITLES[pipe]}"


def summarise(runs: list[dict]) -> dict:
    """Mean ± std over seeds per (source, pipeline); composite score of the means;
    convergence per cell."""
    from napari_softseg.metrics.segmentation import composite_score

    table = {}
    for source in SOURCES:
        for pipe in PIPELINES:
            mine = [r for r in runs if r["source"] == source and r["pipeline"] == pipe]
            row = {k: dict(zip(("mean", "std"), C.mean_std([r["metrics"][k] for r in mine]))) for k in mine[0]["metrics"]}
            row["plateaued"] = [bool(r["convergence"]["plateaued"]) for r in mine]
            row["epochs_run"] = [r["convergence"]["epochs_run"] for r in mine]
            row["best_epoch"] = [r["convergence"]["best_epoch"] for r in mine]
            row["n_runs"] = len(mine)
            row["all_zero_runs"] = sum(1 for r in mine if r["metrics"]["max_p"] <= 0.05)
            table[_name(source, pipe)] = row
    means = {n: {"dice": row["dice_own"]["mean"], "precision": row["precision_own"]["mean"],
                 "recall": row["recall_own"]["mean"], "avd": row["avd_own"]["mean"]} for n, row in table.items()}
    for n, v in composite_score(means).items():
        table[n]["composite"] = {"mean": v, "std": float("nan")}
    return table


def markdown(r: dict) -> str:
    from .bench_ablation import convergence_cell

    lines = ["## Label fusion: STAPLE / average / random sampling x conventional / SoftSeg (Lemay et al. 2022, Table 5.1)", ""]
    if r["quick"]:
        lines += ["**Quick smoke run: tiny budget, numbers meaningless.**", ""]
    ref = r["references"]
    lines += [f"Phantom cohort, {len(r['raters'])} raters ({', '.join(r['raters'])}): {r['cohort']}. Protocol per candidate "
              f"and seed: {r['budget_text']}; mean ± std over {r['seeds']} seed(s) of the mean over the test subjects. "
              "Metrics inside the brain; segmentation metrics against the binarised STAPLE of the test raters. The two "
              f"references differ: STAPLE ≥ 0.5 holds {ref['staple_voxels']:.0f} voxels, the average ≥ 0.5 "
              f"{ref['average_voxels']:.0f} ({ref['differing_voxels']:.0f} differ; Dice {ref['dice_staple_average']:.1f} %); "
              f"against the exact truth STAPLE scores Dice {ref['dice_staple_truth']:.1f} % and the average "
              f"{ref['dice_average_truth']:.1f} % (STAPLE trusts the raters who agree on dilated borders). Composite score "
              "from the means at the own threshold (z-scores of Dice, precision, recall, −AVD across the six candidates; "
              "higher is better).", ""]
    header = ["labels / pipeline"] + [t for _, t, _ in COLUMNS] + ["converged; epochs"]
    rows = []
    for name, row in r["table"].items():
        cells = [C.fmt(row[k]["mean"], dg) + ("" if k == "composite" or r["seeds"] < 2 else f" ± {C.fmt(row[k]['std'], dg)}")
                 for k, _, dg in COLUMNS]
        rows.append([name] + cells + [convergence_cell(row)])
    lines += [C.md_table(header, rows), ""]
    best = {k: min(r["table"], key=lambda n: r["table"][n][k]["mean"]) for k in ("entropy_mae", "brier", "ece_average", "ece_bin")}
    best["composite"] = max(r["table"], key=lambda n: r["table"][n]["composite"]["mean"])
    lines += ["Best (from the means): " + "; ".join(f"{k.replace('_', ' ')}: {n}" for k, n in best.items()) + ".", ""]
    for source in SOURCES:
        s, c = r["table"][_name(source, "softseg")], r["table"][_name(source, "conventional")]
        lines.append(f"- {SOURCE_TITLES[source]}: SoftSeg / conventional ECE vs binarised STAPLE "
                     f"{C.fmt(_ratio(s['ece_bin']['mean'], c['ece_bin']['mean']), 2)}, entropy MAE "
                     f"{C.fmt(_ratio(s['entropy_mae']['mean'], c['entropy_mae']['mean']), 2)}, Dice (own thresholds) "
                     f"difference {s['dice_own']['mean'] - c['dice_own']['mean']:+.1f} points.")
    lines += ["", "![reliability](fusion_reliability.png)", "", "![entropy](fusion_entropy.png)", ""]
    return "\n".join(lines)


def _ratio(a, b) -> float:
    return a / b if b else float("nan")


def figures(r: dict, out_dir: Path) -> None:
    plt = C.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, pipe in zip(axes, PIPELINES):
        for source in SOURCES:
            diags = [sc["reliability_average"] for x in r["runs"] if x["source"] == source and x["pipeline"] == pipe
                     for sc in x["scans"]]
            C.plot_reliability(ax, C.pooled_reliability(diags), SOURCE_TITLES[source])
        C.reliability_axes(ax, f"{PIPELINE_TITLES[pipe]}: reliability vs the rater average")
    C.save_figure(fig, out_dir / "fusion_reliability.png")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharex=True, sharey=True)
    for ax, pipe in zip(axes, PIPELINES):
        hi = 0.0
        for source, marker in zip(SOURCES, "o^s"):
            hr, hp = [], []
            for x in r["runs"]:
                if x["source"] == source and x["pipeline"] == pipe:
                    for sc in x["scans"]:
                        hr += sc["slice_entropy_raters"]
                        hp += sc["slice_entropy_pred"]
            ax.scatter(hr, hp, s=14, marker=marker, alpha=0.6, label=SOURCE_TITLES[source])
            hi = max([hi] + hr + hp)
        ax.plot([0, hi], [0, hi], color="0.5", ls="--", lw=1, label="identity")
        ax.set_xlabel("rater-average entropy per slice (bits)")
        ax.set_ylabel("predicted entropy per slice (bits)")
        ax.set_title(f"{PIPELINE_TITLES[pipe]} (one point per slice, test subject and seed)", fontsize=10)
        ax.legend(fontsize=7)
    C.save_figure(fig, out_dir / "fusion_entropy.png")


if __name__ == "__main__":
    from benchmarks.run_all import bench_cli

    raise SystemExit(bench_cli(__doc__, run, "fusion"))
