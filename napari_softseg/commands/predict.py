"""``napari-softseg predict``: soft segmentation of a scan with a trained model."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from napari_softseg.errors import UserError

DESCRIPTION = """\
Predict a soft segmentation (float32 in [0, 1]) of a scan with a trained SoftSeg model and
write it with the scan's geometry. Several IMAGE files are several contrasts of one scan
(same grid, in the model's contrast order). --threshold also writes a binary mask
(voxels with soft >= T; multi-class models: the label of the most likely class);
--uncertainty writes the voxel-wise entropy of the mean of Monte-Carlo dropout draws
(10 unless --mc-samples is given) and/or flipped views (--tta); a model trained without
dropout (the NormReLU presets) has no Monte-Carlo draws, so --uncertainty then uses the
flipped views. --review writes the lesion review table of the Segment dock's export (CSV or
JSON by its suffix): every lesion with its centre in voxels and world mm, voxels, hard and
soft volume (mm³), mean/max probability, uncertainty statistics (with --mc-samples / --tta),
flag score, flag and reason, and the possible missed lesions; for a tissue model the
structure's volumes and uncertainty."""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="soft segmentation of a scan with a trained model",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="NIfTI scan(s): one file per contrast, same grid")
    parser.add_argument("--model", "-m", required=True, help="checkpoint file or shipped model name (ms-lesion, brain-gm)")
    parser.add_argument("-o", "--out", required=True, metavar="SOFT.nii.gz", help="output soft map")
    parser.add_argument("--threshold", "-t", metavar="T|auto", help="also write a mask at T; 'auto' uses the model's threshold")
    parser.add_argument("--mask-out", metavar="PATH", help="mask file (default: <out stem>_mask.nii.gz)")
    parser.add_argument("--uncertainty", action="store_true", help="also write the entropy map")
    parser.add_argument("--entropy-out", metavar="PATH", help="entropy file (default: <out stem>_entropy.nii.gz)")
    parser.add_argument("--review", metavar="OUT.csv|OUT.json",
                        help="also write the lesion review table (the Segment dock's export), at --threshold or the model's")
    parser.add_argument("--mc-samples", type=int, default=None, metavar="N",
                        help="Monte-Carlo dropout draws (a model trained without dropout has none)")
    parser.add_argument("--tta", action="store_true", help="average over flipped views (test-time augmentation)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N", help="slices per forward pass")
    parser.add_argument("--slice-axis", type=int, choices=(0, 1, 2), default=None, help="array axis to slice along")
    parser.add_argument("--no-mixed-precision", action="store_true", help="compute in float32 only")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def _sibling(out: Path, suffix: str) -> Path:
    from napari_softseg.io.nifti import nifti_stem

    ext = ".nii.gz" if out.name.lower().endswith(".nii.gz") else ".nii"
    return out.with_name(f"{nifti_stem(out)}{suffix}{ext}")


class ProgressBar:
    """A one-line text progress bar on stderr (redrawn at most ~10 times a second)."""

    def __init__(self, label: str, stream=None, width: int = 30) -> None:
        self.label, self.stream, self.width = label, stream or sys.stderr, width
        self._last = 0.0
        self._start = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        filled = int(self.width * done / max(total, 1))
        elapsed = now - self._start
        eta = elapsed / done * (total - done) if done else 0.0
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} "
            f"{elapsed:5.1f}s elapsed, {eta:5.1f}s left"
        )
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _parse_threshold(text: str | None) -> float | str | None:
    """None, ``"auto"`` or a threshold strictly between 0 and 1."""
    from napari_softseg.io.checks import check_threshold

    if text is None:
        return None
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--threshold must be a number between 0 and 1 or 'auto', got {text!r}.") from None
    return check_threshold(value, "--threshold")


def check(args: argparse.Namespace) -> float | str | None:
    """Settings and outputs, before any work; returns the parsed threshold."""
    from napari_softseg.commands import guard
    from napari_softseg.io.checks import check_count
    from napari_softseg.io.outputs import Output

    threshold = _parse_threshold(args.threshold)
    if args.mc_samples is not None:
        check_count(args.mc_samples, "--mc-samples", minimum=0)
    if args.batch_size is not None:
        check_count(args.batch_size, "--batch-size")
    if args.mask_out and threshold is None:
        raise UserError("--mask-out names the mask written with --threshold; give --threshold too.")
    if args.entropy_out and not args.uncertainty:
        raise UserError("--entropy-out names the map written with --uncertainty; give --uncertainty too.")
    out = Path(args.out)
    outputs = [Output("-o", out, "nifti")]
    if threshold is not None:
        outputs.append(Output("--mask-out", Path(args.mask_out) if args.mask_out else _sibling(out, "_mask"), "nifti"))
    if args.uncertainty:
        outputs.append(Output("--entropy-out", Path(args.entropy_out) if args.entropy_out else _sibling(out, "_entropy"),
                              "nifti"))
    if args.review:
        outputs.append(Output("--review", Path(args.review), "table"))
    inputs = [("IMAGE", p) for p in args.images] + [("--model", args.model)]
    guard(outputs, inputs)
    return threshold


def read_contrasts(paths: list[str]):
    """Read one or more NIfTI files of the same grid; return (reference volume, (X,Y,Z[,C]) array)."""
    import numpy as np

    from napari_softseg.commands import read_input
    from napari_softseg.io.nifti import check_same_grid

    volumes = [read_input(p) for p in paths]
    reference = volumes[0]
    for other in volumes[1:]:
        check_same_grid(reference, other)
        if other.data.ndim != 3:
            raise UserError(f"{other.name} is 4-D; give either one 4-D file or several 3-D files, one per contrast.")
    if len(volumes) == 1:
        return reference, reference.data
    if reference.data.ndim != 3:
        raise UserError(f"{reference.name} is 4-D; give either one 4-D file or several 3-D files, one per contrast.")
    return reference, np.stack([np.asarray(v.data, dtype=np.float32) for v in volumes], axis=-1)


def run(args: argparse.Namespace) -> int:
    from napari_softseg.commands.interrupts import preload

    threshold = check(args)
    preload("numpy", "nibabel", "torch", "scipy.ndimage", "napari_softseg.engine.predict")
    import numpy as np

    from napari_softseg.engine.predict import Prediction, load_model, predict_volume
    from napari_softseg.io.nifti import write_nifti

    out = Path(args.out)
    model = load_model(args.model)
    config = model.softseg_config
    if threshold == "auto":
        threshold = float(config.get("threshold", 0.5))
    reference, data = read_contrasts(args.images)
    n_channels = data.shape[3] if data.ndim == 4 else 1
    if n_channels != model.in_channels:
        names = ", ".join(config.get("contrasts", []))
        raise UserError(
            f"The model {Path(str(args.model)).name} expects {model.in_channels} contrast(s) ({names}) "
            f"but {n_channels} image(s) were given."
        )
    mc, tta = sampling(args, model)
    if args.review and model.n_structures > 1:
        raise UserError(f"--review reviews the lesions of one structure; {Path(str(args.model)).name} predicts "
                        f"{model.n_structures}.")
    kwargs = {}
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    bar = None if args.quiet else ProgressBar(f"predict {reference.name}")
    result = predict_volume(
        model,
        data,
        slice_axis=args.slice_axis,
        spacing=reference.spacing,
        device=args.device,
        mixed_precision=not args.no_mixed_precision,
        mc_samples=mc,
        tta=tta,
        keep_samples=bool(args.review),
        return_prediction=args.uncertainty or bool(args.review),
        progress=bar,
        **kwargs,
    )
    soft = result.soft if isinstance(result, Prediction) else result
    written = [write_nifti(out, soft, like=reference, dtype=np.float32)]
    if threshold is not None:
        mask_path = Path(args.mask_out) if args.mask_out else _sibling(out, "_mask")
        written.append(write_nifti(mask_path, binarise(soft, threshold), like=reference, dtype=np.uint8))
    if args.uncertainty:
        entropy_path = Path(args.entropy_out) if args.entropy_out else _sibling(out, "_entropy")
        written.append(write_nifti(entropy_path, result.entropy, like=reference, dtype=np.float32))
    if args.review:
        written.append(write_review_table(args, result, reference, data, model, threshold, written, (mc, tta)))
    for path in written:
        print(path)
    return 0


def sampling(args, model) -> tuple[int, int]:
    """(Monte-Carlo dropout draws, flipped views) of this prediction: as asked; ``--uncertainty``
    alone means 10 draws, or the flipped views for a model trained without dropout."""
    from napari_softseg.engine.predict import TTA_FLIPS

    default_mc = 10 if args.uncertainty and not args.tta and model.has_dropout else 0
    mc = args.mc_samples if args.mc_samples is not None else default_mc
    tta = args.tta or (args.uncertainty and args.mc_samples is None and not model.has_dropout)
    return mc, len(TTA_FLIPS) if tta else 0


def write_review_table(args, prediction, reference, data, model, threshold, written, views) -> Path:
    """The ``--review`` table: the :class:`~napari_softseg.review.session.Review` of the
    prediction built as the Segment dock builds it, written as CSV or JSON; ``views`` = (MC
    draws, TTA views) of the prediction."""
    from napari_softseg.engine.predict import SHIPPED_MODELS, resolve_model_path
    from napari_softseg.review.flags import sampling_kind
    from napari_softseg.review.profile import describe_model
    from napari_softseg.review.segment import review_of

    path = resolve_model_path(args.model)
    config = model.softseg_config
    review = review_of(prediction.soft, config=config, model_path=path, spacing=reference.spacing,
                       samples=prediction.samples, image=data, affine=reference.affine, threshold=threshold,
                       sampling=sampling_kind(*views))
    review.analyse()
    out = Path(args.review)
    if out.suffix.lower() == ".csv":
        return review.write_csv(out)
    kind = "shipped" if str(args.model) in SHIPPED_MODELS else "file"
    return review.write_json(out, model=describe_model(str(args.model), kind, path, config), scan=args.images[0],
                             files={"soft": Path(written[0]).name})


def binarise(soft, threshold: float):
    """Binary mask ``binarize(soft, threshold)`` (``soft >= threshold``, uint8); for a
    ``(X, Y, Z, K)`` multi-class map the label ``1..K`` of the most likely class where its
    probability reaches the threshold."""
    import numpy as np

    from napari_softseg.labels.masks import binarize

    if soft.ndim == 3:
        return binarize(soft, threshold).astype(np.uint8)
    best = soft.argmax(axis=-1)
    return np.where(binarize(soft.max(axis=-1), threshold), best + 1, 0).astype(np.uint8)
