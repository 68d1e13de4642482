"""Fit a lesion model's flag score on validation phantoms and store it with the model.

One command after (re)training a lesion model::

    python scripts/fit_flags.py --model path/to/model.pt          # into the checkpoint's config
    python scripts/fit_flags.py --model ms-lesion --sidecar       # a shipped model: its sidecar
                                                                  # napari_softseg/models/ms-lesion.review.json

It builds varied validation phantoms (``build_phantom(seed, vary=True)``, seeds
:data:`FIT_SEEDS`, none of them used for training the shipped models or by
``benchmarks/bench_flags.py``), predicts each without samples, with 4 test-time
augmentation views and (for models with dropout) 5 MC-dropout draws, and fits the lesion
and candidate flag models of :mod:`napari_softseg.review.flag_fit`. The model's target is
stored as "lesions" too. Takes about 1 min per phantom on one CPU core.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: validation phantoms of the fit (the shipped model was trained on 20210917/18/22; the
#: benchmark uses 20260101 onwards)
FIT_SEEDS = tuple(range(20250101, 20250117))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint path or shipped model name")
    parser.add_argument("--sidecar", action="store_true", help="write <model>.review.json instead of the checkpoint")
    parser.add_argument("--seeds", type=int, default=len(FIT_SEEDS), help="number of validation phantoms")
    parser.add_argument("--samplings", default=None, help="comma-separated: none,tta,mc (default: all the model has)")
    parser.add_argument("--cache", default=None, help="folder keeping the phantoms' predictions (reused when present)")
    parser.add_argument("--target-recall", type=float, default=0.85)
    parser.add_argument("--max-false-candidates", type=float, default=2.0)
    parser.add_argument("--dry-run", action="store_true", help="fit and report, store nothing")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from napari_softseg.engine.predict import load_model, resolve_model_path
    from napari_softseg.review.flag_fit import default_floor, fit_flag_model, phantom_cases
    from napari_softseg.review.profile import file_sha256, store_review_metadata

    path = resolve_model_path(args.model)
    model = load_model(path)
    threshold = float(model.softseg_config.get("threshold", 0.5))
    seeds = FIT_SEEDS[: args.seeds] if args.seeds <= len(FIT_SEEDS) else tuple(range(FIT_SEEDS[0], FIT_SEEDS[0] + args.seeds))
    samplings = tuple(args.samplings.split(",")) if args.samplings else None
    t0 = time.perf_counter()
    cases = phantom_cases(model, seeds, samplings=samplings, report=lambda text: print(text, flush=True),
                          cache=args.cache)
    label = (f"fitted on {len(seeds)} varied validation phantoms (seeds {seeds[0]}–{seeds[-1]}) for "
             f"{path.name} (SHA-256 {file_sha256(path)[:12]}…), threshold {threshold:g}")
    flags = fit_flag_model(cases, threshold=threshold, floor=default_floor(threshold), label=label,
                           target_recall=args.target_recall, max_false_candidates=args.max_false_candidates,
                           info={"seeds": list(seeds), "model_sha256": file_sha256(path),
                                 "command": "python scripts/fit_flags.py " + " ".join(argv or sys.argv[1:]),
                                 "seconds": round(time.perf_counter() - t0, 1)})
    report = {kind: m.info for kind, m in flags.lesion.items()}
    report.update({f"candidates {kind}": m.info for kind, m in flags.candidate.items()})
    print(json.dumps(report, indent=1, default=float))
    if flags.info.get("not_fitted"):
        print("not fitted:", flags.info["not_fitted"])
    if not args.dry_run:
        out = store_review_metadata(path, target="lesions", flags=flags, sidecar=args.sidecar)
        print(f"stored in {out}")
        for card in update_card(path, flags):
            print(f"model card updated: {card}")
    return 0


def card_section(flags) -> tuple[dict, str]:
    """The model card's review-flag entry (JSON) and its Markdown section."""
    def pct(v) -> str:
        return "n/a" if v is None or v != v else f"{100 * v:.0f} %"

    entry = {"label": flags.label, "candidate_floor": flags.candidate_floor, "lesion": {}, "candidate": {},
             "not_fitted": flags.info.get("not_fitted", {})}
    lines = ["## Review flags", "", f"Flag score {flags.label}; written by `scripts/fit_flags.py`. Cross-validated "
             "(leave one phantom out) on those phantoms:", "",
             "| sampling | lesions (need a correction) | flag AUROC | operating point | flagged of those | "
             "correct ones flagged |", "|---|---:|---:|---:|---:|---:|"]
    for kind, m in flags.lesion.items():
        cv = m.info.get("cv", {})
        entry["lesion"][kind] = {"operating_point": m.operating_point, **cv}
        lines.append(f"| {kind} | {cv.get('n')} ({cv.get('n_needs_correction')}) | {cv.get('auroc', float('nan')):.2f} | "
                     f"{m.operating_point:.2f} | {pct(cv.get('recall'))} | {pct(cv.get('false_flag_rate'))} |")
    for kind, m in flags.candidate.items():
        entry["candidate"][kind] = {"operating_point": m.operating_point, **m.info.get("cv", {})}
    cands = ", ".join(f"{k}: {v['recovered']} of {v['n_missed']} missed lesions recovered, "
                      f"{v['false_per_scan']:.1f} false per scan" for k, v in entry["candidate"].items())
    lines += ["", "Possible missed lesions: " + (cands or "no candidate model (on the validation phantoms too few of "
                                                       "the sub-threshold blobs were missed lesions), so none are listed.")]
    return entry, "\n".join(lines) + "\n"


def update_card(path: Path, flags) -> list[Path]:
    """Write the review-flag section into the model card next to the checkpoint, if any."""
    card_json, card_md = path.with_suffix(".json"), path.with_suffix(".md")
    entry, section = card_section(flags)
    written = []
    if card_json.is_file():
        info = json.loads(card_json.read_text())
        info["review_flags"] = entry
        card_json.write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n")
        written.append(card_json)
    if card_md.is_file():
        text = card_md.read_text()
        head = text.split("\n## Review flags\n")[0].rstrip("\n")
        card_md.write_text(head + "\n\n" + section)
        written.append(card_md)
    return written


if __name__ == "__main__":
    sys.exit(main())
