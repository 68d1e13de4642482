"""The Segment dock's warm-up (``widgets/segment/warm.py``): while the user looks at the scan,
the dock loads the model and runs it once on zeros shaped like a few slices of the scan, so
that the first click does not pay for loading and for preparing the kernels.

No test here measures time: the warm-ups that must wait are stand-ins that block on events
the test sets, and every wait is for a state, with a generous bound.
"""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from _docks import SEGMENT, open_dock
from _notes import Notifications

gui = pytest.mark.gui

PHANTOM_KEY_SHAPE, PHANTOM_SPACING = (142, 178, 47), (1.0, 1.0, 3.0)


@pytest.mark.parametrize("shape, channels, axis, expected", [
    ((142, 178, 47), 1, 2, (142, 178, 7)),  # 11 batches of 4, then 3: one of each
    ((240, 240, 155), 1, 2, (240, 240, 7)),  # 155 = 38 x 4 + 3
    ((240, 240, 155), 4, 2, (240, 240, 7, 4)),  # four contrasts: a trailing channel axis
    ((64, 64, 8), 1, 2, (64, 64, 4)),  # no remainder: one full batch
    ((64, 64, 2), 1, 2, (64, 64, 2)),  # fewer slices than a batch: that one batch
    ((11, 320, 320), 1, 0, (7, 320, 320)),  # slices along the first axis
])
def test_warm_up_shape_covers_both_batch_sizes(shape, channels, axis, expected):
    from napari_softseg.widgets.segment.warm import warm_up_shape

    assert warm_up_shape(shape, channels, axis, batch=4) == expected


def test_warm_up_predicts_zeros_through_the_cached_model(tmp_path, monkeypatch):
    """The real warm-up: it loads the model once (Segment then finds it in the cache) and
    predicts an input of the warm-up shape on the scan's voxel size."""
    from napari_softseg.engine import predict
    from napari_softseg.review.segment import cached_model
    from napari_softseg.widgets.segment.warm import warm_up

    path = tmp_path / "lesion.pt"
    shutil.copy(predict.resolve_model_path("ms-lesion"), path)
    loads, shapes = [], []
    real_load, real_predict = predict.load_model, predict.predict_volume
    monkeypatch.setattr(predict, "load_model", lambda p: loads.append(p) or real_load(p))
    monkeypatch.setattr(predict, "predict_volume",
                        lambda model, array, **kw: shapes.append((array.shape, kw["spacing"])) or real_predict(model, array, **kw))
    assert warm_up(path, PHANTOM_KEY_SHAPE, PHANTOM_SPACING) is True
    assert shapes == [((142, 178, 7), PHANTOM_SPACING)]
    assert cached_model(path) is cached_model(path) and loads == [path]  # loaded once, by the warm-up

    stops = iter([False, True])  # after loading: go on; before the first batch: stop
    assert warm_up(path, PHANTOM_KEY_SHAPE, PHANTOM_SPACING, cancel=lambda: next(stops)) is False
    assert loads == [path]


class StandIn:
    """Replaces ``warm.warm_up``: records each call, then blocks until the test releases it
    (``release``) or until the dock cancels it; ``outcome`` says which ended it."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple] = []
        self.outcome: list[str] = []
        self.release = threading.Event()
        self.error = error

    def __call__(self, path, shape, spacing, cancel=None):
        self.calls.append((path.name, shape, spacing))
        if self.error is not None:
            self.outcome.append("raised")
            raise self.error
        for _ in range(6000):  # at most 60 s: a bound, never reached in a passing run
            if self.release.wait(0.01):
                self.outcome.append("released")
                return True
            if cancel is not None and cancel():
                self.outcome.append("cancelled")
                return False
        self.outcome.append("timed out")
        return False


@pytest.fixture
def stand_in(monkeypatch):
    from napari_softseg.widgets.segment import warm

    def install(error=None) -> StandIn:
        fake = StandIn(error)
        monkeypatch.setattr(warm, "warm_up", fake)
        return fake

    return install


def _viewer_with_phantom(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-softseg", "lesion_phantom")
    return viewer


@gui
def test_opening_the_dock_warms_up_once_per_model_and_scan_and_keeps_the_latest_request(
        make_napari_viewer, qtbot, tmp_path, stand_in):
    fake = stand_in()
    viewer = _viewer_with_phantom(make_napari_viewer)
    dock = open_dock(viewer, SEGMENT)
    dock.models.set_model("ms-lesion")
    dock.scan_combo.set_current(viewer.layers["phantom_flair"])
    qtbot.waitUntil(lambda: len(fake.calls) == 1, timeout=30_000)
    assert fake.calls == [("ms-lesion.pt", PHANTOM_KEY_SHAPE, PHANTOM_SPACING)] and dock.warming_up

    # two more requests while the first still runs: only the latest runs after it
    other = tmp_path / "other.pt"
    shutil.copy(dock.models.path(), other)
    dock.models.set_model("brain-gm")
    dock.models.add_file(other)
    assert len(fake.calls) == 1
    fake.release.set()
    qtbot.waitUntil(lambda: len(fake.calls) == 2 and not dock.warming_up, timeout=30_000)
    assert fake.calls[1] == ("other.pt", PHANTOM_KEY_SHAPE, PHANTOM_SPACING)
    assert fake.outcome == ["released", "released"]

    # the same model and scan again: nothing new
    dock.inputs.changed.emit()
    dock.models.add_file(other)
    qtbot.wait(0)  # let queued signals through
    assert len(fake.calls) == 2 and not dock.warming_up


@gui
def test_a_segment_click_cancels_the_warm_up_and_segments(make_napari_viewer, qtbot, stand_in):
    fake = stand_in()
    viewer = _viewer_with_phantom(make_napari_viewer)
    dock = open_dock(viewer, SEGMENT)
    dock.models.set_model("ms-lesion")
    qtbot.waitUntil(lambda: dock.warming_up and len(fake.calls) == 1, timeout=30_000)
    with qtbot.waitSignal(dock.segmented, timeout=180_000):
        assert dock.segment() is not None
    qtbot.waitUntil(lambda: not dock.warming_up, timeout=30_000)
    assert fake.outcome == ["cancelled"] and len(fake.calls) == 1  # the click started no other warm-up
    assert "phantom_flair soft" in viewer.layers


@gui
def test_closing_the_dock_cancels_its_warm_up(make_napari_viewer, qtbot, stand_in):
    fake = stand_in()
    viewer = _viewer_with_phantom(make_napari_viewer)
    dock = open_dock(viewer, SEGMENT)
    qtbot.waitUntil(lambda: len(fake.calls) == 1, timeout=30_000)
    viewer.window.remove_dock_widget(dock)
    dock.deleteLater()
    qtbot.waitUntil(lambda: fake.outcome == ["cancelled"], timeout=30_000)


@gui
def test_a_failing_warm_up_is_silent_and_segment_still_works(make_napari_viewer, qtbot, stand_in):
    """Nothing reaches the event loop or the user from a warm-up that raises; the click
    loads the model itself."""
    fake = stand_in(RuntimeError("the checkpoint could not be read"))
    notes = Notifications()
    viewer = _viewer_with_phantom(make_napari_viewer)
    dock = open_dock(viewer, SEGMENT)
    dock.models.set_model("ms-lesion")
    qtbot.waitUntil(lambda: fake.outcome == ["raised"] and not dock.warming_up, timeout=30_000)
    assert list(notes) == []
    with qtbot.waitSignal(dock.segmented, timeout=180_000):
        dock.segment()
    soft = np.asarray(viewer.layers["phantom_flair soft"].data)
    assert soft.shape == PHANTOM_KEY_SHAPE and 0.0 <= soft.min() and soft.max() <= 1.0
    assert [n for n in notes if "checkpoint" in n] == []
