"""Partial volume against an exact truth: soft volume Σp vs binarised volume vs true volume.

The lesion phantom (:func:`napari_softseg.io.phantom.build_phantom`) knows every voxel's lesion
fraction exactly (each ellipsoid is rendered at 1/8 mm and averaged down,
:func:`napari_softseg.io.phantom.render_fraction`). SoftSeg (soft labels = the true fractions)
and the conventional pipeline (the same labels binarised at 0.5) are trained with the same
budget on a phantom of another seed and predict the default phantom. For every lesion of the
test phantom and in total we compare

* the **true volume**: the sum of the lesion's rendered fractions × voxel volume (its
  analytic ellipsoid volume is listed too);
* the **soft volume** Σp × voxel volume and the **binarised volume** (``p > 0.5``) of the
  prediction in the lesion's neighbourhood: the voxels within ``RADIUS_MM`` of the
  lesion's support (a voxel near two lesions goes to the nearer; touching lesions split
  their shared voxels by the larger true fraction);
* in total: Σp (and the ``p > 0.5`` count) over the whole brain, false positives included,
  against the sum of the truth map; and the total soft volume of the lesions that the review
  dock lists (:func:`napari_softseg.review.lesions.analyse_lesions`: each lesion with its rim).

Errors are ``(V_pred − V_true) / V_true`` in %. Mean ± std over seeds for the totals.

    python -m benchmarks.bench_partial_volume [--quick] [--out DIR]
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import _common as C
from .bench_fusion import phantom_pair, settings

PIPELINES = ("softseg", "conventional")
TITLES = {"softseg": "SoftSeg", "conventional": "conventional"}
RADIUS_MM = 3.0


def lesion_owner(lesions, shape_full, offset, shape, spacing) -> tuple[np.ndarray, dict]:
    """Per voxel of the cropped test grid: the id of the lesion it is assigned to (0: none),
    and each lesion's true fraction map summed (its true volume in voxels)."""
    from scipy import ndimage

    from napari_softseg.io.phantom import render_fraction

    best = np.zeros(shape, np.float32)
    owner = np.zeros(shape, np.int32)
    true_voxels = {}
    for les in lesions:
        box, frac = render_fraction(les, shape_full)
        true_voxels[les.id] = float(frac.sum())
        local = tuple(slice(b.start - o, b.stop - o) for b, o in zip(box, offset))
        if any(s.start < 0 or s.stop > n for s, n in zip(local, shape)):
            raise ValueError(f"lesion {les.id} leaves the cropped test grid")
        sub_best, sub_owner = best[local], owner[local]
        take = frac > sub_best
        sub_best[take], sub_owner[take] = frac[take], les.id
    dist, idx = ndimage.distance_transform_edt(owner == 0, sampling=spacing, return_indices=True)
    near = owner[tuple(idx)]
    return np.where(dist <= RADIUS_MM, near, 0).astype(np.int32), true_voxels


def analyse(pred: np.ndarray, data: dict, owner: np.ndarray, true_voxels: dict) -> dict:
    from napari_softseg.review.lesions import analyse_lesions

    vv = float(np.prod(data["spacing"]))
    m = data["mask"]
    ids = np.arange(owner.max() + 1)
    soft = np.bincount(owner.ravel(), weights=pred.ravel().astype(np.float64), minlength=ids.size)
    hard = np.bincount(owner.ravel(), weights=(pred.ravel() > 0.5).astype(np.float64), minlength=ids.size)
    per = {}
    for les in data["lesions"]:
        t = true_voxels[les.id] * vv
        per[les.id] = {"true_mm3": t, "soft_mm3": soft[les.id] * vv, "binarised_mm3": hard[les.id] * vv,
                       "soft_err": 100.0 * (soft[les.id] * vv - t) / t, "binarised_err": 100.0 * (hard[les.id] * vv - t) / t}
    true_total = float(data["test_truth"][m].sum(dtype=np.float64)) * vv
    soft_total = float(pred[m].sum(dtype=np.float64)) * vv
    hard_total = float(np.count_nonzero(pred[m] > 0.5)) * vv
    table = analyse_lesions(pred * m, threshold=0.5, spacing=data["spacing"])
    review_total = float(sum(r.soft_volume_mm3 for r in table))
    abs_soft = [abs(v["soft_err"]) for v in per.values()]
    # Where the total Σp error comes from (mm³; the parts add up to Σp − truth up to "rest").
    lesion_slice = (data["test_truth"] * m).sum(axis=(0, 1)) > 0  # slices along the phantom's axis 2
    away = m & (owner == 0)
    free_slices = np.nonzero(~lesion_slice)[0]
    free_max = [float(pred[..., z][m[..., z]].max(initial=0.0)) for z in free_slices]
    faint = {les.id for les in data["lesions"] if les.faint}
    in_m = np.bincount(owner[m], weights=pred[m].astype(np.float64), minlength=ids.size) * vv
    parts = {
        "lesion_free_slices": float(pred[away & ~lesion_slice].sum(dtype=np.float64)) * vv,
        "away_in_lesion_slices": float(pred[away & lesion_slice].sum(dtype=np.float64)) * vv,
        "faint_lesions": float(sum(in_m[i] - true_voxels[i] * vv for i in faint)),
        "other_lesions": float(sum(in_m[les.id] - true_voxels[les.id] * vv for les in data["lesions"] if les.id not in faint)),
    }
    parts["rest"] = (soft_total - true_total) - sum(parts.values())
    breakdown = {"parts_mm3": parts, "parts_pct": {k: 100.0 * v / true_total for k, v in parts.items()},
                 "n_lesion_free_slices": int(free_slices.size),
                 "n_lesion_free_slices_at_1": int(sum(x >= 0.999 for x in free_max)),
                 "faint_true_mm3": float(sum(true_voxels[i] for i in faint)) * vv}
    abs_hard = [abs(v["binarised_err"]) for v in per.values()]
    return {
        "per_lesion": per,
        "breakdown": breakdown,
        "total": {"true_mm3": true_total, "soft_mm3": soft_total, "binarised_mm3": hard_total, "review_soft_mm3": review_total,
                  "soft_err": 100.0 * (soft_total - true_total) / true_total,
                  "binarised_err": 100.0 * (hard_total - true_total) / true_total,
                  "review_soft_err": 100.0 * (review_total - true_total) / true_total,
                  "outside_lesions_soft_mm3": float(pred[m & (owner == 0)].sum(dtype=np.float64)) * vv,
                  "mean_abs_lesion_soft_err": float(np.mean(abs_soft)), "mean_abs_lesion_binarised_err": float(np.mean(abs_hard)),
                  "n_review_lesions": len(table)},
    }


def run(quick: bool = False, out_dir: Path = C.RESULTS) -> dict:
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    s = settings(quick)
    budget: C.Budget = s["budget"]
    data = phantom_pair(quick)
    if budget.crop_size is None:
        budget.crop_size = tuple(-(-n // 8) * 8 for n in data["train_image"].shape[:2])
    lesions = data["lesions"]
    owner, true_voxels = lesion_owner(lesions, data["full_shape"], data["test_offset"], data["test_truth"].shape,
                                      data["spacing"])
    runs = []
    for seed in range(s["seeds"]):
        for pipe in PIPELINES:
            res = C.train_predict(data["train_image"], data["train_truth"], preset=pipe, seed=seed, budget=budget,
                                  spacing=data["spacing"], predict_on=data["test_image"])
            one = analyse(res.soft, data, owner, true_voxels)
            one.update(pipeline=pipe, seed=seed, train_s=res.seconds_train)
            runs.append(one)
            if not quick:
                tt = one["total"]
                print(f"   seed {seed} {pipe:12s} soft {tt['soft_err']:+.1f}%  binarised {tt['binarised_err']:+.1f}%  "
                      f"({res.seconds_train:.0f} s)", flush=True)
    summary = {}
    for pipe in PIPELINES:
        mine = [r["total"] for r in runs if r["pipeline"] == pipe]
        summary[pipe] = {k: dict(zip(("mean", "std"), C.mean_std([m[k] for m in mine]))) for k in mine[0]}
    breakdown = {}
    for pipe in PIPELINES:
        mine = [r["breakdown"] for r in runs if r["pipeline"] == pipe]
        breakdown[pipe] = {k: dict(zip(("mean", "std"), C.mean_std([m["parts_pct"][k] for m in mine])))
                           for k in mine[0]["parts_pct"]}
        breakdown[pipe]["lesion_free_slices_at_1"] = [m["n_lesion_free_slices_at_1"] for m in mine]
        breakdown[pipe]["n_lesion_free_slices"] = mine[0]["n_lesion_free_slices"]
    soft_err = summary["softseg"]["soft_err"]["mean"]
    bar = {"bar": "abs(total soft-volume error of SoftSeg) <= 2 %", "value": soft_err, "limit": 2.0,
           "met": bool(abs(soft_err) <= 2.0), "detail": f"SoftSeg Σp total error {soft_err:+.2f} % (mean over seeds)"}
    if not bar["met"]:
        bar["why"] = why_soft_volume(breakdown["softseg"])
    result = {"quick": quick, "budget": vars(budget).copy(), "budget_text": budget.describe(), "seeds": s["seeds"],
              "radius_mm": RADIUS_MM, "test_shape": list(data["test_truth"].shape), "spacing": list(data["spacing"]),
              "lesions": [{"id": l.id, "diameter_mm": l.diameter_mm, "faint": l.faint, "touching": l.touching,
                           "analytic_mm3": l.volume_mm3} for l in lesions],
              "summary": summary, "breakdown": breakdown, "runs": runs, "bars": [bar], "seconds": time.perf_counter() - t0}
    C.write_json(out_dir / "partial_volume.json", result)
    figure(result, out_dir)
    C.write_text(out_dir / "partial_volume.md", markdown(result))
    return result


PART_TITLES = (("lesion_free_slices", "Σp in lesion-free slices"),
               ("away_in_lesion_slices", "Σp away from lesions in lesion slices"),
               ("faint_lesions", "faint lesions (Σp − true)"), ("other_lesions", "other lesions (Σp − true)"))


def why_soft_volume(b: dict) -> str:
    """One sentence, from the measured breakdown, of where SoftSeg's total Σp error comes from."""
    at1 = b["lesion_free_slices_at_1"]
    free = f"Σp in the {b['n_lesion_free_slices']} lesion-free slices"
    if max(at1) > 0:
        free += (f" (maximum p = 1 in {min(at1)}–{max(at1)} of them: NormReLU divides each slice by its own "
                 "maximum, so any positive score in an empty slice becomes p = 1)")
    texts = {"lesion_free_slices": free, "away_in_lesion_slices": "false positives in lesion slices",
             "faint_lesions": "the faint lesions", "other_lesions": "the other lesions",
             "rest": "truth outside the lesion neighbourhoods"}
    parts = [f"{b[k]['mean']:+.1f} % {t}" for k, t in texts.items() if k in b and abs(b[k]["mean"]) >= 0.05]
    return "the error splits into " + ", ".join(parts) if parts else ""


def markdown(r: dict) -> str:
    lines = ["## Partial volume on the lesion phantom (exact truth)", ""]
    if r["quick"]:
        lines += ["**Quick smoke run: tiny budget, numbers meaningless.**", ""]
    lines += [f"Trained on the training phantom's true fractions (SoftSeg: soft; conventional: binarised at 0.5), "
              f"tested on the default phantom ({'x'.join(map(str, r['test_shape']))} voxels, "
              f"{'x'.join(f'{s:g}' for s in r['spacing'])} mm). Budget per model and seed: {r['budget_text']}; "
              "both trained from scratch; "
              f"{r['seeds']} seed(s) (weights, augmentation and dropout; the same phantoms). Error = (V_pred − V_true) / V_true.", "",
              "Totals over the brain (mean ± std over seeds):", ""]
    rows = []
    for pipe in PIPELINES:
        s = r["summary"][pipe]
        cell = lambda k, d=1: f"{C.fmt(s[k]['mean'], d)} ± {C.fmt(s[k]['std'], d)}"  # noqa: E731
        rows.append([TITLES[pipe], cell("true_mm3", 0), cell("soft_mm3", 0), cell("soft_err", 2), cell("binarised_mm3", 0),
                     cell("binarised_err", 2), cell("review_soft_err", 2), cell("outside_lesions_soft_mm3", 0),
                     cell("mean_abs_lesion_soft_err"), cell("mean_abs_lesion_binarised_err")])
    lines += [C.md_table(["pipeline", "true mm³", "Σp mm³", "Σp error %", "p>0.5 mm³", "p>0.5 error %",
                          "review-dock soft error %", "Σp away from lesions mm³", "mean abs lesion Σp error %",
                          "mean abs lesion p>0.5 error %"], rows), ""]
    if r.get("breakdown"):
        lines += ["Where the total Σp error comes from, in % of the true total volume (mean ± std over seeds; "
                  "the parts add up to the Σp error):", ""]
        rows, titles = [], list(PART_TITLES)
        if any(abs(r["breakdown"][p]["rest"]["mean"]) >= 0.05 for p in PIPELINES):
            titles.append(("rest", "truth outside the lesion neighbourhoods"))
        for pipe in PIPELINES:
            b = r["breakdown"][pipe]
            at1 = b["lesion_free_slices_at_1"]
            rows.append([TITLES[pipe]] + [f"{b[k]['mean']:+.1f} ± {b[k]['std']:.1f}" for k, _ in titles]
                        + [f"{min(at1)}–{max(at1)} of {b['n_lesion_free_slices']}"])
        lines += [C.md_table(["pipeline"] + [t for _, t in titles] + ["lesion-free slices with max p = 1"], rows), ""]
    if r["lesions"]:
        lines += [f"Per lesion (seed 0; neighbourhood {r['radius_mm']:g} mm around each lesion):", ""]
        first = {p: next(x for x in r["runs"] if x["pipeline"] == p and x["seed"] == 0) for p in PIPELINES}
        rows = []
        for les in r["lesions"]:
            k = str(les["id"]) if str(les["id"]) in first["softseg"]["per_lesion"] else les["id"]
            a, b = first["softseg"]["per_lesion"][k], first["conventional"]["per_lesion"][k]
            tag = ("faint " if les["faint"] else "") + (f"touches {les['touching']}" if les["touching"] else "")
            rows.append([les["id"], f"{les['diameter_mm']:.1f}", tag, f"{a['true_mm3']:.1f}", f"{les['analytic_mm3']:.1f}",
                         f"{a['soft_err']:+.1f}", f"{a['binarised_err']:+.1f}", f"{b['soft_err']:+.1f}", f"{b['binarised_err']:+.1f}"])
        lines += [C.md_table(["lesion", "diameter mm", "", "true mm³", "analytic mm³", "SoftSeg Σp err %",
                              "SoftSeg p>0.5 err %", "conv. Σp err %", "conv. p>0.5 err %"], rows, "rrlrrrrrr"), ""]
    lines += [f"Bar: {b['bar']}: **{'met' if b['met'] else 'NOT met'}** ({b['detail']})."
              + (f" Why: {b['why']}." if b.get("why") else "") for b in r["bars"]]
    lines += ["", "![partial volume](partial_volume.png)", ""]
    return "\n".join(lines)


def figure(r: dict, out_dir: Path) -> None:
    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    lo, hi = np.inf, 0.0
    for pipe, color in zip(PIPELINES, ("C0", "C3")):
        for kind, marker in (("soft", "o"), ("binarised", "x")):
            t, p = [], []
            for x in r["runs"]:
                if x["pipeline"] == pipe:
                    for v in x["per_lesion"].values():
                        t.append(v["true_mm3"])
                        p.append(max(v[f"{kind}_mm3"], 0.1))
            if t:
                ax.scatter(t, p, marker=marker, color=color, s=18, alpha=0.7,
                           label=f"{TITLES[pipe]} {'Σp' if kind == 'soft' else 'p>0.5'}")
                lo, hi = min(lo, min(t), min(p)), max(hi, max(t), max(p))
    if hi > 0:
        ax.plot([lo, hi], [lo, hi], color="0.5", ls="--", lw=1, label="identity")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("true lesion volume (mm³)")
    ax.set_ylabel("predicted volume (mm³)")
    ax.set_title("Per-lesion volume on the phantom", fontsize=10)
    ax.legend(fontsize=7)
    C.save_figure(fig, out_dir / "partial_volume.png")


if __name__ == "__main__":
    from benchmarks.run_all import bench_cli

    raise SystemExit(bench_cli(__doc__, run, "partial_volume"))
