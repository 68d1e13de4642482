"""``napari-softseg train``: train or fine-tune a SoftSeg U-Net on NIfTI scans.

Labels pair with images in order (``--label``), or several raters per image are fused
(``--rater`` ... ``--fusion``; with N images and M raters, each image takes M/N consecutive
rater files). Runs data-parallel when started by ``torchrun`` (only rank 0 prints and
writes). Ctrl-C stops at the next step and still writes the best weights so far.
"""

from __future__ import annotations

import gc
import math
import signal
import sys
import threading
import time

#: keys of napari_softseg.engine.presets.PRESETS (kept here so that --help needs no torch)
PRESET_NAMES = (
    "softseg", "conventional", "hard-relu-wing", "soft-relu-dice", "soft-sig-wing",
    "multiclass-softmax-dice", "multiclass-softseg",
)
FUSIONS = ("average", "majority", "staple", "soft-staple", "random")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train or fine-tune a SoftSeg model on NIfTI scans", description=__doc__,
    )
    p.add_argument("--image", action="append", required=True, metavar="IMG",
                   help="a training scan (repeat for several; a 4-D file holds several contrasts)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--label", action="append", metavar="LBL",
                     help="the label map of the IMG at the same position (soft, binary or class numbers)")
    src.add_argument("--rater", action="append", metavar="R",
                     help="one rater's map (repeat; needs --fusion)")
    p.add_argument("--fusion", choices=FUSIONS, help="how several raters become a target")
    p.add_argument("--preset", choices=PRESET_NAMES, default=None,
                   help="training recipe (default softseg; with --init, the model's own preset)")
    p.add_argument("--epochs", type=int, default=200, help="maximum epochs (default 200)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--init", metavar="MODEL", help="checkpoint to fine-tune")
    p.add_argument("--out", required=True, metavar="MODEL", help="where to write the trained checkpoint")
    p.add_argument("--batch-size", type=int, default=8, help="slices per step (default 8)")
    p.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (default 1e-3)")
    p.add_argument("--crop", metavar="HxW", help="in-plane training size, e.g. 128 or 160x192 "
                   "(multiples of 2**depth; default: the whole slice)")
    p.add_argument("--patch", metavar="HxW", help="train each step on random windows of this size, centred near the "
                   "structure in slices that hold some (faster; validation uses whole slices; default: whole slices)")
    p.add_argument("--depth", type=int, default=3, help="U-Net depth (default 3)")
    p.add_argument("--features", type=int, default=16, help="feature maps of the first level (default 16)")
    p.add_argument("--dropout", type=float, default=None,
                   help="dropout probability (default 0 for the NormReLU presets softseg, hard-relu-wing and "
                        "soft-relu-dice, which collapse with it; 0.3 for the others)")
    p.add_argument("--foreground-weight", type=float, default=None, metavar="W",
                   help="Adaptive Wing weighted loss map 1 + W on the structure (default 0 for the NormReLU presets, "
                        "10 for the others; 10 finds more small lesions but over-segments around them)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share held out for validation (default 0.2)")
    p.add_argument("--patience", type=int, default=50, help="early-stopping patience in epochs (default 50)")
    p.add_argument("--slice-axis", type=int, choices=(0, 1, 2), help="axis to slice along (default: the coarsest)")
    p.add_argument("--no-mixed-precision", action="store_true", help="train in float32")
    p.add_argument("--no-augment", action="store_true", help="switch off rotation/translation/scaling")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--quiet", action="store_true", help="print only the result")
    p.set_defaults(run=run)


def parse_crop(text: str | None, option: str = "--crop"):
    from napari_softseg.errors import UserError

    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(v) for v in parts if v.strip()]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise UserError(f"{option} {text!r} is not a size like 128 or 160x192.")
    return tuple(values)


def _duration(seconds) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar:
    """One updating line on a terminal, one line per epoch otherwise (stderr)."""

    def __init__(self, stream=None, width: int = 24) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = width
        self._last = 0.0

    def update(self, ev) -> None:
        if ev.kind == "start":
            if ev.start_epoch:
                self._line(f"fine-tuning a model trained for {ev.start_epoch} epochs; "
                           f"initial validation loss {_fmt(ev.start_loss)}", final=True)
            return
        if ev.kind == "epoch":
            self._line(f"epoch {ev.epoch}/{ev.epochs}  loss {_fmt(ev.train_loss)}  val {_fmt(ev.val_loss)}  "
                       f"dice {_fmt(ev.val_dice)}  best {_fmt(ev.best_val_loss)} (epoch {ev.best_epoch})  "
                       f"eta {_duration(ev.eta_seconds)}", final=True)
            return
        if ev.kind != "step" or not self.tty or time.monotonic() - self._last < 0.1:
            return
        self._last = time.monotonic()
        frac = ev.step / max(ev.steps_per_epoch, 1)
        bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
        where = ev.phase if ev.phase in ("normaliser", "threshold") else f"epoch {ev.epoch}/{ev.epochs}"
        self._line(f"{where} [{bar}] {ev.phase} {ev.step}/{ev.steps_per_epoch}  "
                   f"loss {_fmt(ev.train_loss)}  eta {_duration(ev.eta_seconds)}")

    def _line(self, text: str, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        elif final:
            self.stream.write(text + "\n")
        self.stream.flush()


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def check(args) -> None:
    """Settings and outputs, before any work (the rest of the settings: ``TrainConfig.validate``)."""
    from napari_softseg.commands import guard
    from napari_softseg.engine.limits import ARCHITECTURE_LIMITS, MAX_WIDEST_LEVEL, widest_level
    from napari_softseg.errors import UserError
    from napari_softseg.io.checks import check_count, check_positive
    from napari_softseg.io.outputs import Output

    if args.label is not None and args.fusion is not None:
        raise UserError("--fusion combines several --rater files; it does not apply to --label.")
    if args.rater is not None and args.fusion is None:
        raise UserError("--rater needs --fusion average, majority, staple or random.")
    for value, name in [(args.epochs, "--epochs"), (args.batch_size, "--batch-size"), (args.patience, "--patience")]:
        check_count(value, name)
    check_count(args.depth, "--depth", maximum=ARCHITECTURE_LIMITS["depth"])
    check_count(args.features, "--features", maximum=ARCHITECTURE_LIMITS["base_features"])
    if widest_level(args.depth, args.features) > MAX_WIDEST_LEVEL:
        raise UserError(f"--depth {args.depth} with --features {args.features} gives {widest_level(args.depth, args.features)} "
                        f"feature maps at the deepest level, more than {MAX_WIDEST_LEVEL}; lower one of them.")
    if args.threads is not None:
        check_count(args.threads, "--threads")
    check_count(args.seed, "--seed", minimum=0)
    check_positive(args.lr, "--lr")
    if args.dropout is not None and not 0.0 <= args.dropout < 1.0:
        raise UserError(f"--dropout must lie in [0, 1), got {args.dropout:g}.")
    if args.foreground_weight is not None and not (math.isfinite(args.foreground_weight) and args.foreground_weight >= 0):
        raise UserError(f"--foreground-weight must be a number >= 0, got {args.foreground_weight:g}.")
    if not 0.0 <= args.val_fraction < 1.0:
        raise UserError(f"--val-fraction must lie in [0, 1), got {args.val_fraction:g}.")
    parse_crop(args.crop)
    parse_crop(args.patch, "--patch")
    inputs = [("--image", p) for p in args.image] + [("--label", p) for p in args.label or []]
    inputs += [("--rater", p) for p in args.rater or []] + ([("--init", args.init)] if args.init else [])
    guard([Output("--out", args.out, "checkpoint")], inputs)


def _interrupt_handler(cancel):
    """First Ctrl-C: stop at the next step and write the best weights; the second: stop now
    (the best weights of the last improvement are already on disk)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return None  # started with Ctrl-C ignored (nohup, background job): keep it so

    def on_interrupt(signum, frame):
        cancel.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    return signal.signal(signal.SIGINT, on_interrupt)


def run(args) -> int:
    from pathlib import Path

    from napari_softseg.commands import interrupts

    check(args)
    # torch._dynamo is imported by the optimiser (seconds): held back from Ctrl-C like the rest
    interrupts.preload("numpy", "nibabel", "scipy.ndimage", "scipy.special", "torch", "torch._dynamo",
                       "napari_softseg.engine.training.train", "napari_softseg.engine.predict")
    from napari_softseg.engine.devices import resolve_device
    from napari_softseg.engine.predict import resolve_model_path
    from napari_softseg.engine.training import distributed
    from napari_softseg.engine.training.data import TrainingData
    from napari_softseg.engine.training.train import TrainConfig, train
    from napari_softseg.errors import UserError

    out = Path(args.out)
    init = resolve_model_path(args.init) if args.init else None
    config = TrainConfig(
        preset=args.preset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        crop_size=parse_crop(args.crop), patch_size=parse_crop(args.patch, "--patch"), depth=args.depth, base_features=args.features, dropout=args.dropout,
        foreground_weight=args.foreground_weight,
        val_fraction=args.val_fraction, patience=args.patience, seed=args.seed, device=args.device,
        mixed_precision=not args.no_mixed_precision, augment=not args.no_augment,
        slice_axis=args.slice_axis, num_threads=args.threads,
    ).validate()
    data = TrainingData.from_nifti(args.image, args.label, raters=args.rater, fusion=args.fusion)
    ctx = distributed.init_from_env(resolve_device(args.device))
    cancel = threading.Event()
    previous = _interrupt_handler(cancel)
    bar = ProgressBar() if ctx.is_main and not args.quiet else None
    last = None
    events = train(config, data, init=init, cancel=cancel, checkpoint_path=out)
    try:
        for last in events:
            if last.kind == "epoch" and last.best_epoch:
                interrupts.set_note(f"the best weights so far (epoch {last.best_epoch}) are in {out}")
            if bar is not None:
                bar.update(last)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        events.close()
        del events
        gc.collect()  # the network and its DDP wrapper go before the process group does
        distributed.shutdown()
    if not ctx.is_main or last is None:
        return 0
    if last.status == "failed":
        where = f" The best weights so far are in {last.checkpoint}." if last.checkpoint else ""
        raise UserError(last.message + where)
    s = last.summary or {}
    verb = {"cancelled": "Cancelled", "early_stopped": "Stopped early"}.get(last.status, "Finished")
    print(f"{verb} after {s.get('epochs_run', 0)} epochs: best validation loss {_fmt(last.best_val_loss)} "
          f"at epoch {last.best_epoch}, threshold {last.threshold:.2f}; model written to {last.checkpoint}")
    return 130 if last.status == "cancelled" or cancel.is_set() else 0  # Ctrl-C after the last step: 130 too
