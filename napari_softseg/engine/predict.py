"""Inference: load a model and predict a soft map for a whole volume.

``predict_volume`` streams 2-D slices through the network in batches and writes into a
preallocated float32 output, so peak memory stays close to input + output (about 1 GB for a
512x512x200 float32 scan). Speed levers, measured in ``benchmarks/bench_predict.py``: batch
norm folded into the convolutions, fused convolution + ReLU (oneDNN) on the CPU, bfloat16
weights and activations where the CPU has native bf16 (AVX512-BF16/AMX), CUDA AMP on GPUs,
channels-last memory layout and ``torch.inference_mode``. The 1x1 output layer and the final
activation stay in float32; the bf16 soft map differs from the float32 one by < 0.02.

Devices: the reduced precision follows the chosen device
(:func:`~napari_softseg.engine.devices.autocast_dtype`: bf16 on CUDA from compute capability
8.0, float16 below and on MPS). float16 has a narrow range, so a batch whose float16 logits
overflow (inf/NaN) is computed again in float32. Float32 prediction is true float32 on CUDA
too (no TF32 convolutions), so it matches the CPU. Each batch reaches a CUDA device through
pinned memory without blocking the host. Running out of device memory raises one sentence
(:class:`~napari_softseg.errors.UserError`) saying what to change.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from napari_softseg.engine.checkpoint import build_model, load_checkpoint
from napari_softseg.engine.devices import (
    autocast_dtype,
    is_out_of_memory,
    release_memory,
    resolve_device,
    strict_float32,
    to_device,
)
from napari_softseg.engine.model import InferenceUNet, UNet
from napari_softseg.engine.preprocess import apply_zscore, resample_inplane, zscore_stats
from napari_softseg.engine.preprocess import choose_slice_axis as coarsest_axis
from napari_softseg.errors import UserError
from napari_softseg.io.checks import as_spacing, as_volume
from napari_softseg.metrics.calibration import entropy

__all__ = [
    "Prediction",
    "PredictionCancelled",
    "SHIPPED_MODELS",
    "load_model",
    "resolve_model_path",
    "predict_volume",
    "choose_slice_axis",
    "inplane_zoom",
    "prediction_entropy",
    "TTA_FLIPS",
]

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
#: name -> what it segments (weights in napari_softseg/models/<name>.pt).
SHIPPED_MODELS = {
    "ms-lesion": "multiple-sclerosis lesions (FLAIR)",
    "brain-gm": "brain gray matter, soft partial-volume map (T1-weighted)",
}
#: Test-time augmentation views: spatial dims of a (N, C, H, W) batch to flip.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (2, 3))
DEFAULT_BATCH_SIZE = 4


class PredictionCancelled(Exception):
    """Raised by :func:`predict_volume` when its ``cancel()`` callable returns True."""


@dataclass
class Prediction:
    """Result of :func:`predict_volume` with uncertainty.

    Attributes
    ----------
    soft : ndarray, float32
        Mean soft map, input spatial shape (plus a trailing class axis for several classes).
    entropy : ndarray or None
        Voxel-wise predictive entropy of ``soft`` in bits (see :func:`prediction_entropy`);
        with one sample it reflects only the softness of the prediction itself.
    samples : ndarray or None
        ``(S, *soft.shape)`` float32: each MC-dropout draw / TTA view.
    """

    soft: np.ndarray
    entropy: np.ndarray | None = None
    samples: np.ndarray | None = None


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint path, or the file of a shipped model named in :data:`SHIPPED_MODELS`."""
    text = str(name_or_path)
    if text in SHIPPED_MODELS:
        path = MODELS_DIR / f"{text}.pt"
        if not path.is_file():
            raise UserError(f"The shipped model {text!r} is not installed ({path} is missing); give a checkpoint file instead.")
        return path
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.suffix or os.sep in text or "/" in text:
        raise UserError(f"{path.name}: no such model file.")
    raise UserError(f"Unknown model {text!r}: give a checkpoint file or one of the shipped models {', '.join(SHIPPED_MODELS)}.")


def load_model(path_or_name: str | os.PathLike) -> UNet:
    """Load a checkpoint (path or shipped name) as a float32 :class:`UNet` in eval mode.

    The checkpoint's configuration is attached as ``model.softseg_config`` (a dict, see
    :mod:`napari_softseg.engine.checkpoint`).
    """
    path = resolve_model_path(path_or_name)
    state, config = load_checkpoint(path)
    model = build_model(config, state, source=path.name)
    model.softseg_config = config
    return model


def choose_slice_axis(spacing: Sequence[float] | None = None) -> int:
    """The scan's slice axis: the one with the largest voxel size (axes tied within 0.1 %:
    the last one), as in training (:func:`napari_softseg.engine.preprocess.choose_slice_axis`);
    2 without spacing."""
    if spacing is None:
        return 2
    return coarsest_axis(spacing)


def inplane_zoom(config: dict, spacing: Sequence[float] | None, slice_axis: int) -> tuple[float, float] | None:
    """Factors that bring this scan's in-plane voxel size to the training one, or None.

    The training in-plane spacing is the checkpoint's ``spacing`` without its slice axis
    (both in array order); None when either spacing is unknown or they agree within 0.1 %.
    """
    train = config.get("spacing")
    if spacing is None or not train:
        return None
    train_axis = config.get("slice_axis")
    if train_axis is None:
        train_axis = choose_slice_axis(train)
    ours = [float(v) for i, v in enumerate(list(spacing)[:3]) if i != slice_axis]
    theirs = [float(v) for i, v in enumerate(list(train)[:3]) if i != train_axis]
    zoom = (ours[0] / theirs[0], ours[1] / theirs[1])
    if all(abs(z - 1.0) <= 1e-3 for z in zoom):
        return None
    return zoom


def prediction_entropy(soft: np.ndarray, multiclass: bool = False) -> np.ndarray:
    """Voxel-wise entropy in bits of a predicted soft map, with the voxel shape (float32).

    :func:`napari_softseg.metrics.calibration.entropy` of each voxel's distribution: for a
    binary map ``[1 - p, p]`` (in [0, 1]; several binary structures on a trailing axis are
    averaged); for a multi-class map (``soft[..., k]`` the foreground classes) the classes
    plus the background ``clip(1 - sum_k p_k, 0, 1)`` (in [0, log2(K + 1)]). Computed in
    slabs of the first axis so that the temporaries stay small.
    """
    soft = np.asarray(soft)
    out = np.empty(soft.shape[:3], dtype=np.float32)
    step = max(1, 4_000_000 // max(1, int(np.prod(soft.shape[1:]))))
    for start in range(0, soft.shape[0], step):
        p = soft[start : start + step]
        if multiclass:
            p = p if p.ndim == 4 else p[..., None]
            background = np.clip(1.0 - p.sum(axis=-1, keepdims=True), 0.0, 1.0)
            h = entropy(np.concatenate([background, p], axis=-1), class_axis=-1)
        else:
            h = entropy(p)
            h = h.mean(axis=-1) if h.ndim == 4 else h
        out[start : start + step] = h
    return out


def _config_of(model: torch.nn.Module) -> dict:
    return dict(getattr(model, "softseg_config", None) or {})


def _checked_image(model: UNet, array, config: dict) -> np.ndarray:
    """``array`` as a numeric ``(X, Y, Z[, C])`` array with the model's number of contrasts."""
    array = as_volume(array, "The image")
    if array.ndim not in (3, 4):
        raise UserError(f"Expected a 3-D (X, Y, Z) or 4-D (X, Y, Z, C) image, got shape {array.shape}.")
    n_channels = array.shape[3] if array.ndim == 4 else 1
    if n_channels != model.in_channels:
        names = config.get("contrasts") or []
        listed = f" ({', '.join(names)})" if names else ""
        raise UserError(f"The model expects {model.in_channels} contrast(s){listed} but the image has {n_channels}.")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise UserError("The image contains NaN or infinite values; replace them before predicting.")
    return array


def _resolve_slice_axis(slice_axis: int | None, config: dict, spacing) -> int:
    """The argument, else the checkpoint's, else the coarsest axis of ``spacing`` (last without)."""
    if slice_axis is None:
        slice_axis = config.get("slice_axis")
    if slice_axis is None:
        slice_axis = choose_slice_axis(spacing)
    if slice_axis not in (0, 1, 2):
        raise UserError(f"slice_axis must be 0, 1 or 2, got {slice_axis!r}.")
    return slice_axis


class _SliceGrid:
    """A volume's slices on the network's grid and back.

    Inputs: z-score (:func:`~napari_softseg.engine.preprocess.apply_zscore`, as in training),
    resampling to the training in-plane voxel size (:func:`inplane_zoom`), padding at the end
    by repeating the edge up to multiples of the network's ``multiple``. Outputs: cropped,
    resampled back linearly, background channel of multi-class models dropped.
    """

    def __init__(self, array: np.ndarray, slice_axis: int, config: dict, spacing, multiple: int) -> None:
        n_channels = array.shape[3] if array.ndim == 4 else 1
        if config.get("normalisation", "zscore") == "zscore":
            self.mean, self.std = zscore_stats(array)
        else:
            self.mean, self.std = np.zeros(n_channels), np.ones(n_channels)
        vol = array if array.ndim == 4 else array[..., None]
        self.vol = np.moveaxis(vol, slice_axis, 0)  # (S, A, B, C) view, no copy
        self.n_slices, self.height, self.width = self.vol.shape[:3]
        self.zoom = inplane_zoom(config, spacing, slice_axis)
        self.net_h, self.net_w = self.height, self.width
        if self.zoom is not None:
            self.net_h, self.net_w = max(1, round(self.height * self.zoom[0])), max(1, round(self.width * self.zoom[1]))
        self.pad_h, self.pad_w = (-self.net_h) % multiple, (-self.net_w) % multiple

    def inputs(self, start: int, stop: int) -> torch.Tensor:
        """Network input ``(b, C, H, W)`` (float32, channels-last strides) of slices ``start:stop``."""
        x = torch.from_numpy(apply_zscore(self.vol[start:stop], self.mean, self.std)).permute(0, 3, 1, 2)
        if self.zoom is not None:
            x = torch.from_numpy(resample_inplane(x.numpy(), self.zoom, order=2))
        if self.pad_h or self.pad_w:
            x = F.pad(x, (0, self.pad_w, 0, self.pad_h), mode="replicate")
        return x

    def crop(self, logits: torch.Tensor) -> torch.Tensor:
        """The network output without the padding (before the activation: NormReLU's
        maximum is taken over the slice only)."""
        return logits[:, :, : self.net_h, : self.net_w]

    def outputs(self, prob: torch.Tensor, multiclass: bool) -> np.ndarray:
        """Activated, cropped ``(b, K, H, W)`` output -> ``(b, A, B[, K])`` in [0, 1] on the slices' grid."""
        prob = (prob[:, 1:] if multiclass else prob).float().cpu()
        if self.zoom is not None:
            back = (self.height / self.net_h, self.width / self.net_w)
            prob = torch.from_numpy(resample_inplane(prob.numpy(), back, order=1))
        prob = prob.clamp_(0.0, 1.0).permute(0, 2, 3, 1).numpy()
        return prob[..., 0] if prob.shape[-1] == 1 else prob


class _Networks:
    """The inference network, plus a float32 one built on first need: float16 logits that
    overflowed (inf/NaN) are computed again in float32."""

    def __init__(self, model: UNet, dtype: torch.dtype, device: torch.device, mc_dropout: bool) -> None:
        self.model, self.device, self.mc_dropout = model, device, mc_dropout
        self.net = InferenceUNet(model, dtype=dtype, device=device, mc_dropout=mc_dropout)
        self._exact: InferenceUNet | None = None
        self.recomputed = 0  # batches computed again in float32

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net.forward_logits(x)
        if self.net.dtype == torch.float16 and not bool(torch.isfinite(logits).all()):
            if self._exact is None:
                self._exact = InferenceUNet(self.model, dtype=torch.float32, device=self.device, mc_dropout=self.mc_dropout)
            logits = self._exact.forward_logits(x)
            self.recomputed += 1
        return logits


def _samples(nets: _Networks, x: torch.Tensor, grid: _SliceGrid, views, draws: int, multiclass: bool, cancel):
    """Yield the probabilities of one batch for every TTA view and MC-dropout draw."""
    for flip in views:
        xv = torch.flip(x, flip) if flip else x
        for _ in range(draws):
            if cancel is not None and cancel():
                raise PredictionCancelled("prediction cancelled")
            logits = nets.logits(xv)
            if flip:
                logits = torch.flip(logits, flip)
            yield grid.outputs(nets.net.activation(grid.crop(logits)), multiclass)


def _out_of_memory_message(device: torch.device, batch_size: int, grid: "_SliceGrid") -> str:
    where = "" if device.type == "cpu" else " or predict on the CPU"
    return (f"Prediction ran out of memory on {device} with batch size {batch_size} "
            f"(slices of {grid.net_h}x{grid.net_w}); try a smaller batch size{where}.")


def predict_volume(
    model: torch.nn.Module,
    array: np.ndarray,
    *,
    slice_axis: int | None = None,
    spacing: Sequence[float] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "auto",
    mixed_precision: bool = True,
    mc_samples: int = 0,
    tta: int = 0,
    keep_samples: bool = True,
    return_prediction: bool = False,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> np.ndarray | Prediction:
    """Soft segmentation of a whole volume, slice by slice.

    Parameters
    ----------
    model : UNet
        From :func:`load_model` (its ``softseg_config`` gives the normalisation, slice axis
        and contrasts) or any :class:`UNet` (then z-score and the default slice axis).
    array : ndarray
        ``(X, Y, Z)`` or ``(X, Y, Z, C)`` in on-disk order; C must equal the model's inputs.
    slice_axis : int, optional
        0, 1 or 2. Default: the checkpoint's ``slice_axis``; if that is null, the axis with
        the largest voxel size in ``spacing``; without spacing, the last axis.
    spacing : 3 floats, optional
        Voxel size (mm) of ``array``. Picks the slice axis when neither the argument nor the
        checkpoint gives one; and when it differs in-plane from the checkpoint's training
        spacing, every slice is resampled to the training voxel size (2nd-order spline, as
        in training), predicted, and the soft map resampled back linearly.
    batch_size : int
        Slices per forward pass (4 is fastest on small CPUs; larger on GPUs).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    mixed_precision : bool
        The device's reduced precision (:func:`~napari_softseg.engine.devices.autocast_dtype`:
        bfloat16 on CUDA from compute capability 8.0 and on CPUs with native bf16, float16
        on older CUDA GPUs and MPS), else float32. False: float32 (no TF32 on CUDA).
    mc_samples : int
        Monte-Carlo dropout draws (0: dropout off). A model without dropout (``model.dropout``
        0, as NormReLU networks are trained) has no such draws: asking for them raises
        :class:`UserError` rather than returning identical samples; use ``tta`` instead.
        Every draw and view is normalised like the plain prediction (a ``"batch"`` NormReLU
        divides each by the same stored maximum).
    tta : int
        Test-time augmentation views from :data:`TTA_FLIPS` (identity, flip H, flip W, both);
        0 or 1: none.
    keep_samples : bool
        Keep every draw/view in :attr:`Prediction.samples` (costs ``S`` output volumes).
    return_prediction : bool
        Always return a :class:`Prediction` (otherwise only when uncertainty is asked).
    progress : callable(done, total), optional
        Called after every batch; counts slices predicted so far, ``total`` being the number
        of slices times the number of samples (MC draws x TTA views).
    cancel : callable() -> bool, optional
        Checked before every batch; when it returns True :class:`PredictionCancelled` is raised.

    Returns
    -------
    ndarray or Prediction
        Without MC dropout and TTA (and without ``return_prediction``): the float32 soft map
        in [0, 1] with the input's spatial shape (a trailing class axis when the model has
        several foreground classes; the background channel of multi-class models is dropped).
        Otherwise a :class:`Prediction` with the mean over samples, its entropy and the samples.
    """
    if not isinstance(model, UNet):
        raise TypeError("predict_volume expects a napari_softseg UNet (see load_model).")
    config = _config_of(model)
    array = _checked_image(model, array, config)
    spacing = None if spacing is None else as_spacing(spacing)
    slice_axis = _resolve_slice_axis(slice_axis, config, spacing)
    if batch_size < 1 or mc_samples < 0 or tta < 0:
        raise UserError("batch_size must be at least 1 and mc_samples, tta at least 0.")
    if mc_samples > 0 and not model.has_dropout:
        raise UserError("This model was trained without dropout, so its Monte-Carlo dropout samples would all be "
                        "the same prediction; ask for 0 of them and use test-time augmentation for samples instead.")
    dev = resolve_device(device)
    dtype = (autocast_dtype(dev) if mixed_precision else None) or torch.float32
    grid = _SliceGrid(array, slice_axis, config, spacing, model.multiple)
    views = TTA_FLIPS[: min(max(tta, 1), len(TTA_FLIPS))]
    draws = max(mc_samples, 1)
    n_samples = draws * len(views)
    out_shape = array.shape[:3] + ((model.n_structures,) if model.n_structures > 1 else ())
    soft = np.zeros(out_shape, dtype=np.float32)
    samples = np.zeros((n_samples,) + out_shape, dtype=np.float32) if n_samples > 1 and keep_samples else None
    run = dict(grid=grid, views=views, draws=draws, batch_size=batch_size, progress=progress, cancel=cancel)
    _predict_on_device(model, dtype, dev, mc_samples > 0, soft, samples, slice_axis, run)
    if not (n_samples > 1 or return_prediction):
        return soft
    return Prediction(soft=soft, entropy=prediction_entropy(soft, multiclass=model.multiclass), samples=samples)


def _predict_on_device(model: UNet, dtype, dev: torch.device, mc: bool, soft, samples, slice_axis: int, run: dict) -> None:
    """:func:`_predict_slices` with the networks on ``dev``; running out of memory becomes one
    sentence (batch size, or the CPU) after the memory is handed back."""
    failed, nets = False, None
    exact = strict_float32(dev) if dtype == torch.float32 else contextlib.nullcontext()
    try:
        with exact:
            nets = _Networks(model, dtype, dev, mc)
            _predict_slices(nets, soft, samples, slice_axis, **run)
    except Exception as err:  # noqa: BLE001 - only running out of memory is handled
        if not is_out_of_memory(err):
            raise
        failed = True
    if failed:  # outside the handler: its traceback no longer holds the batch
        del nets
        release_memory(dev)
        raise UserError(_out_of_memory_message(dev, run["batch_size"], run["grid"]))


def _predict_slices(nets: _Networks, soft: np.ndarray, samples, slice_axis: int, *, grid: _SliceGrid, views,
                    draws: int, batch_size: int, progress, cancel) -> None:
    """Fill ``soft`` (the mean over samples) and ``samples`` (each draw/view, or None)."""
    n_samples = draws * len(views)
    soft_view = np.moveaxis(soft, slice_axis, 0)
    sample_views = [] if samples is None else [np.moveaxis(s, slice_axis, 0) for s in samples]
    total, done = grid.n_slices * n_samples, 0
    with torch.inference_mode():
        for start in range(0, grid.n_slices, batch_size):
            stop = min(start + batch_size, grid.n_slices)
            x = to_device(grid.inputs(start, stop), nets.device).contiguous(memory_format=torch.channels_last)
            acc = None
            for k, prob in enumerate(_samples(nets, x, grid, views, draws, nets.model.multiclass, cancel)):
                if sample_views:
                    sample_views[k][start:stop] = prob
                acc = prob if acc is None else acc + prob
                done += stop - start
                if progress is not None:
                    progress(done, total)
            soft_view[start:stop] = acc / n_samples if n_samples > 1 else acc
