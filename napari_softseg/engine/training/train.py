"""Training and fine-tuning as a generator of progress events.

:func:`train` yields a :class:`TrainEvent` after every optimisation step, validation batch
and threshold batch, so a GUI worker (``napari.qt.threading.thread_worker``) or the CLI can
drive it, show progress and stop it: between two events there is only one step of work,
and torch releases the GIL inside its kernels, so the UI thread keeps running.

Recipe (Gros, Lemay & Cohen-Adad, MedIA 2021, section 2.5, via ivadomed)
-----------------------------------------------------------------------
* Adam, learning rate annealed by a cosine over the maximum number of epochs
  (``CosineAnnealingLR``, stepped per epoch).
* Early stopping: an epoch *improves* when its validation loss is below the best so far by
  more than ``early_stop_eps`` relative to it (``L < L_best (1 - eps)``); training stops after
  ``patience`` epochs without improvement (paper: 50 epochs, eps = 0.001). ivadomed compares
  consecutive epochs and never resets its counter; we keep the usual best-so-far rule.
* The weights with the best validation loss (training loss without a validation set) are
  kept and written once, with the threshold (:mod:`.threshold`) chosen on train +
  validation volumes.
* NormReLU networks (the ``softseg``, ``hard-relu-wing`` and ``soft-relu-dice`` presets)
  are trained with the batch-wide maximum (:class:`~napari_softseg.engine.model.NormReLU`,
  ``scope="batch"``), as in the paper and ivadomed: every batch holds slices with the
  structure and, by default, as many without (:mod:`.sampler`); no dropout
  (:attr:`~napari_softseg.engine.presets.Preset.dropout`); the uniform Adaptive Wing loss
  plus the :class:`~napari_softseg.engine.losses.ScoreMargin` hinges. Their output
  normaliser is estimated in eval mode at every validation and fitted after training
  (:mod:`.normaliser`), before the threshold is chosen; the checkpoint stores it. A
  checkpoint being fine-tuned keeps its own scope (those written before the scope existed
  normalise each slice by its own maximum, with the loss they were trained with, W = 10).
* Augmentation on the device (:mod:`.augment`), hard labels binarised after it; the
  training set stays in host memory and only each batch is moved to the device.
* Mixed precision, chosen from the training device
  (:func:`napari_softseg.engine.devices.training_dtype`): bfloat16 autocast on CPUs with
  native bf16 and on GPUs of compute capability 8.0 or more, float16 with a gradient scaler
  on older GPUs, float32 on Apple MPS; channels-last memory format (see
  ``benchmarks/bench_train.py`` for the measured gain and the agreement with float32).

Failures a user can cause stop the run with a final event whose ``status`` is
``"failed"`` and whose ``message`` is one sentence: NaN/Inf loss (the best weights so far are
still written) and running out of memory anywhere (a training step, validation, the
threshold search, the preview; with what to change, e.g. the batch or crop size), in every
torchrun process alike. Invalid settings or data, and running out of memory before the first
step, raise :class:`~napari_softseg.errors.UserError` at the first ``next()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from napari_softseg.engine.training.config import TrainConfig, TrainEvent
from napari_softseg.errors import UserError

__all__ = ["TrainConfig", "TrainEvent", "train", "run_training"]


def train(
    config: TrainConfig,
    data,
    *,
    init: str | Path | None = None,
    cancel=None,
    checkpoint_path: str | Path | None = None,
) -> Iterator[TrainEvent]:
    """Train (or fine-tune from ``init``) a U-Net on ``data``; yield :class:`TrainEvent`.

    Parameters
    ----------
    config : TrainConfig
    data : TrainingData
        Volumes and label source (copied during preparation).
    init : path, optional
        Checkpoint to start from (its architecture, and by default its preset, slice axis,
        spacing and crop size); training continues on ``data`` with a fresh optimiser.
    cancel : callable or ``threading.Event``, optional
        Polled before every step; once true the run stops at once, keeping the best weights.
    checkpoint_path : path, optional
        Where the best checkpoint is written (default: a new temporary folder). Only rank 0
        writes under torchrun.
    """
    from napari_softseg.engine.training.trainer import Trainer

    config.validate()
    trainer = Trainer(config, data, init=init, checkpoint_path=checkpoint_path)
    yield from trainer.run(cancel)


def run_training(config: TrainConfig, data, *, init=None, cancel=None, checkpoint_path=None,
                 callback: Callable[[TrainEvent], None] | None = None) -> TrainEvent:
    """Consume :func:`train` and return its ``"done"`` event; a ``"failed"`` run raises
    :class:`UserError` with its message (the best checkpoint is written first)."""
    last = None
    for event in train(config, data, init=init, cancel=cancel, checkpoint_path=checkpoint_path):
        if callback is not None:
            callback(event)
        last = event
    if last is not None and last.status == "failed":
        raise UserError(last.message)
    return last
