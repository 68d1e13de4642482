"""``napari-softseg fuse``: fuse several raters' masks (average, majority, STAPLE, soft STAPLE).

Writes the fused map with the first rater's geometry: the soft (probability) map for
``average``, ``staple`` and ``soft-staple``, the 0/1 consensus for ``majority``. ``--hard``
adds the hard consensus, ``--report`` a JSON file with each rater's sensitivity,
specificity (STAPLE) and Dice against the consensus.
"""

from __future__ import annotations

import argparse

#: The names of :data:`napari_softseg.fusion.methods.METHODS` (kept here so ``--help`` stays instant).
METHOD_NAMES = ("average", "majority", "staple", "soft-staple")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "fuse", help="fuse several raters' segmentations of one scan", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("raters", nargs="+", metavar="RATER", help="rater masks or soft maps (.nii/.nii.gz) on one voxel grid")
    p.add_argument("--method", "-m", choices=METHOD_NAMES, default="staple", help="fusion method (default: staple)")
    p.add_argument("--output", "-o", required=True, metavar="OUT", help="fused map to write (.nii.gz)")
    p.add_argument("--hard", metavar="HARD", help="also write the hard consensus (labels) here")
    p.add_argument("--report", metavar="JSON", help="write per-rater statistics (sensitivity, specificity, Dice) here")
    p.add_argument("--n-classes", type=int, default=None, metavar="K",
                   help="raters are integer label maps with K labels (background included): multi-class fusion")
    p.add_argument("--threshold", type=float, default=0.5, help="hard consensus = fused probability >= T (default 0.5)")
    g = p.add_argument_group("STAPLE options")
    g.add_argument("--max-iter", type=int, default=None, help="iteration cap (default 1000)")
    g.add_argument("--tol", type=float, default=None, help="convergence tolerance on sensitivities/specificities (default 1e-7)")
    g.add_argument("--prior", type=float, default=None,
                   help="fixed global foreground prior (default: mean fraction of foreground across raters)")
    g.add_argument("--restrict-to-disagreement", action="store_true",
                   help="estimate only where the raters disagree")
    p.set_defaults(run=run)


def staple_options(args) -> dict:
    opts = {"max_iter": args.max_iter, "tol": args.tol, "prior": args.prior}
    opts = {k: v for k, v in opts.items() if v is not None}
    if args.restrict_to_disagreement:
        opts["restrict_to_disagreement"] = True
    return opts


def check(args) -> None:
    """Settings and outputs, before any work."""
    from napari_softseg.commands import guard
    from napari_softseg.errors import UserError
    from napari_softseg.io.checks import check_count, check_positive, check_probability, check_threshold
    from napari_softseg.io.outputs import Output

    if len(args.raters) < 2:
        raise UserError(f"Fusion needs at least two rater files, got {len(args.raters)}.")
    check_threshold(args.threshold, "--threshold")
    if args.n_classes is not None:
        check_count(args.n_classes, "--n-classes", minimum=2, maximum=256)
    if args.max_iter is not None:
        check_count(args.max_iter, "--max-iter")
    if args.tol is not None:
        check_positive(args.tol, "--tol")
    if args.prior is not None:
        check_probability(args.prior, "--prior")
    opts = staple_options(args)
    if opts and args.method not in ("staple", "soft-staple"):
        raise UserError(f"--{next(iter(opts)).replace('_', '-')} applies to STAPLE, not to the {args.method} method.")
    outputs = [Output("-o", args.output, "nifti"), Output("--hard", args.hard, "nifti"),
               Output("--report", args.report, "json")]
    guard(outputs, [("RATER", r) for r in args.raters])


def _read_raters(paths: list[str], labels: bool):
    """The rater volumes (3-D, one grid); soft maps (``labels`` False) within the stated
    overshoot of [0, 1] are clipped, with a note."""
    from napari_softseg.commands import read_input, say
    from napari_softseg.errors import UserError
    from napari_softseg.io.nifti import check_same_grid, clip_note, clip_soft

    vols = [read_input(path) for path in paths]
    for v in vols:
        if v.data.ndim != 3:
            raise UserError(f"{v.name} is {v.data.ndim}-D {tuple(v.data.shape)}; raters must be 3-D masks or label maps.")
        check_same_grid(vols[0], v)
        if not labels and v.data.dtype.kind == "f":
            v.data, change = clip_soft(v.data, v.path.name)
            if change:
                say(clip_note(v.path.name, change))
    return vols


def run(args) -> int:
    from napari_softseg.commands.interrupts import preload

    check(args)
    preload("numpy", "nibabel", "scipy.ndimage", "scipy.special")
    import numpy as np

    from napari_softseg.fusion.methods import fuse, rater_statistics
    from napari_softseg.io.jsondoc import write_json
    from napari_softseg.io.nifti import write_nifti

    vols = _read_raters(args.raters, labels=args.n_classes is not None)
    ref = vols[0]
    opts = staple_options(args)
    raters = [v.data for v in vols]
    result = fuse(raters, args.method, n_classes=args.n_classes, threshold=args.threshold, **opts)
    if args.method == "majority":
        write_nifti(args.output, result.hard, like=ref)
    else:
        write_nifti(args.output, result.soft, like=ref, dtype=np.float32)
    if args.hard:
        write_nifti(args.hard, result.hard, like=ref)
    names = [v.name for v in vols]
    stats = rater_statistics(raters, result, names=names, spacing=ref.spacing)
    prior = result.prior
    report = {
        "method": result.method,
        "output": str(args.output),
        "hard_output": str(args.hard) if args.hard else None,
        "raters": stats,
        "n_classes": result.n_classes,
        "threshold": args.threshold,
        "iterations": result.iterations,
        "converged": result.converged,
        "prior": prior if prior is None or np.ndim(prior) <= 1 else "per-voxel",
        "consensus_volume_mm3": float(np.count_nonzero(result.hard)) * ref.voxel_volume,
    }
    if args.report:
        write_json(args.report, report)
    print(f"{result.method}: {len(vols)} raters fused into {args.output}"
          + (f" in {result.iterations} iterations" if result.iterations is not None else ""))
    header = f"  {'rater':24s} {'sens':>8s} {'spec':>8s} {'Dice %':>8s} {'volume mm3':>12s}"
    print(header)
    for row in stats:
        sens, spec = row.get("sensitivity"), row.get("specificity")
        fmt = lambda v: f"{v:8.4f}" if isinstance(v, float) else f"{'-':>8s}"  # noqa: E731
        print(f"  {row['name'][:24]:24s} {fmt(sens)} {fmt(spec)} {row['dice']:8.2f} {row['volume_mm3']:12.1f}")
    return 0
