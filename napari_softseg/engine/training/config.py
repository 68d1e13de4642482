"""What a training run is told (:class:`TrainConfig`) and what it reports (:class:`TrainEvent`).

Both the entry point (:mod:`napari_softseg.engine.training.train`) and the loop
(:mod:`napari_softseg.engine.training.trainer`) use them, as does anything that drives a run
(the CLI, the training process of the dock). :func:`is_cancelled` is the one way a run
polls its cancel flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from napari_softseg.errors import UserError

__all__ = ["TrainConfig", "TrainEvent", "is_cancelled"]


@dataclass
class TrainConfig:
    """Training settings (defaults follow SoftSeg / ivadomed where the paper gives them).

    Attributes
    ----------
    preset : str or None
        Key of :data:`~napari_softseg.engine.presets.PRESETS`; None: ``"softseg"``, or the
        checkpoint's preset when fine-tuning.
    epochs : int
        Maximum number of epochs (200).
    batch_size : int
        Slices per step (per process under torchrun) (8).
    lr : float
        Initial Adam learning rate (1e-3), cosine-annealed to 0.
    crop_size : (H, W) or None
        In-plane training size, multiples of ``2**depth``; None: the largest slice (padded),
        or the checkpoint's when fine-tuning.
    patch_size : (H, W) or None
        Train each step on a random window of this in-plane size of every slice, centred
        near the structure when the slice holds some
        (:func:`~napari_softseg.engine.training.patches.random_patches`; multiples of
        ``2**depth``, at most the crop); validation, threshold and normaliser still use whole
        slices. None: whole slices.
    depth, base_features :
        U-Net size (3, 16 as in the paper); ignored when fine-tuning.
    dropout : float or None
        Dropout of a new network; None: the preset's
        (:attr:`~napari_softseg.engine.presets.Preset.dropout`: 0 for the NormReLU presets,
        which collapse with it, 0.3 for the others); ignored when fine-tuning.
    val_fraction : float
        Share of volumes (or slices of a single volume) held out (0.2).
    patience, early_stop_eps :
        Early stopping (50 epochs, 0.001 relative; the paper's values).
    seed : int
        Seeds weights, shuffling, rater draws, augmentation and dropout.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    mixed_precision, channels_last : bool
        Reduced-precision autocast where the device supports it; NHWC memory format.
    augment : bool
        Random rotation ±20°, translation ±3 %, scaling ±10 % (:class:`RandomAffine`).
    image_interpolation : ``"bilinear"`` or ``"bicubic"``
        Augmentation of images (labels are always linear).
    slice_axis : int or None
        None: the coarsest axis (else the last), or the checkpoint's.
    spacing : 3 floats or None
        Training voxel size (in-plane entries used); None: the first volume's or the
        checkpoint's.
    loss_reduction : ``"mean"`` or ``"sum"``
        Reduction of the loss (mean keeps the scale independent of batch and crop).
    foreground_weight : float or None
        Adaptive Wing presets only: :math:`W` of the loss's weighted map (``1 + W`` on the
        dilated foreground, Wang et al. 2019; 0 unweighted). None: 0 for a network whose
        NormReLU takes the batch-wide maximum (the uniform loss, with :attr:`score_margin`),
        10 (the paper's) for the others. 10 with the batch-wide NormReLU detects more small
        lesions but over-segments around them (see
        :class:`~napari_softseg.engine.losses.AdaptiveWingLoss`).
    empty_fraction : float in [0, 1)
        Batch-wide NormReLU only: share of structure-free slices in every batch (0.5; see
        :class:`~napari_softseg.engine.training.sampler.StructureBatchSampler`).
    score_margin : float
        Batch-wide NormReLU only: weight of the
        :class:`~napari_softseg.engine.losses.ScoreMargin` hinges added to the loss (1; 0 off).
    preview_slice : (volume, slice) or None
        A slice to predict after every ``preview_every`` epochs (for a live preview).
    num_threads : int or None
        torch CPU threads during training (restored afterwards); None leaves them.
    search_threshold : bool
        Choose the binarisation threshold after training (else 0.5).
    """

    preset: str | None = None
    epochs: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    crop_size: tuple | None = None
    patch_size: tuple | None = None
    depth: int = 3
    base_features: int = 16
    dropout: float | None = None
    val_fraction: float = 0.2
    patience: int = 50
    early_stop_eps: float = 0.001
    seed: int = 0
    device: str = "auto"
    mixed_precision: bool = True
    channels_last: bool = True
    augment: bool = True
    image_interpolation: str = "bilinear"
    slice_axis: int | None = None
    spacing: tuple | None = None
    loss_reduction: str = "mean"
    foreground_weight: float | None = None
    empty_fraction: float = 0.5
    score_margin: float = 1.0
    preview_slice: tuple | None = None
    preview_every: int = 1
    num_threads: int | None = None
    search_threshold: bool = True

    def validate(self) -> "TrainConfig":
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (math.isfinite(self.lr) and self.lr > 0, f"learning rate must be positive, got {self.lr}"),
            (self.patience >= 1, f"patience must be at least 1 epoch, got {self.patience}"),
            (self.early_stop_eps >= 0, f"early-stopping epsilon must be >= 0, got {self.early_stop_eps}"),
            (0 <= self.val_fraction < 1, f"validation fraction must lie in [0, 1), got {self.val_fraction}"),
            (self.seed >= 0, f"seed must be a non-negative integer, got {self.seed}"),
            (self.preview_every >= 1, f"preview interval must be at least 1 epoch, got {self.preview_every}"),
            (self.loss_reduction in ("mean", "sum"), f"loss reduction must be mean or sum, got {self.loss_reduction!r}"),
            (self.foreground_weight is None or (math.isfinite(self.foreground_weight) and self.foreground_weight >= 0),
             f"foreground weight must be a number >= 0, got {self.foreground_weight}"),
            (self.dropout is None or 0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1), got {self.dropout}"),
            (0.0 <= self.empty_fraction < 1.0, f"structure-free share of a batch must lie in [0, 1), got {self.empty_fraction}"),
            (math.isfinite(self.score_margin) and self.score_margin >= 0,
             f"score margin weight must be a number >= 0, got {self.score_margin}"),
            (self.image_interpolation in ("bilinear", "bicubic"), f"image interpolation must be bilinear or bicubic, got {self.image_interpolation!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message[0].upper() + message[1:] + ".")
        return self

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


@dataclass
class TrainEvent:
    """One progress report.

    ``kind``: ``"start"`` (data prepared, initial validation done), ``"step"`` (one training
    step, validation batch, normaliser batch or threshold batch; see ``phase``), ``"epoch"`` (end of an epoch,
    with validation results and maybe a preview) or ``"done"`` (last event: ``status``,
    ``message``, ``checkpoint``, ``threshold``, ``summary``).
    """

    kind: str
    phase: str = "train"  # "train", "validate", "normaliser" (fitting NormReLU's stored maximum) or "threshold"
    epoch: int = 0  # 1-based epoch of this run (0 before the first)
    epochs: int = 0  # maximum epochs of this run
    step: int = 0  # 1-based step within the epoch / phase
    steps_per_epoch: int = 0  # training steps per epoch (or batches of the phase)
    train_loss: float | None = None  # running mean over the epoch so far
    val_loss: float | None = None
    val_dice: float | None = None  # Dice at 0.5 over the validation set
    best_val_loss: float | None = None
    best_epoch: int = 0
    lr: float | None = None
    eta_seconds: float | None = None
    elapsed_seconds: float = 0.0
    start_epoch: int = 0  # epochs the initial checkpoint had already been trained
    start_loss: float | None = None  # validation loss before the first step
    preview: np.ndarray | None = field(default=None, repr=False)  # (H, W) or (K, H, W)
    preview_slice: tuple | None = None
    status: str = "running"
    message: str = ""
    checkpoint: Path | None = None
    threshold: float | None = None
    summary: dict | None = field(default=None, repr=False)


def is_cancelled(cancel) -> bool:
    """Whether ``cancel`` (None, a callable or a ``threading.Event``) asks to stop now."""
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)
    return bool(is_set() if callable(is_set) else cancel())
