"""Ablation of the SoftSeg ingredients (Gros, Lemay & Cohen-Adad, MedIA 2021, Table 4.2).

The five candidates of :data:`napari_softseg.engine.presets.PRESETS` — ``softseg`` (Soft-ReLU-Wing),
``conventional`` (Hard-Sig-Dice), ``hard-relu-wing``, ``soft-relu-dice`` and
``soft-sig-wing`` — each with the engine's defaults for its preset, and a sixth row,
``softseg-weighted``: SoftSeg with the Adaptive Wing weighted loss map (W = 10, the
"detection-oriented" option), on two real datasets:

* **brain grey matter**: the shipped T1 with FSL FAST's grey-matter partial-volume map as
  soft truth (3 mm isotropic block mean, the two artificial spheres removed);
* **spinal-cord grey matter**: the shipped T2* scan and its expert's mask, both averaged over
  2 x 2 in-plane blocks (1 mm; partial-volume truth k/4), cropped around the cord.

Each seed *k* holds out the *k*-th of 5 contiguous slabs of axial slices (a slab
cross-validation) and trains every candidate on the rest through the product's trainer,
which holds out a validation slab of those and stops early (the thesis's patience rule);
the best-validation weights predict the whole scan. Metrics on the held-out slab
(:func:`napari_softseg.metrics.segmentation.evaluate`): Dice, precision, recall and AVD at 0.5
**and at the model's own threshold** (chosen on its validation slab, the thesis's
protocol), ECE against the truth binarised at 0.5 (the thesis's measure) and against the
soft truth, Brier, softness, the soft-volume error Σp − Σtruth, the epochs each run reached
and whether its validation loss plateaued. Mean ± std over seeds, two-sided Wilcoxon
signed-rank p against SoftSeg; figures: Dice against threshold (Fig. 4.3), the
distribution of predicted values (Fig. 4.4) and reliability diagrams.

    python -m benchmarks.bench_ablation [--quick] [--out DIR]
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from . import _common as C

CANDIDATES = ("softseg", "conventional", "hard-relu-wing", "soft-relu-dice", "soft-sig-wing", "softseg-weighted")
#: candidates that are a preset trained with another setting: key -> (preset, Budget overrides, title)
VARIANTS = {"softseg-weighted": ("softseg", {"foreground_weight": 10.0}, "Soft-ReLU-Wing, weighted loss map W = 10")}


def title(cand: str) -> str:
    from napari_softseg.engine.presets import PRESETS

    return VARIANTS[cand][2] if cand in VARIANTS else PRESETS[cand].title


#: key, column title, digits
METRICS = (
    ("dice_own", "Dice % (own thr.)", 1), ("dice", "Dice % (0.5)", 1), ("precision_own", "precision % (own)", 1),
    ("recall_own", "recall % (own)", 1), ("avd_own", "AVD % (own)", 1), ("threshold_own", "own threshold", 2),
    ("ece_bin", "ECE vs binarised truth", 4), ("ece", "ECE vs soft truth", 4), ("brier", "Brier", 4),
    ("sum_p_err", "Σp error %", 1), ("softness", "softness %", 1),
)
TESTED = ("dice_own", "dice", "ece_bin", "ece", "brier", "softness")


@dataclass
class Plan:
    key: str
    load: Callable[[], C.Volume]
    budget: C.Budget
    seeds: int
    gap: int  # slices left out between the test slab and the training slices
    candidates: tuple = CANDIDATES
    workers: int = C.WORKERS
    folds: int = 5  # seed k holds out slab k mod folds

    def fold_list(self, vol: C.Volume) -> list:
        return C.slab_folds(vol.image.shape[vol.slice_axis], self.folds, self.gap)


def plans(quick: bool) -> list[Plan]:
    if quick:
        tiny = dict(epochs=2, patience=1, batch_size=16, depth=2, base_features=4)
        return [
            Plan("brain_gm", lambda: C.brain_gm(factor=6), C.Budget(**tiny), 1, 0, workers=1, folds=2),
            Plan("sct_gm", lambda: C.sct_gm(size=16), C.Budget(**tiny), 2, 0, CANDIDATES[:2], workers=1, folds=2),
        ]
    return [
        # a brain run costs 5-8 times a cord run (README, sizing): the three candidates that matter for SoftSeg's
        # defaults on a dense target; the five-candidate ablation runs on the cord
        Plan("brain_gm", C.brain_gm, C.Budget(epochs=600, batch_size=8), 5, 1,
             ("softseg", "conventional", "softseg-weighted")),
        Plan("sct_gm", C.sct_gm, C.Budget(epochs=800, batch_size=4, val_fraction=0.25), 5, 0),
    ]


def run_metrics(vol: C.Volume, pred: np.ndarray, test: np.ndarray, threshold: float) -> dict:
    """Every metric of one run on the held-out slab ``test`` (see the module docstring)."""
    from napari_softseg.labels.masks import binarize
    from napari_softseg.metrics.calibration import ece
    from napari_softseg.metrics.segmentation import evaluate

    p, t, m = pred[..., test], vol.truth[..., test], vol.mask[..., test]
    at05 = evaluate(p, t, spacing=vol.spacing, mask=m)
    own = evaluate(p, t, spacing=vol.spacing, mask=m, threshold=threshold)
    truth_sum = float(t[m].sum(dtype=np.float64))
    out = {k: at05[k] for k in ("dice", "precision", "recall", "avd", "mse", "ece", "brier")}
    out.update({f"{k}_own": own[k] for k in ("dice", "precision", "recall", "avd")})
    out.update(threshold_own=threshold, ece_bin=ece(p, binarize(t).astype(np.float32), mask=m),
               softness=C.softness(p, m), max_p=float(p[m].max()) if m.any() else 0.0,
               sum_p_err=100.0 * (float(p[m].sum(dtype=np.float64)) - truth_sum) / truth_sum if truth_sum else float("nan"))
    out["all_zero"] = bool(out["max_p"] <= 0.05)
    return out


def _figures_data(vol: C.Volume, pred: np.ndarray, test: np.ndarray) -> dict:
    from napari_softseg.labels.masks import binarize
    from napari_softseg.metrics.calibration import reliability_diagram
    from napari_softseg.metrics.segmentation import threshold_sweep

    p, t, m = pred[..., test], vol.truth[..., test], vol.mask[..., test]
    return {"sweep": threshold_sweep(p, t).to_dict(),
            "reliability": reliability_diagram(p, binarize(t).astype(np.float32), mask=m).to_dict(),
            "histogram": np.histogram(p[m], bins=20, range=(0.0, 1.0))[0].tolist()}


def jobs_for(plan: Plan, vol: C.Volume, seeds, candidates) -> list[C.Job]:
    """One training job per (seed, candidate): seed k trains on every slab but the
    (k mod folds)-th (minus the gap) and predicts the whole scan."""
    folds = plan.fold_list(vol)
    jobs = []
    for seed in seeds:
        train, test = folds[seed % len(folds)]
        for cand in candidates:
            preset, overrides, _ = VARIANTS.get(cand, (cand, {}, ""))
            jobs.append(C.Job({"dataset": plan.key, "candidate": cand, "seed": seed}, [vol.image[..., train]],
                              [vol.truth[..., train]], vol.spacing, preset, seed, replace(plan.budget, **overrides),
                              slice_axis=vol.slice_axis, predict={"scan": vol.image}))
    return jobs


def run_dataset(plan: Plan, log=print) -> dict:
    vol = plan.load()
    folds = plan.fold_list(vol)
    results = C.run_jobs(jobs_for(plan, vol, range(plan.seeds), plan.candidates), plan.workers, log)
    runs = []
    for r in results:
        seed, cand = r["key"]["seed"], r["key"]["candidate"]
        train, test = folds[seed % len(folds)]
        pred = r["soft"]["scan"]
        one = {"candidate": cand, "seed": seed, "test_slices": [int(test[0]), int(test[-1])],
               "metrics": run_metrics(vol, pred, test, r["threshold_val"]), **_figures_data(vol, pred, test),
               **{k: r[k] for k in ("convergence", "train_s", "train_cpu_s", "predict_s", "threshold_checkpoint",
                                    "n_train_slices", "n_val_slices", "val_loss")}}
        runs.append(one)
    hist_truth = np.histogram(vol.truth[vol.mask], bins=20, range=(0.0, 1.0))[0].tolist()
    return {"dataset": vol.name, "note": vol.note, "shape": list(vol.image.shape), "spacing": list(vol.spacing),
            "budget": asdict(plan.budget), "budget_text": plan.budget.describe(), "seeds": plan.seeds, "gap": plan.gap,
            "candidates": list(plan.candidates), "runs": runs, "truth_histogram": hist_truth,
            "summary": summarise(runs, plan.candidates)}


def summarise(runs: list[dict], candidates=CANDIDATES) -> dict:
    """Mean ± std per candidate and metric, Wilcoxon p against SoftSeg (paired by seed),
    convergence and all-zero counts."""
    out = {}
    ref = {r["seed"]: r["metrics"] for r in runs if r["candidate"] == "softseg"}
    for cand in candidates:
        mine = {r["seed"]: r for r in runs if r["candidate"] == cand}
        seeds = sorted(set(mine) & set(ref))
        row = {}
        for key, *_ in METRICS + (("mse", "", 4), ("precision", "", 1), ("recall", "", 1), ("avd", "", 1)):
            vals = [mine[k]["metrics"][key] for k in sorted(mine)]
            m, s = C.mean_std(vals)
            p = (C.wilcoxon_p([mine[k]["metrics"][key] for k in seeds], [ref[k][key] for k in seeds])
                 if cand != "softseg" else None)
            row[key] = {"mean": m, "std": s, "p_vs_softseg": p, "values": vals}
        conv = [mine[k]["convergence"] for k in sorted(mine)]
        row.update(train_s_mean=C.mean_std([mine[k]["train_s"] for k in mine])[0],
                   train_cpu_s_mean=C.mean_std([mine[k]["train_cpu_s"] for k in mine])[0],
                   epochs_run=[c["epochs_run"] for c in conv], best_epoch=[c["best_epoch"] for c in conv],
                   plateaued=[bool(c["plateaued"]) for c in conv], n_runs=len(mine),
                   all_zero_runs=sum(1 for k in mine if mine[k]["metrics"]["all_zero"]))
        out[cand] = row
    return out


def run(quick: bool = False, out_dir: Path = C.RESULTS) -> dict:
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    datasets = {}
    for plan in plans(quick):
        datasets[plan.key] = run_dataset(plan, log=(lambda *a: None) if quick else print)
    result = {"quick": quick, "candidates": list(CANDIDATES), "datasets": datasets, "seconds": time.perf_counter() - t0}
    C.write_json(out_dir / "ablation.json", result)
    figures(result, out_dir)
    C.write_text(out_dir / "ablation.md", markdown(result))
    return result


# ----------------------------------------------------------------------------- report


def _cell(row: dict, key: str, digits: int, with_p: bool) -> str:
    v = row[key]
    text = f"{C.fmt(v['mean'], digits)} ± {C.fmt(v['std'], digits)}" if math.isfinite(v["mean"]) else "n/a"
    if with_p and key in TESTED:
        text += f" (p {C.fmt_p(v['p_vs_softseg'])})"
    return text


def convergence_cell(row: dict) -> str:
    """``k / n plateaued; epochs a–b (best c–d)``."""
    ep, best = [e for e in row["epochs_run"] if e is not None], [b for b in row["best_epoch"] if b is not None]
    span = lambda v: f"{min(v)}–{max(v)}" if v and min(v) != max(v) else (f"{v[0]}" if v else "n/a")  # noqa: E731
    return f"{sum(row['plateaued'])} / {row['n_runs']}; epochs {span(ep)} (best {span(best)})"


def markdown(r: dict) -> str:
    lines = ["## Ablation: the five SoftSeg candidates (Gros et al. 2021, Table 4.2) and SoftSeg with the weighted loss map", ""]
    if r["quick"]:
        lines += ["**Quick smoke run: tiny budget, numbers meaningless.**", ""]
    lines += ["Mean ± std over seeds (each seed holds out a different slab of axial slices); (p …) two-sided Wilcoxon "
              "signed-rank test against SoftSeg, paired by seed. Own threshold: the one maximising Dice on the run's "
              "validation slab (0.05 … 0.95). Overlap metrics against the truth binarised at 0.5; ECE (10 bins) against "
              "the binarised truth (the thesis's measure) and against the soft truth; Brier against the soft truth; "
              "softness = % of voxels with p > 0.05 that are < 0.95; Σp error = (Σp − Σtruth) / Σtruth on the slab. "
              "Converged: the run stopped early because its validation loss plateaued (else it hit the epoch cap still "
              "improving). All-zero: no voxel of the slab above 0.05.", ""]
    for d in r["datasets"].values():
        n = d["seeds"]
        lines += [f"### {d['dataset']}", "",
                  f"Data: {d['note']}; volume {'x'.join(map(str, d['shape']))}. Protocol per candidate and seed: "
                  f"{d['budget_text']}. {n} seeds / slabs" + (f", {d['gap']} slice(s) left out on either side of each "
                                                             "test slab" if d["gap"] else "")
                  + f". With n = {n} pairs the smallest possible two-sided p is {2 / 2 ** n:.4f}.", ""]
        header = ["candidate"] + [t for _, t, _ in METRICS] + ["converged; epochs", "all-zero", "train s (CPU s)"]
        rows = []
        for cand in d["candidates"]:
            row = d["summary"][cand]
            rows.append([f"{title(cand)} (`{cand}`)"] + [_cell(row, k, dg, cand != "softseg") for k, _, dg in METRICS]
                        + [convergence_cell(row), f"{row['all_zero_runs']} / {row['n_runs']}",
                           f"{C.fmt(row['train_s_mean'], 0)} ({C.fmt(row['train_cpu_s_mean'], 0)})"])
        lines += [C.md_table(header, rows), ""]
    lines += ["Figures: `ablation_threshold_sweep.png` (Fig. 4.3), `ablation_histogram.png` (Fig. 4.4), "
              "`ablation_reliability.png` (against the binarised truth).", "",
              "![threshold sweep](ablation_threshold_sweep.png)", "",
              "![prediction histogram](ablation_histogram.png)", "", "![reliability](ablation_reliability.png)", ""]
    return "\n".join(lines)


def figures(r: dict, out_dir: Path) -> None:
    plt = C.pyplot()
    sets = list(r["datasets"].values())
    # Fig. 4.3: Dice against threshold
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4), squeeze=False)
    for ax, d in zip(axes[0], sets):
        for cand in d["candidates"]:
            sw = [run["sweep"] for run in d["runs"] if run["candidate"] == cand]
            th = np.asarray(sw[0]["thresholds"], float)
            dice = np.array([[np.nan if v is None else v for v in s["dice"]] for s in sw], float)
            m, s = np.nanmean(dice, axis=0), np.nanstd(dice, axis=0)
            ax.plot(th, m, marker=".", label=title(cand))
            ax.fill_between(th, m - s, m + s, alpha=0.15)
        ax.set_xlabel("threshold")
        ax.set_ylabel("Dice % (held-out slabs, mean ± std)")
        ax.set_title(d["dataset"], fontsize=10)
        ax.legend(fontsize=7)
    C.save_figure(fig, out_dir / "ablation_threshold_sweep.png")
    # Fig. 4.4: distribution of predicted values
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4), squeeze=False)
    edges = np.linspace(0, 1, 21)
    centres = (edges[:-1] + edges[1:]) / 2
    for ax, d in zip(axes[0], sets):
        for cand in d["candidates"]:
            h = np.sum([run["histogram"] for run in d["runs"] if run["candidate"] == cand], axis=0)
            ax.step(centres, np.maximum(h / max(h.sum(), 1), 1e-7), where="mid", label=title(cand))
        t = np.asarray(d["truth_histogram"], float)
        ax.step(centres, np.maximum(t / max(t.sum(), 1), 1e-7), where="mid", color="k", ls=":", label="truth")
        ax.set_yscale("log")
        ax.set_xlabel("predicted value (20 bins)")
        ax.set_ylabel("share of voxels in the evaluation mask")
        ax.set_title(d["dataset"], fontsize=10)
        ax.legend(fontsize=7)
    C.save_figure(fig, out_dir / "ablation_histogram.png")
    # reliability diagrams against the binarised truth, pooled over seeds
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4.5), squeeze=False)
    for ax, d in zip(axes[0], sets):
        for cand in d["candidates"]:
            pooled = C.pooled_reliability([run["reliability"] for run in d["runs"] if run["candidate"] == cand])
            C.plot_reliability(ax, pooled, title(cand))
        C.reliability_axes(ax, f"{d['dataset']} (vs binarised truth, pooled over seeds)")
    C.save_figure(fig, out_dir / "ablation_reliability.png")


if __name__ == "__main__":
    from benchmarks.run_all import bench_cli

    raise SystemExit(bench_cli(__doc__, run, "ablation"))
