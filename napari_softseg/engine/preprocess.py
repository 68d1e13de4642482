"""Array operations of training-data preparation (numpy, plus torch where noted).

Slicing axis, per-contrast z-score, in-plane resampling, centre crop / pad, label
binarisation and the validation split; :mod:`napari_softseg.engine.training.slices` strings them together,
and :mod:`napari_softseg.engine.predict` uses the same z-score, slicing axis and resampling.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from napari_softseg.labels.masks import binarize

__all__ = [
    "choose_slice_axis",
    "zscore_stats",
    "apply_zscore",
    "zscore",
    "resample_inplane",
    "center_crop_or_pad",
    "uncrop",
    "binarise",
    "with_background",
    "split_validation",
]


def choose_slice_axis(spacing: Sequence[float], *, rtol: float = 1e-3) -> int:
    """The axis with the largest voxel size; among axes tied within ``rtol``, the last one
    (so an isotropic scan is sliced along its last axis), as at prediction time."""
    sp = np.asarray(spacing, dtype=float)[:3]
    tied = np.flatnonzero(sp >= sp.max() / (1.0 + rtol))
    return int(tied.max())


def zscore_stats(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-contrast mean and standard deviation over all voxels (float64 accumulation).

    ``volume`` is ``(X, Y, Z)`` or ``(X, Y, Z, C)``; returns two float64 arrays of length C.
    The sums run over slabs of the first axis, so the float64 temporaries stay small. A
    constant contrast (``std <= 1e-8 max(1, |mean|)``) gets std 1, so normalising it gives
    zeros.
    """
    vol = np.asarray(volume)
    vol = vol if vol.ndim == 4 else vol[..., None]
    step = max(1, 2_000_000 // max(1, vol.shape[1] * vol.shape[2]))
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


def apply_zscore(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean_c) / std_c`` in float32 for channel-last data ``(..., C)`` (or one contrast).

    The one normalisation of the package: training slices
    (:mod:`napari_softseg.engine.training.slices`) and prediction batches
    (:func:`napari_softseg.engine.predict.predict_volume`) both go through it with the
    statistics of :func:`zscore_stats`, so the network sees the same numbers in both.
    Element-wise, hence the same whether applied to a whole volume or to a few slices.
    """
    x = np.asarray(values, dtype=np.float32)
    return (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)


def zscore(image: np.ndarray) -> np.ndarray:
    """Per-contrast z-score of ``(X, Y, Z)`` or ``(X, Y, Z, C)`` data over all voxels, float32.

    ``x' = (x - mean_c) / std_c``; a constant contrast is only centred.
    """
    return apply_zscore(image, *zscore_stats(image))


def resample_inplane(array: np.ndarray, zoom: tuple[float, float], order: int) -> np.ndarray:
    """Resample ``(S, C, H, W)`` by ``zoom`` along H and W (spline ``order``; 1 = linear).

    Every ``(H, W)`` plane is resampled on its own, so a slice comes out the same whether it
    is resampled with its whole volume (training) or in a batch of a few (prediction). Uses
    pixel-edge alignment (``grid_mode=True``) so a voxel keeps its extent; out-of-grid
    samples take the nearest edge value. ``zoom == (1, 1)`` returns the input unchanged.
    """
    if abs(zoom[0] - 1.0) < 1e-6 and abs(zoom[1] - 1.0) < 1e-6:
        return array
    from scipy import ndimage

    planes = np.asarray(array, dtype=np.float32)
    n, c, h, w = planes.shape
    out = np.empty((n, c, int(round(h * zoom[0])), int(round(w * zoom[1]))), dtype=np.float32)
    for i in range(n):
        for k in range(c):
            ndimage.zoom(planes[i, k], zoom, output=out[i, k], order=order, grid_mode=True, mode="nearest")
    return out


def center_crop_or_pad(array: np.ndarray, size: tuple[int, int], pad_value=0.0) -> np.ndarray:
    """Centre-crop or pad the last two axes to ``size``.

    ``pad_value`` is a scalar or an array broadcastable to ``array.shape[:-2]`` (e.g. one
    value per channel). When a margin is odd, the extra row goes to the end.
    """
    h, w = array.shape[-2:]
    th, tw = int(size[0]), int(size[1])
    out = np.empty(array.shape[:-2] + (th, tw), dtype=array.dtype)
    out[...] = np.asarray(pad_value, dtype=array.dtype)[..., None, None]
    src_y, dst_y, ny = _overlap(h, th)
    src_x, dst_x, nx = _overlap(w, tw)
    out[..., dst_y : dst_y + ny, dst_x : dst_x + nx] = array[..., src_y : src_y + ny, src_x : src_x + nx]
    return out


def _overlap(n: int, target: int) -> tuple[int, int, int]:
    """(source start, target start, length) of a centred crop/pad from n to target."""
    if n >= target:
        return (n - target) // 2, 0, target
    return 0, (target - n) // 2, n


def uncrop(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`center_crop_or_pad` (what was cropped away comes back as 0)."""
    h, w = array.shape[-2:]
    out = np.zeros(array.shape[:-2] + tuple(int(s) for s in size), dtype=array.dtype)
    dst_y, src_y, ny = _overlap(int(size[0]), h)
    dst_x, src_x, nx = _overlap(int(size[1]), w)
    out[..., dst_y : dst_y + ny, dst_x : dst_x + nx] = array[..., src_y : src_y + ny, src_x : src_x + nx]
    return out


def binarise(labels, multiclass: bool = False):
    """Hard labels of ``labels``' dtype: per channel the package's binarisation at 0.5
    (:func:`napari_softseg.labels.masks.binarize`, ``labels >= 0.5``), or for ``multiclass``
    (foreground classes on axis -3, background implicit) the one-hot arg-max including
    background. numpy or torch."""
    if not multiclass:
        mask = binarize(labels)
        return mask.astype(labels.dtype) if isinstance(labels, np.ndarray) else mask.to(labels.dtype)
    if isinstance(labels, np.ndarray):
        bg = 1.0 - labels.sum(axis=-3, keepdims=True)
        full = np.concatenate([bg, labels], axis=-3)
        win = full.argmax(axis=-3)
        return np.stack([(win == k) for k in range(1, full.shape[-3])], axis=-3).astype(labels.dtype)
    import torch

    bg = 1.0 - labels.sum(dim=-3, keepdim=True)
    win = torch.cat([bg, labels], dim=-3).argmax(dim=-3, keepdim=True)
    ks = torch.arange(1, labels.shape[-3] + 1, device=labels.device).view(-1, 1, 1)
    return (win == ks).to(labels.dtype)


def with_background(labels):
    """Prepend the background channel ``clamp(1 - sum(foreground), 0, 1)`` (torch, axis 1)."""
    import torch

    bg = (1.0 - labels.sum(dim=1, keepdim=True)).clamp(0.0, 1.0)
    return torch.cat([bg, labels], dim=1)


def split_validation(volume: np.ndarray, has_foreground: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices ``(train, val)``.

    Several volumes: ``max(1, round(val_fraction * V))`` whole volumes (at most ``V - 1``)
    drawn with ``seed``. One volume: its slices are cut into ``round(1 / val_fraction)``
    contiguous slabs and one slab holding foreground (any slab if none does) is held out.
    The split never holds out all the foreground, and a validation set without foreground
    would be useless (a network that predicts nothing scores a perfect 0 there, so no
    training epoch could beat the start): when the foreground lies in a single slab, or in
    a single volume, the validation set is empty and the trainer keeps the epoch with the
    lowest training loss. ``val_fraction = 0`` (or a single slice) gives an empty
    validation set.
    """
    volume = np.asarray(volume)
    n = volume.size
    everything = np.arange(n, dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    if val_fraction <= 0 or n < 2:
        return everything, empty
    rng = np.random.default_rng(seed)
    vols = np.unique(volume)
    has_foreground = np.asarray(has_foreground, dtype=bool)
    if vols.size >= 2:
        n_val = min(vols.size - 1, max(1, int(round(val_fraction * vols.size))))
        held = rng.choice(vols, size=n_val, replace=False)
        is_val = np.isin(volume, held)
        labelled = np.unique(volume[has_foreground])
        if labelled.size == 1:  # one labelled volume: no validation
            return everything, empty
        if labelled.size and not (has_foreground[~is_val].any() and has_foreground[is_val].any()):
            keep = rng.choice(labelled)  # redraw: labelled volumes on both sides
            first = rng.choice(labelled[labelled != keep])
            rest = rng.choice(vols[(vols != keep) & (vols != first)], size=n_val - 1, replace=False)
            is_val = np.isin(volume, np.concatenate([[first], rest]))
        return everything[~is_val], everything[is_val]
    n_slabs = min(n, max(2, int(round(1.0 / val_fraction))))
    slabs = np.array_split(everything, n_slabs)
    total = int(np.count_nonzero(has_foreground))
    candidates = [i for i, s in enumerate(slabs) if 0 < np.count_nonzero(has_foreground[s]) < total]
    if total and not candidates:  # the foreground lies in one slab: no validation
        return everything, empty
    pick = slabs[int(rng.choice(candidates or list(range(n_slabs))))]
    is_val = np.isin(everything, pick)
    return everything[~is_val], everything[is_val]
