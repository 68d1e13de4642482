"""The Segment & review dock end to end, in a real viewer (pytest-qt, Xvfb).

Expected values come from independent paths: the soft map from ``predict_volume`` called
directly, masks from ``soft > t``, components from ``scipy.ndimage.label`` with the
18-neighbourhood, entropies from the binary-entropy formula, geometry from the NIfTI file.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy import ndimage

gui = pytest.mark.gui
slow = pytest.mark.slow

CONN18 = ndimage.generate_binary_structure(3, 2)


@pytest.fixture
def dock(make_napari_viewer, qtbot):
    from napari_softseg.widgets.segment.dock import SegmentWidget

    viewer = make_napari_viewer()
    viewer.open_sample("napari-softseg", "lesion_phantom")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.models.set_model("ms-lesion")
    widget.scan_combo.set_current(viewer.layers["phantom_flair"])
    return widget


def run_segment(qtbot, widget):
    with qtbot.waitSignal(widget.segmented, timeout=120_000):
        assert widget.segment() is not None
    return widget


def components(mask):
    labels, n = ndimage.label(mask, structure=CONN18)
    return labels, n


@gui
@slow
def test_segment_adds_layers_on_the_scan_geometry(dock, qtbot):
    from napari_softseg.engine.predict import load_model, predict_volume
    from napari_softseg.widgets.base import data_to_world

    run_segment(qtbot, dock)
    viewer, scan = dock.viewer, dock.viewer.layers["phantom_flair"]
    soft, mask, entropy = (viewer.layers[f"phantom_flair {k}"] for k in ("soft", "mask", "entropy"))
    assert [lay.name for lay in viewer.layers][-3:] == ["phantom_flair entropy", "phantom_flair soft", "phantom_flair mask"]
    for layer in (soft, mask, entropy):
        assert layer.data.shape == scan.data.shape
        np.testing.assert_allclose(data_to_world(layer), data_to_world(scan), atol=1e-9)
        assert layer.metadata["softseg_model"]["name"] == "ms-lesion"
    # the soft map is what predict_volume gives on the scan, in [0, 1]
    expected = predict_volume(load_model("ms-lesion"), np.asarray(scan.data), spacing=(1.0, 1.0, 3.0))
    np.testing.assert_allclose(soft.data, expected, atol=1e-6)
    assert soft.data.dtype == np.float32 and 0.0 <= soft.data.min() and soft.data.max() <= 1.0
    assert tuple(soft.contrast_limits) == (0.0, 1.0)
    # the mask is soft > the model's threshold
    threshold = load_model("ms-lesion").softseg_config["threshold"]
    assert dock.threshold.value() == pytest.approx(threshold)
    np.testing.assert_array_equal(mask.data > 0, expected > threshold)
    # binary entropy in bits, by hand
    p = np.clip(expected.astype(np.float64), 1e-12, 1 - 1e-12)
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    np.testing.assert_allclose(entropy.data, np.where((expected > 0) & (expected < 1), h, 0.0), atol=1e-4)


@gui
@slow
def test_threshold_slider_rebinarises_and_table_follows(dock, qtbot):
    run_segment(qtbot, dock)
    soft = dock.review.soft
    mask_layer = dock.layers["mask"]
    with qtbot.waitSignal(dock.analysed, timeout=60_000):
        dock.threshold.slider.setValue(20)  # the user drags the slider to 0.20
        np.testing.assert_array_equal(mask_layer.data > 0, soft > np.float32(0.2))  # at once, before the table
    low = mask_layer.data > 0
    labels, n = components(soft > np.float32(0.2))
    assert dock.panel.table.rowCount() == n
    with qtbot.waitSignal(dock.analysed, timeout=60_000):
        dock.threshold.spin.setValue(0.6)
    high = mask_layer.data > 0
    np.testing.assert_array_equal(high, soft > np.float32(0.6))
    assert high.sum() < low.sum() and not np.any(high & ~low)


@gui
@slow
def test_table_lists_the_components_the_core_finds(dock, qtbot):
    from qtpy.QtCore import Qt

    from napari_softseg.review.lesions import analyse_lesions
    from napari_softseg.widgets.segment.lesion_table import FLAG_COLOUR

    run_segment(qtbot, dock)
    t = dock.review.threshold
    labels, n = components(dock.review.soft > np.float32(t))
    core = analyse_lesions(dock.review.soft, threshold=t, spacing=(1.0, 1.0, 3.0))
    table = dock.panel.table
    assert n > 0 and table.rowCount() == n == len(core)
    assert sorted(table.ids_in_order()) == [r.id for r in core]
    sizes = sorted(np.bincount(labels.ravel())[1:].tolist())
    col = {table.horizontalHeaderItem(c).text(): c for c in range(table.columnCount())}
    shown = sorted(int(table.item(r, col["voxels"]).text()) for r in range(table.rowCount()))
    assert shown == sizes
    # flagged rows are highlighted, and flags are the core's
    for row in range(table.rowCount()):
        rec = core.by_id(table.id_at(row))
        assert (table.item(row, col["flag"]).text() != "") == rec.flagged
        background = table.item(row, 0).background()
        assert (background.style() != Qt.BrushStyle.NoBrush and background.color() == FLAG_COLOUR) == rec.flagged
    # sorting by volume keeps ids attached to their rows
    table.sortItems(col["vol mm³"])
    for row in range(table.rowCount()):
        rec = core.by_id(table.id_at(row))
        assert float(table.item(row, col["vol mm³"]).text()) == pytest.approx(rec.hard_volume_mm3, abs=0.06)
    # the flag rule is applied again without re-running anything
    check, spin = dock.panel.rule.controls()["min_volume_mm3"]
    spin.setValue(10000.0)
    assert all(r.flagged for r in dock.review.records())
    assert all(table.item(r, col["flag"]).text() for r in range(table.rowCount()))
    for check, _ in dock.panel.rule.controls().values():
        check.setChecked(False)
    assert not any(r.flagged for r in dock.review.records())
    assert dock.panel.table.step_flagged(1) is None


@gui
@slow
def test_selecting_a_flagged_row_moves_to_the_lesion(dock, qtbot):
    run_segment(qtbot, dock)
    review, viewer = dock.review, dock.viewer
    flagged = [r for r in review.records() if r.flagged]
    if not flagged:  # make every lesion flagged with a strict volume rule
        dock.panel.rule_toggle.setChecked(True)
        check, spin = dock.panel.rule.controls()["min_volume_mm3"]
        spin.setValue(10000.0)
        flagged = [r for r in review.records() if r.flagged]
    assert flagged
    target = flagged[-1]
    row = dock.panel.table.row_of(target.id)
    dock.panel.table.selectRow(row)  # the user clicks the row
    scan = viewer.layers["phantom_flair"]
    voxel = scan.world_to_data(viewer.dims.point)
    assert round(voxel[2]) == round(target.centroid[2])  # the slice of the lesion is shown
    np.testing.assert_allclose(voxel, target.centroid, atol=0.51)
    centre = np.asarray(getattr(viewer, "scene", viewer).camera.center)[-2:]
    world = scan.data_to_world(target.centroid)
    np.testing.assert_allclose(centre, np.asarray(world)[list(viewer.dims.displayed)], atol=1e-6)
    highlight = dock.layers["mask"].data == 2  # the selected lesion has its own colour
    np.testing.assert_array_equal(highlight, review.table.labels == target.id)
    # next / previous flagged walk the flagged rows only, in table order, and wrap
    order = [i for i in dock.panel.table.ids_in_order() if review.table.by_id(i).flagged]
    seen = [dock.step_flagged(1) for _ in range(len(order))]
    assert sorted(seen) == sorted(order)
    assert dock.step_flagged(-1) == seen[-2 % len(seen)] if len(seen) > 1 else True


@gui
@slow
def test_reject_removes_the_lesion_from_the_final_mask(dock, qtbot):
    run_segment(qtbot, dock)
    review = dock.review
    before = dock.layers["mask"].data > 0
    target = max(review.records(), key=lambda r: r.voxels)
    dock.panel.table.select_id(target.id)
    dock.panel.reject_button.click()
    region = review.table.labels == target.id
    after = dock.layers["mask"].data > 0
    assert region.any() and not after[region].any()
    np.testing.assert_array_equal(after, before & ~region)  # nothing else changed
    np.testing.assert_array_equal(review.final_mask(), after)
    assert review.decision(target.id).status == "rejected"
    # a threshold change keeps the rejection (its component is re-found at the new threshold)
    dock.set_threshold(review.threshold - 0.05, analyse_now=True)
    new_id = int(np.bincount(review.table.labels[region]).argmax()) if review.table.labels[region].any() else 0
    assert new_id == 0 or review.decision(new_id).status == "rejected"
    assert not (dock.layers["mask"].data > 0)[region].any()
    # accepting brings it back
    dock.set_threshold(review.threshold + 0.05, analyse_now=True)
    dock.decide("accepted", lesion_id=int(np.bincount(review.table.labels[region]).argmax()))
    assert (dock.layers["mask"].data > 0)[region].all()


@gui
@slow
def test_painted_edits_are_kept_and_mark_the_lesion_edited(dock, qtbot):
    run_segment(qtbot, dock)
    review, layer = dock.review, dock.layers["mask"]
    target = max(review.records(), key=lambda r: r.voxels)
    dock.panel.table.select_id(target.id)
    # the reviewer erases one voxel of the lesion and paints one far from any lesion
    inside = tuple(int(v) for v in np.argwhere(review.table.labels == target.id)[0])
    outside = next(tuple(int(v) for v in idx) for idx in np.argwhere(review.soft < 0.01))
    layer.brush_size = 1
    layer.paint(inside, 0)
    layer.paint(outside, 1)
    qtbot.waitUntil(lambda: review.added[outside] and review.removed[inside], timeout=5000)
    assert review.decision(target.id).status == "edited"  # the lesion touched by the eraser
    assert dock.panel.table.item(dock.panel.table.row_of(target.id), 2).text() == "edited"
    dock.set_threshold(review.threshold + 0.01, analyse_now=True)  # edits survive a new threshold
    assert layer.data[outside] == 1 and layer.data[inside] == 0
    final = review.final_mask()
    assert final[outside] and not final[inside]
    # Edit hands the mask layer to napari's paint tools
    dock.start_edit()
    assert dock.viewer.layers.selection.active is layer and layer.mode == "paint"
    assert layer.selected_label == 1 and layer.contour == 0


@gui
@slow
def test_export_round_trips(dock, qtbot, tmp_path):
    from napari_softseg.io.nifti import read_nifti

    run_segment(qtbot, dock)
    review = dock.review
    ids = [r.id for r in review.records()]
    dock.decide("rejected", lesion_id=ids[0], comment="vessel, not a lesion")
    if len(ids) > 1:
        dock.decide("accepted", lesion_id=ids[1])
    paths = dock.export_review(tmp_path)
    with open(paths["csv"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["id"]) for r in rows] == ids
    assert rows[0]["decision"] == "rejected" and rows[0]["comment"] == "vessel, not a lesion"
    for row, rec in zip(rows, review.records()):
        assert int(row["voxels"]) == rec.voxels
        assert float(row["mean_probability"]) == pytest.approx(rec.mean_probability, rel=1e-6)
    doc = json.loads(paths["json"].read_text())
    assert doc["model"]["name"] == "ms-lesion" and len(doc["model"]["sha256"]) == 64
    assert doc["threshold"] == pytest.approx(review.threshold)
    assert [l["decision"] for l in doc["lesions"]][:1] == ["rejected"]
    assert doc["lesions"][0]["final_voxels"] == 0
    assert doc["summary"]["decisions"]["rejected"] == 1
    source = read_nifti(dock.viewer.layers["phantom_flair"].metadata["source_path"])  # the file on disk
    binary, soft = read_nifti(paths["binary"]), read_nifti(paths["soft"])
    for vol in (binary, soft):
        np.testing.assert_allclose(vol.affine, source.affine, atol=1e-6)
        assert vol.data.shape == source.data.shape
    np.testing.assert_array_equal(binary.data > 0, review.final_mask())
    assert not binary.data[review.table.labels == ids[0]].any()
    np.testing.assert_allclose(soft.data, review.final_soft(), atol=1e-6)
    # raw predictions with the same geometry
    saved = dock.save_predictions(tmp_path / "raw")
    raw = read_nifti(saved["soft"])
    np.testing.assert_allclose(raw.affine, source.affine, atol=1e-6)
    np.testing.assert_allclose(raw.data, review.soft, atol=1e-6)


@gui
@slow
def test_mc_dropout_samples_feed_the_lesion_statistics(dock, qtbot):
    dock.run_controls.mc_spin.setValue(3)
    run_segment(qtbot, dock)
    records = dock.review.records()
    assert dock.review.samples is not None and len(dock.review.samples) == 3
    assert records and all(r.n_samples == 3 for r in records)
    assert all(0.0 <= r.sample_iou <= 1.0 for r in records)
    assert all(math.isnan(r.volume_cv) or r.volume_cv >= 0 for r in records)


@gui
def test_wrong_contrast_count_gets_a_clear_message(dock, qtbot, tmp_path):
    from napari_softseg.engine.checkpoint import make_config, save_checkpoint
    from napari_softseg.engine.model import UNet

    net = UNet(2, 1, depth=1, base_features=2)
    path = save_checkpoint(tmp_path / "two.pt", net, make_config(net, contrasts=["T1", "FLAIR"]))
    dock.models.add_file(path)
    assert "expects 2 contrasts (T1, FLAIR)" in dock.scan_info.text()
    assert "has 1" in dock.scan_info.text()
    assert dock.segment() is None
    assert "phantom_flair soft" not in dock.viewer.layers


@gui
def test_models_trained_in_the_session_are_offered(dock, qtbot, tmp_path):
    import shutil

    from napari_softseg.engine.predict import resolve_model_path
    from napari_softseg.widgets.models import RECENT_MODELS

    path = tmp_path / "mine.pt"
    shutil.copy(resolve_model_path("ms-lesion"), path)
    try:
        RECENT_MODELS.add(path, "my lesion model")
        labels = [dock.models.combo.itemText(i) for i in range(dock.models.combo.count())]
        assert any("my lesion model" in t for t in labels)
        assert dock.models.current().name == str(path)  # the newest model is selected
        assert "Threshold" in dock.models.info.text() and "FLAIR" in dock.models.info.text()
        names = [c.name for c in dock.models.choices()]
        assert "ms-lesion" in names and "brain-gm" in names or "ms-lesion" in names
    finally:
        RECENT_MODELS.clear()


# ----------------------------------------------------------------------------- review core (no GUI)


def _two_cubes():
    """Cube A (3x3x3 voxels, p = 0.9) and cube B (2x2x2, p = 0.4) in a 12x12x8 volume."""
    soft = np.zeros((12, 12, 8), np.float32)
    soft[1:4, 1:4, 1:4] = 0.9
    soft[7:9, 7:9, 4:6] = 0.4
    return soft


def test_review_decisions_follow_lesions_across_thresholds():
    from napari_softseg.review.session import Review

    review = Review(_two_cubes(), spacing=(1.0, 1.0, 2.0), threshold=0.5)
    table = review.analyse()
    assert len(table) == 1 and table[0].voxels == 27 and table[0].hard_volume_mm3 == 54.0
    a = table[0].id
    review.decide(a, "rejected", comment="artefact")
    assert not review.final_mask().any()
    table = review.analyse(threshold=0.3)  # B appears; ids may be renumbered
    assert sorted(r.voxels for r in table) == [8, 27]
    a_new = next(r.id for r in table if r.voxels == 27)
    b_new = next(r.id for r in table if r.voxels == 8)
    assert review.decision(a_new).status == "rejected" and review.decision(a_new).comment == "artefact"
    assert review.decision(b_new).status == "pending"
    expected = np.zeros_like(review.soft, bool)
    expected[7:9, 7:9, 4:6] = True
    np.testing.assert_array_equal(review.final_mask(), expected)
    assert review.counts() == {"pending": 1, "accepted": 0, "rejected": 1, "edited": 0}


def test_review_keeps_painted_edits_and_exports(tmp_path):
    from napari_softseg.io.nifti import read_nifti
    from napari_softseg.review.session import Review

    review = Review(_two_cubes(), spacing=(1.0, 1.0, 2.0), threshold=0.3)
    review.analyse()
    b = next(r.id for r in review.records() if r.voxels == 8)
    painted = review.final_mask().copy()
    painted[11, 11, 7] = True  # a voxel drawn far from every lesion
    painted[7, 7, 4] = False  # one voxel of B erased
    changed = review.sync_edits(painted)
    assert list(changed) == [b] and review.decision(b).status == "edited"
    for t in (0.2, 0.6, 0.3):  # edits survive threshold changes
        review.analyse(threshold=t)
        mask = review.final_mask()
        assert mask[11, 11, 7] and not mask[7, 7, 4]
    soft = review.final_soft()
    assert soft[11, 11, 7] == 1.0 and soft[7, 7, 4] == 0.0 and soft[7, 8, 4] == np.float32(0.4)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[:3, 3] = (-5.0, 3.0, 7.5)
    paths = review.export(tmp_path, "case", affine=affine, model={"name": "test"}, scan="case.nii.gz")
    with open(paths["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(int(r["voxels"]) for r in rows) == sorted(r.voxels for r in review.records())
    row_b = next(r for r in rows if int(r["voxels"]) == 8)
    assert row_b["decision"] == "edited" and int(row_b["final_voxels"]) == 7
    doc = json.loads(paths["json"].read_text())
    assert doc["model"] == {"name": "test"} and doc["scan"] == "case.nii.gz"
    assert doc["summary"]["added_voxels"] == 1 and doc["summary"]["removed_voxels"] == 1
    assert doc["summary"]["final_voxels"] == int(review.final_mask().sum())
    binary = read_nifti(paths["binary"])
    np.testing.assert_allclose(binary.affine, affine)
    np.testing.assert_array_equal(binary.data > 0, review.final_mask())
