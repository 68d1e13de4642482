"""``napari-softseg evaluate``: score a (soft) prediction against a truth, optionally raters.

Prints Dice, precision, recall, AVD, RVD, soft Dice (%), MSE, Brier score, ECE, lesion
detection (LTPR, LFDR in %, 18-connectivity) and, with ``--raters``, the entropy MAE against
the rater average. ``--json`` writes the same numbers (NaN as null, with the reason under
``nan_reasons``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="segmentation, calibration and lesion metrics of a prediction", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pred", required=True, metavar="P", help="prediction: soft map in [0, 1] or mask (.nii/.nii.gz)")
    p.add_argument("--truth", required=True, metavar="T", help="reference mask or soft map on the prediction's grid")
    p.add_argument("--raters", nargs="+", default=None, metavar="R", help="individual raters (adds entropy MAE, Brier vs their average)")
    p.add_argument("--threshold", type=float, default=0.5, help="binarise the prediction with >= T (default 0.5)")
    p.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=18, help="lesion connectivity (default 18)")
    p.add_argument("--min-overlap", type=int, default=3, help="voxels a truth lesion must share with the prediction to count as detected (default 3)")
    p.add_argument("--json", metavar="OUT", help="write the metrics as JSON")
    p.set_defaults(run=run)


def check(args) -> None:
    """Settings and outputs, before any work."""
    from napari_softseg.commands import guard
    from napari_softseg.io.checks import check_count, check_threshold
    from napari_softseg.io.outputs import Output

    check_threshold(args.threshold, "--threshold")
    check_count(args.min_overlap, "--min-overlap")
    inputs = [("--pred", args.pred), ("--truth", args.truth)] + [("--raters", r) for r in args.raters or []]
    guard([Output("--json", args.json, "json")], inputs)


def _read_unit(path: str, what: str):
    """A 3-D mask or probability map; soft values within the stated overshoot are clipped."""
    from napari_softseg.commands import read_input, say
    from napari_softseg.errors import UserError
    from napari_softseg.io.nifti import clip_note, clip_soft

    vol = read_input(path)
    label = f"{Path(path).name} ({what})"
    if vol.data.ndim != 3:
        raise UserError(f"{label} is {vol.data.ndim}-D {tuple(vol.data.shape)}; evaluate compares 3-D maps.")
    if vol.data.dtype.kind in "iu" and (vol.data.min() < 0 or vol.data.max() > 1):
        raise UserError(f"{label} holds values from {vol.data.min()} to {vol.data.max()}; "
                        "evaluate expects masks or probabilities in [0, 1].")
    if vol.data.dtype.kind == "f":
        vol.data, change = clip_soft(vol.data, label)
        if change:
            say(clip_note(label, change))
    return vol


def run(args) -> int:
    from napari_softseg.commands.interrupts import preload

    check(args)
    preload("numpy", "nibabel", "scipy.ndimage", "scipy.special")
    from napari_softseg.io.jsondoc import write_json
    from napari_softseg.io.nifti import check_same_grid
    from napari_softseg.metrics.segmentation import EVALUATE_UNITS, RATER_UNITS, evaluate

    pred = _read_unit(args.pred, "prediction")
    truth = _read_unit(args.truth, "truth")
    raters = [_read_unit(r, "rater") for r in (args.raters or [])]
    for other in [truth, *raters]:
        check_same_grid(pred, other)
    result = evaluate(pred.data, truth.data, raters=[r.data for r in raters] or None, spacing=pred.spacing,
                      threshold=args.threshold, connectivity=args.connectivity, min_overlap=args.min_overlap)
    units = dict(EVALUATE_UNITS, **(RATER_UNITS if raters else {}))
    print(f"{pred.name} vs {truth.name}" + (f" ({len(raters)} raters)" if raters else ""))
    for key, unit in units.items():
        value = result[key]
        text = "n/a" if isinstance(value, float) and not math.isfinite(value) else (
            f"{value:d}" if isinstance(value, int) else f"{value:.6g}")
        print(f"  {key:22s} {text:>12s} {unit if unit not in ('count',) else ''}")
    for key, why in result["nan_reasons"].items():
        print(f"  note: {key} is n/a because {why}.")
    if args.json:
        doc = dict(result, units=units, pred=str(args.pred), truth=str(args.truth),
                   raters=[str(r) for r in (args.raters or [])], spacing=list(pred.spacing))
        write_json(args.json, doc)
    return 0
