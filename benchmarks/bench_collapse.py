"""Collapse counts: how many SoftSeg runs predict nothing (an all-zero output) in 10 seeds.

A run has *collapsed* when no voxel of its test region exceeds p = 0.05. SoftSeg (the
``softseg`` preset with the engine's defaults) is trained with 10 seeds on each of brain
grey matter and spinal-cord grey matter (seed *k* holds out slab *k* mod 5, as in
``bench_ablation``) and on the phantom cohort (as in ``bench_partial_volume``), with the
same protocol as those studies. Seeds 0–4 are the runs of ``ablation.json`` and
``partial_volume.json`` in the same folder when those were made with the same protocol
(their per-run records are read, not re-trained); the other seeds are trained here. On the
spinal cord a second row trains the pre-issue-15 recipe on the same seeds — dropout 0.3 and
no score margin (uniform Adaptive Wing, batch-wide maximum) — to show what the defaults
prevent.

A separate study (``make bench-collapse``, ``python -m benchmarks.run_all --only collapse``):
``make bench`` does not run it.

    python -m benchmarks.bench_collapse [--quick] [--out DIR]
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from . import _common as C
from .bench_ablation import jobs_for, plans
from .bench_partial_volume import phantom_jobs, settings

SEPARATE = True  # run_all leaves it out unless named with --only
SEEDS = 10
#: extra rows: dataset -> (name, Budget overrides, title)
VARIANTS = {"sct_gm": ("softseg-dropout", {"dropout": 0.3, "score_margin": 0.0},
                       "SoftSeg with dropout 0.3 and no score margin (pre-issue-15 recipe, batch-wide maximum)")}


def _earlier(out_dir: Path, name: str) -> dict | None:
    try:
        return json.loads((Path(out_dir) / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def reused_ablation(out_dir: Path, plan, quick: bool) -> dict:
    """seed -> record of the ``softseg`` runs of ``ablation.json`` made with ``plan``'s protocol."""
    ab = _earlier(out_dir, "ablation")
    d = (ab or {}).get("datasets", {}).get(plan.key)
    if not plan.budget.made(d) or bool(ab.get("quick")) != quick:
        return {}
    return {r["seed"]: _record(r["metrics"]["max_p"], r["convergence"], "ablation.json")
            for r in d["runs"] if r["candidate"] == "softseg"}


def reused_phantom(out_dir: Path, budget: C.Budget, quick: bool) -> dict:
    pv = _earlier(out_dir, "partial_volume")
    if not budget.made(pv) or bool(pv.get("quick")) != quick:
        return {}
    return {r["seed"]: _record(max(s["max_p"] for s in r["scans"]), r["convergence"], "partial_volume.json")
            for r in pv["runs"] if r["pipeline"] == "softseg"}


def _record(max_p: float, conv: dict, source: str) -> dict:
    return {"max_p": float(max_p), "all_zero": bool(max_p <= 0.05), "epochs_run": conv.get("epochs_run"),
            "best_epoch": conv.get("best_epoch"), "plateaued": bool(conv.get("plateaued")), "source": source}


def _dense_rows(out_dir: Path, quick: bool, seeds, log) -> list[dict]:
    rows = []
    for plan in plans(quick):
        vol = plan.load()
        folds = plan.fold_list(vol)
        variants = [("softseg", {}, "SoftSeg (engine defaults)")]
        if plan.key in VARIANTS:
            variants.append(VARIANTS[plan.key])
        for name, overrides, text in variants:
            records = reused_ablation(out_dir, plan, quick) if not overrides else {}
            p = replace(plan, budget=replace(plan.budget, **overrides))
            todo = [s for s in seeds if s not in records]
            for r in C.run_jobs(jobs_for(p, vol, todo, ("softseg",)), plan.workers, log):
                test = folds[r["key"]["seed"] % len(folds)][1]
                pred, m = r["soft"]["scan"][..., test], vol.mask[..., test]
                records[r["key"]["seed"]] = _record(float(pred[m].max()), r["convergence"], "trained here")
            rows.append(_row(vol.name, name, text, p.budget, records, seeds))
    return rows


def _phantom_row(out_dir: Path, quick: bool, seeds, log) -> dict:
    s = settings(quick)
    records = reused_phantom(out_dir, s["budget"], quick)
    data = C.cohort(quick)
    todo = [k for k in seeds if k not in records]
    jobs = phantom_jobs(data, ("softseg",), todo, s["budget"], lambda subj, pipe: subj.truth, batch_check=False)
    for job in jobs:
        job.predict.pop("free")
    for r in C.run_jobs(jobs, s["workers"], log):
        max_p = max(float(r["soft"][f"test{i}"][subj.mask].max()) for i, subj in enumerate(data["test"]))
        records[r["key"]["seed"]] = _record(max_p, r["convergence"], "trained here")
    return _row("phantom cohort", "softseg", "SoftSeg (engine defaults)", s["budget"], records, seeds)


def _row(dataset: str, name: str, text: str, budget: C.Budget, records: dict, seeds) -> dict:
    recs = [records[k] for k in seeds]
    return {"dataset": dataset, "candidate": name, "title": text, "budget_text": budget.describe(),
            "seeds": list(seeds), "all_zero": sum(r["all_zero"] for r in recs), "n": len(recs),
            "max_p": [r["max_p"] for r in recs], "plateaued": sum(r["plateaued"] for r in recs),
            "epochs_run": [r["epochs_run"] for r in recs], "sources": sorted({r["source"] for r in recs})}


def run(quick: bool = False, out_dir: Path = C.RESULTS) -> dict:
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    seeds = list(range(2 if quick else SEEDS))
    log = (lambda *a: None) if quick else print
    rows = _dense_rows(out_dir, quick, seeds, log) + [_phantom_row(out_dir, quick, seeds, log)]
    result = {"quick": quick, "seeds": len(seeds), "rows": rows, "seconds": time.perf_counter() - t0}
    C.write_json(out_dir / "collapse.json", result)
    C.write_text(out_dir / "collapse.md", markdown(result))
    return result


def markdown(r: dict) -> str:
    lines = ["## Collapse: all-zero SoftSeg runs in 10 seeds", ""]
    if r["quick"]:
        lines += ["**Quick smoke run: tiny budget, numbers meaningless.**", ""]
    lines += ["All-zero: no voxel of the run's test region above p = 0.05. Protocols as in the ablation (brain and cord GM, "
              "seed k holds out slab k mod 5) and the phantom study; runs of those studies made with the same protocol "
              "are read from their JSON, the others trained here.", ""]
    rows = []
    for row in r["rows"]:
        ep = [e for e in row["epochs_run"] if e is not None]
        rows.append([row["dataset"], f"{row['title']} (`{row['candidate']}`)", f"**{row['all_zero']} / {row['n']}**",
                     f"{min(row['max_p']):.3f}", f"{row['plateaued']} / {row['n']}",
                     f"{min(ep)}–{max(ep)}" if ep else "n/a", ", ".join(row["sources"])])
    lines += [C.md_table(["dataset", "candidate", "all-zero runs", "smallest max p", "plateaued", "epochs", "runs from"],
                         rows, "lllrrrl"), ""]
    lines += [f"Protocol of each row: {row['dataset']}, {row['candidate']}: {row['budget_text']}." for row in r["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from benchmarks.run_all import bench_cli

    raise SystemExit(bench_cli(__doc__, run, "collapse"))
