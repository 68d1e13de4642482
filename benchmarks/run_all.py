"""Run every ``benchmarks/bench_*.py`` and write ``benchmarks/results/``.

Each benchmark module defines ``run(quick: bool, out_dir: Path) -> dict`` and writes its
own tables (Markdown + JSON) and figures. This runner adds ``machine.json`` (CPU, cores,
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


def bench_cli(module_doc: str | None, run, name: str, argv: list[str] | None = None) -> int:
    """The command line of one benchmark module: ``python -m benchmarks.bench_<name> [--quick] [--out DIR]``.

    Runs ``run(quick, out_dir)`` and prints the ``<name>.md`` table it wrote.
    """
    parser = argparse.ArgumentParser(description=module_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run(quick=args.quick, out_dir=out)
    table = out / f"{name}.md"
    print(table.read_text() if table.exists() else f"results in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke runs")
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names (bench_<name>.py)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))
    if args.only:
        names = [n for n in names if n in args.only]
    info = machine()
    (out / "machine.json").write_text(json.dumps(info, indent=1))
    sections, failures = [f"# Benchmarks\n\n{info['date']} on {info['cpu']} ({info['cores']} cores, torch {info['torch']})"
                          + (" — quick mode" if args.quick else "") + "\n"], 0
    seconds, start = {}, time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
            module.run(quick=args.quick, out_dir=out)
            md = out / f"{name}.md"
            sections.append(md.read_text() if md.exists() else f"## {name}\n\n(no table written)\n")
        except Exception:  # one failing benchmark must not hide the others
            failures += 1
            traceback.print_exc()
            sections.append(f"## {name}\n\nFAILED:\n\n```\n{traceback.format_exc()[-2000:]}\n```\n")
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"   {seconds[name]:.1f} s", flush=True)
    runtime = {"started": info["date"], "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "total_s": round(time.perf_counter() - start, 1), "seconds": seconds, "quick": args.quick,
               "complete": not args.only, "failures": failures}
    (out / "runtime.json").write_text(json.dumps(runtime, indent=1))
    sections[0] += (f"\nWall time of this run: {runtime['total_s'] / 60:.1f} min ("
                    + ", ".join(f"{n} {s / 60:.1f}" for n, s in seconds.items()) + " min).\n")
    (out / "summary.md").write_text("\n".join(sections))
    print(f"results in {out}")
    if runtime["complete"] and not args.quick and out.resolve() == (HERE / "results").resolve():
        from . import readme  # the README quotes the committed results: keep it in step

        readme.main([])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
