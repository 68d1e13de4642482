"""How long a training run will take, measured before it starts, and the epochs that fit a budget.

A **probe** is a real run of the chosen settings on the chosen data and device in the training
process, stopped after :data:`PROBE_STEPS` training steps: its initial validation pass times
a validation batch, its steps time a training step (the child reports ``elapsed_seconds`` for
each; the first step, which warms the device up, is left out when there are more). From
them, with ``S`` training steps and ``V`` validation batches per epoch:

* one epoch takes ``S · t_step + V · t_val``;
* a run of ``E`` epochs takes ``E`` epochs, the preparation of the data (measured: the wall
  time before the probe's first event, less that event's elapsed time), the initial
  validation pass and the threshold search after training (one forward pass over every
  slice: about ``S/2 + V`` batches of validation size), twice for a network whose NormReLU
  takes the batch-wide maximum (its output normaliser is fitted in one more such pass);
* the epochs that fit a budget ``B`` are ``floor((B - fixed) / epoch)``, at least 1 and at
  most the number asked for.

The probe's checkpoint goes to a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from napari_softseg.engine.presets import DEFAULT_PRESET, get_preset
from napari_softseg.errors import UserError

#: training steps run by a probe (the first warms up)
PROBE_STEPS = 3
#: the budget the training dock proposes by default (minutes)
DEFAULT_BUDGET_MIN = 10


@dataclass(frozen=True)
class RunEstimate:
    """Measured costs of one run's settings (seconds)."""

    device: str
    steps_per_epoch: int
    val_batches: int
    step_s: float
    val_batch_s: float
    prep_s: float = 0.0
    normaliser_pass: bool = False  # the stored NormReLU normaliser is fitted after training

    @property
    def epoch_s(self) -> float:
        return self.steps_per_epoch * self.step_s + self.val_batches * self.val_batch_s

    @property
    def fixed_s(self) -> float:
        """Data preparation, the initial validation pass, the normaliser fit and the threshold
        search after training."""
        final_batches = (math.ceil(self.steps_per_epoch / 2) + self.val_batches) * (2 if self.normaliser_pass else 1)
        return self.prep_s + (self.val_batches + final_batches) * self.val_batch_s

    def total_s(self, epochs: int) -> float:
        return epochs * self.epoch_s + self.fixed_s

    def epochs_within(self, budget_s: float, most: int) -> int:
        """The largest number of epochs (1 to ``most``) whose run fits ``budget_s``."""
        if self.epoch_s <= 0:
            return most
        return int(max(1, min(most, math.floor((budget_s - self.fixed_s) / self.epoch_s))))


def duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"3 h 10 min"``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{round(s / 60)} min"
    return f"{s // 3600} h {round(s % 3600 / 60):02d} min"


def describe(est: RunEstimate, epochs: int, budget_min: float, proposed: int | None) -> str:
    """What the dock says before Train: the measured speed, the run's length and the proposal."""
    text = (f"Measured on {est.device}: {est.epoch_s:.1f} s per epoch ({est.steps_per_epoch} steps of "
            f"{est.step_s:.2f} s, {est.val_batches} validation batches); {epochs} epochs ≈ "
            f"{duration(est.total_s(epochs))}.")
    if proposed is not None and proposed != epochs:
        text += (f" Epochs set to {proposed} (≈ {duration(est.total_s(proposed))}) to fit the "
                 f"{budget_min:g}-minute budget; raise them to train longer.")
    elif est.total_s(epochs) > budget_min * 60:
        fit = est.epochs_within(budget_min * 60, epochs)
        text += f" That is over the {budget_min:g}-minute budget ({fit} epochs would fit)."
    return text


def _durations(times: list[float], start: float) -> list[float]:
    """Durations between consecutive ``elapsed_seconds`` (the first from ``start``), without the
    first (warm-up) when there are more than two."""
    steps = [b - a for a, b in zip([start] + times[:-1], times)]
    return steps[1:] if len(steps) > 2 else steps


def probe(process, snapshots, folders, label_source: str, config, init, device_label: str,
          steps: int = PROBE_STEPS) -> RunEstimate:
    """Run the settings for ``steps`` training steps in the training ``process`` (reserved by
    the caller) and measure them; runs in a worker thread. Raises :class:`UserError` when the
    run fails (the same sentence the run itself would give)."""
    folder = Path(tempfile.mkdtemp(prefix="softseg-probe-"))
    job = {"snapshots": [dataclasses.replace(s, layer=None) for s in snapshots], "folders": list(folders),
           "label_source": label_source, "init": init, "checkpoint_path": folder / "probe.pt", "probes": [],
           "plot_size": None,
           "config": dataclasses.replace(config, epochs=1, preview_slice=None, search_threshold=False)}
    val, train, start, per_epoch, failed, asked, prep = [], [], 0.0, 0, "", False, None
    t0 = time.perf_counter()
    try:
        for ev in process.events(job):
            kind, phase = getattr(ev, "kind", None), getattr(ev, "phase", None)
            if prep is None and kind in ("step", "start"):
                prep = max(0.0, time.perf_counter() - t0 - ev.elapsed_seconds)
            if kind == "step" and phase == "validate" and ev.epoch == 0:
                val.append(ev.elapsed_seconds)
            elif kind == "start":
                start = ev.elapsed_seconds
            elif kind == "step" and phase == "train":
                train.append(ev.elapsed_seconds)
                per_epoch = ev.steps_per_epoch
                if len(train) >= steps and not asked:
                    process.cancel()
                    asked = True
            elif kind == "done" and ev.status == "failed":
                failed = ev.message
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not train:
        raise UserError(failed or "The time estimate failed: no training step ran.")
    step_s = statistics.median(_durations(train, start))
    val_s = statistics.median(_durations(val, 0.0)) if val else step_s / 3  # a forward pass ~ 1/3 of a step
    return RunEstimate(device_label, per_epoch, len(val), step_s, val_s, prep or 0.0,
                       normaliser_pass=init is None and get_preset(config.preset or DEFAULT_PRESET).norm_scope == "batch")
