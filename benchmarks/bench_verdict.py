"""The bars the results are held to, checked from the other benchmarks' JSON files.

Runs last (``run_all`` goes in name order) and reads ``ablation.json``,
``partial_volume.json``, ``predict.json``, ``staple.json``, ``train.json``, ``segment.json`` and
``responsiveness.json`` from the same folder; a missing file or key is reported as "not measured", never guessed. Writes
``verdict.json`` and ``verdict.md``: one line per bar with the measured value, the limit,
met / NOT met, and the numbers behind it; for every bar that is not met, why, in the
measured numbers that explain it (the truth's softness and the Brier score for a missed
ECE bar, the breakdown of the Σp error, the bf16/fp32 matmul rates for predict).

Bars: SoftSeg's ECE ≤ ½ the conventional candidate's and SoftSeg's Dice ≥ conventional − 1
point (ablation, per dataset); SoftSeg's total soft-volume error on the phantom ≤ 2 %;
``predict_volume`` ≤ 0.25 of an eager float32 loop; STAPLE ≤ 0.5 of SimpleITK. The engine's
own targets (training step ≤ 0.5 of an eager float32 step, predict peak memory ≤ 3 GB on
512x512x200, predict GFLOP/s ≥ 0.4 of a bf16 matmul) and the docks' (Segment's first click ≤ 2 s
and later clicks ≤ 1 s on the lesion phantom, threshold slider ≤ 100 ms, largest UI stall
≤ 50 ms during Segment, training and painting with autosave) are listed after them.

    python -m benchmarks.bench_verdict [--out DIR]
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import _common as C


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


def _why_ablation(bar: dict, ablation: dict) -> str:
    """Why an ablation bar is missed, from the measured data (empty when nothing explains it)."""
    d = next((x for x in (ablation.get("datasets") or {}).values() if x.get("dataset") == bar.get("dataset")), None)
    if d is None or "ECE" not in bar["bar"]:
        return ""
    hist = d.get("truth_histogram") or []
    s, c = _get(d, "summary", "softseg"), _get(d, "summary", "conventional")
    brier = (_get(s, "brier", "mean"), _get(c, "brier", "mean"))
    if not hist or sum(hist) == 0 or None in brier:
        return ""
    between = 100.0 * sum(hist[1:-1]) / sum(hist)
    text = f"{between:.1f} % of the truth's voxels lie between 0.05 and 0.95"
    if between < 1.0:
        text += (" (a binary mask), so ECE against it rewards an output that is confidently 0 or 1 and cannot "
                 "credit calibrated softness at the border")
    return text + f"; the Brier score against the same truth is {brier[0]:.4f} (SoftSeg) vs {brier[1]:.4f} (conventional)"


def _why_predict(predict: dict) -> str:
    runs = _get(predict, "runs_by_threads") or {}
    run = runs.get(str(_get(predict, "default_threads"))) or next(iter(runs.values()), None)
    mm, bound = _get(run, "matmul_gflops"), _get(run, "ratio_bound_at_bf16_matmul_speed")
    base = _get(run, "baseline_gflops_vs_fp32_matmul")
    if not mm or bound is None or base is None or not mm.get("float32"):
        return ""
    return (f"this CPU's bf16 matmul runs only {mm['bfloat16'] / mm['float32']:.1f}x its fp32 matmul "
            f"({mm['bfloat16']:.0f} vs {mm['float32']:.0f} GFLOP/s) and the eager fp32 loop already runs at "
            f"{base:.2f} of the fp32 matmul rate, so even at the full bf16 matmul rate the ratio would be {bound:.3f}")


def collect(out_dir: Path) -> dict:
    ablation, pv = _load(out_dir, "ablation"), _load(out_dir, "partial_volume")
    predict, staple, train = _load(out_dir, "predict"), _load(out_dir, "staple"), _load(out_dir, "train")
    bars = []
    if ablation is None:
        bars.append({"bar": "ablation bars (ECE, Dice)", "value": None, "limit": None, "met": None,
                     "detail": "not measured (no ablation.json)"})
    else:
        for b in ablation.get("bars", []):
            bars.append(dict(b, bar=f"{b['dataset']}: {b['bar']}", why="" if b.get("met") else _why_ablation(b, ablation)))
    if pv is None:
        bars.append({"bar": "abs(total soft-volume error of SoftSeg) <= 2 %", "value": None, "limit": 2.0, "met": None,
                     "detail": "not measured (no partial_volume.json)"})
    else:
        bars += pv.get("bars", [])
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
    gb, key = _memory_gb(predict)
    engine.append(_ratio_bar("predict peak memory on 512x512x200 <= 3 GB", gb, 3.0, "predict.json",
                             f"{gb:.2f} GiB ({key})" if gb is not None else ""))
    r = _get(predict, "ours_gflops_vs_bf16_matmul")
    engine.append(_ratio_bar("predict GFLOP/s / bf16 matmul GFLOP/s >= 0.4 (aim)", r, 0.4, "predict.json",
                             f"ratio {r:.3f}" if r is not None else "", upper=False))
    quick = any(bool(_get(d, "quick")) for d in (ablation, pv, predict, staple, train) if d)
    return {"quick": quick, "bars": bars, "engine_targets": engine,
            "ui_targets": _ui_targets(_load(out_dir, "segment"), _load(out_dir, "responsiveness"))}


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
    rows = [[b["bar"], f"**{_status(b)}**", b["detail"]] for b in r["engine_targets"]]
    lines += [C.md_table(["target", "status", "measured"], rows, "lll"), ""]
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
