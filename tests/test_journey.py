"""A user's journey through the plugin as napari loads it: File > Open a FLAIR scan (the lesion
phantom), paint two raters with two confidence levels each (mouse strokes through napari's
own Labels bindings), fuse them, train 2 epochs on the fusion (fine-tuning the shipped
lesion model), Segment with the new model, review the lesions (reject, accept, comment) and
export, every dock opened from the Plugins menu.

Assertions are on what the user sees (layer names, dock labels, table rows, exported files)
against values computed here from the painted arrays, nibabel and numpy.

Screenshots: with ``NAPARI_SOFTSEG_JOURNEY_SHOTS=<folder>`` (e.g. ``docs/images``) the window
is shown and one ``journey_<n>_<step>.png`` per step is written there; without it the test
writes only into its temporary folder.
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
from _oracles import binary_entropy_bits, components, plain_network_prediction
from _strokes import stroke

pytestmark = [pytest.mark.gui, pytest.mark.slow]

SHOTS = os.environ.get("NAPARI_SOFTSEG_JOURNEY_SHOTS")
Z = 23  # the slice painted on: it crosses the phantom's largest lesion (centre 85, 91, 23.5)


class Journey:
    """The viewer, its plugin docks and the screenshots of each step."""

    def __init__(self, viewer, qtbot) -> None:
        self.viewer, self.qtbot = viewer, qtbot
        self.docks: dict[str, object] = {}  # display name -> QDockWidget
        self.n = 0

    def open(self, name: str):
        dock_widget, widget = self.viewer.window.add_plugin_dock_widget("napari-softseg", name)
        self.docks[name] = dock_widget
        return widget

    def shot(self, step: str, dock: str | None) -> None:
        self.n += 1
        if not SHOTS:
            return
        from qtpy.QtWidgets import QApplication

        for name, dw in self.docks.items():
            dw.setVisible(name == dock)
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


def test_open_paint_fuse_train_segment_review_export(make_napari_viewer, qtbot, tmp_path, monkeypatch,
                                                    phantom_paths):
    import shutil

    viewer = make_napari_viewer(show=bool(SHOTS))
    if SHOTS:
        viewer.window._qt_window.resize(1500, 950)
    j = Journey(viewer, qtbot)
    (tmp_path / "scans").mkdir()
    path = Path(shutil.copy(phantom_paths["image"], tmp_path / "scans" / "flair.nii.gz"))
    header = nib.load(str(path))
    voxel_mm3 = float(np.prod(header.header.get_zooms()[:3]))
    assert voxel_mm3 == pytest.approx(3.0)

    # 1. File > Open: the scan with its geometry
    (scan,) = viewer.open(str(path), plugin="napari-softseg")
    assert scan.name == "flair" and [lay.name for lay in viewer.layers] == ["flair"]
    np.testing.assert_array_equal(scan.data, np.asarray(header.dataobj))
    np.testing.assert_allclose(scan.affine.affine_matrix, header.affine, atol=1e-5)
    viewer.dims.order = (2, 0, 1)  # the axial plane: array axes 0 and 1 on screen
    viewer.dims.set_point(range(3), scan.data_to_world((71, 89, Z)))
    viewer.reset_view()
    j.shot("open", None)

    # 2. Paint: two raters, two confidence levels each, real strokes
    ann = j.open(ANNOTATION)
    alice = paint_rater(j, ann, "alice", [(0.8, [(80, 91, Z), (90, 91, Z)]), (0.3, [(80, 86, Z), (90, 86, Z)])])
    bob = paint_rater(j, ann, "bob", [(0.4, [(85, 84, Z), (85, 98, Z)]), (1.0, [(82, 90, Z), (88, 92, Z)])])
    assert set(np.unique(alice.data).tolist()) == {0, 3, 8} and set(np.unique(bob.data).tolist()) == {0, 4, 10}
    others = [k for k in range(47) if k != Z]
    assert not alice.data[:, :, others].any() and not bob.data[:, :, others].any()
    assert [lay.name for lay in viewer.layers] == ["flair", "alice", "bob"]
    qtbot.waitUntil(lambda: table_rows(ann.table)[1][1] == f"{bob.data.sum() / 10 * voxel_mm3:.1f}", timeout=10_000)
    for row, layer in zip(table_rows(ann.table), (alice, bob)):
        hard = np.count_nonzero(layer.data >= 5)
        assert row[:3] == [layer.name, f"{layer.data.sum() / 10 * voxel_mm3:.1f}", f"{hard * voxel_mm3:.1f}"]
    assert ann.volume_label.text().startswith("<b>bob</b>: soft ")  # the active rater
    # autosave, next to the scan
    qtbot.waitUntil(lambda: all(r[3][:2].isdigit() for r in table_rows(ann.table)), timeout=30_000)
    saved = tmp_path / "scans" / "flair.softseg"
    assert sorted(p.name for p in saved.glob("*.nii.gz")) == ["alice.nii.gz", "bob.nii.gz"]
    np.testing.assert_array_equal(np.asarray(nib.load(str(saved / "bob.nii.gz")).dataobj), bob.data)
    j.shot("paint", ANNOTATION)

    # 3. Fuse: the average of the two raters
    fusion = j.open(FUSION)
    assert fusion.reference.currentText() == "flair"
    fusion.method.setCurrentIndex(fusion.method.findData("average"))
    click(qtbot, fusion.run_button)
    qtbot.waitUntil(lambda: fusion.worker is not None and fusion.run_button.isEnabled(), timeout=60_000)
    names = [lay.name for lay in viewer.layers]
    assert names[:4] == ["flair", "alice", "bob", "flair fused (average)"]
    assert names[4].startswith("flair consensus") and names[5].startswith("flair disagreement") and len(names) == 6
    expected = (alice.data / 10.0 + bob.data / 10.0) / 2.0
    fused = viewer.layers["flair fused (average)"]
    np.testing.assert_allclose(fused.data, expected, atol=1e-6)
    np.testing.assert_array_equal(viewer.layers[names[4]].data, (expected >= 0.5).astype(np.uint8))
    np.testing.assert_allclose(viewer.layers[names[5]].data, binary_entropy_bits(expected), atol=1e-5)
    assert [r[0] for r in table_rows(fusion.table)] == ["alice", "bob"]
    assert "Fused 2 raters" in fusion.status.text()
    j.shot("fuse", FUSION)

    # 4. Train 2 epochs on the fused map, fine-tuning the shipped lesion model (the trainer's
    # target is the fused map)
    from napari_softseg.engine.predict import MODELS_DIR

    train = j.open(TRAINING)
    row = train.rows[0]
    assert row.entry().name == "flair"
    from qtpy.QtCore import Qt

    for i in range(row.labels_list.count()):
        item = row.labels_list.item(i)
        item.setCheckState(Qt.CheckState.Checked if item.text() == "flair fused (average)" else Qt.CheckState.Unchecked)
    assert [lay.name for lay in row.checked_labels()] == ["flair fused (average)"]
    train.params.epochs.setValue(2)
    # a gentle fine-tuning: one painted slice among 47 empty ones at the default rate (1e-3)
    # drives the normalised-ReLU output to all zeros within two epochs
    train.params.lr.setValue(1e-5)
    train.params.finetune_radio.setChecked(True)
    train.params.init_path.setText(str(MODELS_DIR / "ms-lesion.pt"))
    assert train.params.preset_combo.currentData() == "softseg"
    train.probes = ["test_training_dock:probe_targets"]
    with qtbot.waitSignal(train.training_finished, timeout=300_000) as blocker:
        click(qtbot, train.train_button)
    done = blocker.args[0]
    assert done.status == "completed", done.message
    qtbot.waitUntil(lambda: train.worker is None, timeout=10_000)
    np.testing.assert_allclose(done.summary["probes"]["test_training_dock:probe_targets"], expected, atol=1e-6)
    checkpoint = Path(done.checkpoint)
    assert checkpoint.parent == tmp_path / "userdata" / "models"
    assert train.progress_bar.format() == "completed" and len(train.plot.epochs) == 2
    assert train.result_label.text().startswith("Optimised threshold ") and checkpoint.name in train.result_label.text()
    assert "training preview" in viewer.layers
    j.shot("train", TRAINING)

    # 5. Segment with the model just trained (offered first in the Segment dock)
    seg = j.open(SEGMENT)
    assert seg.models.combo.currentText().endswith("(trained in this session)")
    assert seg.models.path() == checkpoint and seg.scan_combo.current().name == "flair"
    with qtbot.waitSignal(seg.segmented, timeout=180_000):
        click(qtbot, seg.run_controls.segment_button)
    for key in ("soft", "mask", "entropy"):
        layer = viewer.layers[f"flair {key}"]
        assert layer.data.shape == (142, 178, 47)
        np.testing.assert_allclose(layer.affine.affine_matrix, header.affine, atol=1e-5)
    from napari_softseg.engine.predict import load_model

    soft = viewer.layers["flair soft"].data
    some = [Z, 11, 30]
    expected_soft = plain_network_prediction(load_model(checkpoint), scan.data, axis=2, slices=some)
    np.testing.assert_allclose(soft[:, :, some], expected_soft, atol=0.02)
    threshold = seg.threshold.value()
    assert threshold == pytest.approx(done.threshold, abs=0.005)  # the run's optimised threshold
    np.testing.assert_array_equal(viewer.layers["flair mask"].data > 0, soft >= np.float32(threshold))
    assert seg.status.text().startswith("Segmented in ")
    j.shot("segment", SEGMENT)

    # 6. Review: the user raises the threshold, rejects the first lesion, accepts the second
    t = 0.5
    assert abs(t - threshold) > 0.02
    with qtbot.waitSignal(seg.analysed, timeout=60_000):
        seg.threshold.spin.setValue(t)
    labels, n = components(soft >= np.float32(t))
    table = seg.panel.table
    assert table.rowCount() == n >= 3
    col = {table.horizontalHeaderItem(c).text(): c for c in range(table.columnCount())}
    sizes = sorted(int(r[col["voxels"]]) for r in table_rows(table))
    assert sizes == sorted(np.bincount(labels.ravel())[1:].tolist())
    ids = table.ids_in_order()
    table.selectRow(0)
    click(qtbot, seg.panel.reject_button)
    seg.panel.comment.setText("not a lesion")
    seg.panel.comment.editingFinished.emit()
    table.selectRow(1)
    click(qtbot, seg.panel.accept_button)
    shown = {int(r[col["id"]]): r for r in table_rows(table)}
    assert shown[ids[0]][col["decision"]] == "rejected" and shown[ids[0]][col["comment"]] == "not a lesion"
    assert shown[ids[1]][col["decision"]] == "accepted"
    assert all(shown[i][col["decision"]] == "pending" for i in ids[2:])
    rejected = seg.review.table.labels == ids[0]
    mask = viewer.layers["flair mask"].data > 0
    assert rejected.any() and not mask[rejected].any()
    np.testing.assert_array_equal(mask, (soft >= np.float32(t)) & ~rejected)
    assert f"<b>{n}</b> lesions at threshold {t:.2f}" in seg.panel.summary.text()
    assert "accepted 1, rejected 1" in seg.panel.summary.text()
    j.shot("review", SEGMENT)

    # 7. Export review: the folder the user picks gets CSV, JSON and the final masks
    from qtpy.QtWidgets import QFileDialog

    folder = tmp_path / "export"
    folder.mkdir()
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(folder)))
    notes = Notifications()
    click(qtbot, seg.export_button)
    assert notes[-1] == f"Saved 4 files to {folder}."
    assert sorted(p.name for p in folder.iterdir()) == [
        "flair_review_lesions.csv", "flair_review_mask.nii.gz", "flair_review_review.json", "flair_review_soft.nii.gz"]
    with open(folder / "flair_review_lesions.csv", newline="", encoding="utf-8") as fh:
        rows = {int(r["id"]): r for r in csv.DictReader(fh)}
    assert sorted(rows) == sorted(ids)
    assert (rows[ids[0]]["decision"], rows[ids[0]]["comment"], rows[ids[1]]["decision"]) == (
        "rejected", "not a lesion", "accepted")
    for lesion_id, r in rows.items():
        assert int(r["voxels"]) == int((seg.review.table.labels == lesion_id).sum())
    doc = json.loads((folder / "flair_review_review.json").read_text())
    assert doc["model"]["file"] == checkpoint.name and doc["threshold"] == pytest.approx(t)
    binary = nib.load(str(folder / "flair_review_mask.nii.gz"))
    np.testing.assert_allclose(binary.affine, header.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(binary.dataobj) > 0, (soft >= np.float32(t)) & ~rejected)
    (exported,) = viewer.open(str(folder / "flair_review_mask.nii.gz"), plugin="napari-softseg")
    assert exported.name == "flair_review_mask"
    j.shot("export", SEGMENT)
    assert j.n == 7
