"""Label fusion × training pipeline on the multi-rater lesion phantom (Lemay et al., MELBA
2022, Table 5.1 and Fig. 5.1).

Three ways to train on four raters — STAPLE, the rater average, and random sampling (one
rater drawn per sample and epoch) — each with the conventional pipeline (Hard-Sig-Dice:
the fused label binarised) and with SoftSeg (Soft-ReLU-Wing), the same budget for all.

Training data: the phantom of :func:`napari_softseg.io.phantom.build_phantom` generated with
another seed (``SEED + 1``: the same brain with different lesions, noise and rater
disagreements), every slice (lesion-free ones too). Test data: the phantom of the default
seed and its four raters (conservative, generous, jitter, misses-small). Both are cropped
in-plane to one box around every lesion. Metrics inside the brain, on the whole test
volume:

* entropy MAE: |mean voxel entropy of the prediction − that of the rater average| over the
  volume (:func:`napari_softseg.metrics.segmentation.evaluate`), and the same per axial slice holding
  any rater's lesion, averaged over those slices (the per-image MAE of the paper);
* Brier score and ECE against the rater average (ECE against STAPLE too);
* Dice, precision, recall, AVD (and LTPR / LFDR) against the binarised STAPLE of the four
  test raters;
* the composite score (:func:`napari_softseg.metrics.segmentation.composite_score`: z-scored Dice,
  precision, recall and −AVD across the six candidates).

    python -m benchmarks.bench_fusion [--quick] [--out DIR]
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import _common as C

SOURCES = ("staple", "average", "random")
SOURCE_TITLES = {"staple": "STAPLE", "average": "average", "random": "random sampling"}
PIPELINES = ("conventional", "softseg")
PIPELINE_TITLES = {"conventional": "conventional", "softseg": "SoftSeg"}
COLUMNS = (  # key, title, digits
    ("entropy_mae", "entropy MAE (volume)", 4), ("entropy_mae_slices", "entropy MAE (slices)", 4),
    ("brier", "Brier vs average", 5), ("ece_average", "ECE vs average", 4), ("ece", "ECE vs STAPLE", 4),
    ("dice", "Dice %", 1), ("precision", "precision %", 1), ("recall", "recall %", 1), ("avd", "AVD %", 1),
    ("ltpr", "LTPR %", 1), ("lfdr", "LFDR %", 1), ("composite", "composite score", 2),
)


def settings(quick: bool) -> dict:
    if quick:
        return {"budget": C.Budget(epochs=2, batch_size=16, depth=2, base_features=4), "seeds": 1}
    return {"budget": C.Budget(epochs=100, batch_size=8), "seeds": 3}


def phantom_pair(quick: bool, box_margin: int = 8) -> dict:
    """Training and test phantoms, cropped in-plane to one box around every lesion; both keep
    every slice. Training on the lesion-free slices too matters for the normalised ReLU:
    its per-slice maximum lifts any positive score of a slice to 1, so a network that never
    saw an empty slice puts false lesions of p = 1 in the test volume's empty slices
    (measured: 1.3–24 cm³ of Σp away from the lesions when trained on lesion slices only).

    Quick mode: the test phantom alone, cropped to 40x40 voxels around its largest lesion
    and the slices it spans, stands in for both.
    """
    from napari_softseg.io.phantom import SEED

    test = C.phantom()
    if quick:
        big = max(test.lesions, key=lambda l: l.volume_mm3)
        c = np.round(big.centre).astype(int)
        box = tuple(slice(int(np.clip(x - 20, 0, n - 40)), int(np.clip(x - 20, 0, n - 40)) + 40)
                    for x, n in zip(c[:2], test.truth.shape[:2]))
        zs = np.nonzero(test.truth[box].sum(axis=(0, 1)) > 0)[0]
        te = box + (slice(max(int(zs[0]) - 1, 0), int(zs[-1]) + 2),)
        train, train_z = test, np.arange(te[2].start, te[2].stop)
    else:
        train = C.phantom(SEED + 1)
        box = C.phantom_box(test.truth, train.truth, margin=box_margin)
        box = tuple(slice(int(b.start), int(b.stop)) for b in box)
        te = box + (slice(0, test.truth.shape[2]),)
        train_z = np.arange(train.truth.shape[2])

    def tr(a):
        return a[box][..., train_z]

    spacing = tuple(float(s) for s in np.sqrt((np.asarray(test.affine)[:3, :3] ** 2).sum(axis=0)))
    offset = [te[0].start, te[1].start, te[2].start]
    inside = [l for l in test.lesions if _inside(l, test.truth.shape, te)]
    return {
        "train_image": tr(train.image), "train_raters": [tr(r) for r in train.raters.values()],
        "train_truth": tr(train.truth),
        "test_image": test.image[te], "test_raters": [r[te] for r in test.raters.values()],
        "test_truth": test.truth[te], "rater_names": list(test.raters), "spacing": spacing,
        "box": [[b.start, b.stop] for b in box], "train_z": [int(z) for z in train_z],
        "test_offset": offset, "lesions": inside, "full_shape": test.truth.shape,
        "mask": test.image[te] > 0, "quick": quick,
    }


def _inside(lesion, shape, crop) -> bool:
    from napari_softseg.io.phantom import render_fraction

    box, _ = render_fraction(lesion, shape)
    return all(b.start >= c.start and b.stop <= c.stop for b, c in zip(box, crop))


def slice_entropies(pred: np.ndarray, avg: np.ndarray, mask: np.ndarray) -> tuple[list, list]:
    """Mean voxel entropy per axial slice holding any rater's lesion: (predicted, raters)."""
    from napari_softseg.metrics.calibration import image_entropy

    hp, hr = [], []
    for z in range(pred.shape[2]):
        if np.any(avg[..., z] > 0) and np.any(mask[..., z]):
            hp.append(image_entropy(pred[..., z], mask=mask[..., z]))
            hr.append(image_entropy(avg[..., z], mask=mask[..., z]))
    return hp, hr


def evaluate_candidate(pred: np.ndarray, data: dict, staple_soft: np.ndarray, avg: np.ndarray) -> dict:
    from napari_softseg.metrics.calibration import ece, reliability_diagram
    from napari_softseg.metrics.segmentation import evaluate

    m = data["mask"]
    ev = evaluate(pred, staple_soft, raters=data["test_raters"], spacing=data["spacing"], mask=m)
    hp, hr = slice_entropies(pred, avg, m)
    metrics = {k: ev[k] for k in ("entropy_mae", "entropy_voxel_mae", "image_entropy_pred", "image_entropy_raters",
                                  "brier", "ece", "dice", "precision", "recall", "avd", "rvd", "ltpr", "lfdr")}
    metrics["ece_average"] = ece(pred, avg, mask=m)
    metrics["entropy_mae_slices"] = float(np.mean(np.abs(np.subtract(hp, hr)))) if hp else float("nan")
    return {"metrics": metrics, "slice_entropy_pred": hp, "slice_entropy_raters": hr,
            "reliability_average": reliability_diagram(pred, avg, mask=m).to_dict()}


def run(quick: bool = False, out_dir: Path = C.RESULTS) -> dict:
    from napari_softseg.fusion.methods import fuse
    from napari_softseg.metrics.calibration import rater_average

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    s = settings(quick)
    budget: C.Budget = s["budget"]
    data = phantom_pair(quick)
    if budget.crop_size is None:
        budget.crop_size = tuple(-(-n // 8) * 8 for n in data["train_image"].shape[:2])
    staple_soft = fuse(data["test_raters"], "staple").soft
    avg = rater_average(data["test_raters"])
    runs = []
    for seed in range(s["seeds"]):
        for source in SOURCES:
            for pipe in PIPELINES:
                res = C.train_predict(data["train_image"], data["train_raters"], preset=pipe, seed=seed, budget=budget,
                                      spacing=data["spacing"], predict_on=data["test_image"], label_source=source)
                one = evaluate_candidate(res.soft, data, staple_soft, avg)
                one.update(source=source, pipeline=pipe, seed=seed, train_s=res.seconds_train, threshold_auto=res.threshold)
                runs.append(one)
                if not quick:
                    mm = one["metrics"]
                    print(f"   seed {seed} {source:8s} {pipe:12s} Dice {mm['dice']:5.1f} ECE(avg) {mm['ece_average']:.4f} "
                          f"H-MAE {mm['entropy_mae']:.4f} ({res.seconds_train:.0f} s)", flush=True)
    table = summarise(runs)
    result = {
        "quick": quick, "budget": asdict(budget), "budget_text": budget.describe(), "seeds": s["seeds"],
        "train_shape": list(data["train_image"].shape), "test_shape": list(data["test_image"].shape),
        "spacing": list(data["spacing"]), "box": data["box"], "train_z": data["train_z"],
        "raters": data["rater_names"], "staple_volume_mm3": float((staple_soft > 0.5).sum() * np.prod(data["spacing"])),
        "table": table, "runs": runs, "seconds": time.perf_counter() - t0,
    }
    C.write_json(out_dir / "fusion.json", result)
    figures(result, out_dir)
    C.write_text(out_dir / "fusion.md", markdown(result))
    return result


def _ratio(a, b) -> float:
    return a / b if b else float("nan")


def _name(source: str, pipe: str) -> str:
    return f"{SOURCE_TITLES[source]} / {PIPELINE_TITLES[pipe]}"


def summarise(runs: list[dict]) -> dict:
    """Mean ± std over seeds per (source, pipeline); composite score of the means."""
    from napari_softseg.metrics.segmentation import composite_score

    table = {}
    for source in SOURCES:
        for pipe in PIPELINES:
            mine = [r["metrics"] for r in runs if r["source"] == source and r["pipeline"] == pipe]
            table[_name(source, pipe)] = {k: dict(zip(("mean", "std"), C.mean_std([m[k] for m in mine])))
                                          for k in mine[0]}
    comp = composite_score({n: {k: v["mean"] for k, v in row.items()} for n, row in table.items()})
    for n, v in comp.items():
        table[n]["composite"] = {"mean": v, "std": float("nan")}
    return table


def markdown(r: dict) -> str:
    lines = ["## Label fusion: STAPLE / average / random sampling x conventional / SoftSeg (Lemay et al. 2022, Table 5.1)", ""]
    if r["quick"]:
        lines += ["**Quick smoke run: tiny budget, numbers meaningless.**", ""]
    lines += [f"Lesion phantom, 4 raters ({', '.join(r['raters'])}). Training: phantom seed SEED+1, "
              f"{'x'.join(map(str, r['train_shape']))} voxels (every slice); test: phantom seed SEED, "
              f"{'x'.join(map(str, r['test_shape']))} voxels of {'x'.join(f'{s:g}' for s in r['spacing'])} mm, "
              f"both cropped in-plane to the lesion box {r['box']}. Budget per candidate and seed: {r['budget_text']}; "
              "both pipelines trained from scratch (SoftSeg with the weighted Adaptive Wing loss); "
              f"mean ± std over {r['seeds']} seed(s). Metrics inside the brain; segmentation metrics against the "
              f"binarised STAPLE of the 4 test raters ({r['staple_volume_mm3']:.0f} mm³); composite score from the means "
              "(z-scores of Dice, precision, recall, −AVD across the six candidates; higher is better).", ""]
    header = ["labels / pipeline"] + [t for _, t, _ in COLUMNS]
    rows = []
    for name, row in r["table"].items():
        cells = []
        for k, _, dg in COLUMNS:
            v = row[k]
            cells.append(C.fmt(v["mean"], dg) + ("" if k == "composite" or r["seeds"] < 2 else f" ± {C.fmt(v['std'], dg)}"))
        rows.append([name] + cells)
    lines += [C.md_table(header, rows), ""]
    best = {k: min(r["table"], key=lambda n: r["table"][n][k]["mean"]) for k in ("entropy_mae", "brier", "ece_average")}
    best["composite"] = max(r["table"], key=lambda n: r["table"][n]["composite"]["mean"])
    lines += ["Best (from the means): " + "; ".join(f"{k.replace('_', ' ')}: {n}" for k, n in best.items()) + ".", ""]
    for source in SOURCES:
        s, c = r["table"][_name(source, "softseg")], r["table"][_name(source, "conventional")]
        lines.append(f"- {SOURCE_TITLES[source]}: SoftSeg / conventional ECE vs average "
                     f"{C.fmt(_ratio(s['ece_average']['mean'], c['ece_average']['mean']), 2)}, entropy MAE "
                     f"{C.fmt(_ratio(s['entropy_mae']['mean'], c['entropy_mae']['mean']), 2)}, Dice difference "
                     f"{s['dice']['mean'] - c['dice']['mean']:+.1f} points.")
    lines += ["", "![reliability](fusion_reliability.png)", "", "![entropy](fusion_entropy.png)", ""]
    return "\n".join(lines)


def figures(r: dict, out_dir: Path) -> None:
    plt = C.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, pipe in zip(axes, PIPELINES):
        for source in SOURCES:
            diags = [x["reliability_average"] for x in r["runs"] if x["source"] == source and x["pipeline"] == pipe]
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
                    hr += x["slice_entropy_raters"]
                    hp += x["slice_entropy_pred"]
            ax.scatter(hr, hp, s=14, marker=marker, alpha=0.7, label=SOURCE_TITLES[source])
            hi = max([hi] + hr + hp)
        ax.plot([0, hi], [0, hi], color="0.5", ls="--", lw=1, label="identity")
        ax.set_xlabel("rater-average entropy per slice (bits)")
        ax.set_ylabel("predicted entropy per slice (bits)")
        ax.set_title(f"{PIPELINE_TITLES[pipe]} (one point per slice and seed)", fontsize=10)
        ax.legend(fontsize=7)
    C.save_figure(fig, out_dir / "fusion_entropy.png")


if __name__ == "__main__":
    from benchmarks.run_all import bench_cli

    raise SystemExit(bench_cli(__doc__, run, "fusion"))
