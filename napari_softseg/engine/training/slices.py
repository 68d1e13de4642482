"""Turning a :class:`~napari_softseg.engine.training.data.TrainingData` into 2-D training slices.

See :mod:`napari_softseg.engine.training.data` for the steps; :func:`prepare_slices` runs them and returns
a :class:`PreparedData` of CPU tensors plus what the live preview needs to map a slice's
prediction back onto the original grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from napari_softseg.errors import UserError
from napari_softseg.engine.preprocess import (
    apply_zscore,
    binarise,
    center_crop_or_pad,
    choose_slice_axis,
    resample_inplane,
    split_validation,
    zscore_stats,
)

if TYPE_CHECKING:  # pragma: no cover
    from napari_softseg.engine.training.data import TrainingData

__all__ = ["PreparedData", "SliceGeometry", "prepare_slices"]


@dataclass
class SliceGeometry:
    """How one volume's slices were mapped to the network grid (for previews)."""

    shape: tuple  # original (X, Y, Z)
    inplane_shape: tuple  # original in-plane (H0, W0)
    resampled_shape: tuple  # after resampling (H1, W1)
    zoom: tuple  # (H1/H0, W1/W0) nominal factors
    mean: np.ndarray  # per contrast (preprocess.zscore_stats)
    std: np.ndarray  # per contrast


@dataclass
class PreparedData:
    """Slices ready for training (CPU torch tensors).

    Attributes
    ----------
    images : (N, C, H, W) float32
    labels : (R, N, K, H, W) float32 -- R raters when the label source is random, else 1
    truth : (N, K, H, W) float32 -- the target used for validation and threshold search
        (the rater average for random sampling)
    volume, slice_index : (N,) int64 -- source volume and slice of each sample
    has_structure : (N,) bool -- the sample's truth holds the structure (any value > 0)
    train_idx, val_idx : int64 -- sample indices of the two sets (val may be empty)
    """

    images: "object"
    labels: "object"
    truth: "object"
    volume: "object"
    slice_index: "object"
    train_idx: "object"
    val_idx: "object"
    slice_axis: int
    spacing: tuple
    crop_size: tuple
    hard: bool
    multiclass: bool
    random_raters: bool
    contrasts: list
    classes: list
    subject_names: list
    geometry: list
    has_structure: "object" = None
    source: "TrainingData" = field(repr=False, default=None)

    @property
    def n_samples(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_raters(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_volumes(self) -> int:
        return len(self.subject_names)

    def preview_input(self, subject: int, slice_index: int, multiple: int) -> tuple[np.ndarray, tuple]:
        """A whole normalised, resampled slice ``(C, H, W)`` padded to multiples of
        ``multiple`` and the ``(H1, W1)`` to crop the prediction back to."""
        subj = self.source.subjects[subject]
        geo = self.geometry[subject]
        img = subj.image if subj.image.ndim == 4 else subj.image[..., None]
        sl = np.moveaxis(img, self.slice_axis, 0)[int(slice_index)]  # (H0, W0, C)
        sl = apply_zscore(sl, geo.mean, geo.std).transpose(2, 0, 1)[None]
        sl = resample_inplane(sl, geo.zoom, order=2)[0]
        h1, w1 = sl.shape[-2:]
        ph, pw = -(-h1 // multiple) * multiple, -(-w1 // multiple) * multiple
        # padded at the end by repeating the edge, as napari_softseg.engine.predict does
        return np.pad(sl, ((0, 0), (0, ph - h1), (0, pw - w1)), mode="edge"), (h1, w1)

    def preview_output(self, subject: int, prediction: np.ndarray) -> np.ndarray:
        """Map a ``(K, H1, W1)`` prediction back to the original in-plane grid."""
        geo = self.geometry[subject]
        if tuple(prediction.shape[-2:]) != tuple(geo.inplane_shape):
            f = (geo.inplane_shape[0] / prediction.shape[-2], geo.inplane_shape[1] / prediction.shape[-1])
            prediction = center_crop_or_pad(resample_inplane(prediction[None], f, order=1)[0], geo.inplane_shape)
        out = np.clip(prediction, 0.0, 1.0).astype(np.float32)
        return out[0] if out.shape[0] == 1 else out


def prepare_slices(
    data: "TrainingData",
    *,
    hard: bool = False,
    multiclass: bool = False,
    slice_axis: int | None = None,
    spacing: Sequence[float] | None = None,
    crop_size: Sequence[int] | None = None,
    multiple: int = 8,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> PreparedData:
    """Slice, normalise, fuse, resample and crop every volume (see :mod:`napari_softseg.engine.training.data`).

    Parameters
    ----------
    hard : bool
        Binarise labels at 0.5 (hard presets).
    multiclass : bool
        Hard multi-class labels use the arg-max (background included).
    slice_axis : int or None
        Default: :func:`choose_slice_axis` of the first volume.
    spacing : 3 floats or None
        Target voxel size (array order); only the in-plane entries are used. Default:
        the first volume's.
    crop_size : (H, W) or None
        In-plane size; default the largest resampled slice rounded up to ``multiple``.
        Must be a multiple of ``multiple`` (``2**depth`` of the network).
    val_fraction : float in [0, 1)
        Share of volumes (or of slices, for one volume) held out for validation.
    """
    import torch

    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"The validation fraction must lie in [0, 1), got {val_fraction}.")
    first = data.subjects[0]
    axis, target = _slicing(first, slice_axis, spacing)
    volumes = [_slice_volume(data, subj, axis, target, hard, multiclass) for subj in data.subjects]
    geos = [v.geometry for v in volumes]
    crop = _crop_size(geos, crop_size, multiple)
    images = np.concatenate([center_crop_or_pad(v.images, crop, v.image_pad) for v in volumes])
    labels = np.concatenate([center_crop_or_pad(v.labels, crop, 0.0) for v in volumes], axis=1)
    truths = np.concatenate([center_crop_or_pad(v.truth, crop, 0.0) for v in volumes])
    volume = np.concatenate([np.full(v.images.shape[0], i) for i, v in enumerate(volumes)])
    slice_index = np.concatenate([np.arange(v.images.shape[0]) for v in volumes])
    has_fg = truths.reshape(truths.shape[0], -1).max(axis=1) > 0
    train_idx, val_idx = split_validation(volume, has_fg, val_fraction, seed)
    tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return PreparedData(
        images=tensor(images), labels=tensor(labels), truth=tensor(truths),
        volume=tensor(volume.astype(np.int64)), slice_index=tensor(slice_index.astype(np.int64)),
        train_idx=torch.from_numpy(train_idx), val_idx=torch.from_numpy(val_idx), has_structure=tensor(has_fg),
        slice_axis=axis,
        spacing=tuple(float(t) for t in np.where(np.arange(3) == axis, first.spacing, target)),
        crop_size=crop,
        hard=bool(hard),
        multiclass=bool(multiclass),
        random_raters=data.label_source.random,
        contrasts=list(data.contrasts),
        classes=list(data.classes),
        subject_names=[s.name for s in data.subjects],
        geometry=geos,
        source=data,
    )


def _slicing(first, slice_axis: int | None, spacing) -> tuple[int, np.ndarray]:
    """The slice axis and the target voxel size (defaults: the first volume's)."""
    axis = choose_slice_axis(first.spacing) if slice_axis is None else int(slice_axis)
    if axis not in (0, 1, 2):
        raise UserError(f"The slice axis must be 0, 1 or 2, got {slice_axis}.")
    target = np.asarray(first.spacing if spacing is None else spacing, dtype=float)
    if target.size != 3 or np.any(target <= 0) or not np.all(np.isfinite(target)):
        raise UserError(f"The target voxel spacing must be three positive numbers, got {tuple(target)}.")
    return axis, target


@dataclass
class _SlicedVolume:
    """One volume's slices on the training voxel size, before the crop."""

    images: np.ndarray  # (S, C, H1, W1)
    labels: np.ndarray  # (R, S, K, H1, W1)
    truth: np.ndarray  # (S, K, H1, W1)
    geometry: SliceGeometry

    @property
    def image_pad(self) -> np.ndarray:
        """Images are padded with their normalised minimum, per contrast (labels with 0)."""
        return self.images.min(axis=(0, 2, 3))[None, :]


def _slice_volume(data: "TrainingData", subj, axis: int, target: np.ndarray, hard: bool, multiclass: bool) -> _SlicedVolume:
    """Normalise, slice and resample one volume and its targets (hard: binarised)."""
    mean, std = zscore_stats(subj.image)
    img = apply_zscore(subj.image if subj.image.ndim == 4 else subj.image[..., None], mean, std)
    img = np.moveaxis(img, axis, 0).transpose(0, 3, 1, 2)  # (S, C, H0, W0)
    plane = [a for a in range(3) if a != axis]
    sp = np.asarray(subj.spacing)
    h0, w0 = img.shape[-2:]
    h1 = max(1, int(round(h0 * sp[plane[0]] / target[plane[0]])))
    w1 = max(1, int(round(w0 * sp[plane[1]] / target[plane[1]])))
    zoom = (h1 / h0, w1 / w0)
    img = resample_inplane(np.ascontiguousarray(img), zoom, order=2)
    labs = []
    for lab in _targets(data, subj):  # each (X, Y, Z, K)
        lab = np.moveaxis(lab, axis, 0).transpose(0, 3, 1, 2)
        lab = np.clip(resample_inplane(np.ascontiguousarray(lab), zoom, order=1), 0.0, 1.0)
        labs.append(binarise(lab, multiclass) if hard else lab)
    truth = np.mean(labs, axis=0) if len(labs) > 1 else labs[0]
    if hard and len(labs) > 1:
        truth = binarise(truth, multiclass)
    geometry = SliceGeometry(subj.shape, (h0, w0), img.shape[-2:], zoom, mean, std)
    return _SlicedVolume(img, np.stack(labs), truth, geometry)


def _crop_size(geos: list, crop_size, multiple: int) -> tuple[int, int]:
    """The given in-plane size (checked), else the largest resampled slice rounded up."""
    if crop_size is None:
        hmax = max(g.resampled_shape[0] for g in geos)
        wmax = max(g.resampled_shape[1] for g in geos)
        return (-(-hmax // multiple) * multiple, -(-wmax // multiple) * multiple)
    crop = tuple(int(c) for c in crop_size)
    if len(crop) != 2 or min(crop) < multiple or crop[0] % multiple or crop[1] % multiple:
        raise UserError(
            f"The crop size {tuple(crop)} must be two multiples of {multiple} (2 to the power of the network depth)."
        )
    return crop


def _targets(data: "TrainingData", subj) -> list[np.ndarray]:
    """The label maps a volume trains on: all raters (random sampling or a single map) or
    their fusion, each ``(X, Y, Z, K)``."""
    src = data.label_source
    if src.fusion is None:
        return subj.labels
    if subj.n_raters == 1:
        return subj.labels
    from napari_softseg.fusion.methods import fuse

    fused = []
    for k in range(subj.n_classes):
        result = fuse([lab[..., k] for lab in subj.labels], src.fusion)
        out = result.hard if src.use_hard else result.soft
        fused.append(np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0))
    return [np.stack(fused, axis=-1)]
