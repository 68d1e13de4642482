"""Reproduction table: each headline finding of the SoftSeg and label-fusion work, its
published figure, ours, and whether ours goes the same way.

Reads ``ablation.json``, ``partial_volume.json``, ``fusion.json`` and, when present,
``collapse.json`` from the same folder (it trains nothing) and writes ``thesis.md`` and
``thesis.json``. The published figures are those of the sources below, quoted where they
are given; a figure that is not in them is written "not available here", never guessed.
Where ours goes the other way, the row says why, from our data.

Sources:

* [S] Gros, Lemay, Cohen-Adad, "SoftSeg: Advantages of soft versus binary training for
  image segmentation", Medical Image Analysis 71 (2021) 102038 (arXiv 2011.09041), abstract.
* [F] Lemay, Gros, Naga Karthik, Cohen-Adad, "Label fusion and training methods for
  reliable representation of inter-rater uncertainty", MELBA 2022:031 (arXiv 2202.07550),
  abstract.
* [I] the thesis (Gros 2021) quoted second-hand, not checked against its tables here: Dice gains of +2 to +3 points and
  parity on MS lesions; on the spinal cord SoftSeg's ECE (against the binarised STAPLE) was
  the lower; Soft-ReLU-Wing "always converged".

    python -m benchmarks.bench_thesis [--out DIR]
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import _common as C
from .bench_partial_volume import settings

READS_RESULTS = True  # reads the other benchmarks' JSON; trains nothing
NA = "not available here"


def _load(out_dir: Path, name: str) -> dict | None:
    try:
        return json.loads((Path(out_dir) / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def _mean(row: dict | None, key: str) -> float | None:
    v = (row or {}).get(key, {}).get("mean") if isinstance((row or {}).get(key), dict) else None
    return v if v is not None and math.isfinite(v) else None


def _ds(ablation: dict | None, name: str) -> dict | None:
    return next((d for d in (ablation or {}).get("datasets", {}).values() if d.get("dataset") == name), None)


def _plateau(row: dict | None) -> str:
    return f"{sum(row['plateaued'])}/{row['n_runs']}" if row and "plateaued" in row else "?"


def _row(finding: str, source: str, theirs: str, ours: str | None, same: bool | None, why: str = "") -> dict:
    return {"finding": finding, "source": source, "published": theirs, "ours": ours if ours is not None else "not measured",
            "same_direction": same, "why": why if same is False else ""}


def dice_rows(ablation: dict | None, pv: dict | None) -> list[dict]:
    """SoftSeg's Dice against the conventional model's, each at its own threshold."""
    rows = []
    for name, theirs, src, published in (
            ("spinal-cord GM", "+2.0 % Dice on grey matter (p = 0.001) [S]; +2 to +3 points [I]", "[S], [I]", True),
            ("brain GM", f"{NA} (no brain-GM dataset in [S])", "—", False)):
        d = _ds(ablation, name)
        s, c = ((d or {}).get("summary", {}).get(k) for k in ("softseg", "conventional"))
        a, b = _mean(s, "dice_own"), _mean(c, "dice_own")
        if a is None or b is None:
            rows.append(_row(f"{name}: Dice, SoftSeg − conventional (own thresholds)", src, theirs, None, None))
            continue
        diff, p = a - b, (c.get("dice_own") or {}).get("p_vs_softseg")
        ours = f"{diff:+.1f} points ({a:.1f} vs {b:.1f} %, Wilcoxon p {C.fmt_p(p)}); conventional converged {_plateau(c)}"
        same = diff > 0 if published else None
        d05 = None if _mean(s, "dice") is None or _mean(c, "dice") is None else _mean(s, "dice") - _mean(c, "dice")
        why = (f"at 0.5 the difference is {'?' if d05 is None else f'{d05:+.1f}'} points; own thresholds "
               f"{C.fmt(_mean(s, 'threshold_own'), 2)} (SoftSeg) vs {C.fmt(_mean(c, 'threshold_own'), 2)}, each chosen on "
               f"its run's validation data; Wilcoxon p {C.fmt_p(p)}; conventional converged {_plateau(c)}") if same is False else ""
        rows.append(_row(f"{name}: Dice, SoftSeg − conventional (own thresholds)", src, theirs, ours, same, why))
    s, c = ((pv or {}).get("summary", {}).get(k) for k in ("softseg", "conventional"))
    a, b = _mean(s, "dice_own"), _mean(c, "dice_own")
    ours = None if a is None or b is None else f"{a - b:+.1f} points ({a:.1f} vs {b:.1f} %); conventional converged {_plateau(c)}"
    rows.append(_row("MS-like lesions (our phantom): Dice, SoftSeg − conventional (own thresholds)", "[S], [I]",
                     "+3.3 % Dice on MS lesions [S]; parity on MS lesions [I]", ours,
                     None if ours is None else a - b >= -1.0,
                     "" if ours is None else f"LTPR {C.fmt(_mean(s, 'ltpr_own'), 1)} vs {C.fmt(_mean(c, 'ltpr_own'), 1)} %, "
                     f"LFDR {C.fmt(_mean(s, 'lfdr_own'), 1)} vs {C.fmt(_mean(c, 'lfdr_own'), 1)} %"))
    rows.append(_row("Brain tumours: Dice, SoftSeg − conventional", "[S]", "+6.5 % Dice [S]",
                     "no brain-tumour data here", None))
    rows.append(_row("Tables 4.2–4.4: every candidate's figures (Hard-ReLU-Wing, Soft-ReLU-Dice, Soft-Sig-Wing)", "—", NA,
                     candidate_ranking(ablation), None))
    return rows


def candidate_ranking(ablation: dict | None) -> str | None:
    out = []
    for d in (ablation or {}).get("datasets", {}).values():
        ranked = sorted(((_mean(r, "dice_own") or float("nan"), c) for c, r in d["summary"].items()), reverse=True)
        out.append(f"{d['dataset']}: " + " > ".join(f"{c} {v:.1f}" for v, c in ranked))
    return "; ".join(out) or None


def calibration_rows(ablation: dict | None, pv: dict | None, fusion: dict | None) -> list[dict]:
    rows = []
    for name, theirs in (("spinal-cord GM", "SoftSeg the lower ECE against the binarised STAPLE [I]; better calibration [F]"),
                         ("brain GM", f"{NA} (no brain-GM dataset)"),
                         ("phantom cohort", "SoftSeg better calibrated on MS brain lesions [F]")):
        if name == "phantom cohort":
            s, c = ((pv or {}).get("summary", {}).get(k) for k in ("softseg", "conventional"))
        else:
            s, c = ((_ds(ablation, name) or {}).get("summary", {}).get(k) for k in ("softseg", "conventional"))
        a, b = _mean(s, "ece_bin"), _mean(c, "ece_bin")
        ours = None if a is None or b is None else (f"{a:.4f} vs {b:.4f} (ratio {C.fmt(a / b if b else None)}); conventional converged "
                                                    f"{_plateau(c)}")
        same = None if ours is None or NA in theirs else a < b
        why = "" if ours is None else (f"against the soft truth ECE is {C.fmt(_mean(s, 'ece') or _mean(s, 'ece_soft'), 4)} vs "
                                       f"{C.fmt(_mean(c, 'ece') or _mean(c, 'ece_soft'), 4)}")
        rows.append(_row(f"{name}: ECE vs binarised truth, SoftSeg vs conventional", "[I], [F]", theirs, ours, same, why))
    rows += fusion_rows(fusion)
    return rows


def current_fusion(fusion: dict | None) -> dict | None:
    """``fusion.json`` when it was made with the phantom studies' present protocol and seeds
    for its mode (``bench_partial_volume.settings``), else a note saying what it was made with."""
    if fusion is None:
        return None
    s = settings(bool(fusion.get("quick")))
    if s["budget"].made(fusion) and fusion.get("seeds") == s["seeds"]:
        return fusion
    return {"stale": f"fusion.json was made with an earlier protocol ({fusion.get('seeds')} seed(s); "
                     f"{fusion.get('budget_text')}): run `make bench-fusion`"}


def fusion_rows(fusion: dict | None) -> list[dict]:
    if (fusion or {}).get("stale"):
        return [_row("Tables 5.1–5.3 (fusion)", "[F]", "", fusion["stale"], None)]
    t = (fusion or {}).get("table", {})
    rows = []
    pairs = [(src, t.get(f"{src} / SoftSeg"), t.get(f"{src} / conventional")) for src in ("STAPLE", "average", "random sampling")]
    pairs = [(src, s, c) for src, s, c in pairs if s and c]
    if not pairs:
        return [_row("Tables 5.1–5.3 (fusion)", "[F]", "", "not measured: run `make bench-fusion`", None)]
    for key, finding, theirs in (
            ("ece_bin", "ECE vs binarised STAPLE, SoftSeg vs conventional, per fusion", "SoftSeg better calibrated for every fusion method [F]"),
            ("entropy_mae", "entropy MAE, SoftSeg vs conventional, per fusion",
             "SoftSeg preserves the inter-rater variability better for every fusion method [F]")):
        vals = [(src, _mean(s, key), _mean(c, key)) for src, s, c in pairs]
        ours = "; ".join(f"{src} {C.fmt(a, 4)} vs {C.fmt(b, 4)}" for src, a, b in vals)
        worse = [src for src, a, b in vals if a is None or b is None or not a < b]
        rows.append(_row(finding, "[F]", theirs, ours, not worse, f"not lower for {', '.join(worse)}: " + "; ".join(
            _why_fusion_cell(src, s, c, fusion.get("references")) for src, s, c in pairs if src in worse)))
    conv = [(src, _mean(c, "entropy_diff_slices")) for src, s, c in pairs]
    rows.append(_row("conventional models over-confident (predicted entropy below the raters')", "[F]",
                     "conventional models over-confident, under-estimate the inter-rater uncertainty [F]",
                     "; ".join(f"{src} {C.fmt(v, 4)} bits" for src, v in conv), all(v is not None and v < 0 for _, v in conv),
                     "; ".join(f"{src}: converged {_plateau(c)}, Σp {C.fmt(_mean(c, 'soft_err_truth'), 0)} % against the "
                               f"exact truth, LFDR {C.fmt(_mean(c, 'lfdr_own'), 0)} %" for src, s, c in pairs)))
    avg = t.get("average / SoftSeg")
    v = _mean(avg, "entropy_diff_slices")
    rows.append(_row("average + SoftSeg under-confident (predicted entropy above the raters')", "[F]",
                     "averaging with SoftSeg gives under-confident outputs, over-estimating the disagreement [F]",
                     None if v is None else f"{v:+.4f} bits", None if v is None else v > 0,
                     f"its entropy MAE is {C.fmt(_mean(avg, 'entropy_mae'), 4)} bits (rank {_rank(t, 'average / SoftSeg', 'entropy_mae')} "
                     f"of {len(t)}, 1 the lowest), its Σp {C.fmt(_mean(avg, 'soft_err_truth'), 0)} % off the exact truth and its ECE "
                     f"against the rater average {C.fmt(_mean(avg, 'ece_average'), 4)}: it follows the raters' average"))
    dice = [(src, (_mean(s, "dice_own") or 0.0) - (_mean(c, "dice_own") or 0.0)) for src, s, c in pairs]
    rows.append(_row("segmentation: SoftSeg ≥ conventional for every fusion (own thresholds)", "[F]",
                     "SoftSeg's segmentation systematically superior or equal [F]",
                     "; ".join(f"{src} {d:+.1f} points" for src, d in dice), all(d >= -1.0 for _, d in dice),
                     "Dice more than 1 point below the conventional model's for "
                     + ", ".join(f"{src} (own thresholds {C.fmt(_mean(s, 'threshold_own'))} vs "
                                 f"{C.fmt(_mean(c, 'threshold_own'))}; LTPR {C.fmt(_mean(s, 'ltpr_own'), 0)} vs "
                                 f"{C.fmt(_mean(c, 'ltpr_own'), 0)} %)" for (src, s, c), (_, d) in zip(pairs, dice) if d < -1.0)))
    best = max(t, key=lambda n: _mean(t[n], "dice_own") or -1)
    rows.append(_row("best fusion method for segmentation is task-dependent", "[F]",
                     "differs between the two datasets [F]", f"best Dice here: {best} (one task)", None))
    rows.append(_row("Tables 5.1–5.3: each cell's figures", "—", NA, "see fusion.md", None))
    return rows


def _rank(table: dict, name: str, key: str) -> int:
    """``name``'s place by ``key`` among the table's cells, 1 for the lowest mean."""
    values = {n: _mean(row, key) for n, row in table.items()}
    return sorted(table, key=lambda n: math.inf if values[n] is None else values[n]).index(name) + 1


def _why_fusion_cell(src: str, soft: dict, conv: dict, refs: dict | None) -> str:
    """Why SoftSeg trained on one label source is not the better of the two, from the data:
    each pipeline's entropy against the raters', the volume SoftSeg learnt, what its labels
    hold (STAPLE against the rater average), and convergence."""
    labels = (f"; STAPLE ≥ 0.5 holds {refs['staple_voxels']:.0f} voxels against the rater average's "
              f"{refs['average_voxels']:.0f}" if src == "STAPLE" and refs else "")
    return (f"{src}: predicted entropy per lesion slice {C.fmt(_mean(soft, 'entropy_diff_slices'), 4)} (SoftSeg) and "
            f"{C.fmt(_mean(conv, 'entropy_diff_slices'), 4)} bits (conventional) against the raters', SoftSeg's Σp "
            f"{C.fmt(_mean(soft, 'soft_err_truth'), 0)} % off the exact truth{labels}; converged {_plateau(soft)} (SoftSeg), "
            f"{_plateau(conv)} (conventional)")


def other_rows(ablation: dict | None, pv: dict | None, collapse: dict | None) -> list[dict]:
    rows = []
    soft = []
    for d in (ablation or {}).get("datasets", {}).values():
        s, c = d["summary"].get("softseg"), d["summary"].get("conventional")
        if s and c and _mean(s, "softness") is not None and _mean(c, "softness") is not None:
            soft.append(f"{d['dataset']} {C.fmt(_mean(s, 'softness'), 1)} vs {C.fmt(_mean(c, 'softness'), 1)} %")
    rows.append(_row("soft predictions at tissue interfaces (softness: share of p > 0.05 below 0.95)", "[S]",
                     "consistent soft predictions at interfaces [S]; figures " + NA, "; ".join(soft) or None, None))
    s, c = ((pv or {}).get("summary", {}).get(k) for k in ("softseg", "conventional"))
    a, b = _mean(s, "ltpr_own"), _mean(c, "ltpr_own")
    rows.append(_row("sensitivity for small objects (LTPR, phantom, own thresholds)", "[S]", "increased sensitivity [S]",
                     None if a is None or b is None else f"{a:.1f} vs {b:.1f} %", None if a is None or b is None else a >= b,
                     "" if a is None or b is None else f"at 0.5: {C.fmt(_mean(s, 'ltpr_05'), 1)} vs {C.fmt(_mean(c, 'ltpr_05'), 1)} %"))
    rows.append(threshold_row(ablation))
    rows.append(convergence_row(ablation, pv, collapse))
    return rows


def threshold_row(ablation: dict | None) -> dict:
    """Threshold sensitivity: the width of the threshold range within 1 point of the best
    Dice (mean sweep over seeds), SoftSeg vs conventional."""
    out = []
    for d in (ablation or {}).get("datasets", {}).values():
        widths = {}
        for cand in ("softseg", "conventional"):
            sweeps = [r["sweep"] for r in d["runs"] if r["candidate"] == cand]
            if not sweeps:
                continue
            th = sweeps[0]["thresholds"]
            mean = [sum((s["dice"][i] or 0.0) for s in sweeps) / len(sweeps) for i in range(len(th))]
            widths[cand] = sum(1 for v in mean if v >= max(mean) - 1.0) * 0.05
        if len(widths) == 2:
            out.append(f"{d['dataset']}: {widths['softseg']:.2f} vs {widths['conventional']:.2f}")
    return _row("threshold sensitivity (width of the thresholds within 1 Dice point of the best, SoftSeg vs conventional)",
                "—", NA, "; ".join(out) or None, None)


def convergence_row(ablation: dict | None, pv: dict | None, collapse: dict | None) -> dict:
    parts, zero = [], 0
    rows = [r for r in (collapse or {}).get("rows", []) if r["candidate"] == "softseg"]
    if rows:
        parts = [f"{r['dataset']} {r['all_zero']}/{r['n']} all-zero, {r['plateaued']}/{r['n']} plateaued" for r in rows]
        zero = sum(r["all_zero"] for r in rows)
    else:
        for d in (ablation or {}).get("datasets", {}).values():
            s = d["summary"].get("softseg")
            if s:
                parts.append(f"{d['dataset']} {s['all_zero_runs']}/{s['n_runs']} all-zero, {_plateau(s)} plateaued")
                zero += s["all_zero_runs"]
        s = (pv or {}).get("summary", {}).get("softseg")
        if s:
            parts.append(f"phantom {s['all_zero_runs']}/{s['n_runs']} all-zero, {_plateau(s)} plateaued")
            zero += s["all_zero_runs"]
    return _row("Soft-ReLU-Wing always converged (no all-zero run)", "[I]", "always converged [I]", "; ".join(parts) or None,
                None if not parts else zero == 0, f"{zero} all-zero runs")


def run(quick: bool = False, out_dir: Path = C.RESULTS) -> dict:
    out_dir = Path(out_dir)
    ablation, pv, fusion = (_load(out_dir, n) for n in ("ablation", "partial_volume", "fusion"))
    fusion = current_fusion(fusion)
    collapse = _load(out_dir, "collapse")
    rows = dice_rows(ablation, pv) + calibration_rows(ablation, pv, fusion) + other_rows(ablation, pv, collapse)
    q = quick or any(bool((d or {}).get("quick")) for d in (ablation, pv, fusion, collapse))
    compared = [x for x in rows if x["same_direction"] is not None]
    result = {"quick": q, "rows": rows, "n_rows": len(rows), "n_compared": len(compared),
              "n_same_direction": sum(1 for x in compared if x["same_direction"])}
    C.write_json(out_dir / "thesis.json", result)
    C.write_text(out_dir / "thesis.md", markdown(result))
    return result


def markdown(r: dict) -> str:
    lines = ["## Reproduction of the published findings", ""]
    if r["quick"]:
        lines += ["**Quick smoke run: the comparisons below mean nothing.**", ""]
    lines += ["Sources: [S] Gros, Lemay & Cohen-Adad, SoftSeg, Medical Image Analysis 71 (2021) 102038, abstract; "
              "[F] Lemay, Gros, Naga Karthik & Cohen-Adad, label fusion, MELBA 2022:031, abstract; [I] the thesis, quoted "
              f"second-hand. Figures that are not in these sources are marked \"{NA}\". Ours: means over seeds from this "
              "folder's ablation, phantom, fusion and collapse results (own thresholds chosen on validation data; ECE "
              "against the binarised truth).", ""]
    mark = {True: "yes", False: "**no**", None: "—"}
    rows = [[x["finding"], x["source"], x["published"], x["ours"], mark[x["same_direction"]], x["why"]] for x in r["rows"]]
    lines += [C.md_table(["finding", "source", "published", "ours", "same direction", "where not: why, from our data"],
                         rows, "llllll"), ""]
    lines += [f"{r['n_same_direction']} of the {r['n_compared']} findings that could be compared go the same way.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    from benchmarks.run_all import bench_cli

    raise SystemExit(bench_cli(__doc__, run, "thesis"))
