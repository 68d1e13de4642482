"""Smoke tests of the benchmarks (``--quick``: tiny budgets, no timed assertions) and
hand-checked values of the benchmark helpers."""

from __future__ import annotations

import importlib
import json
import math
import pkgutil
import sys
from pathlib import Path

import numpy as np
import pytest

from _paths import REPO

if str(REPO) not in sys.path:  # "benchmarks" is a package at the repository root
    sys.path.insert(0, str(REPO))
BENCH_DIR = REPO / "benchmarks"
NAMES = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(BENCH_DIR)]) if m.name.startswith("bench_"))
# the verdict reads the others' JSON, so it runs last (as in benchmarks/run_all.py)
NAMES = [n for n in NAMES if n != "verdict"] + (["verdict"] if "verdict" in NAMES else [])
FIGURES = {
    "ablation": ["ablation_threshold_sweep.png", "ablation_histogram.png", "ablation_reliability.png"],
    "fusion": ["fusion_reliability.png", "fusion_entropy.png"],
    "partial_volume": ["partial_volume.png"],
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-quick")


def _numbers(obj):
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_quick_benchmark_writes_results(name, out_dir):
    module = importlib.import_module(f"benchmarks.bench_{name}")
    module.run(quick=True, out_dir=out_dir)
    data = json.loads((out_dir / f"{name}.json").read_text())
    numbers = list(_numbers(data))
    assert numbers, f"{name}.json holds no number"
    assert all(math.isfinite(x) for x in numbers), f"{name}.json holds NaN or infinity (use null)"
    md = (out_dir / f"{name}.md").read_text()
    assert md.startswith("#")
    for fig in FIGURES.get(name, []):
        path = out_dir / fig
        assert path.read_bytes()[:8] == PNG_MAGIC, fig
        assert f"({fig})" in md


def _pv_summary(**over) -> dict:
    """A partial_volume.json summary row built by hand (SoftSeg)."""
    m = lambda v: {"mean": v, "std": 0.0}  # noqa: E731
    row = {"soft_err": m(-3.0), "free_sum_p_pct": m(2.0), "free_haze_voxels": m(40.0), "ltpr_own": m(80.0),
           "ltpr_05": m(88.0), "lfdr_own": m(10.0), "lfdr_05": m(12.0), "threshold_own": m(0.6),
           "free_slices_ge_05_total": 0, "free_scan_slices_ge_05_total": 0, "n_free_slices": [25, 27], "n_runs": 5,
           "free_scan": {"max_p": m(0.02)}, "batch_1_vs_16_max": 2e-7, "all_zero_runs": 0,
           "parts_pct": {"lesion_free_slices": m(0.4), "away_in_lesion_slices": m(0.0), "faint_lesions": m(-7.0),
                         "other_lesions": m(-2.5), "rest": m(0.0)}, "free_slices_at_1": [0, 0]}
    row.update(over)
    return row


def test_verdict_reads_the_other_results(tmp_path):
    from benchmarks import bench_verdict

    (tmp_path / "staple.json").write_text(json.dumps({"ratio_ours_over_simpleitk": 0.2, "ours_s": 1.0, "simpleitk_s": 5.0}))
    (tmp_path / "predict.json").write_text(json.dumps({"ratio_ours_vs_baseline": 0.3, "volume": [256, 256, 48]}))
    (tmp_path / "partial_volume.json").write_text(json.dumps({"summary": {"softseg": _pv_summary()}, "runs": []}))
    r = bench_verdict.run(out_dir=tmp_path)
    status = {b["bar"]: b["met"] for b in r["bars"]}
    assert status["STAPLE time / SimpleITK STAPLEImageFilter <= 0.5"] is True
    assert status["predict_volume time / eager float32 loop <= 0.25"] is False  # 0.3 > 0.25
    assert status["phantom: |Σp − true volume| <= 5 % of the true volume (aim 2 %)"] is True  # |-3| <= 5
    assert status["phantom: Σp in lesion-free slices <= 1 % of the true volume"] is False  # 2 > 1
    assert status["phantom: no lesion-free slice reaches p >= 0.5 (test scans and the lesion-free scan)"] is True
    assert status["phantom: LTPR >= 85 % on non-faint lesions >= 3 mm (own threshold)"] is False  # 80 < 85
    assert status["phantom: LFDR <= 30 % (own threshold)"] is True
    assert status["phantom: batch size 1 vs 16, max |difference| <= 1e-4"] is True
    assert status["spinal-cord GM: 0 all-zero SoftSeg runs in 10 seeds"] is None  # no collapse.json: not measured
    assert not any("ECE" in b for b in status)  # no ablation and no conventional run: nothing to compare
    why = {b["bar"]: b.get("why", "") for b in r["bars"]}
    assert "88.0 %" in why["phantom: LTPR >= 85 % on non-faint lesions >= 3 mm (own threshold)"]  # LTPR at 0.5
    assert "NOT met" in (tmp_path / "verdict.md").read_text()
    assert {b["bar"]: b["met"] for b in r["ui_targets"]}["Segment, first click to layers <= 2 s"] is None
    assert [b["met"] for b in r["review_flags"]] == [None]  # no flags.json: not measured

    (tmp_path / "flags.json").write_text(json.dumps({"model": "ms-lesion", "bars": [
        {"bar": "tta: flag AUROC >= 0.85", "value": 0.9, "limit": 0.85, "met": True, "detail": "0.90"},
        {"bar": "tta: correct lesions flagged <= 0.3", "value": 0.4, "limit": 0.3, "met": False, "detail": "0.40"}]}))
    flags = {b["bar"]: b for b in bench_verdict.run(out_dir=tmp_path)["review_flags"]}
    assert flags["tta: flag AUROC >= 0.85"]["met"] is True and flags["tta: correct lesions flagged <= 0.3"]["met"] is False
    assert flags["tta: flag AUROC >= 0.85"]["detail"] == "0.90 (ms-lesion)"
    assert "tta: correct lesions flagged <= 0.3 | **NOT met**" in (tmp_path / "verdict.md").read_text()

    (tmp_path / "segment.json").write_text(json.dumps({
        "segment_first_click_s": 2.5, "segment_click_to_layers_s": {"median": 0.8, "max": 0.9},
        "segment_model_only_s": {"median": 0.4}}))
    ui = {b["bar"]: b for b in bench_verdict.run(out_dir=tmp_path)["ui_targets"]}
    assert ui["Segment, first click to layers <= 2 s"]["met"] is False  # 2.5 > 2
    assert ui["Segment, later clicks to layers <= 1 s"]["met"] is True  # 0.8 <= 1
    assert ui["Segment, later clicks to layers <= 1 s"]["detail"] == "0.80 s (model alone 0.40 s)"


def test_verdict_compares_with_converged_baselines_only(tmp_path):
    """ECE and Dice bars use only the seeds whose conventional run plateaued; the why quotes
    the truth's softness and the Brier scores."""
    from benchmarks import bench_verdict

    def run(cand, seed, ece, dice, plateaued):
        return {"candidate": cand, "seed": seed, "convergence": {"plateaued": plateaued},
                "metrics": {"ece_bin": ece, "dice_own": dice, "brier": 0.01 if cand == "softseg" else 0.03}}

    runs = [run("softseg", 0, 0.02, 80.0, True), run("softseg", 1, 0.02, 80.0, True),
            run("conventional", 0, 0.01, 70.0, True), run("conventional", 1, 0.5, 10.0, False)]
    ablation = {"datasets": {"cord": {"dataset": "cord", "runs": runs, "truth_histogram": [90] + [0] * 18 + [10],
                                      "summary": {"softseg": {"all_zero_runs": 0, "n_runs": 2}}}}}
    (tmp_path / "ablation.json").write_text(json.dumps(ablation))
    bars = {b["bar"]: b for b in bench_verdict.run(out_dir=tmp_path)["bars"]}
    ece = bars["cord: ECE(SoftSeg) <= 0.5 x ECE(converged conventional), vs binarised truth"]
    # seed 1's baseline did not converge: the ratio is 0.02 / 0.01 = 2 (with it, 0.02 / 0.255 would pass)
    assert ece["value"] == pytest.approx(2.0) and ece["met"] is False
    assert "plateaued in 1 of 2 runs" in ece["detail"]
    assert "0.0 % of the truth's voxels" in ece["why"] and "0.0100 (SoftSeg) vs 0.0300" in ece["why"]
    dice = bars["cord: Dice(SoftSeg) >= Dice(conventional) - 1 point, own thresholds"]
    assert dice["value"] == pytest.approx(10.0) and dice["met"] is True  # 80 - 70
    runs[2]["convergence"]["plateaued"] = False  # no converged baseline left: not comparable
    (tmp_path / "ablation.json").write_text(json.dumps(ablation))
    bars = {b["bar"]: b for b in bench_verdict.run(out_dir=tmp_path)["bars"]}
    assert bars["cord: ECE(SoftSeg) <= 0.5 x ECE(converged conventional), vs binarised truth"]["met"] is None


def test_verdict_says_why_a_dice_or_ece_bar_is_missed(tmp_path):
    """A missed Dice bar quotes Dice at 0.5, SoftSeg's own thresholds and the seeds that lose; a
    missed ECE bar the ECE against the soft truth (means over the converged pairs)."""
    from benchmarks import bench_verdict

    def run(cand, seed, dice_own, dice_05, thr, ece_bin, ece_soft):
        return {"candidate": cand, "seed": seed, "convergence": {"plateaued": True},
                "metrics": {"dice_own": dice_own, "dice": dice_05, "threshold_own": thr, "ece_bin": ece_bin,
                            "ece": ece_soft, "brier": None}}

    runs = [run("softseg", 0, 70.0, 78.0, 0.2, 0.004, 0.001), run("softseg", 1, 80.0, 80.0, 0.6, 0.004, 0.003),
            run("conventional", 0, 76.0, 75.0, 0.5, 0.006, 0.008), run("conventional", 1, 78.0, 77.0, 0.5, 0.006, 0.012)]
    (tmp_path / "ablation.json").write_text(json.dumps({"datasets": {"cord": {"dataset": "cord", "runs": runs}}}))
    bars = {b["bar"]: b for b in bench_verdict.run(out_dir=tmp_path)["bars"]}
    dice = bars["cord: Dice(SoftSeg) >= Dice(conventional) - 1 point, own thresholds"]
    assert dice["value"] == pytest.approx(-2.0) and dice["met"] is False  # 75 - 77
    assert "at 0.5 the Dice is 79.0 (SoftSeg) vs 76.0 %" in dice["why"]  # (78 + 80) / 2 vs (75 + 77) / 2
    assert "range 0.20–0.60" in dice["why"] and "lower in 1 of the 2 seeds" in dice["why"]  # 70 < 76; 80 > 78
    ece = bars["cord: ECE(SoftSeg) <= 0.5 x ECE(converged conventional), vs binarised truth"]
    assert ece["value"] == pytest.approx(0.004 / 0.006) and ece["met"] is False
    assert "against the soft truth the ECE is 0.0020 (SoftSeg) vs 0.0100 (conventional), ratio 0.20" in ece["why"]


def test_why_soft_volume_from_the_breakdown():
    from benchmarks.bench_verdict import why_soft_volume

    text = why_soft_volume(_pv_summary(free_slices_at_1=[0, 3]))
    assert "+0.4 % Σp in the lesion-free slices" in text and "-7.0 % the faint lesions" in text
    assert "false positives" not in text  # a zero part is left out
    assert "0–3 lesion-free slices per scan reach p = 1" in text


def test_convergence_record_by_hand():
    from benchmarks._common import convergence

    hist = [{"val_loss": v} for v in (1.0, 0.8, 0.7, 0.7, 0.69, 0.69)]
    c = convergence({"history": hist, "status": "early_stopped", "epochs_run": 6, "best_epoch": 5}, patience=3)
    assert c["plateaued"] is True and c["epochs_run"] == 6
    # best so far: 1, .8, .7, .7, .69, .69; three epochs before the end it was 0.7: gain (0.7 - 0.69) / 0.7
    assert c["last_window_gain"] == pytest.approx(0.01 / 0.7)
    c = convergence({"history": hist, "status": "completed"}, patience=50)
    assert c["plateaued"] is False and c["last_window_gain"] == pytest.approx(0.31)  # the cap: not converged


def test_collapse_reuses_runs_made_with_the_same_protocol(tmp_path):
    from dataclasses import asdict, replace

    from benchmarks.bench_ablation import plans
    from benchmarks.bench_collapse import reused_ablation

    plan = plans(quick=True)[1]
    runs = [{"candidate": "softseg", "seed": k, "metrics": {"max_p": mp}, "convergence": {"epochs_run": 3, "plateaued": True}}
            for k, mp in ((0, 0.9), (1, 0.01))] + [{"candidate": "conventional", "seed": 0, "metrics": {"max_p": 0.0},
                                                   "convergence": {}}]
    ab = {"quick": True, "datasets": {plan.key: {"budget": asdict(plan.budget), "runs": runs}}}
    (tmp_path / "ablation.json").write_text(json.dumps(ab))
    got = reused_ablation(tmp_path, plan, quick=True)
    assert sorted(got) == [0, 1] and got[1]["all_zero"] is True and got[0]["all_zero"] is False  # 0.01 <= 0.05
    assert reused_ablation(tmp_path, replace(plan, budget=replace(plan.budget, lr=5e-5)), quick=True) == {}  # other protocol


def test_thesis_rows_say_the_direction_from_the_data(tmp_path):
    from benchmarks import bench_thesis

    m = lambda v: {"mean": v, "std": 0.0}  # noqa: E731
    row = lambda dice, ece, plateaued: {"dice_own": m(dice), "dice": m(dice), "threshold_own": m(0.5), "ece_bin": m(ece),  # noqa: E731
                                        "ece": m(ece), "softness": m(50.0), "all_zero_runs": 0, "n_runs": 2,
                                        "plateaued": plateaued}
    ablation = {"datasets": {"sct_gm": {"dataset": "spinal-cord GM", "runs": [], "summary": {
        "softseg": row(80.0, 0.004, [True, True]), "conventional": row(75.0, 0.002, [True, False])}}}}
    (tmp_path / "ablation.json").write_text(json.dumps(ablation))
    rows = {x["finding"]: x for x in bench_thesis.run(out_dir=tmp_path)["rows"]}
    dice = rows["spinal-cord GM: Dice, SoftSeg − conventional (own thresholds)"]
    assert dice["same_direction"] is True and "+5.0 points" in dice["ours"] and "converged 1/2" in dice["ours"]
    ece = rows["spinal-cord GM: ECE vs binarised truth, SoftSeg vs conventional"]
    assert ece["same_direction"] is False and "ratio 2.00" in ece["ours"]  # 0.004 vs 0.002: the other way
    assert ece["why"]  # a reason is given where the direction differs
    assert rows["Brain tumours: Dice, SoftSeg − conventional"]["same_direction"] is None
    assert "not available here" in (tmp_path / "thesis.md").read_text()


def test_thesis_quotes_fusion_results_only_when_made_with_the_present_protocol(tmp_path):
    from dataclasses import asdict, replace

    from benchmarks import bench_thesis
    from benchmarks.bench_partial_volume import settings

    m = lambda v: {"mean": v, "std": 0.0}  # noqa: E731
    cell = lambda ece: {"ece_bin": m(ece), "entropy_mae": m(ece), "dice_own": m(80.0), "n_runs": 5,  # noqa: E731
                        "plateaued": [True] * 5}
    s = settings(quick=False)
    table = {f"{src} / {pipe}": cell(0.01 if pipe == "SoftSeg" else 0.02)
             for src in ("STAPLE", "average", "random sampling") for pipe in ("SoftSeg", "conventional")}
    fusion = {"quick": False, "budget": asdict(s["budget"]), "budget_text": "now", "seeds": s["seeds"], "table": table}
    (tmp_path / "fusion.json").write_text(json.dumps(fusion))
    rows = {x["finding"]: x for x in bench_thesis.run(out_dir=tmp_path)["rows"]}
    ece = rows["ECE vs binarised STAPLE, SoftSeg vs conventional, per fusion"]
    assert ece["same_direction"] is True and "STAPLE 0.0100 vs 0.0200" in ece["ours"]
    for old in ({**fusion, "seeds": 3}, {**fusion, "budget": asdict(replace(s["budget"], patch_size=None))}):
        (tmp_path / "fusion.json").write_text(json.dumps(old))
        rows = {x["finding"]: x for x in bench_thesis.run(out_dir=tmp_path)["rows"]}
        assert "ECE vs binarised STAPLE, SoftSeg vs conventional, per fusion" not in rows  # not quoted
        stale = rows["Tables 5.1–5.3 (fusion)"]
        assert "earlier protocol" in stale["ours"] and "make bench-fusion" in stale["ours"]
        assert stale["same_direction"] is None
    (tmp_path / "fusion.json").unlink()  # no fusion results at all: said, with the command that makes them
    rows = {x["finding"]: x for x in bench_thesis.run(out_dir=tmp_path)["rows"]}
    assert rows["Tables 5.1–5.3 (fusion)"]["ours"] == "not measured: run `make bench-fusion`"


def test_thesis_fusion_whys_come_from_the_data(tmp_path):
    """Where SoftSeg's entropy MAE is not lower, the row gives both pipelines' entropy against the
    raters', SoftSeg's volume error, STAPLE's size against the average and convergence; the
    average + SoftSeg row ranks its entropy MAE among the six cells (values chosen by hand)."""
    from dataclasses import asdict

    from benchmarks import bench_thesis
    from benchmarks.bench_partial_volume import settings

    m = lambda v: {"mean": v, "std": 0.0}  # noqa: E731

    def cell(mae, diff, err, plateaued):
        return {"ece_bin": m(0.0009 if mae in (0.0027, 0.0009, 0.0007) else 0.0011), "entropy_mae": m(mae), "entropy_diff_slices": m(diff), "soft_err_truth": m(err),
                "ece_average": m(0.0005), "dice_own": m(80.0), "n_runs": 5, "plateaued": plateaued}

    table = {"STAPLE / SoftSeg": cell(0.0027, -0.0037, 63.0, [False] * 5),
             "STAPLE / conventional": cell(0.0022, -0.0036, 37.0, [True, True, False, False, False]),
             "average / SoftSeg": cell(0.0009, -0.0009, 4.0, [True] * 5),
             "average / conventional": cell(0.0030, -0.0045, -11.0, [True] * 5),
             "random sampling / SoftSeg": cell(0.0007, -0.0020, 1.4, [True] * 5),
             "random sampling / conventional": cell(0.0022, -0.0036, 5.7, [True] * 5)}
    s = settings(quick=False)
    fusion = {"quick": False, "budget": asdict(s["budget"]), "budget_text": "now", "seeds": s["seeds"], "table": table,
              "references": {"staple_voxels": 1990.0, "average_voxels": 1396.0}}
    (tmp_path / "fusion.json").write_text(json.dumps(fusion))
    rows = {x["finding"]: x for x in bench_thesis.run(out_dir=tmp_path)["rows"]}
    mae = rows["entropy MAE, SoftSeg vs conventional, per fusion"]
    assert mae["same_direction"] is False
    assert mae["why"] == ("not lower for STAPLE: STAPLE: predicted entropy per lesion slice -0.0037 (SoftSeg) and "
                          "-0.0036 bits (conventional) against the raters', SoftSeg's Σp 63 % off the exact truth; "
                          "STAPLE ≥ 0.5 holds 1990 voxels against the rater average's 1396; converged 0/5 (SoftSeg), "
                          "2/5 (conventional)")
    under = rows["average + SoftSeg under-confident (predicted entropy above the raters')"]
    assert under["same_direction"] is False and under["ours"] == "-0.0009 bits"
    assert "entropy MAE is 0.0009 bits (rank 2 of 6, 1 the lowest)" in under["why"]  # random sampling's 0.0007 is lower
    ece = rows["ECE vs binarised STAPLE, SoftSeg vs conventional, per fusion"]
    assert ece["same_direction"] is True and ece["why"] == ""  # lower for every source: nothing to explain


def test_block_mean_and_softness_by_hand():
    from benchmarks._common import block_mean, softness

    a = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    # blocks of 2x2: (0+1+4+5)/4 = 2.5, (2+3+6+7)/4 = 4.5, (8+9+12+13)/4 = 10.5, (10+11+14+15)/4 = 12.5
    np.testing.assert_allclose(block_mean(a, (2, 2, 1))[..., 0], [[2.5, 4.5], [10.5, 12.5]])
    p = np.array([0.0, 0.04, 0.05, 0.06, 0.5, 0.95, 0.96, 1.0])
    # predicted (> 0.05): 0.06, 0.5, 0.95, 0.96, 1.0 -> strictly inside (0.05, 0.95): 0.06, 0.5 -> 2 / 5
    assert softness(p) == pytest.approx(40.0)
    assert math.isnan(softness(np.zeros(3)))


def test_slab_folds_tile_the_volume_and_keep_a_gap():
    from benchmarks._common import slab_folds

    folds = slab_folds(11, 5, gap=1)
    tests = np.concatenate([t for _, t in folds])
    np.testing.assert_array_equal(np.sort(tests), np.arange(11))  # every slice tested exactly once
    train, test = folds[1]  # slab 3..4 (array_split: 3, 2, 2, 2, 2)
    np.testing.assert_array_equal(test, [3, 4])
    np.testing.assert_array_equal(train, [0, 1, 6, 7, 8, 9, 10])  # 2 and 5 left out as the gap


def test_wilcoxon_and_pooled_reliability_by_hand():
    from benchmarks._common import pooled_reliability, wilcoxon_p

    # n = 5 differences all of one sign: exact two-sided p = 2 / 2**5
    assert wilcoxon_p([1, 2, 3, 4, 5], [0, 0, 0, 0, 0]) == pytest.approx(0.0625)
    assert math.isnan(wilcoxon_p([1, 2], [1, 2]))
    a = {"edges": [0, 0.5, 1], "counts": [0, 2], "confidence": [None, 0.9], "accuracy": [None, 1.0]}
    b = {"edges": [0, 0.5, 1], "counts": [0, 6], "confidence": [None, 0.7], "accuracy": [None, 0.5]}
    pooled = pooled_reliability([a, b])
    # conf = (2*0.9 + 6*0.7)/8 = 0.75, acc = (2*1 + 6*0.5)/8 = 0.625, ECE = |0.625 - 0.75| = 0.125
    assert pooled["confidence"][1] == pytest.approx(0.75)
    assert pooled["accuracy"][1] == pytest.approx(0.625)
    assert pooled["ece"] == pytest.approx(0.125)


@pytest.mark.slow
def test_phantom_scan_scores_by_hand():
    """The Σp error splits into lesion-free slices, false positives in lesion slices, faint and
    other lesions; each part, the lesion-free slice counts and the detection rates checked on a
    prediction built by hand from the exact truth of a cohort subject."""
    from benchmarks._common import cohort_subject
    from benchmarks.bench_partial_volume import lesion_owner, scan_scores

    subj = cohort_subject(300)  # the full crop: the lesions inside it are listed
    owner, true_voxels = lesion_owner(subj)
    vv = float(np.prod(subj.spacing))
    truth, m = subj.truth, subj.mask
    exact = scan_scores(truth.copy(), subj, owner, true_voxels, 0.5)
    for key, value in exact["breakdown"]["parts_mm3"].items():  # the exact truth has no error anywhere
        assert value == pytest.approx(0.0, abs=1e-3), key
    assert exact["ltpr_05"] == pytest.approx(100.0) and exact["lfdr_05"] == pytest.approx(0.0)
    assert exact["free_slices_ge_05"] == 0 and exact["free_sum_p_pct"] == 0.0

    pred = truth.copy()
    free_z = int(np.nonzero(((truth * m).sum(axis=(0, 1)) == 0) & m.any(axis=(0, 1)))[0][0])
    x, y = (int(v[0]) for v in np.nonzero(m[..., free_z] & (owner[..., free_z] == 0)))
    pred[x, y, free_z] = 1.0  # one false voxel of p = 1 in a lesion-free slice
    lesion_z = int(np.argmax((truth * m).sum(axis=(0, 1))))
    x2, y2 = (int(v[0]) for v in np.nonzero(m[..., lesion_z] & (owner[..., lesion_z] == 0) & (truth[..., lesion_z] == 0)))
    pred[x2, y2, lesion_z] = 0.5  # half a voxel away from the lesions, in a lesion slice
    big = max((les for les in subj.lesions if not les.faint), key=lambda les: les.volume_mm3)
    pred[owner == big.id] = 0.0  # the largest lesion missed entirely
    r = scan_scores(pred, subj, owner, true_voxels, 0.5)
    parts = r["breakdown"]["parts_mm3"]
    assert parts["lesion_free_slices"] == pytest.approx(vv)
    assert parts["away_in_lesion_slices"] == pytest.approx(0.5 * vv)
    in_owner = float(truth[(owner == big.id) & m].sum(dtype=np.float64)) * vv
    assert parts["other_lesions"] == pytest.approx(-in_owner, rel=1e-5)
    assert in_owner == pytest.approx(true_voxels[big.id] * vv, rel=1e-3)  # its whole true volume
    assert parts["faint_lesions"] == pytest.approx(0.0, abs=1e-3)
    assert r["free_slices_ge_05"] == 1 and r["breakdown"]["n_lesion_free_slices_at_1"] == 1
    total = float(truth[m].sum(dtype=np.float64)) * vv
    assert r["free_sum_p_pct"] == pytest.approx(100.0 * vv / total)  # the one voxel, in % of the true volume
    assert sum(parts.values()) == pytest.approx(r["soft_mm3"] - r["true_mm3"], abs=1e-3)
    assert 0.0 < r["ltpr_05"] < 100.0  # the largest lesion is missed, the others found
    assert r["lfdr_05"] > 0.0  # the false voxel of p = 1 is a false lesion


@pytest.mark.slow
def test_worker_processes_give_the_in_process_result():
    """A run is seeded: two single-thread worker processes give what this process gives."""
    from benchmarks import _common as C

    vol = C.sct_gm(size=16)
    budget = C.Budget(epochs=1, patience=1, batch_size=8, depth=2, base_features=4, augment=False)
    job = C.Job({"k": 0}, [vol.image], [vol.truth], vol.spacing, "conventional", 0, budget, predict={"scan": vol.image})
    here = C.run_jobs([job], workers=1, log=lambda *a: None)[0]
    there = C.run_jobs([job, job], workers=2, log=lambda *a: None)
    for r in there:
        np.testing.assert_allclose(r["soft"]["scan"], here["soft"]["scan"], atol=1e-5)
        assert r["threshold_val"] == here["threshold_val"] and r["n_val_slices"] == here["n_val_slices"] > 0


def test_readme_benchmark_figures_are_those_of_the_committed_results():
    from benchmarks import readme

    text = (REPO / "README.md").read_text()
    assert readme.block(text) is not None, "README.md lost its benchmark block markers"
    assert readme.block(text) == readme.render(REPO / "benchmarks" / "results"), \
        "README's benchmark figures differ from benchmarks/results: run python -m benchmarks.readme"


def test_runtime_records_a_study_rerun_after_the_complete_run(tmp_path):
    """Re-running a study of the complete run marks the folder incomplete and names the study
    and the date; a separate study or one that only reads results does neither."""
    from types import SimpleNamespace

    from benchmarks.run_all import write_runtime

    full = write_runtime(tmp_path, {"date": "2026-12-01T00:43:00+00:00"}, SimpleNamespace(only=None, quick=False),
                         {"flags": 46.0, "thesis": 0.1}, 3950.0, 0)
    assert full["complete"] and full["total_s"] == 3950.0 and "rerun" not in full
    some = SimpleNamespace(only=["fusion", "thesis"], quick=False)
    rt = write_runtime(tmp_path, {"date": "2026-12-01T03:00:00+00:00"}, some, {"fusion": 5000.0, "thesis": 0.0}, 5000.0, 0)
    assert rt["complete"] and "rerun" not in rt and rt["separate"] == {"fusion": 5000.0}
    again = SimpleNamespace(only=["flags"], quick=False)
    rt = write_runtime(tmp_path, {"date": "2026-12-01T05:01:32+00:00"}, again, {"flags": 50.0}, 50.0, 0)
    assert not rt["complete"] and rt["rerun"] == {"flags": "2026-12-01T05:01:32+00:00"}
    assert rt["total_s"] == 3950.0 and rt["seconds"]["flags"] == 50.0  # the complete run's total is kept
    assert json.loads((tmp_path / "runtime.json").read_text()) == rt


def test_readme_figures_render_from_the_json_by_hand(tmp_path):
    from benchmarks import readme

    (tmp_path / "staple.json").write_text(json.dumps({
        "raters": 3, "voxels": 2_000_000, "ours_s": 0.3, "simpleitk_s": 0.5, "agreement_at_0.5": 1.0,
        "ratio_ours_over_simpleitk": 0.6}))
    (tmp_path / "runtime.json").write_text(json.dumps({"complete": True, "quick": False, "total_s": 1800.0,
                                                       "seconds": {"a": 600.0, "b": 1200.0}}))
    (tmp_path / "verdict.json").write_text(json.dumps({"quick": False, "bars": [
        {"bar": "x <= 1", "met": False, "detail": "2 vs 1", "why": "because"},
        {"bar": "y <= 1", "met": True, "detail": "0.5"}]}))
    text = readme.render(tmp_path)
    staple = next(line for line in text.splitlines() if line.startswith("| STAPLE"))
    assert "3 raters x 2.0 M voxels" in staple and "0.300 s" in staple and "**0.600**" in staple
    assert staple.endswith("≤ 0.5 ✗ |")  # 0.6 > 0.5
    assert "it took **30 min** (a 10.0, b 20.0 min)" in text
    rt = {"complete": False, "quick": False, "total_s": 1800.0, "seconds": {"a": 600.0, "b": 30.0},
          "rerun": {"b": "2026-12-01T05:01:32+00:00"}}  # b re-run after the complete run
    (tmp_path / "runtime.json").write_text(json.dumps(rt))
    assert "it took **30 min** (a 10.0 min; b re-run on its own 2026-12-01 05:01 UTC)" in readme.render(tmp_path)
    (tmp_path / "runtime.json").write_text(json.dumps({**rt, "rerun": {}, "total_s": None}))  # partial run only
    assert "took" not in readme.render(tmp_path).splitlines()[0]
    (tmp_path / "runtime.json").write_text(json.dumps({"complete": True, "quick": False, "total_s": 1800.0,
                                                       "seconds": {"a": 600.0, "b": 1200.0}}))
    assert "| x <= 1 | **NOT met** | 2 vs 1 |" in text and "| y <= 1 | met | 0.5 |" in text
    assert "- *x <= 1*: because." in text
    assert "training step" in text and "(not measured)" in text  # no train.json: said, not guessed

    (tmp_path / "segment.json").write_text(json.dumps({
        "segment_first_click_s": 2.5, "segment_click_to_layers_s": {"median": 0.8, "max": 0.9},
        "segment_model_only_s": {"median": 0.4}, "volume": {"segment": [142, 178, 47]}}))
    lines = readme.render(tmp_path).splitlines()
    first = next(line for line in lines if line.startswith("| Segment, first click"))
    later = next(line for line in lines if line.startswith("| Segment, later clicks"))
    assert "142x178x47 | 2.50 s | model alone 0.40 s" in first and first.endswith("≤ 2 s ✗ |")
    assert "| 0.80 s (max 0.90 s) | model alone 0.40 s" in later and later.endswith("≤ 1 s ✓ |")

    # a CPU without native bf16: the rows say float32 and compare with the fp32 matmul (400 / 800 = 0.5)
    (tmp_path / "train.json").write_text(json.dumps({"mixed_precision": "float32", "batch": 8, "crop": [160, 192]}))
    (tmp_path / "predict.json").write_text(json.dumps({"default_threads": 2, "runs_by_threads": {"2": {
        "gflops": {"ours": 400.0}, "matmul_gflops": {"bfloat16": None, "float32": 800.0}}}}))
    lines = readme.render(tmp_path).splitlines()
    step = next(line for line in lines if line.startswith("| training step"))
    assert "(float32, no native bf16 on this CPU, channels-last" in step and "bf16 autocast" not in step
    assert "fused conv+ReLU, float32;" in next(line for line in lines if line.startswith("| `predict_volume`"))
    gflops = next(line for line in lines if line.startswith("| achieved GFLOP/s"))
    assert "| 400 | fp32 matmul 800, same run | **0.50** | ≥ 0.4 of bf16 matmul (no native bf16 here) |" in gflops


def test_verdict_explains_the_speed_bars_on_a_cpu_without_bf16(tmp_path):
    from benchmarks import bench_verdict

    (tmp_path / "predict.json").write_text(json.dumps({
        "ratio_ours_vs_baseline": 0.74, "cpu_bf16": False, "default_threads": 2, "runs_by_threads": {"2": {
            "gflops": {"ours": 160.0}, "matmul_gflops": {"bfloat16": None, "float32": 200.0},
            "baseline_gflops_vs_fp32_matmul": 0.6, "ratio_bound_at_bf16_matmul_speed": None}}}))
    (tmp_path / "train.json").write_text(json.dumps({"ratio_ours_over_baseline": 0.95, "mixed_precision": "float32",
                                                     "augment_share_of_step": 0.005}))
    r = bench_verdict.run(out_dir=tmp_path)
    why = {b["bar"]: b.get("why", "") for b in r["bars"]}["predict_volume time / eager float32 loop <= 0.25"]
    assert "no native bf16" in why and "at 0.60 of the fp32 matmul rate" in why and "ours at 0.80" in why  # 160 / 200
    assert "could not go below 0.60" in why
    engine = {b["bar"]: b for b in r["engine_targets"]}
    assert "0.5 % of its step" in engine["training step / eager float32 step <= 0.5"]["why"]
    assert "no native bf16" in engine["predict GFLOP/s / bf16 matmul GFLOP/s >= 0.4 (aim)"]["detail"]
