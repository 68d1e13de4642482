"""Ablation of the SoftSeg ingredients (Gros, Lemay & Cohen-Adad, MedIA 2021, Table 4.2).

The five candidates of :data:`napari_softseg.engine.presets.PRESETS` — ``softseg`` (Soft-ReLU-Wing),
``conventional`` (Hard-Sig-Dice), ``hard-relu-wing``, ``soft-relu-dice`` and
``soft-sig-wing`` — are trained with the same budget on two real datasets, with a sixth row,
``softseg-unweighted``: SoftSeg with the plain Adaptive Wing loss (no weighted loss map,
which is what ivadomed's implementation computes in effect):

* **brain grey matter**: the shipped T1 with FSL FAST's grey-matter partial-volume map as
  soft truth (2 mm isotropic block mean, the two artificial spheres removed);
* **spinal-cord grey matter**: the shipped T2* scan with its expert's binary mask, at
  native resolution, cropped around the cord.

Each seed holds out a different contiguous slab of axial slices (the slabs tile the
volume: a slab cross-validation), trains every candidate on the other slices with that
seed and predicts the whole scan; metrics are computed on the held-out slab with
:func:`napari_softseg.metrics.segmentation.evaluate` (Dice, precision, recall, AVD, RVD at 0.5; MSE, ECE
and Brier against the soft truth — the binary mask for the spinal cord — inside the brain
mask / cord crop) plus softness (share of voxels with ``p > 0.05`` that lie strictly
below 0.95). We report mean ± std over seeds, a two-sided Wilcoxon signed-rank test of each
candidate against SoftSeg (per dataset, n = seeds, and over both datasets together), and the
paper's figures: Dice against threshold (Fig. 4.3), the distribution of predicted values
(Fig. 4.4) and reliability diagrams.

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

CANDIDATES = ("softseg", "conventional", "hard-relu-wing", "soft-relu-dice", "soft-sig-wing", "softseg-unweighted")
#: candidates that are a preset trained with another loss setting: key -> (preset, Budget overrides, title)
VARIANTS = {"softseg-unweighted": ("softseg", {"foreground_weight": 0.0}, "Soft-ReLU-Wing, unweighted loss")}


def title(cand: str) -> str:
    from napari_softseg.engine.presets import PRESETS

    return VARIANTS[cand][2] if cand in VARIANTS else PRESETS[cand].title


#: key, column title, better direction (+1 higher, -1 lower, 0 closer to zero), digits
METRICS = (
    ("dice", "Dice %", 1, 1), ("precision", "precision %", 1, 1), ("recall", "recall %", 1, 1),
    ("avd", "AVD %", -1, 1), ("rvd", "RVD %", 0, 1), ("mse", "MSE", -1, 4), ("ece", "ECE", -1, 4),
    ("brier", "Brier", -1, 4), ("softness", "softness %", 1, 1), ("dice_auto", "Dice % at auto threshold", 1, 1),
)
TESTED = ("dice", "precision", "recall", "avd", "mse", "ece", "softness")


@dataclass
class Plan:
    key: str
    load: Callable[[], C.Volume]
    budget: C.Budget
    seeds: int
    gap: int  # slices left out between the test slab and the training slices
    candidates: tuple = CANDIDATES


def plans(quick: bool) -> list[Plan]:
    if quick:
        return [
            Plan("brain_gm", lambda: C.brain_gm(factor=4), C.Budget(epochs=1, batch_size=16, crop_size=(40, 48), depth=2, base_features=4), 2, 0),
            Plan("sct_gm", lambda: C.sct_gm(size=32), C.Budget(epochs=1, batch_size=16, crop_size=(32, 32), depth=2, base_features=4), 2, 0,
                 CANDIDATES[:2]),
        ]
    return [
        Plan("brain_gm", C.brain_gm, C.Budget(epochs=60, batch_size=8, crop_size=(72, 96)), 5, 1),
        Plan("sct_gm", lambda: C.sct_gm(size=48), C.Budget(epochs=300, batch_size=4, crop_size=(48, 48)), 5, 0),
    ]


def _one_run(vol: C.Volume, pred: np.ndarray, test: np.ndarray, threshold: float) -> dict:
    from napari_softseg.metrics.calibration import reliability_diagram
    from napari_softseg.metrics.segmentation import evaluate, threshold_sweep

    p, t, m = pred[..., test], vol.truth[..., test], vol.mask[..., test]
    ev = evaluate(p, t, spacing=vol.spacing, mask=m)
    auto = evaluate(p, t, spacing=vol.spacing, mask=m, threshold=threshold)
    metrics = {k: ev[k] for k in ("dice", "precision", "recall", "avd", "rvd", "mse", "ece", "brier", "soft_dice")}
    metrics.update(softness=C.softness(p, m), dice_auto=auto["dice"], threshold_auto=threshold,
                   max_p=float(p[m].max()) if m.any() else 0.0)
    return {
        "metrics": metrics,
        "sweep": threshold_sweep(p, t).to_dict(),
        "reliability": reliability_diagram(p, t, mask=m).to_dict(),
        "histogram": np.histogram(p[m], bins=20, range=(0.0, 1.0))[0].tolist(),
    }


def run_dataset(plan: Plan, log=print) -> dict:
    vol = plan.load()
    folds = C.slab_folds(vol.image.shape[vol.slice_axis], plan.seeds, plan.gap)
    runs = []
    for seed, (train, test) in enumerate(folds):
        img, lab = vol.image[..., train], vol.truth[..., train]
        for cand in plan.candidates:
            preset, overrides, _ = VARIANTS.get(cand, (cand, {}, ""))
            budget = replace(plan.budget, **overrides)
            res = C.train_predict(img, lab, preset=preset, seed=seed, budget=budget, spacing=vol.spacing,
                                  predict_on=vol.image, slice_axis=vol.slice_axis)
            one = _one_run(vol, res.soft, test, res.threshold)
            one.update(candidate=cand, seed=seed, test_slices=[int(test[0]), int(test[-1])],
                       n_train_slices=int(train.size), train_s=res.seconds_train, predict_s=res.seconds_predict,
                       epochs_run=res.summary.get("epochs_run"), best_epoch=res.summary.get("best_epoch"))
            runs.append(one)
            log(f"   {plan.key} seed {seed} {cand:15s} Dice {one['metrics']['dice']:5.1f}  ECE {one['metrics']['ece']:.4f}"
                f"  soft {one['metrics']['softness']:4.1f}%  ({res.seconds_train:.0f} s)")
    hist_truth = np.histogram(vol.truth[vol.mask], bins=20, range=(0.0, 1.0))[0].tolist()
    return {"dataset": vol.name, "note": vol.note, "shape": list(vol.image.shape), "spacing": list(vol.spacing),
            "budget": asdict(plan.budget), "budget_text": plan.budget.describe(), "seeds": plan.seeds, "gap": plan.gap,
            "candidates": list(plan.candidates), "runs": runs, "truth_histogram": hist_truth,
            "summary": summarise(runs, plan.candidates)}


def summarise(runs: list[dict], candidates=CANDIDATES) -> dict:
    """Mean ± std per candidate and metric, Wilcoxon p against SoftSeg (paired by seed)."""
    out = {}
    ref = {r["seed"]: r["metrics"] for r in runs if r["candidate"] == "softseg"}
    for cand in candidates:
        mine = {r["seed"]: r["metrics"] for r in runs if r["candidate"] == cand}
        seeds = sorted(set(mine) & set(ref))
        row = {}
        for key, *_ in METRICS:
            m, s = C.mean_std([mine[k][key] for k in sorted(mine)])
            p = C.wilcoxon_p([mine[k][key] for k in seeds], [ref[k][key] for k in seeds]) if cand != "softseg" else None
            row[key] = {"mean": m, "std": s, "p_vs_softseg": p, "values": [mine[k][key] for k in sorted(mine)]}
        row["train_s_mean"] = C.mean_std([r["train_s"] for r in runs if r["candidate"] == cand])[0]
        row["all_zero_runs"] = sum(1 for k in mine if mine[k]["max_p"] <= 0.05)
        out[cand] = row
    return out


def pooled_p(datasets: dict) -> dict:
    """Wilcoxon p against SoftSeg over the runs of every dataset together (pairs: dataset, seed)."""
    out = {}
    common = [c for c in CANDIDATES[1:] if all(c in d["candidates"] for d in datasets.values())]
    for cand in common:
        row = {}
        for key in TESTED:
            a, b = [], []
            for d in datasets.values():
                ref = {r["seed"]: r["metrics"][key] for r in d["runs"] if r["candidate"] == "softseg"}
                for r in d["runs"]:
                    if r["candidate"] == cand and r["seed"] in ref:
                        a.append(r["metrics"][key])
                        b.append(ref[r["seed"]])
            row[key] = {"p": C.wilcoxon_p(a, b), "n": len(a)}
        out[cand] = row
    return out


def bars(datasets: dict) -> list[dict]:
    """The issue's accuracy bars, per dataset: ECE(SoftSeg) <= 0.5 ECE(conventional) and
    Dice(SoftSeg) >= Dice(conventional) - 1 point (means over seeds)."""
    out = []
    for key, d in datasets.items():
        s, c = d["summary"]["softseg"], d["summary"]["conventional"]
        ratio = s["ece"]["mean"] / c["ece"]["mean"] if c["ece"]["mean"] else float("nan")
        out.append({"dataset": d["dataset"], "bar": "ECE(SoftSeg) <= 0.5 x ECE(conventional)",
                    "value": ratio, "limit": 0.5, "met": bool(ratio <= 0.5),
                    "detail": f"ECE {s['ece']['mean']:.4f} vs {c['ece']['mean']:.4f}, ratio {ratio:.2f}"})
        diff = s["dice"]["mean"] - c["dice"]["mean"]
        out.append({"dataset": d["dataset"], "bar": "Dice(SoftSeg) >= Dice(conventional) - 1 point",
                    "value": diff, "limit": -1.0, "met": bool(diff >= -1.0),
                    "detail": f"Dice {s['dice']['mean']:.1f} vs {c['dice']['mean']:.1f} %, difference {diff:+.1f} points"})
    return out


def run(quick: bool = False, out_dir: Path = C.RESULTS) -> dict:
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    datasets = {}
    for plan in plans(quick):
        datasets[plan.key] = run_dataset(plan, log=(lambda *a: None) if quick else print)
    result = {"quick": quick, "candidates": list(CANDIDATES), "datasets": datasets, "pooled_p_vs_softseg": pooled_p(datasets),
              "bars": bars(datasets), "seconds": time.perf_counter() - t0}
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


def markdown(r: dict) -> str:
    lines = ["## Ablation: the five SoftSeg candidates (Gros et al. 2021, Table 4.2) and SoftSeg with an unweighted loss", ""]
    if r["quick"]:
        lines += ["**Quick smoke run: tiny budget, numbers meaningless.**", ""]
    lines += ["Mean ± std over seeds (each seed holds out a different slab of axial slices); "
              "(p …) two-sided Wilcoxon signed-rank test against SoftSeg, paired by seed. "
              "Overlap metrics at threshold 0.5 (truth binarised > 0.5); MSE, ECE (10 bins) and Brier "
              "against the soft truth; softness = % of voxels with p > 0.05 that are < 0.95; "
              "all-zero runs: no voxel of the held-out slab above 0.05 (such runs have no precision or "
              "softness, which are averaged over the other runs).", ""]
    for d in r["datasets"].values():
        n = d["seeds"]
        lines += [f"### {d['dataset']}", "",
                  f"Data: {d['note']}; volume {'x'.join(map(str, d['shape']))}. "
                  f"Budget per candidate and seed: {d['budget_text']}. {n} seeds / slabs"
                  + (f", {d['gap']} slice(s) left out on either side of each test slab" if d["gap"] else "")
                  + f". With n = {n} pairs the smallest possible two-sided p is {2 / 2 ** n:.4f}.", ""]
        header = ["candidate"] + [title for _, title, _, _ in METRICS] + ["all-zero runs", "train s"]
        rows = []
        for cand in d["candidates"]:
            row = d["summary"][cand]
            rows.append([f"{title(cand)} (`{cand}`)"]
                        + [_cell(row, k, dg, cand != "softseg") for k, _, _, dg in METRICS]
                        + [f"{row['all_zero_runs']} / {n}", C.fmt(row["train_s_mean"], 0)])
        lines += [C.md_table(header, rows), ""]
    pooled = r["pooled_p_vs_softseg"]
    if pooled:
        n = next(iter(next(iter(pooled.values())).values()))["n"]
        lines += [f"Wilcoxon p against SoftSeg over both datasets together (n = {n} pairs):", ""]
        lines += [C.md_table(["candidate"] + list(TESTED),
                             [[c] + [C.fmt_p(pooled[c][k]["p"]) for k in TESTED] for c in pooled]), ""]
    lines += ["Bars (means over seeds):", ""]
    lines += [f"- {b['dataset']}: {b['bar']}: **{'met' if b['met'] else 'NOT met'}** ({b['detail']})." for b in r["bars"]]
    lines += ["", "Figures: `ablation_threshold_sweep.png` (Fig. 4.3), `ablation_histogram.png` (Fig. 4.4), "
              "`ablation_reliability.png`.", "",
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
    # reliability diagrams, pooled over seeds
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4.5), squeeze=False)
    for ax, d in zip(axes[0], sets):
        for cand in d["candidates"]:
            pooled = C.pooled_reliability([run["reliability"] for run in d["runs"] if run["candidate"] == cand])
            C.plot_reliability(ax, pooled, title(cand))
        C.reliability_axes(ax, f"{d['dataset']} (pooled over seeds)")
    C.save_figure(fig, out_dir / "ablation_reliability.png")


if __name__ == "__main__":
    from benchmarks.run_all import bench_cli

    raise SystemExit(bench_cli(__doc__, run, "ablation"))
