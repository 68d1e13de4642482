"""The bars the results are held to, checked from the other benchmarks' JSON files.

Runs last (``run_all`` goes in name order) and reads ``partial_volume.json``,
``collapse.json``, ``ablation.json``, ``predict.json``, ``staple.json``, ``train.json``,
``segment.json``, ``responsiveness.json`` and ``flags.json`` (the review-flag bars) from the same folder; a missing file or key is
reported as "not measured", never guessed. Writes ``verdict.json`` and ``verdict.md``: one
line per bar with the measured value, the limit, met / NOT met, and the numbers behind it;
for every bar that is not met, why, in the measured numbers that explain it.

Bars (the sparse-target bars, SoftSeg with the engine's defaults, unseen phantoms, means over
seeds): |Σp − true volume| ≤ 5 % of the true volume; Σp in lesion-free slices ≤ 1 %; no
lesion-free slice (nor slice of the lesion-free scan) reaching p ≥ 0.5; LTPR ≥ 85 % on the
non-faint lesions (all ≥ 3 mm) and LFDR ≤ 30 % at the own threshold; the same prediction
with batch sizes 1 and 16 (≤ 1e-4); 0 all-zero runs in 10 seeds on brain GM, cord GM and
the phantom (``collapse.json``, the separate ``make bench-collapse``); and per dataset
ECE(SoftSeg) ≤ ½ ECE(conventional) against the binarised truth and Dice(SoftSeg) ≥
Dice(conventional) − 1 point at each model's own threshold, over the seeds whose
conventional run converged (validation loss plateaued). Then ``predict_volume`` ≤ 0.25 of
an eager float32 loop and STAPLE ≤ 0.5 of SimpleITK; the engine's own targets (training
step ≤ 0.5 of an eager float32 step, predict peak memory ≤ 3 GB on 512x512x200, predict
GFLOP/s ≥ 0.4 of a bf16 matmul) and the docks' (Segment's first click ≤ 2 s and later clicks
≤ 1 s on the lesion phantom, threshold slider ≤ 100 ms,
largest UI stall ≤ 50 ms during Segment, training and painting with autosave) are listed
after them.

    python -m benchmarks.bench_verdict [--out DIR]
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import _common as C

READS_RESULTS = True  # reads the other benchmarks' JSON; trains nothing


def _load(out_dir: Path, name: str) -> dict | None:
    path = out_dir / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _get(d: dict | None, *path, default=None):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _ratio_bar(name: str, value, limit: float, source: str, detail: str, upper: bool = True) -> dict:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return {"bar": name, "value": None, "limit": limit, "met": None, "detail": f"not measured (no value in {source})"}
    met = value <= limit if upper else value >= limit
    return {"bar": name, "value": float(value), "limit": limit, "met": bool(met), "detail": detail}


def _memory_gb(predict: dict | None):
    mem = _get(predict, "memory") or {}
    for key in ("peak_rss_gb", "peak_gb", "peak_rss_gib", "peak_gib"):
        if isinstance(mem.get(key), (int, float)):
            return float(mem[key]), key
    for key in ("rss_peak_mib", "peak_rss_mib", "peak_mib", "peak_rss_mb", "peak_mb"):
        if isinstance(mem.get(key), (int, float)):
            return float(mem[key]) / 1024.0, key
    return None, None


def _converged_pairs(runs: list[dict], key: str, ref: str = "softseg", base: str = "conventional") -> list[tuple]:
    """(ours, baseline) pairs of the metric ``key`` over the seeds where the baseline's
    validation loss plateaued (runs are grouped by seed; missing or non-finite values dropped)."""
    ours = {r["seed"]: r for r in runs if r["cand"] == ref}
    theirs = {r["seed"]: r for r in runs if r["cand"] == base and r["plateaued"]}
    pairs = [(ours[k].get(key), theirs[k].get(key)) for k in sorted(set(ours) & set(theirs))]
    return [(a, b) for a, b in pairs if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]


def _dataset_runs(ablation: dict | None, pv: dict | None) -> dict:
    """Per dataset, the SoftSeg and conventional runs as ``{cand, seed, plateaued, ece_bin,
    ece_soft, dice_own, dice_05, threshold_own, brier}`` (phantom: means over its test scans)."""
    out = {}
    for d in (_get(ablation, "datasets") or {}).values():
        out[d["dataset"]] = [{"cand": r["candidate"], "seed": r["seed"], "plateaued": bool(r["convergence"]["plateaued"]),
                              **{k: r["metrics"].get(m) for k, m in (("ece_bin", "ece_bin"), ("ece_soft", "ece"),
                                                                 ("dice_own", "dice_own"), ("dice_05", "dice"),
                                                                 ("threshold_own", "threshold_own"), ("brier", "brier"))}}
                             for r in d["runs"] if r["candidate"] in ("softseg", "conventional")]
    if pv and pv.get("runs"):
        mean = lambda r, k: (sum(s[k] for s in r["scans"]) / len(r["scans"])  # noqa: E731
                             if all(k in s for s in r["scans"]) else None)
        out["phantom"] = [{"cand": r["pipeline"], "seed": r["seed"], "plateaued": bool(r["convergence"]["plateaued"]),
                           **{k: mean(r, k) for k in ("ece_bin", "ece_soft", "dice_own", "dice_05", "threshold_own")},
                           "brier": None} for r in pv["runs"]]
    return out


def comparison_bars(ablation: dict | None, pv: dict | None) -> list[dict]:
    """ECE(SoftSeg) <= 0.5 ECE(converged conventional) against the binarised truth, and
    Dice(SoftSeg) >= Dice(conventional) - 1 point at each model's own threshold, per dataset,
    over the seeds whose conventional run plateaued (a baseline that did not converge is not a
    fair reference)."""
    bars = []
    for name, runs in _dataset_runs(ablation, pv).items():
        if not runs:
            continue
        n_conv = sum(1 for r in runs if r["cand"] == "conventional")
        pairs_e, pairs_d = _converged_pairs(runs, "ece_bin"), _converged_pairs(runs, "dice_own")
        conv = f"the conventional model plateaued in {len(pairs_e)} of {n_conv} runs"
        for bar, pairs, fn, limit, upper, fmt in (
                (f"{name}: ECE(SoftSeg) <= 0.5 x ECE(converged conventional), vs binarised truth", pairs_e,
                 lambda a, b: a / b if b else float("nan"), 0.5, True, "ECE {a:.4f} vs {b:.4f}, ratio {v:.2f}"),
                (f"{name}: Dice(SoftSeg) >= Dice(conventional) - 1 point, own thresholds", pairs_d,
                 lambda a, b: a - b, -1.0, False, "Dice {a:.1f} vs {b:.1f} %, difference {v:+.1f} points")):
            if not pairs:
                bars.append({"bar": bar, "value": None, "limit": limit, "met": None,
                             "detail": f"not comparable: {conv}"})
                continue
            a, b = _pair_means(pairs)
            v = fn(a, b)
            met = v <= limit if upper else v >= limit
            bars.append({"bar": bar, "value": v, "limit": limit, "met": bool(met),
                         "detail": fmt.format(a=a, b=b, v=v) + f" (means over the {len(pairs)} seeds where {conv})"})
            if not met:
                bars[-1]["why"] = _why_ece(name, ablation, runs) if upper else _why_dice(runs)
    return bars


def _pair_means(pairs: list[tuple]) -> tuple[float, float] | None:
    """The means (SoftSeg, conventional) of :func:`_converged_pairs`, None without a pair."""
    return tuple(sum(x) / len(x) for x in zip(*pairs)) if pairs else None


def _why_ece(name: str, ablation: dict | None, runs: list[dict]) -> str:
    """Why an ECE bar is missed, from the measured data (empty when nothing explains it)."""
    d = next((x for x in (_get(ablation, "datasets") or {}).values() if x.get("dataset") == name), None)
    parts = []
    hist = (d or {}).get("truth_histogram") or []
    if hist and sum(hist):
        parts.append(f"{100.0 * sum(hist[1:-1]) / sum(hist):.1f} % of the truth's voxels lie between 0.05 and 0.95")
    soft = _pair_means(_converged_pairs(runs, "ece_soft"))
    if soft:
        parts.append(f"against the soft truth the ECE is {soft[0]:.4f} (SoftSeg) vs {soft[1]:.4f} (conventional), "
                     f"ratio {soft[0] / soft[1]:.2f}" if soft[1] else "")
    br = _pair_means(_converged_pairs(runs, "brier"))
    if br:
        parts.append(f"the Brier score against the soft truth is {br[0]:.4f} (SoftSeg) vs {br[1]:.4f} (conventional)")
    return "; ".join(p for p in parts if p)


def _why_dice(runs: list[dict]) -> str:
    """Why a Dice bar is missed: Dice at 0.5, the own thresholds and the seeds that lose."""
    at05, pairs = _pair_means(_converged_pairs(runs, "dice_05")), _converged_pairs(runs, "dice_own")
    thr = sorted(r["threshold_own"] for r in runs if r["cand"] == "softseg" and r.get("threshold_own") is not None)
    parts = [f"at 0.5 the Dice is {at05[0]:.1f} (SoftSeg) vs {at05[1]:.1f} % (conventional)" if at05 else "",
             f"SoftSeg's own thresholds, each chosen on its run's validation data, range {thr[0]:.2f}–{thr[-1]:.2f}"
             if thr else "",
             f"SoftSeg's Dice is lower in {sum(1 for a, b in pairs if a < b)} of the {len(pairs)} seeds" if pairs else ""]
    return "; ".join(p for p in parts if p)


def phantom_bars(pv: dict | None) -> list[dict]:
    """The sparse-target bars on the unseen phantoms (SoftSeg, mean over seeds)."""
    names = ("phantom: |Σp − true volume| <= 5 % of the true volume (aim 2 %)",
             "phantom: Σp in lesion-free slices <= 1 % of the true volume",
             "phantom: no lesion-free slice reaches p >= 0.5 (test scans and the lesion-free scan)",
             "phantom: LTPR >= 85 % on non-faint lesions >= 3 mm (own threshold)",
             "phantom: LFDR <= 30 % (own threshold)",
             "phantom: batch size 1 vs 16, max |difference| <= 1e-4")
    s = _get(pv, "summary", "softseg")
    if not s:
        return [{"bar": n, "value": None, "limit": None, "met": None, "detail": "not measured (no partial_volume.json)"}
                for n in names]
    m = lambda k: s[k]["mean"]  # noqa: E731  (None where the runs gave no value)
    f = C.fmt
    n_free = sum(s["n_free_slices"]) * s["n_runs"]
    free = s["free_slices_ge_05_total"] + s["free_scan_slices_ge_05_total"]
    bars = [
        _ratio_bar(names[0], abs(m("soft_err")) if m("soft_err") is not None else None, 5.0, "partial_volume.json",
                   f"Σp error {f(m('soft_err'), 2)} ± {f(s['soft_err']['std'], 2)} %"),
        _ratio_bar(names[1], m("free_sum_p_pct"), 1.0, "partial_volume.json",
                   f"{f(m('free_sum_p_pct'), 3)} % ({f(m('free_haze_voxels'), 0)} voxels at 0.01 <= p < 0.2 per scan)"),
        _ratio_bar(names[2], float(free), 0.0, "partial_volume.json",
                   f"{s['free_slices_ge_05_total']} of {n_free} lesion-free test slices and "
                   f"{s['free_scan_slices_ge_05_total']} lesion-free-scan slices over {s['n_runs']} runs; lesion-free "
                   f"scan max p {f(s['free_scan']['max_p']['mean'], 3)}"),
        _ratio_bar(names[3], m("ltpr_own"), 85.0, "partial_volume.json",
                   f"LTPR {f(m('ltpr_own'), 1)} % at the own threshold ({f(m('threshold_own'), 2)}), {f(m('ltpr_05'), 1)} % at 0.5",
                   upper=False),
        _ratio_bar(names[4], m("lfdr_own"), 30.0, "partial_volume.json",
                   f"LFDR {f(m('lfdr_own'), 1)} % at the own threshold, {f(m('lfdr_05'), 1)} % at 0.5"),
        _ratio_bar(names[5], s.get("batch_1_vs_16_max"), 1e-4, "partial_volume.json",
                   f"{s['batch_1_vs_16_max']:.1e} over every SoftSeg run" if s.get("batch_1_vs_16_max") is not None else ""),
    ]
    if bars[0]["met"] is False:
        bars[0]["why"] = why_soft_volume(s)
    if bars[3]["met"] is False:
        bars[3]["why"] = (f"at 0.5 the LTPR is {f(m('ltpr_05'), 1)} %; the own threshold, chosen for Dice on one "
                          f"validation subject, is {f(m('threshold_own'), 2)}")
    return bars


def why_soft_volume(s: dict) -> str:
    """One sentence, from the measured breakdown, of where SoftSeg's total Σp error comes from."""
    parts = s.get("parts_pct") or {}
    texts = {"lesion_free_slices": "Σp in the lesion-free slices", "away_in_lesion_slices": "false positives in lesion slices",
             "faint_lesions": "the faint lesions", "other_lesions": "the other (non-faint) lesions",
             "rest": "truth outside the lesion neighbourhoods"}
    out = [f"{parts[k]['mean']:+.1f} % {t}" for k, t in texts.items()
           if k in parts and parts[k]["mean"] is not None and abs(parts[k]["mean"]) >= 0.05]
    at1 = s.get("free_slices_at_1") or []
    text = "the error splits into " + ", ".join(out) if out else ""
    if at1 and max(at1) > 0:
        text += f"; {min(at1)}–{max(at1)} lesion-free slices per scan reach p = 1"
    return text


def collapse_bars(collapse: dict | None, ablation: dict | None, pv: dict | None) -> list[dict]:
    """0 all-zero SoftSeg runs in 10 seeds per dataset (``collapse.json``; else the 5-seed
    counts of the ablation and the phantom study, reported as not measured)."""
    rows = {r["dataset"]: r for r in (collapse or {}).get("rows", []) if r["candidate"] == "softseg"}
    five = {d["dataset"]: (d["summary"]["softseg"]["all_zero_runs"], d["summary"]["softseg"]["n_runs"])
            for d in (_get(ablation, "datasets") or {}).values() if "softseg" in d.get("summary", {})}
    if _get(pv, "summary", "softseg"):
        five["phantom cohort"] = (pv["summary"]["softseg"]["all_zero_runs"], pv["summary"]["softseg"]["n_runs"])
    bars = []
    for name in ("brain GM", "spinal-cord GM", "phantom cohort"):
        bar = f"{name}: 0 all-zero SoftSeg runs in 10 seeds"
        row = rows.get(name)
        if row is None or row["n"] < 10:
            extra = f"; {five[name][0]} of {five[name][1]} runs in its main study" if name in five else ""
            bars.append({"bar": bar, "value": None, "limit": 0, "met": None,
                         "detail": f"not measured (run make bench-collapse){extra}"})
        else:
            bars.append(_ratio_bar(bar, float(row["all_zero"]), 0.0, "collapse.json",
                                   f"{row['all_zero']} of {row['n']} runs all-zero; smallest max p {min(row['max_p']):.3f}"))
    return bars


def _why_predict(predict: dict) -> str:
    runs = _get(predict, "runs_by_threads") or {}
    run = runs.get(str(_get(predict, "default_threads"))) or next(iter(runs.values()), None)
    mm, bound = _get(run, "matmul_gflops"), _get(run, "ratio_bound_at_bf16_matmul_speed")
    base = _get(run, "baseline_gflops_vs_fp32_matmul")
    if mm and mm.get("float32") and not mm.get("bfloat16") and base is not None:
        ours = _get(run, "gflops", "ours")
        return (f"this CPU has no native bf16, so predict runs in float32 like the baseline; the eager fp32 loop "
                f"already runs at {base:.2f} of the fp32 matmul rate ({mm['float32']:.0f} GFLOP/s) and ours at "
                f"{ours / mm['float32']:.2f}, so even at the full fp32 matmul rate the ratio could not go below {base:.2f}"
                if ours else "")
    if not mm or bound is None or base is None or not mm.get("float32"):
        return ""
    return (f"this CPU's bf16 matmul runs only {mm['bfloat16'] / mm['float32']:.1f}x its fp32 matmul "
            f"({mm['bfloat16']:.0f} vs {mm['float32']:.0f} GFLOP/s) and the eager fp32 loop already runs at "
            f"{base:.2f} of the fp32 matmul rate, so even at the full bf16 matmul rate the ratio would be {bound:.3f}")


def collect(out_dir: Path) -> dict:
    ablation, pv = _load(out_dir, "ablation"), _load(out_dir, "partial_volume")
    predict, staple, train = _load(out_dir, "predict"), _load(out_dir, "staple"), _load(out_dir, "train")
    bars = phantom_bars(pv) + collapse_bars(_load(out_dir, "collapse"), ablation, pv) + comparison_bars(ablation, pv)
    r = _get(predict, "ratio_ours_vs_baseline")
    bars.append(_ratio_bar("predict_volume time / eager float32 loop <= 0.25", r, 0.25, "predict.json",
                           f"ratio {r:.3f} on {'x'.join(map(str, _get(predict, 'volume') or []))}" if r is not None else ""))
    if bars[-1]["met"] is False:
        bars[-1]["why"] = _why_predict(predict)
    r = _get(staple, "ratio_ours_over_simpleitk")
    bars.append(_ratio_bar("STAPLE time / SimpleITK STAPLEImageFilter <= 0.5", r, 0.5, "staple.json",
                           f"{_get(staple, 'ours_s') or float('nan'):.3f} s vs {_get(staple, 'simpleitk_s') or float('nan'):.3f} s, "
                           f"ratio {r:.3f}" if r is not None else ""))
    engine = []
    r = _get(train, "ratio_ours_over_baseline")
    engine.append(_ratio_bar("training step / eager float32 step <= 0.5", r, 0.5, "train.json",
                             f"ratio {r:.3f}" if r is not None else ""))
    if engine[-1]["met"] is False and _get(train, "mixed_precision") == "float32":
        share = _get(train, "augment_share_of_step")
        engine[-1]["why"] = ("this CPU has no native bf16, so both steps run in float32; ours differs only by "
                             "channels-last and by augmenting its batch"
                             + (f" ({100 * share:.1f} % of its step)" if share is not None else ""))
    gb, key = _memory_gb(predict)
    engine.append(_ratio_bar("predict peak memory on 512x512x200 <= 3 GB", gb, 3.0, "predict.json",
                             f"{gb:.2f} GiB ({key})" if gb is not None else ""))
    r = _get(predict, "ours_gflops_vs_bf16_matmul")
    engine.append(_ratio_bar("predict GFLOP/s / bf16 matmul GFLOP/s >= 0.4 (aim)", r, 0.4, "predict.json",
                             f"ratio {r:.3f}" if r is not None else "", upper=False))
    if r is None and _get(predict, "cpu_bf16") is False:
        engine[-1]["detail"] = "not measured: no native bf16 on this CPU (predict runs in float32)"
    flags = _load(out_dir, "flags")
    quick = any(bool(_get(d, "quick")) for d in (ablation, pv, predict, staple, train, flags) if d)
    return {"quick": quick, "bars": bars, "engine_targets": engine, "review_flags": flag_bars(flags),
            "ui_targets": _ui_targets(_load(out_dir, "segment"), _load(out_dir, "responsiveness"))}


def flag_bars(flags: dict | None) -> list[dict]:
    """The review-flag bars ``bench_flags`` measured (per sampling kind), as they stand in
    ``flags.json``; without that file, one "not measured" line."""
    if not flags or not isinstance(flags.get("bars"), list):
        return [{"bar": "review flags (flag AUROC, recall, false flags, candidates)", "value": None, "limit": None,
                 "met": None, "detail": "not measured (no flags.json)"}]
    model = flags.get("model", "?")  # bench_flags writes the model's name
    return [dict(b, detail=f"{b.get('detail', '')} ({model})") for b in flags["bars"]]


def _ui_targets(segment: dict | None, resp: dict | None) -> list[dict]:
    """The docks' responsiveness targets; a missed stall target says what one repaint costs."""
    ms = lambda s: f"{1000 * s:.0f} ms"  # noqa: E731
    out = []
    alone = _get(segment, "segment_model_only_s", "median")
    for name, v, limit in (("Segment, first click to layers <= 2 s", _get(segment, "segment_first_click_s"), 2.0),
                           ("Segment, later clicks to layers <= 1 s",
                            _get(segment, "segment_click_to_layers_s", "median"), 1.0)):
        out.append(_ratio_bar(name, v, limit, "segment.json",
                              f"{v:.2f} s (model alone {alone or float('nan'):.2f} s)" if v is not None else ""))
    v = _get(segment, "slider_update_s", "median")
    out.append(_ratio_bar("threshold slider update <= 100 ms", v, 0.1, "segment.json",
                          f"{ms(v)} on 256x256x48" if v is not None else ""))
    stalls = [("largest UI stall during Segment <= 50 ms", _get(segment, "ui_stall_during_segment_s", "max"), "segment.json"),
              ("largest UI stall while training in the Train dock <= 50 ms", _get(resp, "training", "stall_s"),
               "responsiveness.json"),
              ("largest UI stall over painted strokes with autosave on <= 50 ms", _get(resp, "painting", "stall_on_s"),
               "responsiveness.json")]
    repaint = _get(resp, "ui_stall_one_slice_step_s") or _get(segment, "ui_stall_one_slice_step_s")
    idle = _get(resp, "ui_stall_idle_s") or _get(segment, "ui_stall_idle_s")
    for name, v, source in stalls:
        bar = _ratio_bar(name, v, 0.05, source, ms(v) if v is not None else "")
        if bar["met"] is False and repaint is not None:
            bar["why"] = (f"one repaint of the napari window (a one-slice step) stalls the same timer {ms(repaint)} "
                          f"on this machine" + (f", the idle viewer {ms(idle)}" if idle is not None else ""))
        out.append(bar)
    return out


def _status(b: dict) -> str:
    return "not measured" if b["met"] is None else ("met" if b["met"] else "NOT met")


def markdown(r: dict) -> str:
    lines = ["## Verdict: the bars the results are held to", ""]
    if r["quick"]:
        lines += ["**Quick smoke run: the verdicts below mean nothing.**", ""]
    rows = [[b["bar"], f"**{_status(b)}**", b["detail"]] for b in r["bars"]]
    lines += [C.md_table(["bar", "status", "measured"], rows, "lll"), ""]
    missed = [b for b in r["bars"] if b["met"] is False]
    if missed:
        lines += ["Why the bars that are not met are missed (from the measured data):", ""]
        lines += [f"- **{b['bar']}**: {b.get('why') or 'no measured explanation'}." for b in missed] + [""]
    lines += ["Engine targets (from the engine's specification):", ""]
    rows = [[b["bar"], f"**{_status(b)}**", b["detail"] + (f"; {b['why']}" if b.get("why") else "")]
            for b in r["engine_targets"]]
    lines += [C.md_table(["target", "status", "measured"], rows, "lll"), ""]
    if r.get("review_flags"):
        lines += ["Review flags on unseen phantoms (`bench_flags`, per sampling):", ""]
        rows = [[b["bar"], f"**{_status(b)}**", b["detail"]] for b in r["review_flags"]]
        lines += [C.md_table(["bar", "status", "measured"], rows, "lll"), ""]
    if r.get("ui_targets"):
        lines += ["Dock responsiveness targets (under Xvfb, software OpenGL):", ""]
        rows = [[b["bar"], f"**{_status(b)}**", b["detail"] + (f"; {b['why']}" if b.get("why") else "")]
                for b in r["ui_targets"]]
        lines += [C.md_table(["target", "status", "measured"], rows, "lll"), ""]
    n_met = sum(1 for b in r["bars"] if b["met"])
    n_measured = sum(1 for b in r["bars"] if b["met"] is not None)
    lines += [f"{n_met} of {n_measured} measured bars met; see the sections above for the data, budgets and figures.", ""]
    return "\n".join(lines)


def run(quick: bool = False, out_dir: Path = C.RESULTS) -> dict:
    out_dir = Path(out_dir)
    r = collect(out_dir)
    r["quick"] = r["quick"] or quick
    C.write_json(out_dir / "verdict.json", r)
    C.write_text(out_dir / "verdict.md", markdown(r))
    return r


if __name__ == "__main__":
    from benchmarks.run_all import bench_cli

    raise SystemExit(bench_cli(__doc__, run, "verdict"))
