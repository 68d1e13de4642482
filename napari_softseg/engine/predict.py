"""Inference: load a model and predict a soft map for a whole volume.

``predict_volume`` streams 2-D slices through the network in batches and writes into a
preallocated float32 output, so peak memory stays close to input + output (about 1 GB for a
512x512x200 float32 scan). Speed levers, measured in ``benchmarks/bench_predict.py``: batch
norm folded into the convolutions, fused convolution + ReLU (oneDNN) on the CPU, bfloat16
weights and activations where the CPU has native bf16 (AVX512-BF16/AMX), CUDA AMP on GPUs,
channels-last memory layout and ``torch.inference_mode``. The 1x1 output layer and the final
activation stay in float32; the bf16 soft map differs from the float32 one by < 0.02.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from napari_softseg.engine.checkpoint import build_model, load_checkpoint
from napari_softseg.engine.devices import autocast_dtype, resolve_device
from napari_softseg.errors import UserError
from napari_softseg.engine.model import InferenceUNet, UNet

__all__ = [
    "Prediction",
    "PredictionCancelled",
    "SHIPPED_MODELS",
    "load_model",
    "resolve_model_path",
    "predict_volume",
    "choose_slice_axis",
    "inplane_zoom",
    "zscore_stats",
    "entropy_map",
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
        Voxel-wise predictive entropy of ``soft`` in [0, 1] (see :func:`entropy_map`);
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
    from napari_softseg.engine.preprocess import choose_slice_axis as _training_rule

    return _training_rule(spacing)


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


def zscore_stats(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-contrast mean and standard deviation over all voxels (float64 accumulation).

    ``volume`` is ``(X, Y, Z)`` or ``(X, Y, Z, C)``; returns two arrays of length C. A
    constant contrast gets std 1 so that normalising it gives zeros.
    """
    vol = volume if volume.ndim == 4 else volume[..., None]
    step = max(1, 2_000_000 // max(1, vol.shape[1] * vol.shape[2]))  # slabs bound the float64 temporaries
    means, stds = [], []
    for c in range(vol.shape[3]):
        channel = vol[..., c]
        total = sum(float(np.sum(channel[i : i + step], dtype=np.float64)) for i in range(0, channel.shape[0], step))
        mean = total / channel.size
        sq = 0.0
        for i in range(0, channel.shape[0], step):
            sq += float(np.sum(np.square(channel[i : i + step].astype(np.float64) - mean)))
        std = (sq / channel.size) ** 0.5
        means.append(mean)
        stds.append(std if std > 1e-8 * max(1.0, abs(mean)) else 1.0)
    return np.asarray(means), np.asarray(stds)


def entropy_map(soft: np.ndarray, multiclass: bool = False) -> np.ndarray:
    r"""Normalised voxel-wise entropy of a (mean) soft prediction, in [0, 1].

    Binary maps: :math:`H(p) = -p\log_2 p - (1-p)\log_2(1-p)`, averaged over a trailing
    channel axis if there is one. Multi-class (``soft[..., k]`` the foreground classes, the
    background being :math:`1 - \sum_k p_k`): :math:`-\sum_j p_j \ln p_j / \ln(K+1)`.
    """
    soft = np.asarray(soft)
    out_shape = soft.shape[:3] if soft.ndim == 4 else soft.shape
    out = np.empty(out_shape, dtype=np.float32)
    step = max(1, 4_000_000 // max(1, int(np.prod(soft.shape[1:]))))
    for start in range(0, soft.shape[0], step):  # slabs keep the float64 temporaries small
        out[start:start + step] = _entropy(soft[start:start + step], multiclass)
    return out


def _plogp(q: np.ndarray) -> np.ndarray:
    return np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)


def _entropy(soft: np.ndarray, multiclass: bool) -> np.ndarray:
    p = np.clip(np.asarray(soft, dtype=np.float64), 0.0, 1.0)
    if multiclass:
        if p.ndim == 3:
            p = p[..., None]
        background = np.clip(1.0 - p.sum(axis=-1), 0.0, 1.0)
        total = -(_plogp(background) + _plogp(p).sum(axis=-1))
        return total / np.log(p.shape[-1] + 1)
    h = -(_plogp(p) + _plogp(1.0 - p)) / np.log(2.0)
    return h.mean(axis=-1) if h.ndim == 4 else h


def _resample_back(prob: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Linear (order 1) resampling of ``(b, K, h, w)`` probabilities to ``(b, K, height, width)``."""
    from scipy import ndimage

    h, w = prob.shape[-2:]
    arr = ndimage.zoom(prob.numpy(), (1.0, 1.0, height / h, width / w), order=1, grid_mode=True, mode="nearest")
    return torch.from_numpy(np.ascontiguousarray(arr[:, :, :height, :width]))


def _config_of(model: torch.nn.Module) -> dict:
    return dict(getattr(model, "softseg_config", None) or {})


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
        bfloat16 on CPUs with native bf16 and CUDA AMP on GPUs; float32 otherwise.
    mc_samples : int
        Monte-Carlo dropout draws (0: dropout off).
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
    array = np.asarray(array)
    if array.ndim not in (3, 4) or 0 in array.shape:
        raise UserError(f"Expected a 3-D (X, Y, Z) or 4-D (X, Y, Z, C) image, got shape {array.shape}.")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise UserError(f"The image has a non-numeric data type ({array.dtype}).")
    n_channels = array.shape[3] if array.ndim == 4 else 1
    if n_channels != model.in_channels:
        names = config.get("contrasts") or []
        listed = f" ({', '.join(names)})" if names else ""
        raise UserError(f"The model expects {model.in_channels} contrast(s){listed} but the image has {n_channels}.")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise UserError("The image contains NaN or infinite values; replace them before predicting.")
    if slice_axis is None:
        slice_axis = config.get("slice_axis")
    if slice_axis is None:
        slice_axis = choose_slice_axis(spacing)
    if slice_axis not in (0, 1, 2):
        raise UserError(f"slice_axis must be 0, 1 or 2, got {slice_axis!r}.")
    if batch_size < 1 or mc_samples < 0 or tta < 0:
        raise UserError("batch_size must be at least 1 and mc_samples, tta at least 0.")

    dev = resolve_device(device)
    dtype = (autocast_dtype(dev) if mixed_precision else None) or torch.float32
    multiclass = model.activation_name in ("softmax", "multiclass_normrelu")
    fast = InferenceUNet(model, dtype=dtype, device=dev, mc_dropout=mc_samples > 0)

    if config.get("normalisation", "zscore") == "zscore":
        mean, std = zscore_stats(array)
    else:
        mean, std = np.zeros(n_channels), np.ones(n_channels)
    vol = array if array.ndim == 4 else array[..., None]
    vol = np.moveaxis(vol, slice_axis, 0)  # (S, A, B, C) view, no copy
    n_slices, height, width = vol.shape[:3]
    n_out = model.out_channels - 1 if multiclass else model.out_channels
    out_shape = array.shape[:3] + ((n_out,) if n_out > 1 else ())

    views = TTA_FLIPS[: min(max(tta, 1), len(TTA_FLIPS))]
    draws = max(mc_samples, 1)
    n_samples = draws * len(views)
    uncertainty = n_samples > 1
    soft = np.zeros(out_shape, dtype=np.float32)
    soft_view = np.moveaxis(soft, slice_axis, 0)
    samples = np.zeros((n_samples,) + out_shape, dtype=np.float32) if uncertainty and keep_samples else None

    zoom = inplane_zoom(config, spacing, slice_axis)
    net_h, net_w = height, width
    if zoom is not None:
        from napari_softseg.engine.preprocess import resample_inplane

        net_h, net_w = (max(1, round(height * zoom[0])), max(1, round(width * zoom[1])))
    m = fast.multiple
    pad_h, pad_w = (-net_h) % m, (-net_w) % m
    scale = torch.as_tensor(1.0 / std, dtype=torch.float32).view(1, -1, 1, 1)
    shift = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    total = n_slices * n_samples
    done = 0
    with torch.inference_mode():
        for start in range(0, n_slices, batch_size):
            stop = min(start + batch_size, n_slices)
            chunk = np.ascontiguousarray(vol[start:stop], dtype=np.float32)  # (b, A, B, C)
            x = torch.from_numpy(chunk).permute(0, 3, 1, 2)  # channels-last (b, C, A, B)
            x = (x - shift) * scale
            if zoom is not None:
                x = torch.from_numpy(resample_inplane(x.numpy(), zoom, order=2))
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
            x = x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
            acc = None
            k = 0
            for flip in views:
                xv = torch.flip(x, flip) if flip else x
                for _ in range(draws):
                    if cancel is not None and cancel():
                        raise PredictionCancelled("prediction cancelled")
                    logits = fast.forward_logits(xv)
                    if flip:
                        logits = torch.flip(logits, flip)
                    prob = fast.activation(logits[:, :, :net_h, :net_w])
                    if multiclass:
                        prob = prob[:, 1:]
                    if zoom is not None:
                        prob = _resample_back(prob.float().cpu(), height, width)
                    prob = prob.float().clamp_(0.0, 1.0).permute(0, 2, 3, 1).cpu().numpy()  # (b, A, B, K)
                    if n_out == 1:
                        prob = prob[..., 0]
                    if samples is not None:
                        np.moveaxis(samples[k], slice_axis, 0)[start:stop] = prob
                    acc = prob if acc is None else acc + prob
                    k += 1
                    done += stop - start
                    if progress is not None:
                        progress(done, total)
            soft_view[start:stop] = acc / n_samples if n_samples > 1 else acc
    if not (uncertainty or return_prediction):
        return soft
    return Prediction(soft=soft, entropy=entropy_map(soft, multiclass=multiclass), samples=samples)
