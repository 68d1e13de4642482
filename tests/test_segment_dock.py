"""The Segment & review dock end to end, opened from the Plugins menu, in a real viewer
(pytest-qt, Xvfb).

Expected values come from independent paths, never from the functions the dock calls: the
soft map from a plain fp32 slice-by-slice forward pass of the network (``_oracles``),
masks from ``soft >= t`` in numpy, components from ``scipy.ndimage.label`` with the
18-neighbourhood, per-lesion statistics and sample IoU / volume CV from numpy on those
components, entropies from the binary-entropy formula, geometry from the NIfTI file.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from _docks import phantom_segment_dock, run_segment
from _oracles import binary_entropy_bits, components, plain_network_prediction

gui = pytest.mark.gui
slow = pytest.mark.slow

#: the bf16 fast path of the dock against the plain fp32 network (bench_predict measured a max abs diff of 0.0099 on a CPU with bf16)
FAST_PATH_ATOL = 0.02


@pytest.fixture
def dock(make_napari_viewer, qtbot):
    return phantom_segment_dock(make_napari_viewer())


#: slices of the phantom (axis 2) compared with the plain network, which is slow
SOME = list(range(2, 47, 9))


def reference_soft(scan_data, flip=()):
    """The shipped ms-lesion network, plain fp32 (its voxel size is the phantom's: no
    resampling), on the slices :data:`SOME`."""
    from napari_softseg.engine.predict import load_model

    model = load_model("ms-lesion")
    return plain_network_prediction(model, np.asarray(scan_data, np.float32), axis=2, flip=flip, slices=SOME)


def columns(table) -> dict[str, int]:
    return {table.horizontalHeaderItem(c).text(): c for c in range(table.columnCount())}


def lesion_rows(table) -> list[int]:
    """The rows of lesions (parts of the mask); possible lesions, sub-threshold blobs, follow them."""
    kind = columns(table)["kind"]
    return [r for r in range(table.rowCount()) if table.item(r, kind).text() == "lesion"]


def make_every_lesion_flagged(dock) -> None:
    dock.panel.rule_toggle.setChecked(True)
    check, spin = dock.panel.rule.controls()["min_volume_mm3"]
    check.setChecked(True)
    spin.setValue(10000.0)


@gui
@slow
def test_segment_adds_layers_on_the_scan_geometry(dock, qtbot):
    from napari_softseg.io.nifti import read_nifti
    from napari_softseg.widgets.base import data_to_world

    run_segment(qtbot, dock)
    viewer, scan = dock.viewer, dock.viewer.layers["phantom_flair"]
    soft, mask, entropy = (viewer.layers[f"phantom_flair {k}"] for k in ("soft", "mask", "entropy"))
    assert [lay.name for lay in viewer.layers][-3:] == ["phantom_flair entropy", "phantom_flair soft", "phantom_flair mask"]
    source = read_nifti(scan.metadata["source_path"])
    for layer in (soft, mask, entropy):
        assert layer.data.shape == source.data.shape
        np.testing.assert_allclose(data_to_world(layer), source.affine, atol=1e-6)
        assert layer.metadata["softseg_model"]["name"] == "ms-lesion"
    # the soft map is the network's output on the z-scored scan, in [0, 1]
    expected = reference_soft(source.data)
    assert (expected >= 0.5).sum() > 50  # the compared slices hold lesions
    np.testing.assert_allclose(soft.data[:, :, SOME], expected, atol=FAST_PATH_ATOL)
    assert soft.data.dtype == np.float32 and 0.0 <= soft.data.min() and soft.data.max() <= 1.0
    assert tuple(soft.contrast_limits) == (0.0, 1.0)
    # the mask is soft >= the model's optimised threshold (as its model card says)
    from napari_softseg.engine.checkpoint import load_checkpoint
    from napari_softseg.engine.predict import MODELS_DIR

    threshold = json.loads((MODELS_DIR / "ms-lesion.json").read_text())["threshold"]
    assert threshold == load_checkpoint(MODELS_DIR / "ms-lesion.pt")[1]["threshold"]
    assert dock.threshold.value() == pytest.approx(threshold, abs=0.005)
    # the dock says plainly what the shipped lesion model was trained on, and how to adapt it
    assert "synthetic training data only" in dock.models.info.text() and "Fine-tune" in dock.models.info.text()
    np.testing.assert_array_equal(mask.data > 0, soft.data >= np.float32(threshold))
    clear = np.abs(expected - threshold) > FAST_PATH_ATOL
    np.testing.assert_array_equal((mask.data[:, :, SOME] > 0)[clear], (expected >= threshold)[clear])
    # binary entropy in bits, by hand
    np.testing.assert_allclose(entropy.data, binary_entropy_bits(soft.data), atol=1e-4)


@gui
@slow
def test_threshold_slider_rebinarises_and_table_follows(dock, qtbot):
    run_segment(qtbot, dock)
    soft = dock.viewer.layers["phantom_flair soft"].data
    mask_layer = dock.viewer.layers["phantom_flair mask"]
    with qtbot.waitSignal(dock.analysed, timeout=60_000):
        dock.threshold.slider.setValue(20)  # the user drags the slider to 0.20
        np.testing.assert_array_equal(mask_layer.data > 0, soft >= np.float32(0.2))  # at once, before the table
    low = mask_layer.data > 0
    _, n = components(soft >= np.float32(0.2))
    assert len(lesion_rows(dock.panel.table)) == n
    with qtbot.waitSignal(dock.analysed, timeout=60_000):
        dock.threshold.spin.setValue(0.6)
    high = mask_layer.data > 0
    np.testing.assert_array_equal(high, soft >= np.float32(0.6))
    _, n_high = components(high)
    assert len(lesion_rows(dock.panel.table)) == n_high
    assert high.sum() < low.sum() and not np.any(high & ~low)


@gui
@slow
def test_table_lists_the_components_and_their_statistics(dock, qtbot):
    from qtpy.QtCore import Qt

    from napari_softseg.widgets.segment.lesion_table import FLAG_COLOUR

    # only the mean-probability criterion (README: mean probability < 0.6 flags a lesion)
    dock.panel.rule_toggle.setChecked(True)
    for key, (check, spin) in dock.panel.rule.controls().items():
        check.setChecked(key == "min_mean_probability")
    dock.panel.rule.controls()["min_mean_probability"][1].setValue(0.6)
    run_segment(qtbot, dock)
    soft = dock.viewer.layers["phantom_flair soft"].data
    t = np.float32(dock.threshold.value())
    labels, n = components(soft >= t)
    table = dock.panel.table
    assert n > 2 and len(lesion_rows(table)) == n
    col = columns(table)
    by_size = {}
    for k in range(1, n + 1):  # every component, described by numpy
        p = soft[labels == k].astype(np.float64)
        by_size.setdefault(p.size, []).append((3.0 * p.size, p.mean(), p.min(), p.mean() < 0.6))
    shown = {}
    for row in lesion_rows(table):
        cells = {name: table.item(row, c).text() for name, c in col.items()}
        shown.setdefault(int(cells["voxels"]), []).append(
            (float(cells["vol mm³"]), float(cells["mean p"]), float(cells["min p"]), cells["flag"] != ""))
        background = table.item(row, 0).background()
        flagged_look = background.style() != Qt.BrushStyle.NoBrush and background.color() == FLAG_COLOUR
        assert flagged_look == (cells["flag"] != "")  # flagged rows stand out
    assert sorted(shown) == sorted(by_size)
    for size, rows in shown.items():
        for got, want in zip(sorted(rows), sorted(by_size[size])):
            assert got[0] == pytest.approx(want[0], abs=0.051)  # hard volume: voxels x 1 x 1 x 3 mm
            assert got[1] == pytest.approx(want[1], abs=0.0051) and got[2] == pytest.approx(want[2], abs=0.0051)
            if abs(want[1] - 0.6) > 0.005:
                assert got[3] == want[3]  # flagged exactly when the mean probability is below 0.6
    # sorting by volume keeps each id on its row (the id is the lesion's value in the label image)
    review = dock.review
    table.sortItems(col["vol mm³"])
    vols = [float(table.item(r, col["vol mm³"]).text()) for r in range(table.rowCount())]
    assert vols == sorted(vols)
    for row in range(table.rowCount()):
        lesion = review.table.labels == table.id_at(row)
        assert int(table.item(row, col["voxels"]).text()) == int(lesion.sum())
    # the flag rule is applied again without re-running anything
    check, spin = dock.panel.rule.controls()["min_volume_mm3"]
    check.setChecked(True)
    spin.setValue(10000.0)
    assert all(table.item(r, col["flag"]).text() for r in lesion_rows(table))
    for check, _ in dock.panel.rule.controls().values():
        check.setChecked(False)
    assert not any(table.item(r, col["flag"]).text() for r in range(table.rowCount()))
    assert dock.panel.table.step_flagged(1) is None


@gui
@slow
def test_selecting_rows_and_the_n_keys_move_to_flagged_lesions(dock, qtbot):
    from qtpy.QtCore import Qt

    make_every_lesion_flagged(dock)
    run_segment(qtbot, dock)
    review, viewer, table = dock.review, dock.viewer, dock.panel.table
    order = table.ids_in_order()  # every row is flagged: N walks the table in display order
    assert len(order) >= 3 and all(table.item(r, columns(table)["flag"]).text() for r in range(len(order)))
    target = table.id_at(lesion_rows(table)[-1])
    table.selectRow(table.row_of(target))  # the user clicks the last lesion row
    scan = viewer.layers["phantom_flair"]
    centroid = np.argwhere(review.table.labels == target).mean(axis=0)  # numpy, from the label image
    voxel = scan.world_to_data(viewer.dims.point)
    assert round(voxel[2]) == round(centroid[2])  # the slice of the lesion is shown
    np.testing.assert_allclose(voxel, centroid, atol=0.51)
    centre = np.asarray(getattr(viewer, "scene", viewer).camera.center)[-2:]
    world = scan.data_to_world(centroid)
    np.testing.assert_allclose(centre, np.asarray(world)[list(viewer.dims.displayed)], atol=1e-3)
    highlight = viewer.layers["phantom_flair mask"].data == 2  # the selected lesion has its own colour
    np.testing.assert_array_equal(highlight, review.table.labels == target)

    # the real keys on the canvas: N goes to the next flagged row (wrapping), Shift+N back
    canvas = viewer.window._qt_viewer.canvas.native
    table.selectRow(table.row_of(order[-1]))  # the last row (a possible lesion, if the table lists any)
    canvas.setFocus()
    seen = []
    for _ in range(3):
        qtbot.keyClick(canvas, Qt.Key.Key_N)
        seen.append(table.selected_id())
    assert seen == [order[0], order[1], order[2]]  # from the last row, N wraps to the first
    qtbot.keyClick(canvas, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)
    assert table.selected_id() == order[1]
    qtbot.keyClick(canvas, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)
    assert table.selected_id() == order[0]
    qtbot.keyClick(canvas, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)
    assert table.selected_id() == order[-1]  # and Shift+N wraps backwards
    last_is_lesion = review.table.by_id(order[-1]).kind == "lesion"
    # a selected lesion is highlighted in the mask; a possible lesion is not part of the mask
    np.testing.assert_array_equal(viewer.layers["phantom_flair mask"].data == 2,
                                  (review.table.labels == order[-1]) & last_is_lesion)


@gui
@slow
def test_reject_removes_the_lesion_from_the_final_mask(dock, qtbot):
    run_segment(qtbot, dock)
    review, table = dock.review, dock.panel.table
    mask_layer = dock.viewer.layers["phantom_flair mask"]
    before = mask_layer.data > 0
    sizes = np.bincount(review.table.labels.ravel())[1:]
    target = int(np.argmax(sizes)) + 1  # the largest lesion, from the label image
    table.select_id(target)
    dock.panel.reject_button.click()
    region = review.table.labels == target
    after = mask_layer.data > 0
    assert region.sum() == sizes.max() > 0 and not after[region].any()
    np.testing.assert_array_equal(after, before & ~region)  # nothing else changed
    col = columns(table)
    assert table.item(table.row_of(target), col["decision"]).text() == "rejected"
    # a lower threshold grows the lesion: its voxels form one component, still rejected
    dock.set_threshold(review.threshold - 0.05, analyse_now=True)
    ids = np.unique(review.table.labels[region])
    assert len(ids) == 1 and ids[0] != 0
    assert table.item(table.row_of(int(ids[0])), col["decision"]).text() == "rejected"
    assert not (mask_layer.data > 0)[region].any()
    # accepting brings it back
    table.select_id(int(ids[0]))
    dock.panel.accept_button.click()
    assert (mask_layer.data > 0)[region].all()
    assert table.item(table.row_of(int(ids[0])), col["decision"]).text() == "accepted"


@gui
@slow
def test_painted_edits_are_kept_and_mark_the_lesion_edited(dock, qtbot):
    run_segment(qtbot, dock)
    review, layer = dock.review, dock.viewer.layers["phantom_flair mask"]
    target = int(np.argmax(np.bincount(review.table.labels.ravel())[1:])) + 1
    dock.panel.table.select_id(target)
    # the reviewer erases one voxel of the lesion and paints one far from any lesion
    inside = tuple(int(v) for v in np.argwhere(review.table.labels == target)[0])
    outside = next(tuple(int(v) for v in idx) for idx in np.argwhere(review.soft < 0.01))
    layer.brush_size = 1
    layer.paint(inside, 0)
    layer.paint(outside, 1)
    decision = columns(dock.panel.table)["decision"]
    qtbot.waitUntil(lambda: dock.panel.table.item(dock.panel.table.row_of(target), decision).text() == "edited",
                    timeout=10_000)  # the lesion touched by the eraser
    dock.set_threshold(review.threshold + 0.01, analyse_now=True)  # edits survive a new threshold
    assert layer.data[outside] == 1 and layer.data[inside] == 0
    final = review.final_mask()
    assert final[outside] and not final[inside]
    # Edit hands the mask layer to napari's paint tools
    dock.start_edit()
    assert dock.viewer.layers.selection.active.name == "phantom_flair mask" and layer.mode == "paint"
    assert layer.selected_label == 1 and layer.contour == 0


@gui
@slow
def test_export_round_trips(dock, qtbot, tmp_path):
    from napari_softseg.io.nifti import read_nifti

    run_segment(qtbot, dock)
    review, table = dock.review, dock.panel.table
    labels = review.table.labels.copy()
    soft = dock.viewer.layers["phantom_flair soft"].data
    ids = table.ids_in_order()
    assert len(ids) >= 2
    table.select_id(ids[0])
    dock.panel.reject_button.click()
    dock.panel.comment.setText("vessel, not a lesion")
    dock.panel.comment.editingFinished.emit()
    table.select_id(ids[1])
    dock.panel.accept_button.click()
    paths = dock.export_review(tmp_path)
    with open(paths["csv"], newline="", encoding="utf-8") as fh:
        rows = {int(r["id"]): r for r in csv.DictReader(fh)}
    assert sorted(rows) == sorted(ids)
    assert rows[ids[0]]["decision"] == "rejected" and rows[ids[0]]["comment"] == "vessel, not a lesion"
    assert rows[ids[1]]["decision"] == "accepted" and all(rows[i]["decision"] == "pending" for i in ids[2:])
    for lesion_id, row in rows.items():
        p = soft[labels == lesion_id].astype(np.float64)
        assert int(row["voxels"]) == p.size
        assert float(row["mean_probability"]) == pytest.approx(p.mean(), rel=1e-5)
    doc = json.loads(paths["json"].read_text())
    assert doc["model"]["name"] == "ms-lesion" and len(doc["model"]["sha256"]) == 64
    assert doc["threshold"] == pytest.approx(dock.threshold.value(), abs=0.005)
    decided = {les["id"]: les for les in doc["lesions"]}
    assert decided[ids[0]]["decision"] == "rejected" and decided[ids[0]]["final_voxels"] == 0
    assert doc["summary"]["decisions"]["rejected"] == 1 and doc["summary"]["decisions"]["accepted"] == 1
    source = read_nifti(dock.viewer.layers["phantom_flair"].metadata["source_path"])  # the file on disk
    binary, soft_out = read_nifti(paths["binary"]), read_nifti(paths["soft"])
    for vol in (binary, soft_out):
        np.testing.assert_allclose(vol.affine, source.affine, atol=1e-6)
        assert vol.data.shape == source.data.shape
    expected = (soft >= np.float32(doc["threshold"])) & (labels != ids[0])  # numpy: the mask minus the rejection
    np.testing.assert_array_equal(binary.data > 0, expected)
    np.testing.assert_allclose(soft_out.data, np.where(labels == ids[0], 0.0, soft), atol=1e-6)
    # raw predictions with the same geometry
    saved = dock.save_predictions(tmp_path / "raw")
    raw = read_nifti(saved["soft"])
    np.testing.assert_allclose(raw.affine, source.affine, atol=1e-6)
    np.testing.assert_allclose(raw.data, soft, atol=1e-6)


def _structure_stats(labels, n, samples, threshold):
    """Per lesion, over the samples: IoU of its structures (the union of a sample's components
    that overlap it) and the coefficient of variation of their volumes (numpy, scipy)."""
    sample_labels = [components(s >= threshold) for s in samples]
    iou, cv = [], []
    for k in range(1, n + 1):
        lesion = labels == k
        structures = []
        for s_lab, _ in sample_labels:
            ids = np.setdiff1d(np.unique(s_lab[lesion]), [0])
            structures.append(np.isin(s_lab, ids) if ids.size else np.zeros_like(lesion))
        inter, union = np.logical_and.reduce(structures), np.logical_or.reduce(structures)
        iou.append(inter.sum() / union.sum() if union.any() else 0.0)
        vol = np.array([s.sum() for s in structures], float)
        cv.append(vol.std() / vol.mean() if vol.mean() > 0 else np.nan)
    return np.array(iou), np.array(cv)


@gui
@slow
def test_mc_dropout_samples_feed_the_lesion_statistics(dock, qtbot, tmp_path):
    from napari_softseg.engine.checkpoint import build_model, load_checkpoint, save_checkpoint
    from napari_softseg.engine.predict import resolve_model_path
    from napari_softseg.widgets.models import RECENT_MODELS
    from napari_softseg.widgets.segment.controls import MC_OFF_TIP

    # the shipped ms-lesion has no dropout: the MC box is off and says why
    assert not dock.run_controls.mc_spin.isEnabled() and dock.run_controls.mc_spin.toolTip() == MC_OFF_TIP
    # the same weights with dropout 0.1: a model MC dropout can sample
    state, config = load_checkpoint(resolve_model_path("ms-lesion"))
    config["architecture"]["dropout"] = 0.1
    path = save_checkpoint(tmp_path / "with-dropout.pt", build_model(config, state), config)
    RECENT_MODELS.add(path, "ms-lesion with dropout")
    assert dock.models.current().name == str(path) and dock.run_controls.mc_spin.isEnabled()
    dock.run_controls.mc_spin.setValue(3)
    run_segment(qtbot, dock)
    samples = dock.review.samples
    assert samples is not None and len(samples) == 3
    assert not np.array_equal(samples[0], samples[1])  # dropout really ran: the draws differ
    soft = dock.viewer.layers["phantom_flair soft"].data
    np.testing.assert_allclose(soft, np.mean(samples, axis=0), atol=1e-6)  # the soft map is their mean
    np.testing.assert_allclose(dock.viewer.layers["phantom_flair entropy"].data, binary_entropy_bits(soft), atol=1e-4)
    t = np.float32(dock.threshold.value())
    labels, n = components(soft >= t)
    iou, cv = _structure_stats(labels, n, samples, t)
    table = dock.panel.table
    col = columns(table)
    rows = lesion_rows(table)
    assert len(rows) == n > 0  # (possible lesions, listed after them, are blobs below the threshold)
    for row in rows:
        k = int(np.bincount(labels[dock.review.table.labels == table.id_at(row)]).argmax())
        assert float(table.item(row, col["IoU"]).text()) == pytest.approx(iou[k - 1], abs=0.0051)
        cell = table.item(row, col["vol CV"]).text()
        assert (cell == "") if np.isnan(cv[k - 1]) else float(cell) == pytest.approx(cv[k - 1], abs=0.0051)
    assert np.ptp(iou) > 0  # the statistics tell lesions apart


@gui
@slow
def test_test_time_augmentation_averages_flipped_views(dock, qtbot):
    dock.run_controls.tta_combo.setCurrentText("2 views (flip)")
    run_segment(qtbot, dock)
    samples = dock.review.samples
    assert samples is not None and len(samples) == 2
    scan = dock.viewer.layers["phantom_flair"].data
    # view 0: the slices as they are; view 1: flipped along their first axis, and back
    np.testing.assert_allclose(samples[0][:, :, SOME], reference_soft(scan), atol=FAST_PATH_ATOL)
    np.testing.assert_allclose(samples[1][:, :, SOME], reference_soft(scan, flip=(0,)), atol=FAST_PATH_ATOL)
    assert np.abs(samples[1] - samples[0]).max() > 0.1  # the flipped view is another prediction
    soft = dock.viewer.layers["phantom_flair soft"].data
    np.testing.assert_allclose(soft, (samples[0] + samples[1]) / 2, atol=1e-6)


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
    RECENT_MODELS.add(path, "my lesion model")
    labels = [dock.models.combo.itemText(i) for i in range(dock.models.combo.count())]
    assert labels[0] == "my lesion model (trained in this session)"  # the newest model comes first
    assert dock.models.combo.currentIndex() == 0 and dock.models.current().name == str(path)
    assert "Threshold" in dock.models.info.text() and "FLAIR" in dock.models.info.text()
    assert [c.name for c in dock.models.choices()] == [str(path), "ms-lesion", "brain-gm"]


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
    assert sorted(int(r["voxels"]) for r in rows if r["kind"] == "lesion") == sorted(r.voxels for r in review.records())
    (drawn,) = [r for r in rows if r["kind"] == "drawn"]  # the voxel drawn far from every lesion: its own row
    assert int(drawn["final_voxels"]) == 1 and drawn["centroid_i"] == "11.0"
    assert drawn["centroid_x_mm"] == ""  # the review was given no affine (the export's is for the NIfTI files)
    row_b = next(r for r in rows if int(r["voxels"]) == 8)
    assert row_b["decision"] == "edited" and int(row_b["final_voxels"]) == 7
    doc = json.loads(paths["json"].read_text())
    assert doc["model"] == {"name": "test"} and doc["scan"] == "case.nii.gz"
    assert doc["summary"]["added_voxels"] == 1 and doc["summary"]["removed_voxels"] == 1
    assert doc["summary"]["final_voxels"] == int(review.final_mask().sum())
    binary = read_nifti(paths["binary"])
    np.testing.assert_allclose(binary.affine, affine)
    np.testing.assert_array_equal(binary.data > 0, review.final_mask())
