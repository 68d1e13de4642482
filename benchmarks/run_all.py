"""Run every ``benchmarks/bench_*.py`` and write ``benchmarks/results/``.

Each benchmark module defines ``run(quick: bool, out_dir: Path) -> dict`` and writes its
own tables (Markdown + JSON) and figures. A module with ``SEPARATE = True`` (a long study
with its own make target, e.g. ``bench_collapse``) runs only when named with ``--only``, or
in the quick smoke run. This runner adds ``machine.json`` (CPU, cores,
memory, library versions, date), ``runtime.json`` (wall time of the run and of each
benchmark) and ``summary.md`` (one section per benchmark).

    python -m benchmarks.run_all [--quick] [--only NAME ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import pkgutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> dict:
    import numpy
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib,
        "python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


#: where quick runs write by default: never over the committed results (quick numbers mean nothing)
QUICK_OUT = Path(tempfile.gettempdir()) / "napari-softseg-bench-quick"


def output_folder(args) -> Path:
    """``--out``, else the committed results folder (full runs) or :data:`QUICK_OUT` (quick runs)."""
    return Path(args.out) if args.out else (QUICK_OUT if args.quick else HERE / "results")


def bench_cli(module_doc: str | None, run, name: str, argv: list[str] | None = None) -> int:
    """The command line of one benchmark module: ``python -m benchmarks.bench_<name> [--quick] [--out DIR]``.

    Runs ``run(quick, out_dir)`` and prints the ``<name>.md`` table it wrote.
    """
    parser = argparse.ArgumentParser(description=module_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--out", default=None, help=f"default {HERE / 'results'}; quick runs: {QUICK_OUT}")
    args = parser.parse_args(argv)
    out = output_folder(args)
    out.mkdir(parents=True, exist_ok=True)
    run(quick=args.quick, out_dir=out)
    table = out / f"{name}.md"
    print(table.read_text() if table.exists() else f"results in {out}")
    return 0


def write_runtime(out: Path, info: dict, args, seconds: dict, total_s: float, failures: int) -> dict:
    """``runtime.json``: a run of every benchmark replaces it; a run of some (``--only``) adds
    their times to it (separate studies under ``separate``), keeping the complete run's total;
    re-running a study of the complete run (not a separate one, nor one that only reads the
    others' results, ``READS_RESULTS``) marks the folder incomplete and records the study and
    the date under ``rerun``."""
    path = out / "runtime.json"
    if args.only and path.exists():
        runtime = json.loads(path.read_text())
        for name, s in seconds.items():
            module = importlib.import_module(f"benchmarks.bench_{name}")
            separate = getattr(module, "SEPARATE", False)
            runtime.setdefault("separate" if separate else "seconds", {})[name] = s
            if not separate and not getattr(module, "READS_RESULTS", False):
                runtime["complete"] = False  # a study was re-run after the complete run: say which, when
                runtime.setdefault("rerun", {})[name] = info["date"]
        runtime["failures"] = runtime.get("failures", 0) + failures
    else:
        runtime = {"started": info["date"], "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   "total_s": total_s if not args.only else None, "seconds": seconds, "quick": args.quick,
                   "complete": not args.only, "failures": failures}
    path.write_text(json.dumps(runtime, indent=1))
    return runtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke runs")
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names (bench_<name>.py)")
    parser.add_argument("--out", default=None, help=f"default {HERE / 'results'}; quick runs: {QUICK_OUT}")
    args = parser.parse_args(argv)
    out = output_folder(args)
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))
    if args.only:
        names = [n for n in names if n in args.only]
    elif not args.quick:  # separate studies (a module with SEPARATE = True) run only when named (or quick)
        names = [n for n in names if not getattr(importlib.import_module(f"benchmarks.bench_{n}"), "SEPARATE", False)]
    info = machine()
    if not args.only or not (out / "machine.json").exists():
        (out / "machine.json").write_text(json.dumps(info, indent=1))
    seconds, failures, start = {}, 0, time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            importlib.import_module(f"benchmarks.bench_{name}").run(quick=args.quick, out_dir=out)
        except Exception:  # one failing benchmark must not hide the others
            failures += 1
            traceback.print_exc()
            (out / f"{name}.md").write_text(f"## {name}\n\nFAILED:\n\n```\n{traceback.format_exc()[-2000:]}\n```\n")
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"   {seconds[name]:.1f} s", flush=True)
    runtime = write_runtime(out, info, args, seconds, round(time.perf_counter() - start, 1), failures)
    note = (f"Wall time of the complete run: {runtime['total_s'] / 60:.1f} min ("
            + ", ".join(f"{n} {s / 60:.1f}" for n, s in runtime["seconds"].items() if n not in runtime.get("rerun", {}))
            + " min)." if runtime.get("total_s") is not None else "")
    if runtime.get("rerun"):
        note += " Re-run since on their own: " + ", ".join(f"{n} {d[:16].replace('T', ' ')} UTC ({runtime['seconds'][n] / 60:.1f} min)"
                                                     for n, d in runtime["rerun"].items()) + "."
    if runtime.get("separate"):
        note += " Separate studies: " + ", ".join(f"{n} {s / 60:.1f} min" for n, s in runtime["separate"].items()) + "."
    from ._common import rebuild_summary

    rebuild_summary(out, note + (" Quick mode." if args.quick else ""))
    print(f"results in {out}")
    if runtime["complete"] and not args.quick and out.resolve() == (HERE / "results").resolve():
        from . import readme  # the README quotes the committed results: keep it in step

        readme.main([])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
