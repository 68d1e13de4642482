"""The Segment dock's review, opened from the Plugins menu in a real viewer (pytest-qt, Xvfb):
learned flags at the model's threshold, tissue models, the headless review table and the
export after edits and rejections.

Expected values come from numpy on the layers and files (components with
``scipy.ndimage.label``, masks from ``soft >= t``), never from the functions the dock calls.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from _docks import phantom_segment_dock, run_segment
from _oracles import components

gui = pytest.mark.gui
slow = pytest.mark.slow


@pytest.fixture
def dock(make_napari_viewer, qtbot):
    return phantom_segment_dock(make_napari_viewer())


def columns(table) -> dict[str, int]:
    return {table.horizontalHeaderItem(c).text(): c for c in range(table.columnCount())}


def cells(table, row) -> dict[str, str]:
    return {name: table.item(row, c).text() for name, c in columns(table).items()}


@gui
@slow
def test_flags_follow_the_fitted_score_and_not_the_slider(dock, qtbot):
    from napari_softseg.engine.predict import MODELS_DIR

    fitted = json.loads((MODELS_DIR / "ms-lesion.review.json").read_text())["flags"]["lesion"]["none"]
    op = dock.panel.rule.controls()["flag_score"][1].value()
    assert op == pytest.approx(fitted["operating_point"])  # the model's fitted operating point, not a hand value
    run_segment(qtbot, dock)
    table = dock.panel.table
    rows = [cells(table, r) for r in range(table.rowCount())]
    lesions = [r for r in rows if r["kind"] == "lesion"]
    flagged = [r for r in lesions if r["flag"]]
    assert all((r["flag"] != "") == (float(r["score"]) >= op) for r in lesions)
    assert 0 < len(flagged) < len(lesions) / 2  # a minority, each with a reason in words
    assert all(r["reason"].startswith(f"flag score {r['score']}") for r in flagged)
    soft = dock.viewer.layers["phantom_flair soft"].data
    ref_labels, _ = components(soft >= np.float32(dock.review.model_threshold))
    before = {}  # reference component (numpy) -> score shown at the model's threshold
    for r in lesions:
        k = int(np.bincount(ref_labels[dock.review.table.labels == int(r["id"])]).argmax())
        before[k] = float(r["score"])
    sizes = {int(r["id"]): int(np.count_nonzero(dock.review.table.labels == int(r["id"]))) for r in lesions}
    assert 1 in sizes.values()  # the phantom has a one-voxel lesion at the model's threshold
    for i, n in sizes.items():  # selecting a lesion says its size in words, singular for one voxel
        dock.select_lesion(i)
        assert dock.status.text().startswith(f"Lesion {i}: {n} voxel{'' if n == 1 else 's'}, mean p ")
    high = round(dock.review.model_threshold + 0.25, 2)  # the user raises the slider above the model's threshold
    with qtbot.waitSignal(dock.analysed, timeout=60_000):
        dock.threshold.spin.setValue(high)
    rows = [r for r in (cells(table, r) for r in range(table.rowCount())) if r["kind"] == "lesion"]
    assert rows
    for r in rows:  # each lesion at the higher threshold lies in one lesion at the model's and keeps its score
        k = np.unique(ref_labels[dock.review.table.labels == int(r["id"])])
        assert len(k) == 1 and float(r["score"]) == before[int(k[0])]
    first = dock.step_flagged(1)
    assert first is not None and dock.review.table.by_id(first).flagged


@gui
def test_a_tissue_model_shows_the_structure_not_a_lesion_table(dock, qtbot, tmp_path):
    import torch

    from napari_softseg.engine.checkpoint import make_config, save_checkpoint
    from napari_softseg.engine.model import UNet
    from napari_softseg.review.profile import store_review_metadata

    torch.manual_seed(0)
    net = UNet(1, 1, depth=1, base_features=2).eval()
    with torch.no_grad():  # about half of the logits positive: a large "structure"
        net.head.bias -= net.forward_logits(torch.randn(4, 1, 40, 40)).mean()
    path = save_checkpoint(tmp_path / "tissue.pt", net, make_config(net, contrasts=["FLAIR"], classes=["white matter"],
                                                                     threshold=0.5))
    store_review_metadata(path, target="tissue")
    dock.models.add_file(path)
    run_segment(qtbot, dock)
    panel = dock.panel
    assert dock.review.target == "tissue"
    assert panel.table.isHidden() and panel._navigation.isHidden() and not panel.structure.isHidden()
    soft = dock.viewer.layers["phantom_flair soft"].data
    hard = int(np.count_nonzero(soft >= np.float32(0.5)))
    assert hard > 0
    text = panel.structure.text()
    assert f"{hard * 3:,.0f} mm³ ({hard:,} voxels)" in text  # 1 x 1 x 3 mm voxels
    assert f"{float(soft.sum(dtype=np.float64)) * 3:,.0f} mm³" in text and "no lesion table" in panel.summary.text()
    paths = dock.export_review(tmp_path / "out")
    with open(paths["csv"], newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert int(row["hard_voxels"]) == hard
    dock.models.set_model("ms-lesion")  # back to a lesion model: the table returns after its Segment
    run_segment(qtbot, dock)
    assert not panel.table.isHidden() and panel.structure.isHidden()


@gui
@slow
def test_predict_review_writes_the_table_the_dock_exports(dock, qtbot, tmp_path):
    from napari_softseg.commands import main

    run_segment(qtbot, dock)
    paths = dock.export_review(tmp_path / "dock")
    scan = dock.viewer.layers["phantom_flair"].metadata["source_path"]
    out = tmp_path / "cli"
    out.mkdir()
    for name in ("table.csv", "table.json"):
        assert main(["predict", "--model", "ms-lesion", "-o", str(out / "soft.nii.gz"), str(scan), "-q",
                     "--review", str(out / name)]) == 0
    assert (out / "table.csv").read_text() == paths["csv"].read_text()
    cli, docked = (json.loads(p.read_text()) for p in (out / "table.json", paths["json"]))
    assert cli.pop("files") != docked.pop("files")  # each names its own outputs; everything else is equal
    assert cli == docked
    assert docked["lesions"] and {"centroid_mm", "flag_score", "reason", "soft_volume_mm3"} <= set(docked["lesions"][0])


@gui
@slow
def test_export_after_edit_and_reject_matches_the_mask(dock, qtbot, tmp_path):
    from scipy import ndimage

    from napari_softseg.io.nifti import read_nifti

    run_segment(qtbot, dock)
    review, table = dock.review, dock.panel.table
    layer = dock.viewer.layers["phantom_flair mask"]
    labels = review.table.labels.copy()
    sizes = np.bincount(labels.ravel())[1:]
    target, other = (int(i) + 1 for i in np.argsort(-sizes)[:2])  # the two largest lesions
    table.select_id(target)
    dock.panel.edit_button.click()
    # 175 voxels painted next to the target, nearest first, away from every other lesion
    keep_out = ndimage.binary_dilation((labels > 0) & (labels != target), iterations=2) | (labels > 0)
    dist = ndimage.distance_transform_edt(labels != target)
    ring = np.argwhere(~keep_out & (layer.data == 0))
    order = np.argsort(dist[tuple(ring.T)], kind="stable")[:175]
    painted = ring[order]
    assert dist[tuple(painted.T)].max() < 4
    layer.data_setitem(tuple(painted.T), 1)
    col = columns(table)
    qtbot.waitUntil(lambda: table.item(table.row_of(target), col["decision"]).text() == "edited", timeout=10_000)
    table.select_id(other)
    dock.panel.reject_button.click()
    paths = dock.export_review(tmp_path)
    with open(paths["csv"], newline="", encoding="utf-8") as fh:
        rows = {int(r["id"]): r for r in csv.DictReader(fh)}
    mask = read_nifti(paths["binary"]).data > 0
    assert int(rows[target]["final_voxels"]) == sizes[target - 1] + 175
    assert rows[other]["decision"] == "rejected" and int(rows[other]["final_voxels"]) == 0
    assert not mask[labels == other].any() and mask[tuple(painted.T)].all()
    assert sum(int(r["final_voxels"]) for r in rows.values()) == int(mask.sum())
    doc = json.loads(paths["json"].read_text())
    assert doc["summary"]["final_voxels"] == int(mask.sum()) == sum(r["final_voxels"] for r in doc["lesions"])
    np.testing.assert_array_equal(mask, (layer.data == 1) | (layer.data == 2))  # the export is what the viewer shows
