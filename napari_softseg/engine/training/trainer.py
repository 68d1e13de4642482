"""The training loop behind :func:`napari_softseg.engine.training.train.train` (see that module's docstring).

One :class:`Trainer` prepares the data and the network once, then :meth:`Trainer.run`
yields an event after each unit of work: a training step, a validation batch, a threshold
batch. All decisions are taken from sums reduced over torchrun processes, so the processes
stay in lock-step.

Devices. The prepared slices stay on the host; each batch is gathered and moved to the
device on its own (:func:`~napari_softseg.engine.devices.gather_to_device`: pinned memory,
non-blocking on CUDA), so the device holds the network, its optimiser and one batch. The
precision follows the chosen device (:func:`~napari_softseg.engine.devices.training_dtype`);
float16 comes with a gradient scaler. On an accelerator the host reads the losses back only
every :data:`SYNC_EVERY` steps and at the end of each epoch, so it keeps queueing work.

NormReLU with the batch-wide maximum (``scope="batch"``). Batches come from
:class:`~napari_softseg.engine.training.sampler.StructureBatchSampler` (each holds the
structure), the loss adds :class:`~napari_softseg.engine.losses.ScoreMargin`, and the stored
output normaliser is estimated before every validation pass (:meth:`Trainer._calibrate`, on the
validation slices with the structure; it travels with rank 0's batch-norm buffers) and, after
a completed run, fitted by the training loss over the training and validation slices
(:meth:`Trainer.normaliser_batches`, events of phase ``"normaliser"``) before the threshold is
chosen with it.

Failures. Every unit of work runs under :meth:`Trainer._guard`: running out of memory
(moving a batch, a training step, validation at twice the batch, the threshold search, the
preview) becomes one sentence naming the stage, the batch and crop sizes and what to change,
after the memory is handed back. Under torchrun a failed process does not stop alone: its
failure travels with the next all-reduce that every process makes anyway
(:meth:`Trainer._agree`), every collective is preceded by one, and then every process stops
with the same sentence, so none is left waiting in a collective.
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import time
from functools import partial
from pathlib import Path

from dataclasses import dataclass

import torch

from napari_softseg.engine.checkpoint import build_model, load_checkpoint, make_config, save_checkpoint
from napari_softseg.engine.devices import (
    autocast,
    gather_to_device,
    is_out_of_memory,
    release_memory,
    resolve_device,
    to_device,
    training_dtype,
)
from napari_softseg.engine.losses import ScoreMargin
from napari_softseg.engine.model import UNet
from napari_softseg.engine.preprocess import binarise, with_background
from napari_softseg.engine.presets import Preset, get_preset
from napari_softseg.engine.training import distributed as dist_utils
from napari_softseg.engine.training.augment import RandomAffine
from napari_softseg.engine.training.config import TrainConfig, TrainEvent, is_cancelled
from napari_softseg.engine.training.normaliser import best_of_curve, estimate_normaliser, loss_curve, normaliser_grid
from napari_softseg.engine.training.patches import random_patches
from napari_softseg.engine.training.sampler import StructureBatchSampler
from napari_softseg.engine.training.slices import prepare_slices
from napari_softseg.engine.training.threshold import DiceAccumulator, best_threshold
from napari_softseg.errors import UserError
from napari_softseg.labels.masks import binarize

__all__ = ["Trainer", "SYNC_EVERY", "STAGES"]

#: training steps between two reads of the loss on an accelerator (every step on the CPU
#: and under torchrun, where the processes agree on every step before averaging gradients)
SYNC_EVERY = 8
#: the units of work a failure is reported for
STAGES = ("preparing", "training", "validation", "output normaliser", "threshold search", "preview")

#: slices per forward pass of validation and the threshold search on a CPU: a cancel is seen
#: between two of them (a 16-slice batch of 144x184 took 5 s on a busy 2-core CPU, so Cancel
#: waited up to 5 s; one slice takes a fraction of a second, and 16 single-slice passes cost
#: no more than one 16-slice pass on a CPU)
EVAL_CHUNK_CPU = 1


class _Stop(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class _Failure:
    """What went wrong in one unit of work of this process."""

    stage: str
    out_of_memory: bool
    text: str = ""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200].rstrip(".") if text else type(err).__name__


def _patch_size(patch, crop: tuple, multiple: int) -> tuple[int, int] | None:
    """The training patch (None: whole slices), checked against the crop and the network."""
    if patch is None:
        return None
    size = tuple(int(v) for v in patch)
    if len(size) != 2 or min(size) < 1 or any(s % multiple for s in size):
        raise UserError(f"The training patch must be two positive multiples of {multiple}, got {tuple(patch)}.")
    if size[0] > crop[0] or size[1] > crop[1]:
        raise UserError(f"The training patch {size[0]}x{size[1]} is larger than the training slices "
                        f"({crop[0]}x{crop[1]}); choose a smaller patch.")
    return size


def _host_state(model: torch.nn.Module) -> dict:
    """A copy of the model's weights on the host (the best weights never hold device memory)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class Trainer:
    """State of one training run (model and optimiser on the device, data on the host, bookkeeping)."""

    def __init__(self, config: TrainConfig, data, *, init=None, checkpoint_path=None) -> None:
        self.config = cfg = config
        self.ctx = dist_utils.current()
        device = resolve_device(cfg.device)
        if self.ctx.enabled and device.type == "cuda":
            device = torch.device("cuda", self.ctx.local_rank)
        self.device = device
        self.init_name = Path(init).name if init is not None else None
        torch.manual_seed(cfg.seed)
        model, self.preset, self.init_config = _network(cfg, data, init)
        defaults = self.init_config or {}
        pick = lambda value, key: value if value is not None else defaults.get(key)  # noqa: E731
        self.data = d = prepare_slices(
            data,
            hard=not self.preset.soft_labels, multiclass=self.preset.multiclass,
            slice_axis=pick(cfg.slice_axis, "slice_axis"), spacing=pick(cfg.spacing, "spacing"),
            crop_size=pick(cfg.crop_size, "crop_size"), multiple=model.multiple,
            val_fraction=cfg.val_fraction, seed=cfg.seed,
        )
        if d.train_idx.numel() == 0:
            raise UserError("No slice is left for training after the validation split; lower the validation fraction.")
        self.patch = _patch_size(cfg.patch_size, d.crop_size, model.multiple)
        self._pending: _Failure | None = None
        self._losses: list = []
        self._prepare(model)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else Path(tempfile.mkdtemp(prefix="softseg-")) / "model.pt"
        bs = cfg.batch_size
        n_local = d.train_idx.numel() // self.ctx.world_size if self.ctx.enabled else d.train_idx.numel()
        self.steps = max(1, -(-n_local // bs))
        self.sampler = None
        if self.batch_scope:  # every batch holds the structure (NormReLU divides by the batch's maximum)
            self.sampler = StructureBatchSampler(
                d.train_idx.numpy(), d.has_structure[d.train_idx].numpy(), bs, cfg.empty_fraction, cfg.seed,
                rank=self.ctx.rank, world_size=self.ctx.world_size)
            self.steps = self.sampler.steps_per_epoch
        self.val_local = d.val_idx[self.ctx.rank :: self.ctx.world_size]
        self.val_steps = -(-self.val_local.numel() // (2 * bs))
        if cfg.preview_slice is not None:
            sub, idx = (int(v) for v in cfg.preview_slice)
            if not (0 <= sub < d.n_volumes and 0 <= idx < d.geometry[sub].shape[d.slice_axis]):
                raise UserError(f"Preview slice {tuple(cfg.preview_slice)} does not exist in the training data.")
        self.start_epoch = int(defaults.get("training", {}).get("epochs_total", 0) or 0)

    def _prepare(self, model: UNet) -> None:
        """Network and optimiser on the device; every process agrees that this worked, then
        all start from rank 0's weights. Running out of memory raises :class:`UserError`."""
        try:
            _, failure = self._guard("preparing", self._place, model)
            self._agree(failure)
        except _Stop as stop:
            raise UserError(stop.message) from None
        dist_utils.broadcast(self.ctx, [*self.model.parameters(), *self.model.buffers()])

    def _place(self, model: UNet) -> None:
        """Host data, network on the device (channels-last), precision, optimisation."""
        cfg, d, device = self.config, self.data, self.device
        # the training set stays on the host; each batch goes to the device on its own
        if d.n_raters == 1:  # the truth is that one rater's map: keep one copy
            d.truth = d.labels[0]
        self.images, self.labels, self.truth, self.volume = d.images, d.labels, d.truth, d.volume
        self.amp_dtype = training_dtype(device) if cfg.mixed_precision else None
        self.sync_every = 1 if device.type == "cpu" or self.ctx.enabled else SYNC_EVERY
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = model.to(device).to(memory_format=self.memory_format)
        self.net = self.model  # gradients are averaged explicitly under torchrun (no DDP wrapper)
        self.batch_scope = getattr(self.model.activation, "scope", None) == "batch"
        self._optimisation()

    def _optimisation(self) -> None:
        """Loss, optimiser, schedule, gradient scaler, augmentation and their random streams."""
        cfg, preset, device = self.config, self.preset, self.device
        torch.manual_seed(cfg.seed + 1 + self.ctx.rank)  # dropout differs per process
        self.loss_fn = preset.make_loss(reduction=cfg.loss_reduction, **self._loss_options())
        # the batch-wide NormReLU trains with the ScoreMargin hinges on its logits
        self.margin_fn = ScoreMargin(cfg.score_margin, cfg.score_margin) if self.batch_scope and cfg.score_margin else None
        # fused Adam on CUDA: one kernel, and the gradient scaler's skip decision stays on the GPU
        fused = {"fused": True} if device.type == "cuda" else {}
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, **fused)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs)
        scaled = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(device.type if scaled else "cpu", enabled=scaled)
        self.augment = RandomAffine(image_mode=cfg.image_interpolation) if cfg.augment else None
        self.aug_gen = torch.Generator(device=device).manual_seed(cfg.seed * 1009 + 17 + self.ctx.rank)
        self.patch_gen = torch.Generator().manual_seed(cfg.seed * 2003 + 29 + self.ctx.rank)
        self.binarise = partial(binarise, multiclass=preset.multiclass)
        self.fg = slice(1, None) if preset.multiclass else slice(None)

    def _loss_options(self) -> dict:
        """Adaptive Wing's weight map: the configured ``W``, else 0 (uniform) for the
        batch-wide NormReLU and the loss's own default (the paper's 10) for the others."""
        weight = self.config.foreground_weight
        if self.preset.loss != "adaptive_wing":
            return {}
        if weight is None:
            return {"foreground_weight": 0.0} if self.batch_scope else {}
        return {"foreground_weight": weight}

    # ------------------------------------------------------------------ failures

    def _guard(self, stage: str, work, *args):
        """``(work(*args), None)``, or ``(None, failure)`` when it failed under torchrun.

        A single process stops at once when it runs out of memory (other errors propagate);
        under torchrun every error becomes a failure that the next :meth:`_agree` shares. The
        memory is handed back first (after the traceback, which holds the tensors, is gone).
        """
        try:
            return work(*args), None
        except _Stop:
            raise
        except Exception as err:  # noqa: BLE001 - turned into a failure below, or re-raised
            oom = is_out_of_memory(err)
            if not (oom or self.ctx.enabled):
                raise
            if not oom:
                logging.getLogger(__name__).exception("training failed in process %d", self.ctx.rank)
            failure = _Failure(stage, oom, _first_line(err))
        self._free()
        if not self.ctx.enabled:
            raise _Stop("failed", self._failure_message(failure))
        return None, failure

    def _free(self) -> None:
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        self._losses = []
        release_memory(self.device)

    def _agree(self, failure: _Failure | None, *tensors: torch.Tensor) -> None:
        """Sum ``tensors`` over the processes together with every process's failure (this
        one's, or one left from a unit of work without a collective, e.g. the preview); if
        any process failed, every process raises the same :class:`_Stop`."""
        failure, self._pending = failure or self._pending, None
        if not self.ctx.enabled:
            if failure is not None:
                raise _Stop("failed", self._failure_message(failure))
            return
        slots = torch.zeros(len(STAGES) + 1, dtype=torch.float64)  # out of memory per stage, other error
        if failure is not None:
            slots[STAGES.index(failure.stage) if failure.out_of_memory else -1] = 1.0
        dist_utils.all_reduce_sum(self.ctx, *tensors, slots)
        failed = torch.nonzero(slots).flatten().tolist()
        if not failed:
            return
        if failed[0] < len(STAGES):
            raise _Stop("failed", self._failure_message(_Failure(STAGES[failed[0]], True)))
        if failure is not None and not failure.out_of_memory:
            raise _Stop("failed", self._failure_message(failure))
        raise _Stop("failed", "Training failed in another torchrun process; see its error output.")

    def _failure_message(self, failure: _Failure) -> str:
        """One sentence: where it failed and what to change."""
        if not failure.out_of_memory:
            return f"Training failed ({failure.stage}): {failure.text}."
        bs, (h, w), dev = self.config.batch_size, self.data.crop_size, self.device
        what = f"Training ran out of memory with batch size {bs} and crop {h}x{w} on {dev}"
        smaller = "try a smaller batch size or crop size."
        return {
            "preparing": f"Training ran out of memory on {dev} while moving the network there; "
                         "free memory on the device (other programs may hold it) or train on the CPU.",
            "training": f"{what} in a training step; {smaller}",
            "validation": f"{what} in validation, which uses batches of {2 * bs}; {smaller}",
            "threshold search": f"{what} while choosing the threshold, which uses batches of {2 * bs}; {smaller}",
            "output normaliser": f"{what} while fitting the output normaliser, which uses batches of {2 * bs}; {smaller}",
            "preview": f"{what} while predicting the preview slice; turn the live preview off or {smaller}",
        }[failure.stage]

    # ------------------------------------------------------------------ pieces of work

    def _autocast(self):
        return autocast(self.device, self.amp_dtype)

    def _target(self, y: torch.Tensor) -> torch.Tensor:
        return with_background(y) if self.preset.multiclass else y

    def _batch(self, idx: torch.Tensor, raters: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and targets of samples ``idx`` on the device (``raters[i]``: the rater of
        sample ``i``), augmented there."""
        x = gather_to_device(self.images, idx, self.device)
        rows = idx if raters is None else raters.index_select(0, idx) * self.data.n_samples + idx
        y = gather_to_device(self.labels.flatten(0, 1), rows, self.device)  # (R, N, ...) seen as (R * N, ...)
        if self.augment is not None:
            x, y = self.augment(x, y, generator=self.aug_gen, hard=self.data.hard, binarise=self.binarise)
        if self.patch is not None:  # after augmentation: no padded corners inside a patch
            x, y = random_patches(x, y, self.patch, self.patch_gen)
        return x.contiguous(memory_format=self.memory_format), self._target(y)

    def train_step(self, idx: torch.Tensor, raters, cancel, sync: bool = True) -> float | None:
        """One optimisation step. With ``sync`` (always on the CPU and under torchrun) returns
        the mean batch loss of the steps since the last sync (global under torchrun), having
        checked cancel, failures and NaN; without, returns None and leaves the losses on the
        device."""
        self.net.train()
        local_cancel = is_cancelled(cancel)
        if local_cancel and not self.ctx.enabled:
            raise _Stop("cancelled", "Training was cancelled.")
        _, failure = self._guard("training", self._forward_backward, idx, raters)
        value = self._settle(local_cancel, failure) if sync or self.sync_every == 1 else None
        dist_utils.average_gradients(self.ctx, self.model.parameters())
        _, failure = self._guard("training", self._apply_gradients)
        self._pending = self._pending or failure  # shared by the next agreement
        return value

    def _forward_backward(self, idx: torch.Tensor, raters) -> None:
        x, y = self._batch(idx, raters)
        with self._autocast():
            out, logits = self.net(x, with_logits=True)
        loss = self.loss_fn(out.float(), y)
        if self.margin_fn is not None:
            loss = loss + self.margin_fn(logits.float(), y, self.model.activation.running_max)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self._losses.append((loss.detach(), idx.numel()))

    def _apply_gradients(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _settle(self, local_cancel: bool, failure: _Failure | None) -> float:
        """Read the losses since the last sync (one wait for the device), agree with the other
        processes, stop on cancel or a non-finite loss; return the mean loss."""
        losses, self._losses = self._losses, []
        values = torch.stack([v for v, _ in losses]).float().cpu().tolist() if losses else []
        total = sum(v * n for v, (_, n) in zip(values, losses))
        flags = torch.tensor([total, sum(n for _, n in losses), float(local_cancel)], dtype=torch.float64)
        self._agree(failure, flags)
        if flags[2] > 0:
            raise _Stop("cancelled", "Training was cancelled.")
        value = float(flags[0] / flags[1])
        if not math.isfinite(value):
            raise _Stop("failed", "The training loss became NaN or infinite; try a lower learning rate "
                        "(the best weights so far were kept).")
        return value

    def _check_cancel(self, cancel) -> None:
        """Stop outside training steps too (single process; torchrun checks in the steps)."""
        if not self.ctx.enabled and is_cancelled(cancel):
            raise _Stop("cancelled", "Training was cancelled.")

    @torch.no_grad()
    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.model(x.contiguous(memory_format=self.memory_format)).float()

    def _evaluation_start(self, failure: _Failure | None = None) -> None:
        """Eval mode with rank 0's buffers -- batch-norm statistics and a stored NormReLU
        normaliser, those the checkpoint gets -- in every process, after an agreement that
        carries ``failure`` (the broadcast is a collective)."""
        self.model.eval()
        if self.ctx.enabled:
            self._agree(failure)
            dist_utils.broadcast(self.ctx, list(self.model.buffers()))

    def _predict_slices(self, idx: torch.Tensor, cancel=None) -> torch.Tensor:
        """The network's output for the samples ``idx``, computed :data:`EVAL_CHUNK_CPU` slices at
        a time on a CPU with a cancel check before each (a 16-slice batch takes seconds there;
        evaluation mode makes every slice's output independent of its batch)."""
        chunk = EVAL_CHUNK_CPU if self.device.type == "cpu" else idx.numel()
        outs = []
        for part in idx.split(max(1, chunk)):
            self._check_cancel(cancel)
            outs.append(self._predict(gather_to_device(self.images, part, self.device)))
        return torch.cat(outs)

    def validate(self, cancel=None, calibrate: bool = True):
        """Yield after each validation batch; finally returns ``(loss, dice)`` (None if no set).
        A batch-wide NormReLU first gets the normaliser of the current weights (:meth:`_calibrate`),
        with ``calibrate``."""
        failure = None
        if self.batch_scope and calibrate:
            self.model.eval()
            _, failure = self._guard("validation", self._calibrate, self._calibration_idx(), cancel)
        self._evaluation_start(failure)  # every process takes rank 0's normaliser with its buffers
        bs = 2 * self.config.batch_size
        rows, counts, failure = [], [], None
        for s in range(self.val_steps):
            if failure is None:  # after a failure the batches are only counted off
                idx = self.val_local[s * bs : (s + 1) * bs]
                _, failure = self._guard("validation", self._validation_batch, idx, rows, cancel)
                counts.append(idx.numel())
            yield s + 1
        sums = torch.zeros(5, dtype=torch.float64)  # loss*n, n, inter, pred, truth
        if rows and failure is None:  # one wait for the device per pass
            for (loss, inter, pred, truth), n in zip(torch.stack(rows).cpu().tolist(), counts):
                sums += torch.tensor([loss * n, float(n), inter, pred, truth], dtype=torch.float64)
        self._agree(failure, sums)
        if sums[1] == 0:
            return None, None
        denom = float(sums[3] + sums[4])
        return float(sums[0] / sums[1]), (2.0 * float(sums[2]) / denom if denom > 0 else 1.0)

    def _validation_batch(self, idx: torch.Tensor, rows: list, cancel=None) -> None:
        """Append ``[loss, |P ∩ T|, |P|, |T|]`` of one batch (float32, on the device)."""
        out = self._predict_slices(idx, cancel)
        y = self._target(gather_to_device(self.truth, idx, self.device))
        loss = self.loss_fn(out, y)
        p, t = binarize(out[:, self.fg]), binarize(y[:, self.fg])
        f32 = torch.float32
        rows.append(torch.stack([loss.detach().float(), (p & t).sum(dtype=f32), p.sum(dtype=f32), t.sum(dtype=f32)]))

    def threshold_batches(self, acc: DiceAccumulator, cancel=None):
        """Accumulate per-volume Dice sums for all thresholds over every sample (sharded)."""
        self._evaluation_start()
        everything = torch.arange(self.data.n_samples)[self.ctx.rank :: self.ctx.world_size]
        bs = 2 * self.config.batch_size
        n = -(-everything.numel() // bs)
        failure = None
        for s in range(n):
            if failure is None:
                idx = everything[s * bs : (s + 1) * bs]
                _, failure = self._guard("threshold search", self._threshold_batch, idx, acc, cancel)
            yield s + 1, n
        self._agree(failure, *acc.tensors())

    def _threshold_batch(self, idx: torch.Tensor, acc: DiceAccumulator, cancel=None) -> None:
        out = self._predict_slices(idx, cancel)
        acc.update(out[:, self.fg], gather_to_device(self.truth, idx, self.device), self.volume.index_select(0, idx))

    # ------------------------------------------------------------------ the stored normaliser

    @torch.no_grad()
    def _eval_logits(self, idx: torch.Tensor, cancel=None) -> torch.Tensor:
        """Eval-mode logits of the samples ``idx`` (float32, on the device), in chunks like
        :meth:`_predict_slices`, with a cancel check before each."""
        chunk = EVAL_CHUNK_CPU if self.device.type == "cpu" else 2 * self.config.batch_size
        outs = []
        for part in idx.split(max(1, chunk)):
            self._check_cancel(cancel)
            x = gather_to_device(self.images, part, self.device).contiguous(memory_format=self.memory_format)
            with self._autocast():
                outs.append(self.model.forward_logits(x).float())
        return torch.cat(outs)

    def _calibration_idx(self) -> torch.Tensor:
        """The slices the normaliser is estimated on at each validation: the validation slices
        with the structure, or the training ones without such (all of them in every process,
        which all get rank 0's value)."""
        d = self.data
        idx = d.val_idx[d.has_structure[d.val_idx]]
        return idx if idx.numel() else d.train_idx[d.has_structure[d.train_idx]]

    def _calibrate(self, idx: torch.Tensor, cancel=None) -> None:
        """Store the expected maximum over a batch's structure slices
        (:func:`~napari_softseg.engine.training.normaliser.estimate_normaliser`) of the
        eval-mode slice maxima of ``idx``, per channel. Where no score is positive (a network
        that predicts nothing there) any value gives the same output on those slices: the
        running mean of the training batch maxima, else 1."""
        act, maxima = self.model.activation, []
        for part in idx.split(max(1, 2 * self.config.batch_size)):
            maxima.append(torch.relu(self._eval_logits(part, cancel)[:, self.fg]).flatten(2).amax(dim=2).cpu())
        maxima = torch.cat(maxima) if maxima else torch.zeros(0, act.norm_max.numel())
        for c in range(act.norm_max.numel()):
            m = estimate_normaliser(maxima[:, c], self.sampler.n_fg)
            fallback = float(act.running_max[c])
            act.norm_max[c] = m if math.isfinite(m) and m > 0 else (fallback if fallback > 0 else 1.0)

    def normaliser_batches(self, cancel=None):
        """Fit the stored normaliser: the ``m`` minimising the training loss in eval mode over
        the training and validation slices (sharded), on a grid around the current value
        (:mod:`~napari_softseg.engine.training.normaliser`); yields ``(batch, batches)``."""
        self._evaluation_start()
        d, act = self.data, self.model.activation
        everything = torch.cat([d.train_idx, d.val_idx])[self.ctx.rank :: self.ctx.world_size]
        bs = 2 * self.config.batch_size
        n = -(-everything.numel() // bs)
        starts = [float(v) for v in act.norm_max]
        grids = [normaliser_grid(m) for m in starts]
        curves = torch.zeros(len(grids), grids[0].numel(), dtype=torch.float64)
        failure = None
        for s in range(n):
            if failure is None:
                idx = everything[s * bs : (s + 1) * bs]
                _, failure = self._guard("output normaliser", self._curve_batch, idx, grids, curves, cancel)
            yield s + 1, n
        self._agree(failure, curves)
        for c, (grid, start) in enumerate(zip(grids, starts)):
            act.norm_max[c] = best_of_curve(grid, curves[c], start)

    def _curve_batch(self, idx: torch.Tensor, grids: list, curves: torch.Tensor, cancel=None) -> None:
        """Add one batch's loss for every candidate normaliser to ``curves``."""
        logits = self._eval_logits(idx, cancel)[:, self.fg]
        y = self._target(gather_to_device(self.truth, idx, self.device))[:, self.fg]
        w = self.loss_fn.weight_map(y) if getattr(self.loss_fn, "foreground_weight", 0) else None
        for c, grid in enumerate(grids):
            curves[c] += loss_curve(logits[:, c], y[:, c], self.loss_fn, grid, None if w is None else w[:, c])

    def preview(self, epoch: int):
        sel = self.config.preview_slice
        if sel is None or not self.ctx.is_main or epoch % self.config.preview_every:
            return None
        preview, failure = self._guard("preview", self._preview, int(sel[0]), int(sel[1]))
        self._pending = self._pending or failure  # rank 0 alone: shared by the next agreement
        return preview

    def _preview(self, subject: int, index: int):
        x, (h1, w1) = self.data.preview_input(subject, index, self.model.multiple)
        self.model.eval()
        out = self._predict(to_device(torch.from_numpy(x)[None], self.device))[0, self.fg, :h1, :w1]
        return self.data.preview_output(subject, out.cpu().numpy())

    # ------------------------------------------------------------------ the loop

    def run(self, cancel):
        """Yield the events of the whole run (see :func:`napari_softseg.engine.training.train.train`)."""
        old_threads = torch.get_num_threads()
        if self.config.num_threads:
            torch.set_num_threads(int(self.config.num_threads))
        try:
            yield from self._run(cancel)
        finally:
            if self.config.num_threads:
                torch.set_num_threads(old_threads)
            # drop the DDP wrapper now, so that it never outlives the process group
            self.net = self.model

    def _run(self, cancel):
        cfg = self.config
        clock = _Clock(cfg.epochs * (self.steps + self.val_steps) + self.val_steps)
        common = dict(epochs=cfg.epochs, steps_per_epoch=self.steps, start_epoch=self.start_epoch)
        best, history, seen = _Best(), [], []
        status, message, epoch, start_loss = "completed", "", 0, None
        try:
            start_loss, start_dice = yield from self._validation(0, cancel, clock, common)
            if self.init_config is not None and start_loss is not None:
                best.state, best.loss = copy.deepcopy(self.model.state_dict()), start_loss
            yield TrainEvent("start", val_loss=start_loss, val_dice=start_dice, start_loss=start_loss,
                             lr=cfg.lr, elapsed_seconds=clock.elapsed(), eta_seconds=clock.eta(), **common)
            for epoch in range(1, cfg.epochs + 1):
                batches, raters = self._epoch_batches(epoch)
                if epoch == 1:
                    seen = sorted(set(torch.cat(batches).tolist()))
                lr = self.optimizer.param_groups[0]["lr"]
                train_loss = yield from self._train_epoch(epoch, batches, raters, cancel, clock, best, common)
                val_loss, val_dice = yield from self._validation(epoch, cancel, clock, common, train_loss=train_loss)
                self.scheduler.step()
                monitored = val_loss if val_loss is not None else train_loss
                if not math.isfinite(monitored):
                    raise _Stop("failed", "The validation loss became NaN or infinite; try a lower learning rate "
                                "(the best weights so far were kept).")
                best.offer(monitored, self.model, epoch, cfg.early_stop_eps)
                history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_dice": val_dice, "lr": lr})
                if best.epoch == epoch:
                    self._save_best_so_far(best, history, start_loss)
                yield TrainEvent("epoch", "validate", epoch, step=self.steps, train_loss=train_loss, val_loss=val_loss,
                                 val_dice=val_dice, best_val_loss=best.loss, best_epoch=best.epoch, lr=lr,
                                 eta_seconds=clock.eta(), elapsed_seconds=clock.elapsed(), start_loss=start_loss,
                                 preview=self.preview(epoch), preview_slice=cfg.preview_slice, **common)
                if best.stale >= cfg.patience:
                    status, message = "early_stopped", f"No improvement for {cfg.patience} epochs; stopped after epoch {epoch}."
                    break
        except _Stop as stop:
            status, message = stop.status, stop.message
        threshold, threshold_dice, status, message = yield from self._best_weights_and_threshold(
            best, status, message, epoch, cancel, clock)
        summary = self._summary(status, message, history, best, start_loss, threshold_dice, seen, clock)
        path = None
        if best.state is not None:
            path = self.checkpoint_path
            self._save(path, threshold, summary)
        elif status == "failed":
            message += " No checkpoint was written: no epoch had finished."
        yield TrainEvent("done", "train", epoch, status=status, message=message, checkpoint=path, threshold=threshold,
                         summary=summary, best_val_loss=_finite(best.loss), best_epoch=best.epoch, start_loss=start_loss,
                         elapsed_seconds=clock.elapsed(), eta_seconds=0.0, **common)

    def _validation(self, epoch: int, cancel, clock: "_Clock", common: dict, **extra):
        """Run one validation pass, yielding an event per batch; return ``(loss, dice)``."""
        # without a validation set the normaliser is first needed for the weights of epoch 1
        gen = self.validate(cancel, calibrate=epoch > 0 or self.data.val_idx.numel() > 0)
        while True:
            self._check_cancel(cancel)
            try:
                s = next(gen)
            except StopIteration as stop:
                return stop.value
            clock.tick()
            yield TrainEvent("step", "validate", epoch, step=s, eta_seconds=clock.eta(),
                             elapsed_seconds=clock.elapsed(), **extra, **common)

    def _epoch_batches(self, epoch: int):
        """This process's batches of ``epoch`` (:data:`steps` of them: shuffled samples, or the
        structure sampler's batches) and, for random rater sampling, the rater drawn for every
        sample (else None)."""
        cfg, d = self.config, self.data
        raters = None
        if d.random_raters:
            from napari_softseg.fusion.methods import RandomRaterSampler

            raters = torch.as_tensor(RandomRaterSampler(d.n_raters, cfg.seed).draw(epoch, d.n_samples), dtype=torch.int64)
        if self.sampler is not None:
            return [torch.from_numpy(b) for b in self.sampler.epoch()], raters
        g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        mine = dist_utils.shard(d.train_idx[torch.randperm(d.train_idx.numel(), generator=g)], self.ctx)
        bs = cfg.batch_size
        return [mine[s * bs : (s + 1) * bs] for s in range(self.steps)], raters

    def _train_epoch(self, epoch: int, batches, raters, cancel, clock: "_Clock", best: "_Best", common: dict):
        """Yield an event per training step; return the epoch's mean training loss. A step's
        event carries the running mean as of the last sync (exact at the epoch's end)."""
        total, count, waiting = 0.0, 0, 0
        lr = self.optimizer.param_groups[0]["lr"]
        for s, idx in enumerate(batches):
            sync = s + 1 == self.steps or (s + 1) % self.sync_every == 0
            loss = self.train_step(idx, raters, cancel, sync=sync)
            waiting += idx.numel()
            if loss is not None:
                total, count, waiting = total + loss * waiting, count + waiting, 0
            clock.tick()
            yield TrainEvent("step", "train", epoch, step=s + 1, train_loss=total / count if count else None, lr=lr,
                             best_val_loss=_finite(best.loss), best_epoch=best.epoch, eta_seconds=clock.eta(),
                             elapsed_seconds=clock.elapsed(), **common)
        return total / max(count, 1)

    def _best_weights_and_threshold(self, best: "_Best", status: str, message: str, epoch: int, cancel, clock: "_Clock"):
        """Load the best weights (a cancelled run without any keeps its current ones) and, after
        a completed run, fit the output normaliser of a batch-wide NormReLU and choose the
        threshold on every sample, yielding an event per batch. Returns ``(threshold, its mean
        Dice or None, status, message)``."""
        cfg = self.config
        if self.ctx.enabled:  # a failure not shared yet (the last preview) stops every process here
            try:
                self._agree(None)
            except _Stop as stop:
                status, message = stop.status, stop.message
        if best.state is None and status == "cancelled":
            best.state = _host_state(self.model)
        threshold, threshold_dice = float((self.init_config or {}).get("threshold", 0.5)), None
        if best.state is None:
            return threshold, threshold_dice, status, message
        self.model.load_state_dict(best.state)
        if status not in ("completed", "early_stopped"):
            return threshold, threshold_dice, status, message
        try:
            if self.batch_scope and hasattr(self.loss_fn, "elementwise"):  # Dice: no voxel-wise loss to fit
                for s, n in self.normaliser_batches(cancel):
                    yield TrainEvent("step", "normaliser", epoch, step=s, steps_per_epoch=n, epochs=cfg.epochs,
                                     elapsed_seconds=clock.elapsed())
                    self._check_cancel(cancel)
        except _Stop as stop:  # keep the normaliser estimated at the best epoch's validation
            return threshold, threshold_dice, stop.status, stop.message + " The output normaliser was not fitted."
        if not cfg.search_threshold:
            return threshold, threshold_dice, status, message
        acc = DiceAccumulator(self.data.n_volumes, len(self.data.classes), device=self.device)
        try:
            for s, n in self.threshold_batches(acc, cancel):
                yield TrainEvent("step", "threshold", epoch, step=s, steps_per_epoch=n, epochs=cfg.epochs,
                                 elapsed_seconds=clock.elapsed())
                self._check_cancel(cancel)
            threshold, threshold_dice = best_threshold(acc.dice())
        except _Stop as stop:  # cancelled while choosing: keep the default threshold
            status, message = stop.status, stop.message + " The threshold was not optimised."
        return threshold, threshold_dice, status, message

    def _summary(self, status, message, history, best: "_Best", start_loss, threshold_dice, seen, clock: "_Clock") -> dict:
        """The run's record, stored in the checkpoint's ``training`` entry."""
        cfg, d = self.config, self.data
        ranks = dist_utils.gather_objects(self.ctx, seen)
        return {
            "status": status, "message": message, "epochs_run": len(history), "start_epoch": self.start_epoch,
            "epochs_total": self.start_epoch + best.epoch, "best_epoch": best.epoch, "best_val_loss": _finite(best.loss),
            "start_val_loss": start_loss, "threshold_dice": threshold_dice, "history": history,
            "n_volumes": d.n_volumes, "n_train_slices": int(d.train_idx.numel()), "n_val_slices": int(d.val_idx.numel()),
            "label_source": d.source.label_source.name, "device": str(self.device),
            "mixed_precision": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "float32",
            "init": self.init_name,
            "config": cfg.to_dict(), "duration_s": round(clock.elapsed(), 3),
            "distributed": {"world_size": self.ctx.world_size, "samples_per_rank": [len(r) for r in ranks],
                            "shards_disjoint": len(set().union(*map(set, ranks))) == sum(len(r) for r in ranks)},
        }

    def _save_best_so_far(self, best: "_Best", history: list, start_loss) -> None:
        """Write the weights of an improving epoch at once (atomically), so that a run stopped
        at any moment, even by a second Ctrl-C or a crash, keeps its best weights so far. The
        run's final write replaces this file with the threshold and the full record."""
        summary = {
            "status": "interrupted", "epochs_run": len(history), "start_epoch": self.start_epoch,
            "message": f"Training stopped before it finished; these are the best weights so far (epoch {best.epoch}).",
            "epochs_total": self.start_epoch + best.epoch, "best_epoch": best.epoch, "best_val_loss": _finite(best.loss),
            "start_val_loss": start_loss, "history": list(history), "init": self.init_name,
            "n_volumes": self.data.n_volumes, "device": str(self.device), "config": self.config.to_dict(),
        }
        self._save(self.checkpoint_path, float((self.init_config or {}).get("threshold", 0.5)), summary)

    def _save(self, path: Path, threshold: float, summary: dict) -> None:
        """Write the model (its best weights, loaded) with its configuration; rank 0 only."""
        if not self.ctx.is_main:
            return
        d = self.data
        config = make_config(self.model, preset=self.preset.name, contrasts=d.contrasts, classes=d.classes,
                             normalisation="zscore", slice_axis=d.slice_axis, spacing=list(d.spacing),
                             crop_size=list(d.crop_size), threshold=threshold, training=summary)
        save_checkpoint(path, self.model, config)


def _network(cfg: TrainConfig, data, init) -> tuple[UNet, Preset, dict | None]:
    """The network to train, its preset and the initial checkpoint's configuration (None for a
    new network): loaded from ``init`` (fine-tuning) or built; checked against the data."""
    if init is not None:
        state, icfg = load_checkpoint(init)
        preset = get_preset(cfg.preset or icfg.get("preset", "softseg"))
        model = build_model(icfg, state, source=Path(init).name)
        if model.activation_name != preset.activation:
            raise UserError(
                f"{Path(init).name} ends in {model.activation_name} but preset {preset.name} uses "
                f"{preset.activation}; fine-tune it with a preset of the same activation (e.g. {icfg.get('preset')})."
            )
        if model.in_channels != data.n_channels:
            raise UserError(f"{Path(init).name} takes {model.in_channels} contrasts but the training images have {data.n_channels}.")
    else:
        icfg = None
        preset = get_preset(cfg.preset or "softseg")
        dropout = cfg.dropout if cfg.dropout is not None else preset.dropout
        model = UNet(data.n_channels, preset.out_channels(data.n_classes), cfg.depth, cfg.base_features,
                     dropout, preset.activation, norm_scope=preset.norm_scope)
    if data.n_classes > 1 and not preset.multiclass:
        raise UserError(f"The labels have {data.n_classes} classes but preset {preset.name} is binary; choose a multi-class preset.")
    if model.out_channels != preset.out_channels(data.n_classes):
        raise UserError(f"The network has {model.out_channels} outputs but the labels need {preset.out_channels(data.n_classes)}.")
    return model, preset, icfg


class _Clock:
    """Elapsed time, and the time left estimated from the units of work done (steps and batches)."""

    def __init__(self, units_total: int) -> None:
        self.t0 = time.perf_counter()
        self.total = units_total
        self.done = 0

    def tick(self) -> None:
        self.done += 1

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def eta(self) -> float | None:
        return self.elapsed() * (self.total - self.done) / self.done if self.done else None


@dataclass
class _Best:
    """The best weights so far and the early-stopping count.

    An epoch improves when its loss is below the best by more than ``eps`` relative to it
    (``L < L_best (1 - eps)``); any loss improves on none.
    """

    state: dict | None = None
    loss: float = math.inf
    epoch: int = 0
    stale: int = 0

    def offer(self, loss: float, model: torch.nn.Module, epoch: int, eps: float) -> None:
        if not math.isfinite(self.loss) or loss < self.loss - eps * abs(self.loss):
            self.state, self.loss, self.epoch, self.stale = _host_state(model), loss, epoch, 0
        else:
            self.stale += 1


def _finite(x):
    return float(x) if x is not None and math.isfinite(x) else None


