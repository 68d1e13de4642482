"""A user's journey through the plugin as napari loads it: File > Open a FLAIR scan (the lesion
phantom), paint two raters with two confidence levels each (mouse strokes through napari's
own Labels bindings), fuse them, train 2 epochs on the fusion (fine-tuning the shipped
lesion model), Segment with the new model, review the lesions (reject, accept, comment) and
export, every dock opened from the Plugins menu.

Assertions are on what the user sees (layer names, dock labels, table rows, exported files)
against values computed here from the painted arrays, nibabel and numpy.

Screenshots: with ``NAPARI_SOFTSEG_JOURNEY_SHOTS=<folder>`` the window is shown and one
``journey_<n>_<step>.png`` per step is written there (``scripts/journey_screenshots.py`` runs
this test so and copies them to ``docs/images``); without it the test writes only into its
temporary folder.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _docks import ANNOTATION, FUSION, SEGMENT, TRAINING
from _notes import Notifications
from _oracles import binary_entropy_bits, components, dice_percent, plain_network_prediction
from _strokes import stroke

pytestmark = [pytest.mark.gui, pytest.mark.slow]

SHOTS = os.environ.get("NAPARI_SOFTSEG_JOURNEY_SHOTS")
SHOT_SIZE = (1600, 1000)  # the window, as the other screenshots of docs/images
Z = 23  # the slice painted on: it crosses the phantom's largest lesion (centre 85, 91, 23.5)


class Journey:
    """The viewer, its plugin docks, what the steps found so far, and the screenshots."""

    def __init__(self, viewer, qtbot, tmp_path: Path) -> None:
        self.viewer, self.qtbot, self.tmp = viewer, qtbot, tmp_path
        self.docks: dict[str, object] = {}  # display name -> QDockWidget
        self.widgets: dict[str, object] = {}  # display name -> the dock's widget
        self.n = 0

    def open(self, name: str):
        """Plugins > napari-softseg > ``name``: the dock napari builds, with its proxy viewer."""
        from napari.utils._proxies import PublicOnlyProxy

        dock_widget, widget = self.viewer.window.add_plugin_dock_widget("napari-softseg", name)
        assert isinstance(widget.viewer, PublicOnlyProxy)
        self.docks[name], self.widgets[name] = dock_widget, widget
        return widget

    def shot(self, step: str, dock: str | None) -> None:
        self.n += 1
        if not SHOTS:
            return
        from qtpy.QtWidgets import QApplication

        for name, dw in self.docks.items():
            dw.setVisible(name == dock)
        QApplication.processEvents()
        self.viewer.window._qt_window.resize(*SHOT_SIZE)  # hidden docks no longer hold it taller
        QApplication.processEvents()
        folder = Path(SHOTS)
        folder.mkdir(parents=True, exist_ok=True)
        self.viewer.screenshot(str(folder / f"journey_{self.n}_{step}.png"), canvas_only=False, flash=False)


def click(qtbot, button) -> None:
    from qtpy.QtCore import Qt

    assert button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def table_rows(table) -> list[list[str]]:
    return [[table.item(r, c).text() if table.item(r, c) else "" for c in range(table.columnCount())]
            for r in range(table.rowCount())]


def paint_rater(j: Journey, ann, name: str, strokes) -> object:
    """Type a rater name, click Add rater, then for each (confidence, points) click the
    confidence button and drag the brush along the points (voxel coordinates)."""
    ann.name_edit.setText(name)
    click(j.qtbot, ann.add_button)
    layer = j.viewer.layers[name]
    layer.brush_size = 3
    for confidence, points in strokes:
        click(j.qtbot, ann.level_buttons[round(confidence * 10) - 1])
        assert ann.level_label.text() == f"{confidence:.1f}" and layer.selected_label == round(confidence * 10)
        stroke(layer, points)
    return layer


def open_scan(j: Journey, source: Path) -> None:
    """1. File > Open: the scan with its geometry; opening the Soft annotation dock shows its
    acquisition plane (axial: the 3 mm axis on the slider, on the middle slice) with
    anatomical axis labels."""
    import shutil

    viewer = j.viewer
    (j.tmp / "scans").mkdir()
    path = Path(shutil.copy(source, j.tmp / "scans" / "flair.nii.gz"))
    j.header = nib.load(str(path))
    j.voxel_mm3 = float(np.prod(j.header.header.get_zooms()[:3]))
    assert j.voxel_mm3 == pytest.approx(3.0)
    (j.scan,) = viewer.open(str(path), plugin="napari-softseg")
    assert j.scan.name == "flair" and [lay.name for lay in viewer.layers] == ["flair"]
    np.testing.assert_array_equal(j.scan.data, np.asarray(j.header.dataobj))
    np.testing.assert_allclose(j.scan.affine.affine_matrix, j.header.affine, atol=1e-5)
    j.open(ANNOTATION)
    assert viewer.dims.order[0] == 2 and tuple(viewer.dims.axis_labels) == ("L→R", "P→A", "I→S")
    assert viewer.dims.current_step[2] == Z == 47 // 2
    j.shot("open", ANNOTATION)


def paint(j: Journey) -> None:
    """2. Paint: two raters, two confidence levels each, real strokes (zoomed in on the
    lesion); the table, the volume line and the autosave next to the scan follow."""
    from napari_softseg.plugin.viewer import centre_on

    viewer, qtbot, ann, vox = j.viewer, j.qtbot, j.widgets[ANNOTATION], j.voxel_mm3
    centre_on(viewer, j.scan.data_to_world((85, 91, Z)))
    getattr(viewer, "scene", viewer).camera.zoom *= 3
    alice = paint_rater(j, ann, "alice", [(0.8, [(80, 91, Z), (90, 91, Z)]), (0.3, [(80, 86, Z), (90, 86, Z)])])
    bob = paint_rater(j, ann, "bob", [(0.4, [(85, 84, Z), (85, 98, Z)]), (1.0, [(82, 90, Z), (88, 92, Z)])])
    assert set(np.unique(alice.data).tolist()) == {0, 3, 8} and set(np.unique(bob.data).tolist()) == {0, 4, 10}
    others = [k for k in range(47) if k != Z]
    assert not alice.data[:, :, others].any() and not bob.data[:, :, others].any()
    assert [lay.name for lay in viewer.layers] == ["flair", "alice", "bob"]
    qtbot.waitUntil(lambda: table_rows(ann.table)[1][1] == f"{bob.data.sum() / 10 * vox:.1f}", timeout=10_000)
    for row, layer in zip(table_rows(ann.table), (alice, bob)):
        hard = np.count_nonzero(layer.data >= 5)
        assert row[:3] == [layer.name, f"{layer.data.sum() / 10 * vox:.1f}", f"{hard * vox:.1f}"]
    # the volume line follows the active rater (the dock sees napari's proxy viewer)
    assert ann.volume_label.text() == (f"<b>bob</b>: soft {bob.data.sum() / 10 * vox:.1f} mm³ · hard (≥ 0.5) "
                                       f"{np.count_nonzero(bob.data >= 5) * vox:.1f} mm³")
    qtbot.waitUntil(lambda: all(r[3][:2].isdigit() for r in table_rows(ann.table)), timeout=30_000)
    saved = j.tmp / "scans" / "flair.softseg"
    assert sorted(p.name for p in saved.glob("*.nii.gz")) == ["alice.nii.gz", "bob.nii.gz"]
    np.testing.assert_array_equal(np.asarray(nib.load(str(saved / "bob.nii.gz")).dataobj), bob.data)
    j.raters = (alice, bob)
    j.shot("paint", ANNOTATION)


def fuse(j: Journey) -> None:
    """3. Fuse: the average of the two raters, its consensus and disagreement, the table."""
    viewer, (alice, bob) = j.viewer, j.raters
    fusion = j.open(FUSION)
    assert fusion.reference.currentText() == "flair"
    fusion.method.setCurrentIndex(fusion.method.findData("average"))
    click(j.qtbot, fusion.run_button)
    j.qtbot.waitUntil(lambda: fusion.last is not None and fusion.run_button.isEnabled(), timeout=60_000)
    names = [lay.name for lay in viewer.layers]
    assert names == ["flair", "alice", "bob", "flair fused (average)", "flair consensus (average)",
                     "flair disagreement (average)"]
    j.expected = expected = (alice.data / 10.0 + bob.data / 10.0) / 2.0
    np.testing.assert_allclose(viewer.layers[names[3]].data, expected, atol=1e-6)
    np.testing.assert_array_equal(viewer.layers[names[4]].data, (expected >= 0.5).astype(np.uint8))
    np.testing.assert_allclose(viewer.layers[names[5]].data, binary_entropy_bits(expected), atol=1e-5)
    # per rater: its hard mask (level >= 5) against the consensus, and its hard volume
    assert table_rows(fusion.table) == [
        [layer.name, "-", "-", f"{dice_percent(layer.data >= 5, expected >= 0.5):.1f}",
         f"{np.count_nonzero(layer.data >= 5) * j.voxel_mm3:.0f}"] for layer in (alice, bob)]
    assert fusion.status.text() == "Fused 2 raters with Average."
    j.shot("fuse", FUSION)


def train(j: Journey) -> None:
    """4. Train 2 epochs on the fused map, fine-tuning the shipped lesion model (the trainer's
    target is the fused map: a probe in the training process reports it)."""
    from qtpy.QtCore import Qt

    from napari_softseg.engine.predict import MODELS_DIR

    dock = j.open(TRAINING)
    row = dock.rows[0]
    assert row.entry().name == "flair"
    for i in range(row.labels_list.count()):
        item = row.labels_list.item(i)
        item.setCheckState(Qt.CheckState.Checked if item.text() == "flair fused (average)" else Qt.CheckState.Unchecked)
    assert [lay.name for lay in row.checked_labels()] == ["flair fused (average)"]
    dock.params.epochs.setValue(2)
    # a gentle fine-tuning (lr 1e-5): the labels say one painted slice holds a lesion and the 46
    # others none, so the run's refitted output normaliser already lowers every other lesion of
    # the phantom (soft maximum about 0.1 after two epochs); the review then looks at a low threshold
    dock.params.lr.setValue(1e-5)
    dock.params.finetune_radio.setChecked(True)
    dock.params.init_path.setText(str(MODELS_DIR / "ms-lesion.pt"))
    assert dock.params.preset_combo.currentData() == "softseg"
    dock.probes = ["test_training_dock:probe_targets"]
    with j.qtbot.waitSignal(dock.training_finished, timeout=900_000) as blocker:
        click(j.qtbot, dock.train_button)
    j.done = done = blocker.args[0]
    assert done.status == "completed", done.message
    j.qtbot.waitUntil(lambda: dock.worker is None, timeout=10_000)
    np.testing.assert_allclose(done.summary["probes"]["test_training_dock:probe_targets"], j.expected, atol=1e-6)
    j.checkpoint = checkpoint = Path(done.checkpoint)
    assert checkpoint.parent == j.tmp / "userdata" / "models"
    assert dock.progress_bar.format() == "completed" and len(dock.plot.epochs) == 2
    assert dock.result_label.text().startswith("Optimised threshold ") and checkpoint.name in dock.result_label.text()
    # one painted slice: no validation set, and the dock says which loss chose the kept epoch
    assert done.summary["n_val_slices"] == 0 and "no validation set" in dock.start_label.text()
    assert ", training loss " in dock.result_label.text()
    assert "training preview" in j.viewer.layers
    j.shot("train", TRAINING)


def segment(j: Journey) -> None:
    """5. Segment with the model just trained (offered first in the Segment dock): layers on
    the scan's geometry, the soft map of the plain network, the mask at the run's threshold."""
    from napari_softseg.engine.predict import load_model

    viewer, seg = j.viewer, j.open(SEGMENT)
    assert seg.models.combo.currentText().endswith("(trained in this session)")
    assert seg.models.path() == j.checkpoint and seg.scan_combo.current().name == "flair"
    with j.qtbot.waitSignal(seg.segmented, timeout=600_000):
        click(j.qtbot, seg.run_controls.segment_button)
    for key in ("soft", "mask", "entropy"):
        layer = viewer.layers[f"flair {key}"]
        assert layer.data.shape == (142, 178, 47)
        np.testing.assert_allclose(layer.affine.affine_matrix, j.header.affine, atol=1e-5)
    j.soft = soft = viewer.layers["flair soft"].data
    some = [Z, 11, 30]
    expected_soft = plain_network_prediction(load_model(j.checkpoint), j.scan.data, axis=2, slices=some)
    np.testing.assert_allclose(soft[:, :, some], expected_soft, atol=0.02)
    threshold = seg.threshold.value()
    assert threshold == pytest.approx(j.done.threshold, abs=0.005)  # the run's optimised threshold
    np.testing.assert_array_equal(viewer.layers["flair mask"].data > 0, soft >= np.float32(threshold))
    assert seg.status.text().startswith("Segmented in ")
    j.shot("segment", SEGMENT)


def review(j: Journey, t: float) -> None:
    """6. Review: the user sets the threshold to ``t``, rejects the first lesion (with a
    comment) and accepts the second; the table lists the components of ``soft >= t``."""
    seg, soft = j.widgets[SEGMENT], j.soft
    assert abs(t - seg.threshold.value()) > 0.02
    with j.qtbot.waitSignal(seg.analysed, timeout=60_000):
        seg.threshold.spin.setValue(t)
    labels, n = components(soft >= np.float32(t))
    j.sizes = sorted(np.bincount(labels.ravel())[1:].tolist())
    table = seg.panel.table
    col = {table.horizontalHeaderItem(c).text(): c for c in range(table.columnCount())}
    assert table.rowCount() == n >= 3 and sorted(int(r[col["voxels"]]) for r in table_rows(table)) == j.sizes
    j.ids = ids = table.ids_in_order()
    table.selectRow(0)
    click(j.qtbot, seg.panel.reject_button)
    seg.panel.comment.setText("not a lesion")
    seg.panel.comment.editingFinished.emit()
    table.selectRow(1)
    click(j.qtbot, seg.panel.accept_button)
    shown = {int(r[col["id"]]): r for r in table_rows(table)}
    assert shown[ids[0]][col["decision"]] == "rejected" and shown[ids[0]][col["comment"]] == "not a lesion"
    assert shown[ids[1]][col["decision"]] == "accepted"
    assert all(shown[i][col["decision"]] == "pending" for i in ids[2:])
    # the rejected lesion is one whole component of soft >= t, and it left the final mask
    (k,) = np.unique(labels[seg.review.table.labels == ids[0]])
    j.rejected = labels == k
    np.testing.assert_array_equal(seg.review.table.labels == ids[0], j.rejected)
    j.final = (soft >= np.float32(t)) & ~j.rejected
    np.testing.assert_array_equal(j.viewer.layers["flair mask"].data > 0, j.final)
    assert f"<b>{n}</b> lesions at threshold {t:.2f}" in seg.panel.summary.text()
    assert "accepted 1, rejected 1" in seg.panel.summary.text()
    j.t = t
    j.shot("review", SEGMENT)


def export(j: Journey, monkeypatch) -> None:
    """7. Export review: the folder the user picks gets the lesion CSV, the JSON and the
    final masks; the mask opens again on the scan's grid."""
    from qtpy.QtWidgets import QFileDialog

    seg, ids = j.widgets[SEGMENT], j.ids
    folder = j.tmp / "export"
    folder.mkdir()
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(folder)))
    notes = Notifications()
    click(j.qtbot, seg.export_button)
    assert notes[-1] == f"Saved 4 files to {folder}."
    assert sorted(p.name for p in folder.iterdir()) == [
        "flair_review_lesions.csv", "flair_review_mask.nii.gz", "flair_review_review.json", "flair_review_soft.nii.gz"]
    with open(folder / "flair_review_lesions.csv", newline="", encoding="utf-8") as fh:
        rows = {int(r["id"]): r for r in csv.DictReader(fh)}
    assert sorted(rows) == sorted(ids) and sorted(int(r["voxels"]) for r in rows.values()) == j.sizes
    assert int(rows[ids[0]]["voxels"]) == int(j.rejected.sum())
    assert (rows[ids[0]]["decision"], rows[ids[0]]["comment"], rows[ids[1]]["decision"]) == (
        "rejected", "not a lesion", "accepted")
    doc = json.loads((folder / "flair_review_review.json").read_text())
    assert doc["model"]["file"] == j.checkpoint.name and doc["threshold"] == pytest.approx(j.t)
    binary = nib.load(str(folder / "flair_review_mask.nii.gz"))
    np.testing.assert_allclose(binary.affine, j.header.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(binary.dataobj) > 0, j.final)
    (exported,) = j.viewer.open(str(folder / "flair_review_mask.nii.gz"), plugin="napari-softseg")
    assert exported.name == "flair_review_mask"
    j.shot("export", SEGMENT)


def test_open_paint_fuse_train_segment_review_export(make_napari_viewer, qtbot, tmp_path, monkeypatch,
                                                    phantom_paths):
    viewer = make_napari_viewer(show=bool(SHOTS))
    if SHOTS:
        viewer.window._qt_window.resize(*SHOT_SIZE)
    j = Journey(viewer, qtbot, tmp_path)
    open_scan(j, phantom_paths["image"])
    paint(j)
    fuse(j)
    train(j)
    segment(j)
    review(j, t=round(j.widgets[SEGMENT].threshold.value() - 0.03, 2))
    export(j, monkeypatch)
    assert j.n == 7
