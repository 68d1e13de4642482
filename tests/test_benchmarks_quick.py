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


def test_verdict_reads_the_other_results(tmp_path):
    from benchmarks import bench_verdict

    (tmp_path / "staple.json").write_text(json.dumps({"ratio_ours_over_simpleitk": 0.2, "ours_s": 1.0, "simpleitk_s": 5.0}))
    (tmp_path / "predict.json").write_text(json.dumps({"ratio_ours_vs_baseline": 0.3, "volume": [256, 256, 48]}))
    (tmp_path / "partial_volume.json").write_text(json.dumps({"bars": [
        {"bar": "soft volume", "value": -1.5, "limit": 2.0, "met": True, "detail": "x"}]}))
    r = bench_verdict.run(out_dir=tmp_path)
    status = {b["bar"]: b["met"] for b in r["bars"]}
    assert status["STAPLE time / SimpleITK STAPLEImageFilter <= 0.5"] is True
    assert status["predict_volume time / eager float32 loop <= 0.25"] is False  # 0.3 > 0.25
    assert status["soft volume"] is True
    assert status["ablation bars (ECE, Dice)"] is None  # no ablation.json: not measured, not guessed
    assert "NOT met" in (tmp_path / "verdict.md").read_text()
    assert {b["bar"]: b["met"] for b in r["ui_targets"]}["Segment, first click to layers <= 2 s"] is None

    (tmp_path / "segment.json").write_text(json.dumps({
        "segment_first_click_s": 2.5, "segment_click_to_layers_s": {"median": 0.8, "max": 0.9},
        "segment_model_only_s": {"median": 0.4}}))
    ui = {b["bar"]: b for b in bench_verdict.run(out_dir=tmp_path)["ui_targets"]}
    assert ui["Segment, first click to layers <= 2 s"]["met"] is False  # 2.5 > 2
    assert ui["Segment, later clicks to layers <= 1 s"]["met"] is True  # 0.8 <= 1
    assert ui["Segment, later clicks to layers <= 1 s"]["detail"] == "0.80 s (model alone 0.40 s)"


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


def test_partial_volume_breakdown_by_hand():
    """The Σp error splits into lesion-free slices, false positives in lesion slices, faint and
    other lesions; each part checked on a prediction built by hand from the exact truth."""
    from benchmarks.bench_fusion import phantom_pair
    from benchmarks.bench_partial_volume import analyse, lesion_owner

    d = phantom_pair(quick=False)  # the full test phantom: every lesion lies inside the crop
    owner, true_voxels = lesion_owner(d["lesions"], d["full_shape"], d["test_offset"], d["test_truth"].shape,
                                      d["spacing"])
    vv = float(np.prod(d["spacing"]))
    truth, m = d["test_truth"], d["mask"]
    exact = analyse(truth.copy(), d, owner, true_voxels)["breakdown"]["parts_mm3"]
    for key, value in exact.items():  # the exact truth has no error anywhere
        assert value == pytest.approx(0.0, abs=1e-3), key

    pred = truth.copy()
    free_z = int(np.nonzero(((truth * m).sum(axis=(0, 1)) == 0) & m.any(axis=(0, 1)))[0][0])
    x, y = (int(v[0]) for v in np.nonzero(m[..., free_z] & (owner[..., free_z] == 0)))
    pred[x, y, free_z] = 1.0  # one false voxel of p = 1 in a lesion-free slice
    lesion_z = int(np.argmax((truth * m).sum(axis=(0, 1))))
    x2, y2 = (int(v[0]) for v in np.nonzero(m[..., lesion_z] & (owner[..., lesion_z] == 0) & (truth[..., lesion_z] == 0)))
    pred[x2, y2, lesion_z] = 0.5  # half a voxel away from the lesions, in a lesion slice
    big = max(d["lesions"], key=lambda l: l.volume_mm3)
    pred[owner == big.id] = 0.0  # the largest lesion missed entirely
    r = analyse(pred, d, owner, true_voxels)
    b = r["breakdown"]
    parts = b["parts_mm3"]
    assert parts["lesion_free_slices"] == pytest.approx(vv)
    assert parts["away_in_lesion_slices"] == pytest.approx(0.5 * vv)
    in_owner = float(truth[(owner == big.id) & m].sum(dtype=np.float64)) * vv
    assert big.id in true_voxels and not big.faint
    assert parts["other_lesions"] == pytest.approx(-in_owner, rel=1e-5)
    assert in_owner == pytest.approx(true_voxels[big.id] * vv, rel=1e-3)  # its whole true volume
    assert parts["faint_lesions"] == pytest.approx(0.0, abs=1e-3)
    assert b["n_lesion_free_slices_at_1"] == 1
    assert sum(parts.values()) == pytest.approx(r["total"]["soft_mm3"] - r["total"]["true_mm3"], abs=1e-3)


def test_verdict_explains_missed_bars_from_the_data(tmp_path):
    from benchmarks import bench_verdict
    from benchmarks.bench_partial_volume import why_soft_volume

    summary = {"softseg": {"ece": {"mean": 0.02}, "dice": {"mean": 80.0}, "brier": {"mean": 0.01}},
               "conventional": {"ece": {"mean": 0.01}, "dice": {"mean": 70.0}, "brier": {"mean": 0.03}}}
    ablation = {"datasets": {"cord": {"dataset": "cord", "summary": summary, "truth_histogram": [90] + [0] * 18 + [10]}},
                "bars": [{"dataset": "cord", "bar": "ECE(SoftSeg) <= 0.5 x ECE(conventional)", "value": 2.0, "limit": 0.5,
                          "met": False, "detail": "x"}]}
    (tmp_path / "ablation.json").write_text(json.dumps(ablation))
    run = {"matmul_gflops": {"bfloat16": 800.0, "float32": 200.0}, "ratio_bound_at_bf16_matmul_speed": 0.26,
           "baseline_gflops_vs_fp32_matmul": 1.0}
    (tmp_path / "predict.json").write_text(json.dumps({"ratio_ours_vs_baseline": 0.3, "default_threads": 2,
                                                       "runs_by_threads": {"2": run}}))
    r = bench_verdict.run(out_dir=tmp_path)
    why = {b["bar"]: b.get("why", "") for b in r["bars"]}
    assert "0.0 % of the truth's voxels" in why["cord: ECE(SoftSeg) <= 0.5 x ECE(conventional)"]
    assert "0.0100 (SoftSeg) vs 0.0300" in why["cord: ECE(SoftSeg) <= 0.5 x ECE(conventional)"]
    assert "4.0x" in why["predict_volume time / eager float32 loop <= 0.25"]  # 800 / 200
    assert "Why the bars that are not met" in (tmp_path / "verdict.md").read_text()

    part = lambda v: {"mean": v, "std": 0.0}  # noqa: E731
    b = {"lesion_free_slices": part(45.2), "away_in_lesion_slices": part(9.6), "faint_lesions": part(-12.7),
         "other_lesions": part(-22.9), "rest": part(0.0), "lesion_free_slices_at_1": [24, 26], "n_lesion_free_slices": 27}
    text = why_soft_volume(b)
    assert "+45.2 % Σp in the 27 lesion-free slices (maximum p = 1 in 24–26 of them" in text
    assert "-12.7 % the faint lesions" in text and "truth outside" not in text  # a zero part is left out


def test_readme_benchmark_figures_are_those_of_the_committed_results():
    from benchmarks import readme

    text = (REPO / "README.md").read_text()
    assert readme.block(text) is not None, "README.md lost its benchmark block markers"
    assert readme.block(text) == readme.render(REPO / "benchmarks" / "results"), \
        "README's benchmark figures differ from benchmarks/results: run python -m benchmarks.readme"


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
