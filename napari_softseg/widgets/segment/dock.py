"""The "Segment & review" dock: one click Segment on an open scan, a live threshold, the
uncertainty map and the review of flagged lesions.

Segment runs :func:`napari_softseg.review.segment.segment` (load the model, predict, analyse lesions) in a
``thread_worker``; the UI thread only turns finished arrays into layers on the scan's world
geometry (its full data-to-world transform as the layer affine, its NIfTI header in
``metadata`` so the layers save back with the scan's geometry):

* ``<scan> soft`` - the soft prediction (perceptual transparent-to-opaque colormap, 0-1);
* ``<scan> mask`` - Labels, the final mask at the threshold, outlined; the selected lesion
  has value 2 (another colour); painting with napari's tools edits the mask;
* ``<scan> entropy`` - voxel-wise entropy of the prediction (or of the samples' mean).

The layers are added one per turn of the event loop (each napari layer costs tens of ms to
build), so the viewer keeps drawing while they arrive; ``segmented`` is emitted at the end.

The review state (threshold, edits, decisions, export) lives in
:class:`napari_softseg.review.session.Review`; see that module for the rules.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QFileDialog, QLabel

from napari_softseg.errors import UserError
from napari_softseg.io import geometry
from napari_softseg.plugin.notify import notify_error, notify_info, notify_warning, user_errors
from napari_softseg.review.segment import SegmentRequest, segment, stack_contrasts
from napari_softseg.widgets.base import DockBase, alive, layer_geometry
from napari_softseg.widgets.napari_private import unwrap
from napari_softseg.widgets.segment.controls import RunControls, SaveControls, ThresholdControl, fixed_lines
from napari_softseg.widgets.segment.inputs import ContrastInputs
from napari_softseg.widgets.segment.layers import (
    describe_model, painted_mask, result_layer_steps, world_point, write_mask, write_predictions, write_review,
)
from napari_softseg.widgets.segment.model_picker import ModelPicker
from napari_softseg.widgets.segment.review_panel import NEXT_KEY, PREVIOUS_KEY, ReviewPanel, unbind_keys

ANALYSIS_DELAY_MS = 250  # after the slider stops, the lesion table is recomputed
STEP_GAP_MS = 15  # between two layer additions the event loop repaints and serves input


def _timed_segment(request, **kwargs):
    """:func:`~napari_softseg.review.segment.segment` with the worker thread's start and end
    times (``worker_start`` / ``worker_end`` in its timings: how long the click waited for the
    thread, and the result for the UI thread)."""
    start = time.perf_counter()
    result = segment(request, **kwargs)
    result.timings.update(worker_start=start, worker_end=time.perf_counter())
    return result


class _Relay(QObject):
    progress = Signal(int, int)  # emitted from the worker thread, delivered on the UI thread


class SegmentWidget(DockBase):
    """Segment an open scan with a SoftSeg model and review the lesions it finds."""

    segmented = Signal()  # layers and table are up to date after a Segment
    analysed = Signal()  # the lesion table was recomputed (threshold change)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.review = None
        self.result = None
        self.scan_layer = None
        self.layers: dict[str, object] = {}
        self.last_timings: dict[str, float] = {}
        self._worker = None
        self._analysis_worker = None
        self._cancel = threading.Event()
        self._t_click = self._t_done = 0.0
        self._pending_scan = None
        self._step_times: list = []
        self._writing = False
        self._selected = None
        self._hooked = None  # the mask layer whose paint events are followed
        self._warm_key = None  # (model, scan shape, spacing) of the latest warm-up asked for
        self._warm_worker = None
        self._warm_stop = threading.Event()  # set by a Segment click: the running warm-up stops
        self._closed = threading.Event()  # set when the dock is destroyed
        self._relay = _Relay()
        self._relay.progress.connect(lambda done, total: self.run_controls.set_progress(done, total))
        #: restarted by every threshold change; the lesion table is recomputed when it fires
        self.analysis_timer = QTimer(self)
        self.analysis_timer.setSingleShot(True)
        self.analysis_timer.setInterval(ANALYSIS_DELAY_MS)
        self.analysis_timer.timeout.connect(self._reanalyse)
        self._build_groups()
        self._connect()
        closed = self._closed
        self.destroyed.connect(lambda *_: closed.set())
        self._check_inputs()

    def _build_groups(self) -> None:
        self.models = ModelPicker()
        self.inputs = ContrastInputs(self.viewer)
        self.scan_combo = self.inputs.combos[0]  # the first input: its grid is the prediction's
        self.scan_info = QLabel()
        self.run_controls = RunControls()
        self.threshold = ThresholdControl()
        self.panel = ReviewPanel()
        self.save_controls = SaveControls()
        self.save_button, self.export_button = self.save_controls.save_button, self.save_controls.export_button
        for title, widgets in (("Model", [self.models]), ("Scan and contrasts", [self.inputs, self.scan_info]),
                               ("Segment", [self.run_controls]), ("Threshold", [self.threshold]),
                               ("Review lesions", [self.panel]), ("Save", [self.save_controls])):
            lay = self.group(title)
            for widget in widgets:
                lay.addWidget(widget)
        self.finish_layout()
        self.setMinimumWidth(440)
        for label, lines in ((self.status, 2), (self.scan_info, 2)):
            fixed_lines(label, lines)
        self._layout.setStretchFactor(self.panel.parentWidget(), 1)

    def _connect(self) -> None:
        self.models.changed.connect(lambda *_: self.inputs.set_model(self.models.config()))
        self.models.changed.connect(lambda *_: self.run_controls.set_model(self.models.config()))
        self.models.changed.connect(self._fitted_scores)
        self.run_controls.mc_spin.valueChanged.connect(self._fitted_scores)
        self.run_controls.tta_combo.currentIndexChanged.connect(self._fitted_scores)
        self.inputs.changed.connect(self._check_inputs)
        self.inputs.set_model(self.models.config())
        self.run_controls.set_model(self.models.config())
        self._fitted_scores()
        self.run_controls.segment_button.clicked.connect(self.segment)
        self.run_controls.cancel_button.clicked.connect(self.cancel)
        self.threshold.changed.connect(self.set_threshold)
        self.panel.table.lesion_selected.connect(self.select_lesion)
        self.panel.step_requested.connect(self.step_flagged)
        self.panel.decision_requested.connect(lambda status: self.decide(status))
        self.panel.edit_requested.connect(self.start_edit)
        self.panel.comment_changed.connect(lambda text: self.decide(None, comment=text))
        self.panel.rule.changed.connect(self._rule_changed)
        self.save_button.clicked.connect(lambda: self._ask_folder(self.save_predictions))
        self.export_button.clicked.connect(lambda: self._ask_folder(self.export_review))
        viewer = self.viewer
        viewer.bind_key(NEXT_KEY, lambda v: self.step_flagged(1), overwrite=True)
        viewer.bind_key(PREVIOUS_KEY, lambda v: self.step_flagged(-1), overwrite=True)
        self.destroyed.connect(lambda *_: unbind_keys(viewer, (NEXT_KEY, PREVIOUS_KEY)))

    @property
    def running(self) -> bool:
        """Whether a Segment is running (its worker has not finished)."""
        return self._worker is not None

    # ------------------------------------------------------------------ inputs

    def _check_inputs(self, warm: bool = True) -> str:
        """Show (and return) why Segment cannot run now; '' when it can. With ``warm``, a
        valid model and scan start the warm-up (:meth:`_warm_up`)."""
        scan = self.scan_combo.current()
        problem = self.models.error() or ("Choose a model." if self.models.config() is None else "") \
            or self.inputs.problem()
        if problem:
            self.scan_info.setText(f"<span style='color:#e05050'>{problem}</span>")
        elif scan is not None:
            geo = layer_geometry(scan)
            sp = geometry.spacing(geo.affine)
            self.scan_info.setText(f"{'x'.join(map(str, geo.shape))} voxels of {' x '.join(f'{s:.2g}' for s in sp)} mm")
            if warm:
                self._warm_up(geo.shape, sp)
        return problem

    def _warm_up(self, shape, spacing) -> None:
        """Load the model and prepare its kernels for this scan in the background
        (:mod:`.warm`), once per model, scan shape and voxel size.

        One warm-up runs at a time; a request made meanwhile runs when it ends (only the
        latest). None starts while Segment runs or from a Segment click; a click cancels the
        running one between two batches (Segment does the same work and needs the CPU), and
        so does closing the dock. A warm-up that fails is ignored: its worker keeps the
        exception, and Segment, which loads the same model, says what went wrong when clicked."""
        path = self.models.path()
        if path is None or self._worker is not None:
            return
        key = (Path(path), tuple(int(n) for n in shape), tuple(float(v) for v in spacing))
        if key == self._warm_key:
            return
        self._warm_key = key  # the latest request
        if self._warm_worker is None:
            self._start_warm_up(key)

    def _start_warm_up(self, key: tuple) -> None:
        from napari.qt.threading import create_worker

        from napari_softseg.widgets.segment import warm

        stop, closed = threading.Event(), self._closed
        worker = create_worker(warm.warm_up, *key, cancel=lambda: stop.is_set() or closed.is_set(),
                               _start_thread=False, _ignore_errors=True)
        worker.finished.connect(lambda: self._warm_up_finished(key))
        self._warm_worker, self._warm_stop = worker, stop
        worker.start()

    def _warm_up_finished(self, key: tuple) -> None:
        """The warm-up of ``key`` ended (done, cancelled or failed): start the latest request
        if it is another one and neither Segment runs nor the dock was closed."""
        self._warm_worker = None
        if self._warm_key != key and self._worker is None and not self._closed.is_set():
            self._start_warm_up(self._warm_key)

    @property
    def warming_up(self) -> bool:
        """Whether a warm-up is running."""
        return self._warm_worker is not None

    def _fitted_scores(self, *_) -> None:
        """Set the flag rule's score criteria to the chosen model's fitted operating points
        for the chosen MC-dropout / TTA sampling."""
        from napari_softseg.review.flags import sampling_kind
        from napari_softseg.review.profile import review_profile

        config, path = self.models.config(), self.models.path()
        flags = review_profile(config, path).flags if config is not None else None
        if flags is not None:
            rule = flags.rule(sampling_kind(self.run_controls.mc_spin.value(), self.run_controls.tta()))
            self.panel.rule.set_scores(rule.flag_score, rule.candidate_score)

    # ------------------------------------------------------------------ Segment

    def segment(self):
        """Start Segment in a worker; returns the worker (None when the inputs are wrong)."""
        problem = self._check_inputs(warm=False)
        if problem:
            notify_error(problem)
            return None
        if self._worker is not None:
            return self._worker
        from napari.qt.threading import create_worker

        layers = self.inputs.layers()
        scan = layers[0]
        for warning in self.inputs.warnings()[:1]:
            notify_warning(warning)
        geo = layer_geometry(scan)
        request = SegmentRequest(
            model_path=self.models.path(), image=stack_contrasts(layers),
            spacing=geometry.spacing(geo.affine), affine=geo.affine,
            mc_samples=self.run_controls.mc_spin.value(), tta=self.run_controls.tta(), rule=self.panel.rule.rule())
        self._t_click = time.perf_counter()
        self._warm_stop.set()
        self._cancel.clear()
        self._pending_scan = scan
        worker = create_worker(_timed_segment, request, progress=self._relay.progress.emit, cancel=self._cancel.is_set,
                               _start_thread=False, _ignore_errors=True)  # _on_error reports them
        worker.returned.connect(self._on_done)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_controls.set_running(True)
        self.say(f"Segmenting {scan.name} with {self.models.current().name} …")
        worker.start()
        return worker

    def cancel(self) -> None:
        self._cancel.set()
        self.say("Cancelling …")

    def _on_error(self, err) -> None:
        from napari_softseg.engine.predict import PredictionCancelled

        if isinstance(err, PredictionCancelled):
            self.say("Segment cancelled.")
        elif isinstance(err, (UserError, OSError)):
            notify_error(str(err))
            self.say(str(err))
        else:
            notify_error(f"Segment failed: {err}")
            self.say(f"Segment failed: {err}")

    def _on_finished(self) -> None:
        self._worker = None
        self.run_controls.set_running(False)
        self.run_controls.set_progress(1 if self.review is not None else 0, 1)

    def _on_done(self, result) -> None:
        self._t_done = time.perf_counter()
        self.result, self.review, self.scan_layer = result, result.review, self._pending_scan
        self._selected = None
        self._step_times = []
        steps = result_layer_steps(self.viewer, self.scan_layer, self.review, result.entropy,
                                   self.model_identity(), self.layers)
        self._run_steps(steps + [self._hook_mask, self._show_result, self._finish_segment])

    def _run_steps(self, steps: list) -> None:
        """Run one step now and the rest on later turns of the event loop (durations kept)."""
        if steps:
            t = time.perf_counter()
            steps[0]()
            self._step_times.append((getattr(steps[0], "__name__", "step"), time.perf_counter() - t))
            if len(steps) > 1:
                QTimer.singleShot(STEP_GAP_MS, lambda: self._run_steps(steps[1:]))

    def _hook_mask(self) -> None:
        mask_layer = self.layers["mask"]
        if unwrap(mask_layer) is not unwrap(self._hooked):
            mask_layer.events.paint.connect(self._on_paint)
            self._hooked = mask_layer

    def _show_result(self) -> None:
        active = self.viewer.layers.selection.active  # (plugin docks see proxies: compare names)
        if active is not None and active.name == self.layers["entropy"].name:
            self.viewer.layers.selection.active = self.viewer.layers[self.layers["soft"].name]
        self.threshold.set_value(self.result.threshold, emit=False)
        self.panel.set_target(self.review.target)
        self._update_mask_info()
        self._refresh_table()

    def _finish_segment(self) -> None:
        timings = dict(self.result.timings)
        start, end = timings.pop("worker_start", self._t_click), timings.pop("worker_end", self._t_done)
        self.last_timings = dict(timings, click_to_layers_s=time.perf_counter() - self._t_click,
                                 ui_steps_s={name: round(dt, 4) for name, dt in self._step_times},
                                 to_worker_s=start - self._t_click, to_ui_s=self._t_done - end,
                                 layers_wall_s=time.perf_counter() - self._t_done)
        t = self.last_timings
        self.say(f"Segmented in {t['click_to_layers_s']:.2f} s (prediction {t['predict_s']:.2f} s, lesion analysis "
                 f"{t['lesions_s']:.2f} s).")
        self.segmented.emit()

    # ------------------------------------------------------------------ threshold

    def set_threshold(self, threshold: float, analyse_now: bool = False) -> None:
        """Re-binarise the mask at ``threshold`` (live); the lesion table follows shortly after."""
        if self.review is None:
            return
        self._sync_edits()
        self.review.threshold = float(threshold)
        if abs(self.threshold.value() - threshold) > 1e-9:
            self.threshold.set_value(threshold, emit=False)
        self._write_mask()
        if analyse_now:
            self.review.analyse()
            self._write_mask()
            self._refresh_table()
        else:
            self.analysis_timer.start()

    def _write_mask(self) -> None:
        layer = self.layers.get("mask")
        if not alive(self.viewer, layer):
            return
        table = self.review.table
        self._writing = True
        candidate = table is not None and self._selected is not None and \
            any(r.id == self._selected and r.kind == "candidate" for r in table.records)
        write_mask(layer, self.review.final_mask(), None if table is None else table.labels, self._selected, candidate)
        self._writing = False
        self._update_mask_info()

    def _update_mask_info(self) -> None:
        layer = self.layers.get("mask")
        if self.review is None or layer is None:
            return
        n = int(np.count_nonzero(painted_mask(layer.data)))
        self.threshold.info.setText(f"mask: {n} voxels, {n * geometry.spacing_volume(self.review.spacing):.0f} mm³")

    def _reanalyse(self) -> None:
        if self.review is None or self._analysis_worker is not None:
            if self._analysis_worker is not None:
                self.analysis_timer.start()
            return
        from napari.qt.threading import create_worker

        r = self.review
        worker = create_worker(r.table_at, r.threshold, self.panel.rule.rule(), _start_thread=False,
                               _ignore_errors=True)
        worker.returned.connect(self._on_analysed)
        worker.errored.connect(lambda err: notify_error(f"Lesion analysis failed: {err}"))
        worker.finished.connect(lambda: setattr(self, "_analysis_worker", None))
        self._analysis_worker = worker
        worker.start()

    def _on_analysed(self, table) -> None:
        if self.review is None or abs(table.threshold - self.review.threshold) > 1e-9:
            return  # the slider moved on; the timer runs again
        self._sync_edits()
        self.review.set_table(table)
        self._write_mask()
        self._refresh_table()
        self.analysed.emit()

    def _rule_changed(self) -> None:
        if self.review is not None and self.review.table is not None:
            self.review.reflag(self.panel.rule.rule())
            self._refresh_table()

    # ------------------------------------------------------------------ lesions

    def _refresh_table(self) -> None:
        if self.review is None:
            return
        self.panel.table.set_lesions(self.review.records(), self.review.decision)
        self.panel.set_summary(self.review)
        lesion_id = self.panel.table.selected_id()
        self.panel.set_selection(lesion_id, self.review.decision(lesion_id).comment if lesion_id else "")
        self._highlight(lesion_id)

    def select_lesion(self, lesion_id: int) -> None:
        """Move the viewer to a lesion (slice and camera centre) and outline it."""
        from napari_softseg.plugin.viewer import centre_on

        if self.review is None or self.review.table is None:
            return
        rec = self.review.table.by_id(int(lesion_id))
        if self.panel.table.selected_id() != rec.id:
            self.panel.table.select_id(rec.id, emit=False)
        centre_on(self.viewer, world_point(self.layers["soft"], rec.centroid))
        self._highlight(rec.id)
        self.panel.set_selection(rec.id, self.review.decision(rec.id).comment)
        what = "Possible lesion" if rec.kind == "candidate" else "Lesion"
        self.say(f"{what} {rec.id}: {rec.voxels} voxel{'' if rec.voxels == 1 else 's'}, mean p {rec.mean_probability:.2f}"
                 + (f" — flagged: {rec.reason}" if rec.flagged else ""))

    def _highlight(self, lesion_id: int | None) -> None:
        """Give the selected lesion's voxels of the mask layer their own colour."""
        if lesion_id is None and self._selected is None:
            return
        self._sync_edits()  # a paint not yet synced would be overwritten
        self._selected = lesion_id
        self._write_mask()

    def step_flagged(self, step: int = 1) -> int | None:
        """Select the next (1) or previous (-1) flagged lesion in table order."""
        lesion_id = self.panel.table.step_flagged(step)
        if lesion_id is None:
            notify_info("No lesion is flagged.")
        return lesion_id

    def decide(self, status: str | None, lesion_id: int | None = None, comment: str | None = None) -> None:
        """Accept / reject / edit / pending (``status``) and/or comment the (selected) lesion."""
        lesion_id = self.panel.table.selected_id() if lesion_id is None else int(lesion_id)
        if self.review is None or lesion_id is None:
            return
        self._sync_edits()
        dec = self.review.decide(lesion_id, status, comment)
        if status is not None:
            self._write_mask()
        self.panel.table.update_decision(lesion_id, dec)
        self.panel.set_summary(self.review)

    def start_edit(self) -> None:
        """Mark the selected lesion 'edited' and hand the mask layer to napari's paint tools."""
        self.decide("edited")
        layer = self.layers.get("mask")
        if not alive(self.viewer, layer):
            return
        layer.contour = 0
        layer.selected_label = 1
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        self.say("Paint on the mask to add voxels, erase (E) to remove them; the final mask keeps your edits.")

    def _on_paint(self, event=None) -> None:
        # napari emits ``paint`` when an edit enters the undo history, which for a single
        # programmatic ``paint()`` is before the voxels are written: look a turn later
        if not self._writing and self.review is not None:
            QTimer.singleShot(0, self._after_paint)

    def _after_paint(self) -> None:
        if self.review is None:
            return
        changed = self._sync_edits()
        for lesion_id in changed:
            self.panel.table.update_decision(int(lesion_id), self.review.decision(int(lesion_id)))
        self.panel.set_summary(self.review)
        self._update_mask_info()

    def _sync_edits(self):
        layer = self.layers.get("mask")
        if self.review is None or not alive(self.viewer, layer):
            return []
        return self.review.sync_edits(painted_mask(layer.data))

    # ------------------------------------------------------------------ files

    def model_identity(self) -> dict:
        """What the export records about the model (name, file, SHA-256, config summary)."""
        return describe_model(self.models.current(), self.models.path(), self.models.config())

    def _ask_folder(self, action) -> None:
        if self.review is None:
            notify_error("Nothing to save yet: click Segment first.")
            return
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder")
        if folder:
            with user_errors():
                paths = action(folder)
                notify_info(f"Saved {len(paths)} files to {folder}.")

    def save_predictions(self, folder) -> dict:
        """Soft map, mask (final, at the current threshold) and entropy as NIfTI in ``folder``."""
        if self.review is None:
            raise UserError("Nothing to save yet: click Segment first.")
        self._sync_edits()
        return write_predictions(folder, self.scan_layer, self.review, self.result.entropy)

    def export_review(self, folder) -> dict:
        """CSV + JSON of the lesions and decisions, final soft and binary NIfTI, in ``folder``."""
        if self.review is None:
            raise UserError("Nothing to export yet: click Segment first.")
        self._sync_edits()
        if self.review.table is None or abs(self.review.table.threshold - self.review.threshold) > 1e-9:
            self.review.analyse()
            self._write_mask()
            self._refresh_table()
        return write_review(folder, self.scan_layer, self.review, self.model_identity())
