"""The "Train SoftSeg" dock: train or fine-tune a U-Net on open layers in the background.

Design (the viewer must never freeze):

* The dock snapshots the chosen scans and labels (checked copies, :mod:`.layers`)
  and hands them to a **training process** (:mod:`napari_softseg.engine.training.child`, which runs
  :func:`napari_softseg.engine.training.train.train`): a thread of the viewer's process would share its GIL
  with the event loop, and the engine's first step alone imports hundreds of modules.
* A napari ``thread_worker`` generator relays the process's
  :class:`~napari_softseg.engine.training.train.TrainEvent` s (one per training step) to the GUI thread.
* The GUI thread only records each event; what is on screen (progress text, napari's
  activity bar, plot, preview layer) is refreshed from the newest state at most every
  :data:`REFRESH_MS` (each repaint of a napari window costs tens of ms with software
  OpenGL). The plot is rendered off the GUI thread (:mod:`.loss_plot`).
* **Cancel** asks the process to stop: the trainer polls the flag before every step, so the
  run ends within one step and still writes its best checkpoint.
* **How long**: before a run the dock measures the settings on the chosen data and device (a
  probe of a few steps in the training process, :mod:`.estimate`), says how long the run will
  take and, while the user has not chosen the epochs, proposes the number that fits the time
  budget. It probes on its own a moment after the settings change, and on Train when no
  estimate matches the settings yet (the run then starts with the proposed epochs).

The best checkpoint is written automatically to
``<data folder>/models/<YYYYmmdd-HHMMSS>_<preset>.pt`` (``$NAPARI_SOFTSEG_DATA/models``
when set, see :func:`napari_softseg.engine.training.sources.models_dir`) and published to
:data:`napari_softseg.widgets.models.RECENT_MODELS` for the Segment dock.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import deque
from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QProgressBar, QPushButton, QSpinBox

from napari_softseg.engine.training.child import acquire_process, prestart
from napari_softseg.engine.training.plot import PlotImage
from napari_softseg.engine.training.sources import copy_atomic, models_dir
from napari_softseg.engine.training.train import TrainConfig
from napari_softseg.errors import UserError
from napari_softseg.plugin.notify import notify_error, notify_info, notify_warning, user_errors
from napari_softseg.widgets.base import DockBase
from napari_softseg.widgets.models import RECENT_MODELS
from napari_softseg.widgets.training.data_panel import DataPanel
from napari_softseg.widgets.training.estimate import DEFAULT_BUDGET_MIN, describe, probe
from napari_softseg.widgets.training.form import HyperParameters
from napari_softseg.widgets.training.layers import TrainingPreview
from napari_softseg.widgets.training.loss_plot import LossPlot

#: Screen refresh interval while training (ms); events are recorded as they come.
REFRESH_MS = 250
#: The time estimate runs this long after the last change of the settings (ms).
ESTIMATE_DELAY_MS = 1500
_FINISHED = object()  # queued after the last event when the worker ends


def _publish(path: Path, label: str) -> None:
    """Add a model to RECENT_MODELS; a failing listener (another dock) must not stop us."""
    try:
        RECENT_MODELS.add(path, label)
    except Exception:  # noqa: BLE001
        logging.getLogger(__name__).exception("a listener of RECENT_MODELS failed")


def _fmt_time(seconds) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _quiet_disconnect(emitter, callback) -> None:
    try:
        emitter.disconnect(callback)
    except (TypeError, ValueError, RuntimeError):
        pass


def _fmt(x, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


class TrainingWidget(DockBase):
    """Train or fine-tune SoftSeg on open scans and labels (see the module docstring).

    Signals: ``event_received(TrainEvent)`` for every event, in order;
    ``training_finished(object)`` with the final event (None if the worker broke) once a
    run ends. ``probes``: ``"module:function"`` hooks run in the training process before
    training (used by the tests to observe the trainer).
    """

    event_received = Signal(object)
    training_finished = Signal(object)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.worker = None
        self.checkpoint: Path | None = None
        self.last_event = None
        self.probes: list[str] = []
        self._process = None
        self._pbar = None
        self.preview = TrainingPreview(napari_viewer)
        self._run: dict = {}
        self._queue: deque = deque()
        self._handling = False

        self.data = DataPanel(napari_viewer)
        self.group("Training data").addWidget(self.data)
        self.params = HyperParameters(TrainConfig())
        self.group("Model").addWidget(self.params)
        run = self.group("Training")
        self._build_estimate(run)
        self.train_button = QPushButton("Train")
        self.cancel_button = QPushButton("Cancel")
        self.save_button = QPushButton("Save model…")
        self.train_button.setToolTip("Start training in the background.")
        self.cancel_button.setToolTip("Stop after the current step and keep the best checkpoint so far.")
        self.save_button.setToolTip("Copy the best checkpoint of the last run to a file of your choice.")
        row = QHBoxLayout()
        for b in (self.train_button, self.cancel_button, self.save_button):
            row.addWidget(b)
        run.addLayout(row)
        self.progress_bar = QProgressBar()
        self.progress_bar.setFormat("idle")
        self.progress_bar.setValue(0)
        run.addWidget(self.progress_bar)
        self.start_label = QLabel("")
        self.result_label = QLabel("")
        for lab in (self.start_label, self.result_label):
            lab.setWordWrap(True)
            run.addWidget(lab)
        self.plot = LossPlot()
        self.plot.size_changed.connect(self._plot_resized)
        run.addWidget(self.plot)
        self.finish_layout()

        self.train_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button.clicked.connect(self._save_dialog)
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setInterval(REFRESH_MS)
        self._refresh_timer.timeout.connect(self._refresh_view)
        self._set_running(False)
        self._connect_estimate()
        QTimer.singleShot(0, prestart)  # the process's imports warm up while the user sets up

    @property
    def rows(self):
        return self.data.rows

    # ------------------------------------------------------------------ time estimate
    def _build_estimate(self, layout) -> None:
        self.estimate = None
        self._estimate_key = None
        self._probe_worker = None
        self._epochs_by_user = False
        self._setting_epochs = False
        self._start_after_probe = False
        self.budget = QSpinBox()
        self.budget.setRange(1, 100000)
        self.budget.setValue(DEFAULT_BUDGET_MIN)
        self.budget.setSuffix(" min")
        self.budget.setToolTip("The time you give this run: the dock proposes the epochs that fit it "
                               "(measured on your data and device).")
        self.estimate_button = QPushButton("Estimate time")
        self.estimate_button.setToolTip("Time a few training steps of these settings on the chosen device.")
        row = QHBoxLayout()
        row.addWidget(QLabel("Time budget"))
        row.addWidget(self.budget)
        row.addWidget(self.estimate_button, 1)
        layout.addLayout(row)
        self.estimate_label = QLabel("The run's length is measured before it starts.")
        self.estimate_label.setWordWrap(True)
        layout.addWidget(self.estimate_label)

    def _connect_estimate(self) -> None:
        self.estimate_timer = QTimer(self)
        self.estimate_timer.setSingleShot(True)
        self.estimate_timer.setInterval(ESTIMATE_DELAY_MS)
        self.estimate_timer.timeout.connect(lambda: self.estimate_time(auto=True))
        p = self.params
        for signal in (p.preset_combo.currentIndexChanged, p.batch_size.valueChanged, p.crop_size.valueChanged,
                       p.depth.valueChanged, p.base_features.valueChanged, p.val_fraction.valueChanged,
                       p.device_combo.currentIndexChanged, p.mixed_precision.toggled, p.finetune_radio.toggled,
                       p.init_path.textChanged, self.data.source_combo.currentIndexChanged):
            signal.connect(lambda *_: self.estimate_timer.start())
        ev = self.viewer.layers.events
        for emitter in (ev.inserted, ev.removed):
            emitter.connect(self._restart_estimate_timer)
        self.destroyed.connect(lambda *_: [_quiet_disconnect(e, self._restart_estimate_timer)
                                           for e in (ev.inserted, ev.removed)])
        p.epochs.valueChanged.connect(self._epochs_changed)
        self.budget.valueChanged.connect(lambda *_: self._show_estimate(propose=not self._epochs_by_user))
        self.estimate_button.clicked.connect(lambda: self.estimate_time())
        self.estimate_timer.start()

    def _restart_estimate_timer(self, event=None) -> None:
        try:
            self.estimate_timer.start()
        except RuntimeError:  # the dock was deleted
            pass

    def _epochs_changed(self, *_):
        if not self._setting_epochs:
            self._epochs_by_user = True
            self._show_estimate(propose=False)

    def _settings_key(self, snapshots, config):
        """What an estimate depends on: the data's shapes, the settings but the epochs, the device."""
        cfg = {k: v for k, v in config.to_dict().items() if k not in ("epochs", "preview_slice", "preview_every")}
        data = [(s.name, tuple(s.image.shape), tuple(s.label_names)) for s in snapshots]
        return repr((data, [tuple(map(str, f)) for f in self.data.folders], self.data.label_source,
                     str(self.params.init_checkpoint()), sorted(cfg.items())))

    def estimate_time(self, auto: bool = False, then_start: bool = False):
        """Measure the run's speed in the training process (a worker); returns the worker, or
        None when there is nothing to measure (a hint says why) or a run is going on. With
        ``then_start``, Train follows the measurement."""
        self._start_after_probe = self._start_after_probe or then_start
        if self._probe_worker is not None:
            return self._probe_worker
        if self.worker is not None or (auto and self._epochs_by_user):
            return None
        try:
            snapshots, config = self.data.snapshots(), self.config()
            process = acquire_process()
        except UserError as err:
            self.estimate_label.setText(f"Time estimate: {err}")
            return None
        except OSError as err:
            self.estimate_label.setText(f"Time estimate: the training process could not be started ({err}).")
            return None
        from napari.qt.threading import create_worker

        key = self._settings_key(snapshots, config)
        worker = create_worker(probe, process, snapshots, list(self.data.folders), self.data.label_source, config,
                               self.params.init_checkpoint(), self.params.device_combo.currentText(),
                               _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda est: self._on_estimate(est, key))
        worker.errored.connect(self._on_estimate_error)
        worker.finished.connect(self._probe_finished)
        self._probe_worker, self._probe_process = worker, process
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setFormat("measuring the speed of these settings…")
        self.estimate_label.setText("Measuring a few training steps on the chosen device…")
        worker.start()
        return worker

    def _on_estimate(self, est, key) -> None:
        self.estimate, self._estimate_key = est, key
        self._show_estimate(propose=not self._epochs_by_user)

    def _on_estimate_error(self, err) -> None:
        self.estimate_label.setText(f"Time estimate: {err}")
        if self._start_after_probe:
            notify_error(str(err))
            self._start_after_probe = False

    def _probe_finished(self) -> None:
        self._probe_worker = None
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("idle")
        if self._start_after_probe:
            self._start_after_probe = False
            QTimer.singleShot(0, self.start)

    def _show_estimate(self, propose: bool) -> None:
        """Say how long the run takes; with ``propose``, set the epochs that fit the budget."""
        est = self.estimate
        if est is None:
            return
        epochs, proposed = self.params.epochs.value(), None
        if propose:
            proposed = est.epochs_within(self.budget.value() * 60.0, TrainConfig().epochs)
            self._setting_epochs = True
            self.params.epochs.setValue(proposed)
            self._setting_epochs = False
            epochs = TrainConfig().epochs
        self.estimate_label.setText(describe(est, epochs, self.budget.value(), proposed))

    def _needs_estimate(self) -> bool:
        """Train with epochs the user did not choose, and no estimate for these settings yet."""
        if self._epochs_by_user:
            return False
        try:
            key = self._settings_key(self.data.snapshots(), self.config())
        except UserError:
            return False  # start() says what is wrong
        return self.estimate is None or key != self._estimate_key

    # ------------------------------------------------------------------ configuration
    def config(self) -> TrainConfig:
        """The :class:`~napari_softseg.engine.training.train.TrainConfig` described by the dock."""
        p = self.params
        device = p.device_combo.currentData() or "cpu"
        crop = p.crop_size.value()
        return TrainConfig(
            preset=p.preset_combo.currentData(), epochs=p.epochs.value(), batch_size=p.batch_size.value(),
            lr=p.lr.value(), crop_size=(crop, crop) if crop else None, depth=p.depth.value(),
            base_features=p.base_features.value(), val_fraction=p.val_fraction.value(), device=device,
            mixed_precision=p.mixed_precision.isChecked() and p.mixed_precision.isEnabled(),
            preview_every=min(5, max(1, p.epochs.value() // 20)),
            # one core stays with the viewer (with all cores, torch's threads were descheduled
            # in turn on a busy 2-core machine and training ran 20x slower)
            num_threads=max(1, (os.cpu_count() or 2) - 1) if device == "cpu" else None,
        ).validate()

    @staticmethod
    def _new_model_path(preset: str) -> Path:
        folder = models_dir()
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}_{preset}"
        path, k = folder / f"{stem}.pt", 1
        while path.exists():
            path, k = folder / f"{stem}-{k}.pt", k + 1
        return path

    # ------------------------------------------------------------------ run
    def start(self):
        """Snapshot the data and start training; returns the worker (None on a user error)."""
        if self.worker is not None:
            return None
        if self._probe_worker is not None or self._needs_estimate():
            return self.estimate_time(then_start=True)  # Train follows the measurement
        ready = False
        with user_errors():
            snapshots = self.data.snapshots()
            init = self.params.init_checkpoint()
            if self.params.finetune_radio.isChecked() and init is None:
                raise UserError("Choose the model to fine-tune, or train from scratch.")
            if init is not None and not init.is_file():
                raise UserError(f"Model file {init} does not exist.")
            config = self.config()
            config.preview_slice, axis = self.preview.target(snapshots[0] if snapshots else None, init, config)
            path = self._new_model_path(config.preset or "model")
            try:
                process = acquire_process()
            except OSError as err:
                raise UserError(f"The training process could not be started ({err}).") from None
            ready = True
        if not ready:
            return None
        from napari.qt.threading import create_worker
        from napari.utils import progress

        self._run = {"init": init, "start_epoch": 0, "preset": config.preset, "step": None, "preview": None,
                     "image": None}
        self.preview.prepare(snapshots[0] if snapshots else None, axis)  # now: adding a layer is slow
        self.plot.clear()
        self.plot.remote = True  # the training process draws the plot
        self.start_label.setText("Preparing the training data…")
        self.result_label.setText("")
        self.checkpoint = self.last_event = None
        job = {"snapshots": [dataclasses.replace(s, layer=None) for s in snapshots], "folders": list(self.data.folders),
               "label_source": self.data.label_source, "config": config, "init": init, "checkpoint_path": path,
               "probes": list(self.probes), "plot_size": self.plot.pixel_size()}
        self._process = process
        self._pbar = progress(total=config.epochs, desc="Training SoftSeg")
        self.worker = create_worker(self._process.events, job, _start_thread=False)
        self.worker.yielded.connect(self._on_event)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self._set_running(True)
        self.progress_bar.setRange(0, 0)  # busy until the first event
        self.progress_bar.setFormat("preparing…")
        self.worker.start()
        self._refresh_timer.start()
        return self.worker

    def cancel(self) -> None:
        """Stop at the next training step (the best checkpoint so far is written)."""
        if self._probe_worker is not None:
            self._start_after_probe = False
            self._probe_process.cancel()
        if self.worker is not None and self._process is not None:
            self._process.cancel()
            self.cancel_button.setEnabled(False)
            self.progress_bar.setFormat("cancelling…")

    def _set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.save_button.setEnabled(not running and self.checkpoint is not None)
        self.data.setEnabled(not running)
        self.params.setEnabled(not running)

    # ------------------------------------------------------------------ events
    def _on_event(self, ev) -> None:
        # napari's progress widgets call processEvents(): handle events strictly in order
        self._queue.append(ev)
        if self._handling:
            return
        self._handling = True
        try:
            while self._queue:
                item = self._queue.popleft()
                if item is _FINISHED:
                    self._finished()
                else:
                    self._handle(item)
        finally:
            self._handling = False

    def _handle(self, ev) -> None:
        run = self._run
        if isinstance(ev, PlotImage):
            run["image"] = ev
            return
        self.last_event = ev
        if ev.kind == "start":
            run["start_epoch"] = ev.start_epoch
            self.progress_bar.setRange(0, max(1, ev.epochs * ev.steps_per_epoch))
            init = run["init"]
            start = (f"validation loss before the first step {_fmt(ev.start_loss)}" if ev.start_loss is not None else
                     "no validation set, so the epoch with the lowest training loss is kept (validation needs the "
                     "structure painted in two slabs or two scans)")
            self.start_label.setText(f"Fine-tuning {init.name}: continues after epoch {ev.start_epoch}; {start}."
                                     if init is not None else f"Training from scratch; {start}.")
            self.plot.set_start(ev.start_epoch, ev.start_loss)
        elif ev.kind in ("step", "epoch"):
            run["step"] = ev
            if ev.kind == "epoch":
                self.plot.add_epoch(run["start_epoch"] + ev.epoch, ev.train_loss, ev.val_loss, ev.val_dice)
                if ev.preview is not None:
                    run["preview"] = (ev.preview, ev.preview_slice)
        elif ev.kind == "done":
            self._refresh_timer.stop()
            self._refresh_view()
            self._done(ev)
        self.event_received.emit(ev)

    def _refresh_view(self) -> None:
        """Put the newest recorded state on screen (called every REFRESH_MS)."""
        run = self._run
        ev, run["step"] = run.get("step"), None
        if ev is not None:
            done = (ev.epoch - 1) * ev.steps_per_epoch + ev.step if ev.phase == "train" else ev.epoch * ev.steps_per_epoch
            if ev.phase not in ("normaliser", "threshold"):
                self.progress_bar.setValue(min(done, self.progress_bar.maximum()))
            what = {"train": f"step {ev.step}/{ev.steps_per_epoch}", "validate": "validating",
                    "normaliser": f"fitting the output scale {ev.step}/{ev.steps_per_epoch}",
                    "threshold": f"choosing threshold {ev.step}/{ev.steps_per_epoch}"}[ev.phase]
            epoch = f"epoch {run['start_epoch'] + ev.epoch}/{run['start_epoch'] + ev.epochs}"
            loss = f" · loss {ev.train_loss:.4f}" if ev.train_loss is not None else ""
            self.progress_bar.setFormat(f"{epoch} · {what}{loss} · ETA {_fmt_time(ev.eta_seconds)}".replace("%", "%%"))
            completed = ev.epoch if ev.kind == "epoch" else ev.epoch - 1
            if self._pbar is not None and completed > self._pbar.n:  # napari's activity dock
                self._pbar.update(completed - self._pbar.n)  # (its widgets repaint at once)
        if run.get("image") is not None:
            image, run["image"] = run["image"], None
            self.plot.show_image(image.rgba, image.points)
        if run.get("preview") is not None:
            (preview, where), run["preview"] = run["preview"], None
            self.preview.show(preview, where)

    def _done(self, ev) -> None:
        run, summary = self._run, ev.summary or {}
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1 if ev.status in ("completed", "early_stopped") else 0)
        self.progress_bar.setFormat(ev.status.replace("_", " "))
        path = Path(ev.checkpoint) if ev.checkpoint else None
        self.checkpoint = path if path is not None and path.is_file() else None
        best = summary.get("best_epoch", 0) + run.get("start_epoch", 0)
        if ev.status in ("completed", "early_stopped"):
            dice = summary.get("threshold_dice")
            self.result_label.setText(
                f"Optimised threshold {ev.threshold:.2f}" + (f" (Dice {dice:.3f})" if dice is not None else "")
                + f"; best epoch {best}, {'validation' if summary.get('n_val_slices') else 'training'} loss "
                f"{_fmt(ev.best_val_loss)}; saved as {path.name}.")
            if ev.status == "early_stopped":
                notify_info(ev.message)
        elif ev.status == "cancelled":
            self.result_label.setText(f"Cancelled; the best checkpoint (epoch {best}, threshold {ev.threshold:.2f}) "
                                      f"is kept as {path.name if path else 'nothing: no epoch finished'}.")
        else:
            notify_error(ev.message)
            self.result_label.setText(ev.message + (f" Best weights so far: {path.name}." if self.checkpoint else ""))
        self.result_label.setToolTip(str(path) if path else "")
        if self.checkpoint is not None:
            status = "" if ev.status in ("completed", "early_stopped") else f", {ev.status}"
            _publish(self.checkpoint, f"{run.get('preset') or 'model'} ({self.checkpoint.stem}{status})")
        self.training_finished.emit(ev)

    def _plot_resized(self, size) -> None:
        if self.worker is not None and self._process is not None:
            self._process.set_plot_size(size)

    def _on_error(self, err) -> None:  # only if the relay itself breaks
        notify_error(f"Training stopped: {err}.")

    def _on_finished(self) -> None:
        self._on_event(_FINISHED)

    def _finished(self) -> None:
        self._refresh_timer.stop()
        if self.last_event is None or self.last_event.kind != "done":
            if self._pbar is not None:
                self._pbar.close()
                self._pbar = None
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setFormat("failed")
            self.training_finished.emit(None)
        self.worker = None
        self._set_running(False)
        self.plot.remote = False
        if self.plot.rendered_points != len(self.plot.epochs):
            self.plot.redraw()

    # ------------------------------------------------------------------ saving
    def save_model(self, path) -> Path:
        """Copy the last run's best checkpoint to ``path`` atomically; returns the path."""
        if self.checkpoint is None or not self.checkpoint.is_file():
            raise UserError("No trained model to save yet: train one first.")
        path = Path(path).expanduser()
        path = copy_atomic(self.checkpoint, path if path.suffix else path.with_suffix(".pt"))
        _publish(path, f"saved {path.stem}")
        return path

    def _save_dialog(self) -> None:
        if self.checkpoint is None:
            notify_warning("No trained model to save yet: train one first.")
            return
        name, _ = QFileDialog.getSaveFileName(self, "Save model", self.checkpoint.name, "Checkpoints (*.pt)")
        if name:
            with user_errors():
                self.say(f"Model saved to {self.save_model(name)}.")

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.cancel()
        super().closeEvent(event)
