"""Details of the docks as napari loads them: the tabbed title keeps its "&", the training
preview's colours differ from the soft label's, the training dock measures a run before it
starts and proposes the epochs that fit the time budget, and Cancel is seen within one slice
of validation.

Oracles: Qt's mnemonic rule (a single "&" is a shortcut marker, "&&" a literal "&"); colours
read from both colormaps; the estimate's arithmetic worked out by hand; counted forward passes.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest


# ---------------------------------------------------------------------------- title

@pytest.mark.gui
def test_tabbed_segment_dock_title_shows_its_ampersand(make_napari_viewer):
    from qtpy.QtWidgets import QApplication, QTabBar

    viewer = make_napari_viewer(show=True)
    docks = {name: viewer.window.add_plugin_dock_widget("napari-softseg", name, tabify=True)[0]
             for name in ("Soft annotation", "Segment & review")}
    QApplication.processEvents()
    # Qt draws "&&" as "&"; a single "&" would underline the next letter and vanish ("Segment _review")
    assert docks["Segment & review"].windowTitle() == "Segment && review (napari-softseg)"
    assert docks["Soft annotation"].windowTitle() == "Soft annotation (napari-softseg)"
    tabs = [bar.tabText(i) for bar in viewer.window._qt_window.findChildren(QTabBar) for i in range(bar.count())]
    assert "Segment && review (napari-softseg)" in tabs
    assert "Segment & review (napari-softseg)" in viewer.window.dock_widgets  # napari's own name is unchanged


# ---------------------------------------------------------------------------- preview colours

def test_training_preview_colours_differ_from_the_soft_label():
    from napari_softseg.plugin.layers import preview_colormap, soft_colormap

    values = np.array([0.25, 0.5, 0.75, 1.0])
    soft, preview = soft_colormap().map(values), preview_colormap().map(values)
    assert soft_colormap().name != preview_colormap().name
    # at every probability above 0 the hues differ clearly: the soft ramp is red/yellow-dominant,
    # the preview green-dominant
    assert np.all(np.argmax(preview[:, :3], axis=1) == 1)
    assert np.all(np.argmax(soft[:, :3], axis=1) != 1)
    assert np.all(np.abs(soft[:, :3] - preview[:, :3]).max(axis=1) > 0.3)
    assert preview_colormap().map(np.array([0.0]))[0, 3] == 0  # transparent where nothing is predicted


@pytest.mark.gui
def test_the_preview_layer_uses_the_preview_colours(make_napari_viewer):
    from types import SimpleNamespace

    from napari_softseg.plugin.layers import PREVIEW_COLORMAP_NAME
    from napari_softseg.widgets.training.layers import TrainingPreview

    viewer = make_napari_viewer()
    scan = viewer.add_image(np.zeros((8, 9, 4), np.float32), name="scan")
    preview = TrainingPreview(viewer)
    preview.prepare(SimpleNamespace(image=np.zeros((8, 9, 4), np.float32), layer=scan), 2)
    assert viewer.layers["training preview"].colormap.name == PREVIEW_COLORMAP_NAME


# ---------------------------------------------------------------------------- time estimate

def test_run_estimate_arithmetic():
    from napari_softseg.widgets.training.estimate import RunEstimate, describe, duration

    est = RunEstimate("CPU", steps_per_epoch=10, val_batches=3, step_s=2.0, val_batch_s=1.0, prep_s=5.0)
    assert est.epoch_s == 23.0  # 10 x 2 s + 3 x 1 s
    assert est.fixed_s == 16.0  # 5 s + (3 initial + ceil(10/2) + 3 threshold batches) x 1 s
    assert est.total_s(200) == 200 * 23 + 16
    assert est.epochs_within(600, 200) == 25  # floor((600 - 16) / 23)
    assert est.epochs_within(10, 200) == 1 and est.epochs_within(1e6, 200) == 200
    assert duration(45) == "45 s" and duration(600) == "10 min" and duration(4616) == "1 h 17 min"
    text = describe(est, 200, 10, 25)
    assert text == ("Measured on CPU: 23.0 s per epoch (10 steps of 2.00 s, 3 validation batches); 200 epochs "
                    "≈ 1 h 17 min. Epochs set to 25 (≈ 10 min) to fit the 10-minute budget; raise them to train longer.")
    assert describe(est, 200, 10, None).endswith("That is over the 10-minute budget (25 epochs would fit).")
    # a batch-wide NormReLU network fits its output normaliser in one more pass like the threshold search
    fitted = RunEstimate("CPU", steps_per_epoch=10, val_batches=3, step_s=2.0, val_batch_s=1.0, prep_s=5.0,
                         normaliser_pass=True)
    assert fitted.fixed_s == 24.0  # 5 s + (3 + 2 x (5 + 3)) x 1 s


@pytest.mark.gui
@pytest.mark.slow
def test_train_measures_the_run_and_starts_with_the_epochs_that_fit(make_napari_viewer, shared_data, qtbot, tmp_path,
                                                                     monkeypatch):
    from napari_softseg.engine.training.train import TrainConfig
    from napari_softseg.widgets.training.estimate import describe

    monkeypatch.setenv("NAPARI_SOFTSEG_DATA", str(tmp_path / "userdata"))
    viewer = make_napari_viewer()
    for name in ("mt1", "mt1_gmseg"):
        viewer.open(str(shared_data / f"sct_mt/{name}.nii.gz"), plugin="napari-softseg")
    _, dock = viewer.window.add_plugin_dock_widget("napari-softseg", "Train SoftSeg")
    dock.estimate_timer.stop()  # the measurement this test makes is the one Train asks for
    dock.params.batch_size.setValue(2)
    dock.params.crop_size.setValue(32)
    dock.budget.setValue(1)
    assert dock.params.epochs.value() == TrainConfig().epochs  # the user has not chosen the epochs
    events = []
    dock.event_received.connect(events.append)
    assert dock.start() is not None  # measures first ...
    qtbot.waitUntil(lambda: dock.estimate is not None and dock.worker is not None, timeout=180_000)
    est = dock.estimate
    proposed = est.epochs_within(60.0, TrainConfig().epochs)
    assert dock.params.epochs.value() == proposed  # ... proposes what fits one minute ...
    assert dock.estimate_label.text() == describe(est, TrainConfig().epochs, 1, proposed)
    assert est.steps_per_epoch >= 1 and est.step_s > 0 and est.val_batches >= 1
    assert est.normaliser_pass  # the default softseg preset fits its output normaliser after training
    qtbot.waitUntil(lambda: any(e.kind == "start" for e in events), timeout=180_000)
    assert next(e for e in events if e.kind == "start").epochs == proposed  # ... and trains that many
    with qtbot.waitSignal(dock.training_finished, timeout=180_000):
        dock.cancel()
    # epochs chosen by the user: no measurement before Train, the run starts at once
    qtbot.waitUntil(lambda: dock.worker is None, timeout=30_000)
    dock.params.epochs.setValue(1)
    assert dock.start() is dock.worker and dock.worker is not None
    with qtbot.waitSignal(dock.training_finished, timeout=180_000):
        pass


# ---------------------------------------------------------------------------- cancel

def test_cancel_during_validation_is_seen_after_one_slice(shared_data, tmp_path, monkeypatch):
    from napari_softseg.engine.training import trainer as trainer_module
    from napari_softseg.engine.training.data import TrainingData
    from napari_softseg.engine.training.train import TrainConfig, train
    from napari_softseg.io.nifti import read_nifti

    bet = read_nifti(shared_data / "fast_t1" / "bet.nii.gz")
    gm = read_nifti(shared_data / "fast_t1" / "pve_1.nii.gz")
    data = TrainingData.from_arrays([bet.data[:, :, 60:68].astype(np.float32)], [gm.data[:, :, 60:68].astype(np.float32)],
                                    spacings=[bet.spacing])
    cfg = TrainConfig(epochs=3, depth=1, base_features=4, batch_size=2, crop_size=(32, 32), val_fraction=0.5, seed=0,
                      device="cpu")
    passes: list[int] = []  # slices of each forward pass
    real = trainer_module.Trainer._predict

    def counting(self, x):
        passes.append(int(x.shape[0]))
        return real(self, x)

    monkeypatch.setattr(trainer_module.Trainer, "_predict", counting)
    flag = threading.Event()
    events = []
    for ev in train(cfg, data, cancel=lambda: flag.is_set() or bool(passes), checkpoint_path=tmp_path / "c.pt"):
        events.append(ev)
    # the cancel arrived after the first slice of the first validation batch (4 slices): it was seen
    # before the second slice, not at the end of the batch
    assert passes == [1]
    assert events[-1].kind == "done" and events[-1].status == "cancelled"
    assert not any(e.kind == "step" and e.phase == "train" for e in events)
