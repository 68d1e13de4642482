"""The "Train SoftSeg" dock in a real napari viewer (pytest-qt, run under Xvfb).

Training runs in the dock's training process; the ``probe_*`` functions below are loaded
there by name (``dock.probes``) to observe the trainer from inside.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from _docks import TRAINING
from _docks import open_dock as open_plugin_dock
from _notes import Notifications
from _paths import SHARED

pytestmark = pytest.mark.gui

MT = SHARED / "sct_mt"
FINISH_MS = int(__import__("os").environ.get("T6_FINISH_MS", 180_000))


# ------------------------------------------------------------------ probes (training process)
def _cancel_gate(at_call: int):
    """A probe: the ``at_call``-th training step waits (before it runs) until the run's cancel
    flag is set, so that a cancel sent by the viewer always arrives at that step; every
    completed step is logged as (cancel set before it, cancel set after it)."""

    def install():
        import time as _time

        from napari_softseg.engine.training import trainer
        from napari_softseg.engine.training.config import is_cancelled

        original, log, gate = trainer.Trainer.train_step, [], []

        def train_step(self, idx, raters, cancel, **kwargs):
            if len(log) + 1 == at_call:
                deadline = _time.monotonic() + 300  # the test fails rather than hangs
                while not is_cancelled(cancel) and _time.monotonic() < deadline:
                    _time.sleep(0.005)
                gate.append(is_cancelled(cancel))
            before = is_cancelled(cancel)
            loss = original(self, idx, raters, cancel, **kwargs)  # raises once cancel is set
            log.append((before, is_cancelled(cancel)))
            return loss

        trainer.Trainer.train_step = train_step

        def collect():
            trainer.Trainer.train_step = original
            return {"steps": log, "gate_saw_cancel": gate}

        return collect

    return install


probe_cancel_gate_at_step_6 = _cancel_gate(6)
probe_cancel_gate_at_step_3 = _cancel_gate(3)


def probe_targets():
    """Record the training target the trainer builds for the first volume (after fusion)."""
    from napari_softseg.engine.training import slices

    original, seen = slices._targets, []

    def targets(data, subj):
        out = original(data, subj)
        if not seen:
            seen.append(np.asarray(out[0][..., 0], np.float32))
        return out

    slices._targets = targets

    def collect():
        slices._targets = original
        return seen[0] if seen else None

    return collect


def probe_raters():
    """Record the rater index of every training sample and the number of raters held."""
    from napari_softseg.engine.training import trainer

    original, seen = trainer.Trainer._batch, {"raters": [], "held": None}

    def batch(self, idx, raters):
        seen["held"] = int(self.labels.shape[0])
        if raters is not None:
            seen["raters"] += raters.index_select(0, idx).tolist()
        return original(self, idx, raters)

    trainer.Trainer._batch = batch

    def collect():
        trainer.Trainer._batch = original
        return seen

    return collect


def probe_oom():
    """Make the first training step fail as if the device ran out of memory."""
    from napari_softseg.engine.training import trainer

    original = trainer.Trainer._forward_backward

    def forward_backward(self, idx, raters):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    trainer.Trainer._forward_backward = forward_backward

    def collect():
        trainer.Trainer._forward_backward = original
        return True

    return collect


# ------------------------------------------------------------------ helpers
def add_file(viewer, path):
    from napari_softseg.plugin.reader import layer_data

    (data, kwargs, kind), = layer_data(str(path))
    return getattr(viewer, f"add_{kind}")(data, **kwargs)


def mt_viewer(make_napari_viewer):
    """sct_mt: 40x40x5 MT scan (0.84 x 0.84 x 17 mm) with its soft gray-matter map."""
    viewer = make_napari_viewer()
    scan = add_file(viewer, MT / "mt1.nii.gz")
    gm = add_file(viewer, MT / "mt1_gmseg.nii.gz")
    return viewer, scan, gm


def open_dock(viewer, *, epochs=3, batch=2, crop=32, val=0.2):
    dock = open_plugin_dock(viewer, TRAINING)
    dock.params.epochs.setValue(epochs)
    dock.params.batch_size.setValue(batch)
    dock.params.crop_size.setValue(crop)
    dock.params.val_fraction.setValue(val)
    return dock


def run(dock, qtbot, click=True):
    """Start training (button or API) and return ``(events, final event)``."""
    from qtpy.QtCore import Qt

    events = []
    dock.event_received.connect(events.append)
    with qtbot.waitSignal(dock.training_finished, timeout=FINISH_MS) as blocker:
        if click:
            qtbot.mouseClick(dock.train_button, Qt.MouseButton.LeftButton)
        else:
            assert dock.start() is not None
    qtbot.waitUntil(lambda: dock.worker is None, timeout=10_000)
    return events, blocker.args[0]


# ------------------------------------------------------------------ tests
def test_device_list_lists_only_existing_devices(make_napari_viewer):
    import torch

    from napari_softseg.engine.devices import autocast_dtype, available_devices

    viewer, *_ = mt_viewer(make_napari_viewer)
    dock = open_dock(viewer)
    names = dock.params.device_names()
    assert names == [d.name for d in available_devices()]
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert names == ["cpu"]
    # mixed precision is on by default exactly where a reduced precision helps
    assert dock.params.mixed_precision.isChecked() == (autocast_dtype(names[0]) is not None)
    # paper defaults in the form; the scan and its soft map were picked automatically
    cfg = dock.config()
    assert (cfg.preset, cfg.lr, cfg.depth, cfg.base_features) == ("softseg", 1e-3, 3, 16)
    assert [lay.name for lay in dock.rows[0].checked_labels()] == ["mt1_gmseg"]


@pytest.mark.slow
def test_tiny_training_completes_plots_saves_and_publishes(make_napari_viewer, qtbot, tmp_path):
    from napari_softseg.engine.checkpoint import build_model, load_checkpoint
    from napari_softseg.widgets.models import RECENT_MODELS

    viewer, scan, gm = mt_viewer(make_napari_viewer)
    dock = open_dock(viewer, epochs=3)
    soft_before = np.array(gm.data)
    events, done = run(dock, qtbot, click=True)
    assert done.status == "completed", done.message
    # the run worked on a copy: painting after the start could not reach it
    assert np.array_equal(gm.data, soft_before)

    epochs = [e for e in events if e.kind == "epoch"]
    assert [e.epoch for e in epochs] == [1, 2, 3]
    # one plot point per epoch, the values the engine recorded in the checkpoint
    state, config = load_checkpoint(done.checkpoint)
    history = config["training"]["history"]
    assert dock.plot.epochs == [1, 2, 3] == [h["epoch"] for h in history]
    np.testing.assert_allclose(dock.plot.train_loss, [h["train_loss"] for h in history], rtol=1e-6)
    np.testing.assert_allclose(dock.plot.val_loss, [h["val_loss"] for h in history], rtol=1e-6)
    np.testing.assert_allclose(dock.plot.val_dice, [h["val_dice"] for h in history], rtol=1e-6)
    qtbot.waitUntil(lambda: dock.plot.rendered_points == 3, timeout=20_000)

    # written automatically to the predictable place, loadable, published
    path = Path(done.checkpoint)
    assert path.parent == tmp_path / "userdata" / "models"
    assert re.fullmatch(r"\d{8}-\d{6}_softseg\.pt", path.name)
    model = build_model(config, state)
    x = np.zeros((1, 1, 32, 32), np.float32)
    import torch

    out = model(torch.from_numpy(x)).detach().numpy()
    assert out.shape == (1, 1, 32, 32) and 0.0 <= out.min() and out.max() <= 1.0
    assert RECENT_MODELS.latest().path == path
    # the optimised threshold is shown
    assert config["threshold"] == pytest.approx(done.threshold)
    assert f"threshold {done.threshold:.2f}" in dock.result_label.text()

    # the preview layer holds the last preview on the scan's grid, at the chosen slice
    last = [e for e in epochs if e.preview is not None][-1]
    preview = viewer.layers["training preview"]
    assert preview.data.shape == scan.data.shape
    np.testing.assert_allclose(preview.data[:, :, last.preview_slice[1]], last.preview, atol=1e-6)
    np.testing.assert_allclose(preview.affine.affine_matrix, scan.affine.affine_matrix)

    # Save model: an exact, atomic copy, published too
    saved = dock.save_model(tmp_path / "mine")
    assert saved == tmp_path / "mine.pt" and saved.read_bytes() == path.read_bytes()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert RECENT_MODELS.latest().path == saved
    assert dock.train_button.isEnabled() and not dock.cancel_button.isEnabled()


@pytest.mark.slow
def test_cancel_mid_epoch_keeps_best_then_finetune_continues(make_napari_viewer, qtbot):
    from qtpy.QtCore import Qt

    from napari_softseg.engine.checkpoint import build_model, load_checkpoint

    viewer, *_ = mt_viewer(make_napari_viewer)
    dock = open_dock(viewer, epochs=50, batch=1)  # 4 training slices: 4 steps per epoch
    # the 6th step (epoch 2, step 2) waits until the cancel sent after epoch 2's first step is seen
    probe = f"{__name__}:probe_cancel_gate_at_step_6"
    dock.probes = [probe]
    clicked = []

    def cancel_in_epoch_2(ev):
        if ev.kind == "step" and ev.phase == "train" and ev.epoch == 2 and not clicked:
            clicked.append(ev.step)
            qtbot.mouseClick(dock.cancel_button, Qt.MouseButton.LeftButton)

    dock.event_received.connect(cancel_in_epoch_2)
    events, done = run(dock, qtbot)
    assert done.status == "cancelled"
    start = next(e for e in events if e.kind == "start")
    assert start.steps_per_epoch == 4 and clicked == [1]
    seen = done.summary["probes"][probe]
    assert seen["gate_saw_cancel"] == [True]
    log = seen["steps"]
    assert len(log) == 5  # epoch 1 complete, epoch 2's first step, then the cancel stopped the run
    assert not any(before for before, _ in log)  # no step started once cancel was seen
    # the best checkpoint (epoch 1) was written and loads
    state, config = load_checkpoint(done.checkpoint)
    build_model(config, state)
    training = config["training"]
    assert (training["status"], training["best_epoch"], training["epochs_total"]) == ("cancelled", 1, 1)
    assert len(training["history"]) == 1
    assert "Cancelled" in dock.result_label.text()

    # fine-tune the cancelled model ("Last" = the last trained model)
    dock.probes = []
    dock.event_received.disconnect(cancel_in_epoch_2)
    dock.params.finetune_radio.setChecked(True)
    qtbot.mouseClick(dock.params.last_button, Qt.MouseButton.LeftButton)
    assert Path(dock.params.init_path.text()) == Path(done.checkpoint)
    dock.params.epochs.setValue(2)
    events2, done2 = run(dock, qtbot)
    assert done2.status == "completed", done2.message
    start = next(e for e in events2 if e.kind == "start")
    assert start.start_epoch == 1
    # same data, split and weights: the loss before the first step is the one the
    # cancelled run kept as its best
    assert start.start_loss == pytest.approx(training["best_val_loss"], rel=1e-4)
    assert f"continues after epoch 1; validation loss before the first step {start.start_loss:.4g}" in dock.start_label.text()
    assert dock.plot.start == (1, pytest.approx(start.start_loss)) and dock.plot.epochs == [2, 3]
    state2, config2 = load_checkpoint(done2.checkpoint)
    assert config2["training"]["init"] == Path(done.checkpoint).name
    assert config2["training"]["start_epoch"] == 1


@pytest.mark.slow
def test_random_sampling_uses_several_raters(make_napari_viewer, qtbot, phantom):
    from napari_softseg.widgets.annotation.rater_layers import add_rater_layer

    # the four slices with the most lesion, whole in-plane extent (142 x 178, 1 x 1 x 3 mm)
    z = np.argsort(phantom.truth.sum(axis=(0, 1)))[-4:]
    z = np.arange(z.min(), z.min() + 4) if z.max() - z.min() > 3 else np.sort(z)
    viewer = make_napari_viewer()
    scan = viewer.add_image(phantom.image[:, :, z], affine=phantom.affine, name="flair", rgb=False)
    raters = [add_rater_layer(viewer, name, scan, data=mask[:, :, z] * 10) for name, mask in phantom.raters.items()]
    dock = open_dock(viewer, epochs=2, batch=2, crop=64, val=0.25)
    dock.data.set_label_source("random")
    assert dock.rows[0].checked_labels() == raters  # every rater of the scan, automatically
    dock.probes = [f"{__name__}:probe_raters"]
    _, done = run(dock, qtbot)
    assert done.status == "completed", done.message
    seen = done.summary["probes"][f"{__name__}:probe_raters"]
    assert seen["held"] == 4  # the trainer kept all four raters ...
    assert len(set(seen["raters"])) > 1  # ... and drew targets from more than one
    assert done.summary["label_source"] == "random"


@pytest.mark.slow
def test_training_runs_outside_the_viewer_process_while_the_event_loop_turns(
        make_napari_viewer, qtbot, record_property, monkeypatch):
    """No training step runs in the viewer's process, and the viewer's event loop turns while
    the training process trains (the stall itself is measured in
    ``benchmarks/bench_responsiveness.py``)."""
    import threading

    from qtpy.QtCore import QTimer

    from napari_softseg.engine.training import trainer

    in_viewer_process = []
    original = trainer.Trainer.train_step

    def spy(self, *args, **kwargs):
        in_viewer_process.append(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer.Trainer, "train_step", spy)
    viewer, *_ = mt_viewer(make_napari_viewer)
    dock = open_dock(viewer, epochs=40, batch=2)  # 2 steps per epoch: events as fast as possible
    from napari_softseg.engine.training import child as _training_child

    # the dock starts its training process at once, in the background
    qtbot.waitUntil(lambda: any(p.alive() for p in _training_child._POOL), timeout=60_000)
    # The 3rd training step waits until the run is cancelled, and only the viewer's 10 ms
    # timer cancels it (at its first tick after a step event): the run can only end if the
    # event loop turns while the training process trains.
    probe = f"{__name__}:probe_cancel_gate_at_step_3"
    dock.probes = [probe]
    gaps, last, steps_seen, ticks_during = [], [0.0], [], []

    def tick():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now
        if steps_seen and not ticks_during:
            ticks_during.append(now)
            dock.cancel()

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    events = []
    dock.event_received.connect(events.append)
    dock.event_received.connect(lambda ev: steps_seen.append(ev) if ev.kind == "step" else None)
    with qtbot.waitSignal(dock.training_finished, timeout=FINISH_MS) as blocker:
        dock.start()
        last[0] = time.perf_counter()
        timer.start()
    timer.stop()
    done = blocker.args[0]
    assert done.status == "cancelled" and len(ticks_during) == 1
    assert done.summary["probes"][probe]["gate_saw_cancel"] in ([True], [])  # cancelled at or before the gate
    assert 1 <= sum(e.kind == "step" for e in events) <= 2
    worst = max(gaps) * 1000
    record_property("max_event_loop_gap_ms", round(worst, 1))
    print(f"\nmax event-loop gap while training: {worst:.1f} ms over {len(gaps)} ticks, {len(events)} events")
    assert in_viewer_process == []  # every step ran in the training process


def test_user_errors_are_one_sentence_notifications(make_napari_viewer, tmp_path):
    viewer, scan, gm = mt_viewer(make_napari_viewer)
    dock = open_dock(viewer)
    row = dock.rows[0]

    def attempt(labels):
        row.set_labels(labels)
        notes = Notifications()
        assert dock.start() is None and dock.worker is None
        msgs = notes.messages()
        assert len(msgs) == 1 and msgs[0].count(". ") == 0 and msgs[0].endswith(".")
        return msgs[0]

    wrong_shape = viewer.add_labels(np.ones((40, 40, 4), np.uint8), name="short", affine=scan.affine.affine_matrix)
    assert "has shape (40, 40, 4) but scan 'mt1' has (40, 40, 5)" in attempt([wrong_shape])
    moved = scan.affine.affine_matrix.copy()
    moved[0, 3] += 5.0
    elsewhere = viewer.add_labels(np.ones((40, 40, 5), np.uint8), name="moved", affine=moved)
    assert "lies elsewhere in world space" in attempt([elsewhere])
    empty = viewer.add_labels(np.zeros((40, 40, 5), np.uint8), name="blank", affine=scan.affine.affine_matrix)
    assert "'blank' is empty" in attempt([empty])
    assert "Choose at least one label layer" in attempt([])
    # two scans with different numbers of contrasts
    second = viewer.add_image(np.array(scan.data), name="c0", affine=scan.affine.affine_matrix,
                              metadata={"softseg_scan": {"group": "two", "channel": 0}})
    viewer.add_image(scan.data, name="c1", affine=scan.affine.affine_matrix, metadata={"softseg_scan": {"group": "two", "channel": 1}})
    row.set_labels([gm])
    row2 = dock.data.add_row()
    row2.set_scan("two")
    assert [lay.name for lay in row2.entry().layers] == ["c0", "c1"] and row2.entry().reference is second
    row2.set_labels([gm])
    notes = Notifications()
    assert dock.start() is None
    assert "Scan 'mt1' has 1 contrast(s) but 'two' has 2" in notes[0]
    assert dock.train_button.isEnabled()


@pytest.mark.slow
def test_failure_in_training_notifies_and_dock_stays_usable(make_napari_viewer, qtbot):
    viewer, *_ = mt_viewer(make_napari_viewer)
    dock = open_dock(viewer, epochs=2)
    dock.probes = [f"{__name__}:probe_oom"]
    notes = Notifications()
    _, done = run(dock, qtbot, click=False)
    assert done.status == "failed"
    assert any("ran out of memory with batch size 2" in m for m in notes)
    assert dock.train_button.isEnabled() and dock.params.isEnabled() and dock.worker is None
    assert dock.progress_bar.format() == "failed"


def test_snapshots_copy_and_convert_rater_levels_and_folders(make_napari_viewer, tmp_path):
    from napari_softseg.io.nifti import read_nifti, write_nifti
    from napari_softseg.widgets.annotation.rater_layers import add_rater_layer
    from napari_softseg.engine.training.pairing import pair_folder
    from napari_softseg.engine.training.sources import build_training_data

    viewer, scan, gm = mt_viewer(make_napari_viewer)
    levels = np.zeros((40, 40, 5), np.uint8)
    levels[10:20, 10:20, 1:4] = 7
    levels[12:14, 12:14, 2] = 10
    rater = add_rater_layer(viewer, "rater A", scan, data=levels)
    dock = open_dock(viewer)
    dock.rows[0].set_labels([rater])
    (snap,) = dock.data.snapshots()
    assert not np.shares_memory(snap.labels[0], rater.data) and not np.shares_memory(snap.image, scan.data)
    assert snap.spacing == pytest.approx(read_nifti(MT / "mt1.nii.gz").spacing)
    # folders: <stem>.nii.gz pairs with <stem>.nii.gz or <stem>_<rater>.nii.gz
    images, labels = tmp_path / "img", tmp_path / "lab"
    images.mkdir(), labels.mkdir()
    vol = read_nifti(MT / "mt1.nii.gz")
    for stem in ("s1", "s10"):
        write_nifti(images / f"{stem}.nii.gz", vol.data, like=vol)
    write_nifti(labels / "s1.nii.gz", levels > 0, like=vol)
    write_nifti(labels / "s10_seg.nii.gz", levels > 5, like=vol)
    pairs = pair_folder(images, labels)
    assert [(i.name, [p.name for p in ls]) for i, ls in pairs] == [("s1.nii.gz", ["s1.nii.gz"]), ("s10.nii.gz", ["s10_seg.nii.gz"])]
    data = build_training_data([snap], [(images, labels)], "label")
    assert [s.name for s in data.subjects] == ["mt1", "s1", "s10"]
    np.testing.assert_array_equal(data.subjects[0].labels[0][..., 0], levels / np.float32(10))  # level k -> k/10
    np.testing.assert_array_equal(data.subjects[2].labels[0][..., 0], (levels > 5).astype(np.float32))
    (labels / "s10_seg.nii.gz").unlink()
    with pytest.raises(Exception, match="Image s10.nii.gz has no label"):
        pair_folder(images, labels)


def _check(row, names) -> None:
    """Tick exactly the label layers ``names`` in a scan row, as a user clicks the boxes."""
    from qtpy.QtCore import Qt

    for i in range(row.labels_list.count()):
        item = row.labels_list.item(i)
        name = item.text().replace("  (rater)", "")
        item.setCheckState(Qt.CheckState.Checked if name in names else Qt.CheckState.Unchecked)


def test_choices_survive_layer_changes_seen_through_the_plugin_proxy(make_napari_viewer):
    """napari hands the dock new proxy objects on every access: the ticked labels and the
    chosen scan of a row stay chosen when layers are added."""
    viewer, scan, gm = mt_viewer(make_napari_viewer)
    seg = add_file(viewer, MT / "mt1_seg.nii.gz")
    other = viewer.add_image(np.array(scan.data), name="mt1 copy", affine=scan.affine.affine_matrix)
    dock = open_dock(viewer)
    row = dock.rows[0]
    assert [lay.name for lay in row.checked_labels()] == ["mt1_gmseg"]  # the soft map, proposed
    _check(row, {"mt1_seg"})
    row.scan_combo.setCurrentIndex([e.name for e in row.entries()].index("mt1 copy"))
    _check(row, {"mt1_seg"})
    viewer.add_labels(np.zeros((40, 40, 5), np.uint8), name="new labels", affine=scan.affine.affine_matrix)
    assert row.entry().name == "mt1 copy" and [lay.name for lay in row.checked_labels()] == ["mt1_seg"]
    row.set_labels([seg, gm])
    assert [lay.name for lay in row.checked_labels()] == ["mt1_gmseg", "mt1_seg"]
    second = dock.data.add_row()  # proposes the scan not used yet
    assert second.entry().name == "mt1"
    (snap,) = [s for s in dock.data.snapshots() if s.name == "mt1 copy"]
    assert snap.label_names == ["mt1_gmseg", "mt1_seg"]
    assert not np.shares_memory(other.data, snap.image)  # a copy


@pytest.mark.slow
def test_fused_label_source_preset_and_fine_tuning_a_file(make_napari_viewer, qtbot, tmp_path):
    """STAPLE of three raters as the target (checked against SimpleITK), the conventional
    preset, then fine-tuning a checkpoint file typed into the dock."""
    import shutil

    from _oracles import itk_staple
    from napari_softseg.engine.checkpoint import load_checkpoint
    from napari_softseg.widgets.annotation.rater_layers import add_rater_layer

    viewer, scan, gm = mt_viewer(make_napari_viewer)
    core = np.zeros((40, 40, 5), bool)
    core[14:26, 15:27, :] = True
    masks = [core, np.roll(core, 2, axis=0), core & (np.indices(core.shape)[1] < 24)]
    for k, m in enumerate(masks):
        add_rater_layer(viewer, f"r{k}", scan, data=(m * 10).astype(np.uint8))
    dock = open_dock(viewer, epochs=1, batch=2, crop=32)
    dock.data.set_label_source("staple")
    assert [lay.name for lay in dock.rows[0].checked_labels()] == ["r0", "r1", "r2"]  # the raters, proposed
    dock.params.preset_combo.setCurrentIndex(dock.params.preset_combo.findData("conventional"))
    probe = f"{__name__}:probe_targets"
    dock.probes = [probe]
    _, done = run(dock, qtbot)
    assert done.status == "completed", done.message
    post, *_ = itk_staple([m.astype(np.uint8) for m in masks])
    np.testing.assert_allclose(done.summary["probes"][probe], post, atol=1e-5)  # the trainer's target
    assert done.summary["label_source"] == "staple"
    state, config = load_checkpoint(done.checkpoint)
    assert config["preset"] == "conventional" and config["architecture"]["activation"] == "sigmoid"

    # fine-tune a file: typing its path selects its preset, and training starts from its weights
    start_file = tmp_path / "start.pt"
    shutil.copy(done.checkpoint, start_file)
    dock.probes = []
    dock.params.preset_combo.setCurrentIndex(dock.params.preset_combo.findData("softseg"))
    dock.params.finetune_radio.setChecked(True)
    dock.params.init_path.setText(str(start_file))
    assert dock.params.preset_combo.currentData() == "conventional"
    assert not dock.params.depth.isEnabled()  # the file's architecture is kept
    events, done2 = run(dock, qtbot)
    assert done2.status == "completed", done2.message
    start = next(e for e in events if e.kind == "start")
    assert start.start_epoch == 1
    assert start.start_loss == pytest.approx(config["training"]["best_val_loss"], rel=1e-4)
    _, config2 = load_checkpoint(done2.checkpoint)
    assert config2["training"]["init"] == "start.pt" and config2["preset"] == "conventional"
    assert "Fine-tuning start.pt: continues after epoch 1" in dock.start_label.text()

    # a shipped model by name, as the Segment dock's note for ms-lesion says
    from napari_softseg.engine.predict import MODELS_DIR

    dock.params.init_path.setText("ms-lesion")
    assert dock.params.init_checkpoint() == MODELS_DIR / "ms-lesion.pt"
    assert dock.params.preset_combo.currentData() == "softseg"  # the shipped model's preset, followed
