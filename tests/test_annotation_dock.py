"""The Soft annotation dock in a real napari viewer (pytest-qt, run under Xvfb)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _docks import ANNOTATION, real
from _docks import open_dock as open_plugin_dock
from _notes import Notifications
from _paths import SHARED
from _strokes import kill_test_strokes, play, stroke, sweep_strokes

pytestmark = pytest.mark.gui

T2S = SHARED / "sct_t2s" / "t2s_uncropped.nii.gz"
MT = SHARED / "sct_mt"
BET = SHARED / "fast_t1" / "bet.nii.gz"


def copy_scan(src: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(src, folder / src.name))


def add_scan(viewer, path):
    from napari_softseg.io.nifti import read_nifti

    vol = read_nifti(path)
    return viewer.add_image(vol.data, affine=vol.affine, metadata=vol.geometry_metadata(), name=vol.name)


def open_dock(viewer):
    return open_plugin_dock(viewer, ANNOTATION)


def settle(dock) -> None:
    """Run the event loop until the dock has measured every edit (volumes are measured on
    the next turn of the loop after a stroke, undo or redo)."""
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()
    deadline = time.monotonic() + 30
    while dock._measure_timer.isActive() and time.monotonic() < deadline:
        QApplication.processEvents()
    assert not dock._measure_timer.isActive()


def disc(shape, centre, radius):
    """napari's 2-D brush footprint (radius floor(size/2) + 0.5) in the first two axes."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def t2s_session(make_napari_viewer, tmp_path):
    """(Not a fixture: a fixture returning the viewer would keep it alive past napari's
    leak check.) A viewer showing the axial plane (array axes 0, 1) of a writable copy of the T2* scan."""
    viewer = make_napari_viewer()
    scan = add_scan(viewer, copy_scan(T2S, tmp_path / "scans"))
    viewer.dims.order = (2, 0, 1)
    dock = open_dock(viewer)
    return viewer, scan, dock


def test_rater_layer_has_the_scan_geometry_and_confidence_colormap(make_napari_viewer, tmp_path):
    from napari.utils.colormaps import DirectLabelColormap

    from napari_softseg.labels.levels import level_colors

    viewer, scan, dock = t2s_session(make_napari_viewer, tmp_path)
    layer = dock.add_rater("alice")
    assert layer.data.shape == scan.data.shape and layer.data.dtype == np.uint8
    np.testing.assert_allclose(layer.affine.affine_matrix, scan.affine.affine_matrix)
    assert layer.metadata["softseg_role"] == "rater"
    assert isinstance(layer.colormap, DirectLabelColormap)
    for k in (1, 5, 10):
        np.testing.assert_allclose(layer.colormap.map(np.array([k]))[0], level_colors()[k], atol=1e-6)
    assert viewer.layers.selection.active is real(layer) and layer.mode == "paint"
    assert dock.add_rater("alice").name == "alice 1"


def test_paint_two_levels_gives_the_soft_map_and_undo_reverts(make_napari_viewer, tmp_path):
    from napari_softseg.labels.levels import levels_to_soft

    viewer, scan, dock = t2s_session(make_napari_viewer, tmp_path)
    layer = dock.add_rater("alice")
    layer.brush_size = 5  # napari's footprint: radius 2.5 -> 21 voxels
    dock.set_level(7)
    layer.paint((100, 100, 5), layer.selected_label)
    after_first = layer.data.copy()
    dock.set_level(3)
    assert layer.selected_label == 3
    layer.paint((102, 100, 5), layer.selected_label)

    d1, d2 = disc((320, 320), (100, 100), 2.5), disc((320, 320), (102, 100), 2.5)
    expected = np.zeros((320, 320), np.float32)
    expected[d1] = 0.7
    expected[d2] = 0.3
    soft = levels_to_soft(layer.data)
    np.testing.assert_allclose(soft[:, :, 5], expected, atol=1e-7)
    assert not soft[:, :, [4, 6]].any()
    n7, n3 = int((expected == np.float32(0.7)).sum()), int((expected == np.float32(0.3)).sum())
    assert (d1.sum(), n3) == (21, 21)
    vox = 0.5 * 0.5 * 7.5
    settle(dock)
    row = [dock.table.item(0, c).text() for c in range(3)]
    assert row == ["alice", f"{(0.7 * n7 + 0.3 * n3) * vox:.1f}", f"{n7 * vox:.1f}"]

    layer.undo()
    settle(dock)
    assert np.array_equal(layer.data, after_first)
    assert dock.table.item(0, 1).text() == f"{0.7 * 21 * vox:.1f}"  # undo seen by the dock
    layer.undo()
    settle(dock)
    assert not layer.data.any() and dock.table.item(0, 1).text() == "0.0"
    layer.redo()
    assert np.array_equal(layer.data, after_first)

    # napari's fill and polygon tools paint the current level too, and undo as usual
    dock.set_level(6)
    layer.paint_polygon(np.array([[10, 10, 5], [10, 20, 5], [20, 20, 5], [20, 10, 5]]), layer.selected_label)
    assert np.all(layer.data[12:19, 12:19, 5] == 6) and layer.data[12, 12, 4] == 0
    dock.set_level(2)
    layer.fill((300, 300, 5), layer.selected_label)  # the background of the slice
    settle(dock)
    assert layer.data[300, 5, 5] == 2 and layer.data[100, 100, 5] == 7 and layer.data[15, 15, 5] == 6
    assert layer.data[300, 300, 4] == 0
    layer.undo()
    layer.undo()
    assert np.array_equal(layer.data, after_first)


def test_level_keys_slider_and_clamp(make_napari_viewer, tmp_path, qtbot):
    from qtpy.QtCore import Qt

    viewer, scan, dock = t2s_session(make_napari_viewer, tmp_path)
    layer = dock.add_rater("alice")
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, Qt.Key.Key_3, Qt.KeyboardModifier.AltModifier)
    assert layer.selected_label == 3 and dock.slider.value() == 3 and dock.level_label.text() == "0.3"
    qtbot.keyClick(canvas, Qt.Key.Key_0, Qt.KeyboardModifier.AltModifier)
    assert layer.selected_label == 10 and dock.level_buttons[9].isChecked()
    qtbot.keyClick(canvas, Qt.Key.Key_Equal)  # napari's own "increase label" stays within the levels
    assert layer.selected_label == 10
    qtbot.keyClick(canvas, Qt.Key.Key_Minus)
    assert layer.selected_label == 9 and dock.slider.value() == 9
    assert layer.mode == "paint"  # napari's plain-digit mode keys are not overridden
    qtbot.keyClick(canvas, Qt.Key.Key_4)
    assert layer.mode == "fill"
    dock.slider.setValue(6)
    assert layer.selected_label == 6


def test_soft_edge_gives_half_covered_border_voxels_half_the_level(make_napari_viewer, tmp_path):
    viewer, scan, dock = t2s_session(make_napari_viewer, tmp_path)
    layer = dock.add_rater("alice")
    layer.brush_size = 6  # disc radius 3; napari paints voxels within 3.5 of the path
    layer.paint((50, 50, 5), 4)  # an existing level-4 patch under part of the stroke
    dock.soft_edge.setChecked(True)
    dock.set_level(10)
    stroke(layer, [(100, 100, 5), (100, 130, 5)])
    col = layer.data[94:107, 115, 5].tolist()
    # rows 97 and 103 span [c-0.5, c+0.5] around the band edge |y - 100| = 3: half covered
    assert col == [0, 0, 0, 5, 10, 10, 10, 10, 10, 5, 0, 0, 0]
    # a stroke crossing the level-4 patch blends: 0.5 * 10 + 0.5 * 4 = 7 on its border
    stroke(layer, [(47, 40, 5), (47, 60, 5)])
    assert layer.data[50, 52, 5] == 7 and layer.data[44, 52, 5] == 5 and layer.data[47, 52, 5] == 10
    layer.undo()  # one undo reverts the stroke and its soft edge
    assert layer.data[50, 52, 5] == 4 and layer.data[44, 52, 5] == 0
    layer.undo()
    assert layer.data[94:107, 115, 5].tolist() == [0] * 13
    layer.redo()
    assert layer.data[94:107, 115, 5].tolist() == col


def test_eraser_leaves_a_soft_rim_and_fill_and_polygon_stay_exact_with_soft_edge_on(make_napari_viewer, tmp_path):
    viewer, scan, dock = t2s_session(make_napari_viewer, tmp_path)
    layer = dock.add_rater("alice")
    layer.data[80:121, 90:141, 5] = 10
    layer.refresh()
    dock.soft_edge.setChecked(True)
    layer.mode = "erase"
    layer.brush_size = 6  # napari erases voxels within 3.5 of the path
    stroke(layer, [(100, 100, 5), (100, 130, 5)])
    # rows 97 and 103 are half covered by the band |y - 100| <= 3: (1 - 0.5) x 10 = 5 is left
    assert layer.data[94:107, 115, 5].tolist() == [10, 10, 10, 5, 0, 0, 0, 0, 0, 5, 10, 10, 10]
    assert np.all(layer.data[80:94, 90:141, 5] == 10) and np.all(layer.data[107:121, 90:141, 5] == 10)
    layer.undo()  # one undo restores the block, rim included
    assert np.all(layer.data[80:121, 90:141, 5] == 10)

    # fill and polygon paint the level exactly, without a fractional border
    layer.mode = "paint"
    dock.set_level(6)
    layer.paint_polygon(np.array([[10, 10, 5], [10, 20, 5], [20, 20, 5], [20, 10, 5]]), layer.selected_label)
    poly = layer.data[:, :, 5] == 6
    assert np.all(poly[12:19, 12:19]) and set(np.unique(layer.data[5:26, 5:26, 5]).tolist()) == {0, 6}
    assert poly[5:26, 5:26].sum() == poly.sum()  # nothing outside the polygon's neighbourhood
    dock.set_level(3)
    before = layer.data.copy()
    layer.fill((100, 115, 5), layer.selected_label)  # the block, 41 x 51 voxels of level 10
    changed = layer.data != before
    assert changed.sum() == 41 * 51 and np.all(layer.data[changed] == 3)
    assert set(np.unique(layer.data[:, :, 5]).tolist()) == {0, 3, 6}


def test_import_soft_mask_reports_rounding_and_export_round_trips(make_napari_viewer, tmp_path):
    from napari_softseg.io.nifti import read_nifti
    from napari_softseg.plugin.notify import user_errors

    errors = Notifications("error")
    viewer = make_napari_viewer()
    add_scan(viewer, copy_scan(MT / "mt1.nii.gz", tmp_path / "scans"))
    dock = open_dock(viewer)
    soft_path, gold_path = MT / "mt1_gmseg.nii.gz", MT / "mt1_gmseg_goldstandard.nii.gz"
    layers = dock.import_masks([soft_path, gold_path])
    assert [lay.name for lay in layers] == ["mt1_gmseg", "mt1_gmseg_goldstandard"]

    raw = read_nifti(soft_path).data.astype(np.float64)
    clipped = np.clip(raw, 0, 1)
    levels = np.floor(clipped * 10 + 0.5)
    max_err = np.max(np.abs(clipped - levels / 10))
    assert 0.04 < max_err <= 0.05
    assert np.array_equal(layers[0].data, levels.astype(np.uint8))
    assert f"max rounding error {max_err:.3f}" in dock.import_report.text()
    change = max(raw.max() - 1, -raw.min(), 0)  # the one soft-map rule: clipped, largest change reported
    assert f"{int(((raw > 1) | (raw < 0)).sum())} values outside [0, 1] clipped (largest change {change:.3f})" \
        in dock.import_report.text()
    assert "lost up to" in dock.import_report.text()
    assert np.array_equal(layers[1].data, (read_nifti(gold_path).data > 0) * 10)

    out = dock.export_rater(layers[0], tmp_path / "gm_soft.nii.gz")
    back = read_nifti(out)
    src = read_nifti(MT / "mt1.nii.gz")
    assert back.data.dtype == np.float32
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-6)
    assert int(back.header["sform_code"]) == int(src.header["sform_code"])
    np.testing.assert_allclose(back.data, levels / 10, atol=1e-7)

    (tmp_path / "all").mkdir()
    outs = dock.export_all(tmp_path / "all")
    assert sorted(p.name for p in outs) == ["mt1_mt1_gmseg_goldstandard_soft.nii.gz", "mt1_mt1_gmseg_soft.nii.gz"]
    assert np.array_equal(read_nifti(outs[1]).data, read_nifti(gold_path).data)

    # masks of another grid or integer label maps: one sentence each, no layer, no crash
    n = len(viewer.layers)
    with user_errors():  # as the dock's Import button does
        dock.import_masks([SHARED / "isbi2015_raters" / "training01_rater1.nii.gz"])
    with user_errors():
        dock.import_masks([T2S])
    assert len(viewer.layers) == n and len(errors) == 2
    assert "training01_rater1.nii.gz has shape (181, 217, 181)" in errors[0]
    assert "t2s_uncropped.nii.gz" in errors[1]


def test_dock_from_the_plugin_menu_follows_raters_through_napari_proxies(make_napari_viewer, tmp_path):
    """napari hands a dock opened from its menu a proxy viewer whose layers are new wrapper
    objects on every access: raters present before the dock and raters it adds are followed."""
    from napari_softseg.widgets.annotation.rater_layers import add_rater_layer

    viewer = make_napari_viewer()
    scan = add_scan(viewer, copy_scan(MT / "mt1.nii.gz", tmp_path / "scans"))
    early = add_rater_layer(viewer, "early", scan)
    early.data[10:12, 10:13, 2] = 6  # 6 voxels at 0.6
    _, dock = viewer.window.add_plugin_dock_widget("napari-softseg", "Soft annotation")
    late = dock.add_rater("late")
    late.brush_size = 1
    late.paint((20, 20, 2), 8)  # one voxel at 0.8
    settle(dock)
    vox = abs(float(np.linalg.det(scan.affine.affine_matrix[:3, :3])))
    rows = {dock.table.item(r, 0).text(): [dock.table.item(r, c).text() for c in (1, 2)]
            for r in range(dock.table.rowCount())}
    assert rows == {"early": [f"{0.6 * 6 * vox:.1f}", f"{6 * vox:.1f}"], "late": [f"{0.8 * vox:.1f}", f"{vox:.1f}"]}
    assert "<b>late</b>: soft" in dock.volume_label.text()  # the active rater, seen through the proxy
    late.undo()
    settle(dock)
    assert dock.table.item(1, 1).text() == "0.0"


def test_autosave_after_stroke_restore_and_close(make_napari_viewer, tmp_path, qtbot):
    from napari_softseg.labels.autosave import sidecar_dir
    from napari_softseg.io.nifti import read_nifti

    scan_path = copy_scan(T2S, tmp_path / "scans")
    viewer = make_napari_viewer()
    add_scan(viewer, scan_path)
    dock = open_dock(viewer)
    assert dock.banner.isHidden()  # nothing is saved for this scan yet
    layer = dock.add_rater("alice")
    layer.brush_size = 9
    stroke(layer, [(150, 150, 3), (150, 170, 3)])
    sidecar = sidecar_dir(scan_path) / "alice.nii.gz"
    qtbot.waitUntil(lambda: bool(re.fullmatch(r"\d\d:\d\d:\d\d", dock.table.item(0, 3).text())),
                    timeout=30_000)  # the table shows the time of the save
    assert np.array_equal(read_nifti(sidecar).data, layer.data) and layer.data.any()

    # a second rater whose last stroke is still waiting for the timer when the viewer closes
    bob = dock.add_rater("bob")
    dock.saver.timer.setInterval(60_000)
    dock.set_level(4)
    stroke(bob, [(30, 30, 6), (60, 40, 6)])
    expected = {"alice": layer.data.copy(), "bob": bob.data.copy()}
    viewer.close()

    viewer2 = make_napari_viewer()
    add_scan(viewer2, scan_path)
    dock2 = open_dock(viewer2)
    assert dock2.banner.isVisibleTo(dock2)  # shown whenever the dock is
    assert dock2.restore_button.text() == "Restore 2"
    assert "alice, bob" in dock2.banner_label.text()
    assert dock2.add_rater().name == "rater 1"  # new raters never take a saved name
    dock2.restore_button.click()
    restored = {lay.name: lay for lay in viewer2.layers if lay.name in expected}
    assert set(restored) == {"alice", "bob"} and dock2.banner.isHidden()
    for name, data in expected.items():
        assert np.array_equal(restored[name].data, data)
        assert restored[name].metadata["softseg_role"] == "rater"


def test_removed_layer_is_saved_and_offered_again(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    add_scan(viewer, copy_scan(MT / "mt1.nii.gz", tmp_path / "scans"))
    dock = open_dock(viewer)
    layer = dock.add_rater("carol")
    dock.saver.timer.setInterval(60_000)
    layer.paint((20, 20, 2), 8)
    data = layer.data.copy()
    viewer.layers.remove(layer)
    assert dock.restore_button.text() == "Restore 1"
    dock.discard_button.click()  # moved aside, not deleted
    assert dock.banner.isHidden()
    moved = list((tmp_path / "scans" / "mt1.softseg").glob("discarded-*/carol.nii.gz"))
    from napari_softseg.io.nifti import read_nifti

    assert len(moved) == 1 and np.array_equal(read_nifti(moved[0]).data, data)


def test_closing_the_window_saves_pending_strokes_and_autosave_can_be_off(make_napari_viewer, tmp_path, qtbot):
    from napari_softseg.labels.autosave import sidecar_dir
    from napari_softseg.io.nifti import read_nifti

    scan_path = copy_scan(MT / "mt1.nii.gz", tmp_path / "scans")
    viewer = make_napari_viewer()
    add_scan(viewer, scan_path)
    dock = open_dock(viewer)
    qtbot.waitUntil(lambda: dock.saver._window is not None)  # the dock finds its main window
    off = dock.add_rater("off")
    dock.autosave.setChecked(False)
    off.paint((10, 10, 1), 5)
    dock.autosave.setChecked(True)
    layer = dock.add_rater("dana")
    dock.saver.timer.setInterval(60_000)
    layer.paint((20, 20, 2), 9)
    data = layer.data.copy()
    assert not (sidecar_dir(scan_path) / "dana.nii.gz").exists()
    dock.window().close()  # the main window's close button: layers stay, the window goes
    assert np.array_equal(read_nifti(sidecar_dir(scan_path) / "dana.nii.gz").data, data)
    assert not (sidecar_dir(scan_path) / "off.nii.gz").exists()


@pytest.mark.slow
def test_sigkill_loses_at_most_the_last_stroke(make_napari_viewer, tmp_path):
    """A viewer process killed with SIGKILL right after a stroke: restore has every earlier stroke."""
    from napari.layers import Labels

    scan_path = copy_scan(BET, tmp_path / "scans")
    n = 6
    env = dict(os.environ, NAPARI_SOFTSEG_DATA=str(tmp_path / "userdata"))
    helper = Path(__file__).with_name("_paint_and_die.py")
    proc = subprocess.Popen([sys.executable, str(helper), str(scan_path), str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    lines = []
    try:
        while True:  # the helper waits for each stroke's autosave before the next stroke
            line = proc.stdout.readline().strip()
            lines.append(line)
            if line == f"STROKE {n}" or not line:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert lines[-1] == f"STROKE {n}", lines

    # replay the same strokes on a plain Labels layer to know the state after each stroke
    viewer = make_napari_viewer()
    scan = add_scan(viewer, scan_path)
    ref = Labels(np.zeros(scan.data.shape, np.uint8), affine=scan.affine.affine_matrix)
    ref.brush_size = 7
    ref.mode = "paint"
    states = [ref.data.copy()]
    for level, points in kill_test_strokes(ref.data.shape, n):
        ref.selected_label = level
        stroke(ref, points)
        states.append(ref.data.copy())

    dock = open_dock(viewer)
    assert dock.restore_button.text() == "Restore 1"
    [layer] = dock.restore_saved()
    matches = [k for k, s in enumerate(states) if np.array_equal(layer.data, s)]
    assert matches and matches[0] >= n - 1, f"restored state after stroke {matches}"
    print(f"\nkill -9 after stroke {n}: restored the state after stroke {matches[0]}")


@pytest.mark.slow
def test_autosave_writes_off_the_gui_thread_while_painting(make_napari_viewer, tmp_path, qtbot, monkeypatch):
    """50 strokes on a 142x178x142 scan, one mouse event per event-loop turn, with a 10 ms probe:
    every autosave is written by the writer thread, none by the GUI thread (the stall itself
    is measured in ``benchmarks/bench_responsiveness.py``)."""
    import threading

    from napari_softseg.labels.autosave import AutosaveStore
    from napari_softseg.widgets.demo import StallMeter

    writers = []
    original_save = AutosaveStore.save

    def spy(self, name, levels):
        writers.append(threading.current_thread())
        return original_save(self, name, levels)

    monkeypatch.setattr(AutosaveStore, "save", spy)
    viewer = make_napari_viewer()
    add_scan(viewer, copy_scan(BET, tmp_path / "scans"))
    dock = open_dock(viewer)
    layer = dock.add_rater("responsive")
    layer.brush_size = 10

    submitted = []
    original_submit = dock.writer.submit
    monkeypatch.setattr(dock.writer, "submit", lambda *a, **k: (submitted.append(1), original_submit(*a, **k)))

    def run(autosave: bool, level: int) -> tuple[float, int, int]:
        dock.autosave.setChecked(autosave)
        dock.set_level(level)
        written, n_submitted = dock.writer.n_written, len(submitted)
        meter = StallMeter()
        meter.start()
        play(layer, sweep_strokes(layer, 50))
        during = len(submitted) - n_submitted  # snapshots handed to the writer while painting
        assert dock.flush(60)  # whatever is still pending is written now
        return meter.stop(), during, dock.writer.n_written - written

    off, submitted_off, written_off = run(False, level=3)
    on, submitted_on, written_on = run(True, level=8)  # other level: every stroke changes voxels again
    print(f"\nmax event-loop gap over 50 strokes: autosave off {off * 1000:.1f} ms, "
          f"on {on * 1000:.1f} ms ({submitted_on} snapshots, {written_on} files written)")
    assert (submitted_off, written_off) == (0, 0)  # autosave off: nothing saved
    assert submitted_on >= 1 and written_on >= 1  # autosave on: saved while painting
    assert len(writers) == written_on
    assert {t.name for t in writers} == {"napari-softseg-autosave"}  # never the GUI thread
    from napari_softseg.io.nifti import read_nifti
    from napari_softseg.labels.autosave import sidecar_dir

    saved = read_nifti(sidecar_dir(dock.scan.metadata["source_path"]) / "responsive.nii.gz").data
    assert np.array_equal(saved, layer.data)  # the last snapshot is the painted state
