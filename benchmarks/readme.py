"""The benchmark figures of the top-level README, written from ``benchmarks/results/``.

The README's block between :data:`BEGIN` and :data:`END` is generated here from the
committed JSON results (machine, wall time, speed table, the bars and why the missed ones
are missed), so the figures it quotes are those of the results, never typed by hand; a test
checks that the block matches the committed results.

    python -m benchmarks.readme            # rewrite the block in README.md
    python -m benchmarks.readme --check    # exit 1 if the block is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import bench_verdict
from .bench_verdict import _get

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
BEGIN = "<!-- benchmark figures: written by `python -m benchmarks.readme` from benchmarks/results/ -->"
END = "<!-- end of benchmark figures -->"


def _load(results: Path, name: str) -> dict:
    return bench_verdict._load(results, name) or {}


def _ms(s) -> str:
    return "—" if s is None else f"{1000 * s:.0f} ms"


def _s(s, digits: int = 2) -> str:
    return "—" if s is None else f"{s:.{digits}f} s"


def _ratio(r, digits: int = 2) -> str:
    return "—" if r is None else f"**{r:.{digits}f}**"


def _target(value, limit: float, text: str, upper: bool = True) -> str:
    if value is None:
        return f"{text} (not measured)"
    ok = value <= limit if upper else value >= limit
    return f"{text} {'✓' if ok else '✗'}"


def render(results: Path) -> str:
    """The README block (without the markers) from the JSON files in ``results``."""
    m, rt = _load(results, "machine"), _load(results, "runtime")
    staple, train, predict = _load(results, "staple"), _load(results, "train"), _load(results, "predict")
    seg, resp, verdict = _load(results, "segment"), _load(results, "responsiveness"), _load(results, "verdict")
    lines = []
    head = (f"The committed results come from one full `make bench` run started {m.get('date', '?')[:16].replace('T', ' ')} "
            f"UTC on a {m.get('cores', '?')}-core {m.get('cpu', '?')} ({m.get('memory_gib', '?')} GiB, CPU capability "
            f"{m.get('cpu_capability', '?')}, torch {m.get('torch', '?')})")
    rerun = rt.get("rerun", {})
    if (rt.get("complete") or rerun) and not rt.get("quick") and rt.get("total_s") is not None:
        parts = [", ".join(f"{n} {s / 60:.1f}" for n, s in rt.get("seconds", {}).items() if n not in rerun) + " min"]
        parts += [f"{n} re-run on its own {d[:16].replace('T', ' ')} UTC" for n, d in rerun.items()]
        head += f"; it took **{rt['total_s'] / 60:.0f} min** ({'; '.join(parts)})."
    else:
        head += "."
    lines += [head, ""]

    threads = str(_get(predict, "default_threads", default=2))
    pr = _get(predict, "runs_by_threads", threads, default={})
    vol = "x".join(map(str, predict.get("volume", [])))
    mem = _get(predict, "memory", default={})
    rss = mem.get("rss_peak_mib")
    amp = train.get("mixed_precision", "bfloat16")
    amp_text = "bf16 autocast" if amp == "bfloat16" else f"{amp}, no native bf16 on this CPU"
    bf16_mm = _get(pr, "matmul_gflops", "bfloat16")
    mm, mm_name = (bf16_mm, "bf16") if bf16_mm else (_get(pr, "matmul_gflops", "float32"), "fp32")
    ours_gflops = _get(pr, "gflops", "ours")
    mm_ratio = ours_gflops / mm if ours_gflops and mm else None
    rows = [
        (f"STAPLE, {staple.get('raters', '?')} raters x {staple.get('voxels', 0) / 1e6:.1f} M voxels",
         _s(staple.get("ours_s"), 3),
         f"SimpleITK `STAPLEImageFilter` {_s(staple.get('simpleitk_s'))} "
         f"({100 * staple.get('agreement_at_0.5', float('nan')):.2f} % voxel agreement)",
         _ratio(staple.get("ratio_ours_over_simpleitk"), 3), _target(staple.get("ratio_ours_over_simpleitk"), 0.5, "≤ 0.5")),
        (f"training step, batch {train.get('batch', '?')} x {'x'.join(map(str, train.get('crop', [])))} "
         f"({amp_text}, channels-last, augmentation included)", _ms(train.get("ours_step_s")),
         f"eager fp32 step {_ms(train.get('baseline_step_s'))}", _ratio(train.get("ratio_ours_over_baseline")),
         _target(train.get("ratio_ours_over_baseline"), 0.5, "≤ 0.5")),
        (f"`predict_volume`, {vol} (folded BN, fused conv+ReLU, {'bf16' if bf16_mm else 'float32'}; max abs diff "
         f"{predict.get('max_abs_diff_ours_vs_baseline', float('nan')):.4f})", _s(_get(pr, "seconds_best", "ours")),
         f"eager fp32 slice loop {_s(_get(pr, 'seconds_best', 'baseline'))}", _ratio(predict.get("ratio_ours_vs_baseline")),
         _target(predict.get("ratio_ours_vs_baseline"), 0.25, "≤ 0.25")),
        ("achieved GFLOP/s in predict", f"{ours_gflops or float('nan'):.0f}",
         f"{mm_name} matmul {mm or float('nan'):.0f}, same run", _ratio(mm_ratio),
         _target(mm_ratio, 0.4, "≥ 0.4", upper=False) if bf16_mm else "≥ 0.4 of bf16 matmul (no native bf16 here)"),
        (f"peak RSS of predict on {'x'.join(map(str, mem.get('shape', [])))}",
         "—" if rss is None else f"{rss / 1024:.2f} GiB", "", "", _target(None if rss is None else rss / 1024, 3.0, "≤ 3 GB")),
        (f"Segment, first click → layers (fresh process), {'x'.join(map(str, _get(seg, 'volume', 'segment', default=[])))}",
         _s(seg.get("segment_first_click_s")), f"model alone {_s(_get(seg, 'segment_model_only_s', 'median'))}", "",
         _target(seg.get("segment_first_click_s"), 2.0, "≤ 2 s")),
        (f"Segment, later clicks → layers, {'x'.join(map(str, _get(seg, 'volume', 'segment', default=[])))}",
         f"{_s(_get(seg, 'segment_click_to_layers_s', 'median'))} (max {_s(_get(seg, 'segment_click_to_layers_s', 'max'))})",
         f"model alone {_s(_get(seg, 'segment_model_only_s', 'median'))}", "",
         _target(_get(seg, "segment_click_to_layers_s", "median"), 1.0, "≤ 1 s")),
        (f"threshold slider, {'x'.join(map(str, _get(seg, 'volume', 'slider', default=[])))}",
         _ms(_get(seg, "slider_update_s", "median")), f"re-running the model {_s(seg.get('slider_rerun_model_s'))}",
         _ratio(seg.get("slider_ratio_over_rerun"), 3), _target(_get(seg, "slider_update_s", "median"), 0.1, "≤ 100 ms")),
        ("largest Qt stall during Segment (10 ms timer)", _ms(_get(seg, "ui_stall_during_segment_s", "max")),
         f"one slice step {_ms(seg.get('ui_stall_one_slice_step_s'))}", "",
         _target(_get(seg, "ui_stall_during_segment_s", "max"), 0.05, "≤ 50 ms")),
        (f"largest Qt stall while training in the Train dock ({_get(resp, 'training', 'epochs', default='?')} epochs)",
         _ms(_get(resp, "training", "stall_s")), f"viewer idle {_ms(resp.get('ui_stall_idle_s'))}", "",
         _target(_get(resp, "training", "stall_s"), 0.05, "≤ 50 ms")),
        ("the Train click's own handler (snapshot, preview layer, progress bar; once per run)",
         _ms(_get(resp, "training", "click_handler_s")), "", "", ""),
        (f"largest Qt stall over {_get(resp, 'painting', 'strokes', default='?')} painted strokes, autosave on",
         _ms(_get(resp, "painting", "stall_on_s")), f"autosave off {_ms(_get(resp, 'painting', 'stall_off_s'))}; "
         f"one slice step {_ms(resp.get('ui_stall_one_slice_step_s'))}", "",
         _target(_get(resp, "painting", "stall_on_s"), 0.05, "≤ 50 ms")),
    ]
    lines += ["| what | ours | baseline | ratio | target |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    bars = verdict.get("bars", [])
    if bars:
        lines += ["", "The bars the results are held to:", "", "| bar | status | measured |", "|---|---|---|"]
        for b in bars:
            status = "not measured" if b.get("met") is None else ("met" if b["met"] else "**NOT met**")
            lines.append(f"| {b['bar']} | {status} | {b.get('detail', '')} |")
        missed = [b for b in bars if b.get("met") is False and b.get("why")]
        if missed:
            lines += ["", "Why the missed bars are missed, from the measured data:", ""]
            lines += [f"- *{b['bar']}*: {b['why']}." for b in missed]
        if verdict.get("quick"):
            lines += ["", "**These are quick smoke-run results: the verdicts mean nothing.**"]
    return "\n".join(lines)


def block(text: str) -> str | None:
    """The generated part of ``text`` (between the markers), or None if the markers are missing."""
    try:
        i = text.index(BEGIN) + len(BEGIN)
        return text[i:text.index(END, i)].strip("\n")
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--readme", default=str(README))
    parser.add_argument("--check", action="store_true", help="exit 1 if README's block is out of date")
    args = parser.parse_args(argv)
    path = Path(args.readme)
    text = path.read_text()
    if block(text) is None:
        print(f"{path} has no benchmark block (the markers {BEGIN!r} and {END!r}).", file=sys.stderr)
        return 1
    new = render(Path(args.results))
    if args.check:
        same = block(text) == new
        print("README's benchmark figures match the results." if same else "README's benchmark figures are out of date.")
        return 0 if same else 1
    i = text.index(BEGIN) + len(BEGIN)
    j = text.index(END, i)
    path.write_text(text[:i] + "\n" + new + "\n" + text[j:])
    print(f"wrote the benchmark figures into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
