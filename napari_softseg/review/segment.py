"""What the Segment button runs in its worker thread (no Qt, no napari), and input checks.

:func:`segment` loads the model (cached), predicts the soft map (with MC-dropout / TTA
samples when asked), and analyses the lesions, so the UI thread receives finished arrays
and only has to turn them into layers. :func:`review_of` builds the
:class:`~napari_softseg.review.session.Review` of a prediction the same way for the dock and
for ``napari-softseg predict --review``: the model's own threshold, its target and flag
model (:mod:`napari_softseg.review.profile`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from napari_softseg.errors import UserError
from napari_softseg.labels.masks import binarize
from napari_softseg.review.flags import sampling_kind
from napari_softseg.review.lesions import FlagRule
from napari_softseg.review.profile import decide_target, review_profile
from napari_softseg.review.session import Review

_CACHE: dict[tuple, object] = {}
_CACHE_LOCK = threading.Lock()


def cached_model(path: Path):
    """:func:`~napari_softseg.engine.predict.load_model`, cached by path and modification time."""
    from napari_softseg.engine.predict import load_model

    path = Path(path)
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is None:
            model = load_model(path)
            _CACHE.clear()  # keep one model: they are small but there is no need for more
            _CACHE[key] = model
    return model


@dataclass
class SegmentRequest:
    model_path: Path
    image: np.ndarray  # (X, Y, Z) or (X, Y, Z, C)
    spacing: tuple
    mc_samples: int = 0
    tta: int = 0
    rule: FlagRule | None = None  # None: the model's fitted flag rule
    threshold: float | None = None  # None: the model's
    affine: np.ndarray | None = None  # the scan's voxel-to-world affine (lesion centres in mm)


@dataclass
class SegmentResult:
    review: Review
    entropy: np.ndarray
    threshold: float
    config: dict
    timings: dict


def segment(request: SegmentRequest, progress: Callable[[int, int], None] | None = None,
            cancel: Callable[[], bool] | None = None) -> SegmentResult:
    """Predict and analyse; raises :class:`UserError` for inputs a user can get wrong."""
    from napari_softseg.engine.predict import predict_volume

    t0 = time.perf_counter()
    model = cached_model(request.model_path)
    config = dict(getattr(model, "softseg_config", {}) or {})
    n_in = request.image.shape[3] if request.image.ndim == 4 else 1
    if n_in != model.in_channels:
        raise UserError(contrast_message(config, n_in, "the scan"))
    if model.out_channels != 1 and not model.multiclass:
        raise UserError(f"{request.model_path.name} predicts {model.out_channels} structures; the Segment dock reviews one.")
    t1 = time.perf_counter()
    pred = predict_volume(model, request.image, spacing=request.spacing, mc_samples=int(request.mc_samples),
                          tta=int(request.tta), return_prediction=True, progress=progress, cancel=cancel)
    soft = pred.soft
    if soft.ndim == 4:
        if soft.shape[3] != 1:
            raise UserError(f"{request.model_path.name} predicts {soft.shape[3]} classes; the Segment dock reviews one.")
        soft = soft[..., 0]
    t2 = time.perf_counter()
    review = review_of(soft, config=config, model_path=request.model_path, spacing=request.spacing,
                       samples=pred.samples, sampling=sampling_kind(request.mc_samples, request.tta),
                       image=request.image, affine=request.affine, threshold=request.threshold, rule=request.rule)
    review.analyse()
    t3 = time.perf_counter()
    entropy = pred.entropy if pred.entropy is not None else np.zeros_like(soft)
    return SegmentResult(review, entropy.astype(np.float32, copy=False), review.threshold, config,
                         {"load_s": t1 - t0, "predict_s": t2 - t1, "lesions_s": t3 - t2})


def review_of(soft, *, config: dict, model_path, spacing, samples=None, sampling: str = "none", image=None,
              affine=None, threshold: float | None = None, rule: FlagRule | None = None) -> Review:
    """The :class:`Review` of a prediction: flags at the model's threshold with its flag model,
    its target (an undeclared one decided on this prediction, :func:`decide_target`), the
    reviewer's ``threshold`` (default: the model's) and ``rule`` (default: the fitted one)."""
    model_threshold = float(config.get("threshold", 0.5))
    profile = review_profile(config, model_path)
    target = profile.target
    if target is None:
        scan = np.asarray(image if image is not None else soft)
        scan = scan[..., 0] if scan.ndim == 4 else scan
        target = decide_target(None, int(np.count_nonzero(binarize(soft, model_threshold))),
                               int(np.count_nonzero(scan)))
    return Review(soft, spacing=spacing, threshold=model_threshold if threshold is None else float(threshold),
                  samples=samples, rule=rule, model_threshold=model_threshold, flags=profile.flags,
                  sampling=sampling, target=target, affine=affine)


def contrast_message(config: dict, n_scan: int, scan_name: str) -> str:
    """One sentence for a scan whose number of contrasts does not match the model's."""
    names = config.get("contrasts") or []
    n_model = int(config.get("n_channels", len(names) or 1))
    listed = f" ({', '.join(names)})" if names else ""
    if n_model > n_scan:
        hint = "open the other contrast(s) of this scan as one 4-D file or as layers of one scan"
    else:
        hint = "choose a single contrast or a model trained on all of them"
    return (f"The model expects {n_model} contrast{'s' if n_model != 1 else ''}{listed} but {scan_name} has "
            f"{n_scan}; {hint}.")


def stack_contrasts(layers: Sequence) -> np.ndarray:
    """One (X, Y, Z) array, or (X, Y, Z, C) from several contrast layers of one grid."""
    arrays = [np.asarray(layer.data) for layer in layers]
    if len(arrays) == 1:
        return arrays[0]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise UserError(f"The contrasts {', '.join(lay.name for lay in layers)} have different shapes {sorted(shapes)}.")
    return np.stack(arrays, axis=-1)


def contrast_layers(viewer, scan) -> list:
    """The layers holding the contrasts of ``scan`` (tagged ``softseg_scan`` by the reader), in
    channel order; just ``[scan]`` for a single-contrast scan."""
    group = ((scan.metadata or {}).get("softseg_scan") or {}).get("group")
    if not group:
        return [scan]
    same = [lay for lay in viewer.layers if ((lay.metadata or {}).get("softseg_scan") or {}).get("group") == group]
    return sorted(same, key=lambda lay: lay.metadata["softseg_scan"].get("channel", 0))


def input_problem(viewer, scan, config: dict | None, model_error: str = "") -> str:
    """Why Segment cannot run with this scan and model (one sentence), or ''."""
    if model_error:
        return model_error
    if config is None:
        return "Choose a model."
    if scan is None:
        return "Open a scan (File > Open, or File > Open Sample > SoftSeg)."
    n_model = int(config.get("n_channels", 1))
    layers = contrast_layers(viewer, scan) if n_model > 1 else [scan]
    if len(layers) != n_model:
        return contrast_message(config, len(layers), f"scan '{scan.name}'")
    return ""
