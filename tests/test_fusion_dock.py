"""The Rater fusion dock on real raters (ISBI 2015) and the lesion phantom's raters."""

from __future__ import annotations

import numpy as np
import pytest

from _paths import SHARED

pytestmark = pytest.mark.gui

ISBI = SHARED / "isbi2015_raters"


def add_volume(viewer, path, name=None, labels=True):
    from napari_softseg.io.nifti import read_nifti

    vol = read_nifti(path)
    add = viewer.add_labels if labels else viewer.add_image
    data = vol.data.astype(np.uint8) if labels else vol.data
    return add(data, affine=vol.affine, metadata=vol.geometry_metadata(), name=name or vol.name)


def open_dock(viewer):
    from napari_softseg.widgets.fusion import FusionWidget

    dock = FusionWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Rater fusion")
    return dock


def table(dock):
    return [[dock.table.item(r, c).text() for c in range(dock.table.columnCount())]
            for r in range(dock.table.rowCount())]


def test_staple_on_two_real_raters_in_a_worker(make_napari_viewer, qtbot):
    from napari_softseg.fusion.methods import fuse
    from napari_softseg.metrics.segmentation import dice
    from napari_softseg.io.nifti import read_nifti

    viewer = make_napari_viewer()
    paths = [ISBI / f"training01_rater{k}.nii.gz" for k in (1, 2)]
    layers = [add_volume(viewer, p, name=f"rater{k}") for k, p in enumerate(paths, 1)]
    dock = open_dock(viewer)
    assert dock.reference.currentText() == "(first rater)"  # no image comes with these raters
    dock.method.setCurrentIndex(dock.method.findData("staple"))
    worker = dock.start()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    names = [lay.name for lay in viewer.layers]
    assert names[2:] == ["raters fused (staple)", "raters consensus (staple)", "raters disagreement (staple)"]
    fused, consensus, dis = (viewer.layers[n] for n in names[2:])
    affine = read_nifti(paths[0]).affine
    for lay in (fused, consensus, dis):
        np.testing.assert_allclose(lay.affine.affine_matrix, affine, atol=1e-6)
        assert lay.data.shape == (181, 217, 181)
    assert fused.contrast_limits == [0.0, 1.0] and fused.data.dtype == np.float32

    r1, r2 = (read_nifti(p).data for p in paths)
    core = fuse([r1, r2], "staple")
    np.testing.assert_array_equal(fused.data, core.soft)
    np.testing.assert_array_equal(consensus.data, core.hard)
    result, _, rows = dock.last
    np.testing.assert_allclose(result.sensitivity, core.sensitivity, rtol=0, atol=0)
    np.testing.assert_allclose(result.specificity, core.specificity, rtol=0, atol=0)
    for row, r, sens, spec in zip(table(dock), (r1, r2), core.sensitivity, core.specificity):
        assert row[1:4] == [f"{sens:.4f}", f"{spec:.4f}", f"{dice(r, core.hard):.1f}"]
        assert row[4] == f"{float(np.count_nonzero(r)):.0f}"  # 1 mm³ voxels
    # zero where the raters agree, 1 bit where one of two marks the voxel
    agree = r1 == r2
    assert np.all(dis.data[agree] == 0)
    np.testing.assert_allclose(dis.data[~agree], np.log(2) / np.log(2), rtol=1e-6)  # ln 2 nats = 1 bit
    assert (~agree).sum() > 1000


def test_phantom_raters_with_the_scan_as_reference(make_napari_viewer, phantom_paths):
    from napari_softseg.fusion.methods import disagreement_map, fuse
    from napari_softseg.io.nifti import read_nifti

    viewer = make_napari_viewer()
    scan = add_volume(viewer, phantom_paths["image"], name="flair", labels=False)
    styles = ["conservative", "generous", "jitter"]
    for style in styles:
        add_volume(viewer, phantom_paths[f"rater_{style}"], name=style)
    dock = open_dock(viewer)
    dock.add_files([phantom_paths["rater_misses_small"]])  # a fourth rater straight from its file
    assert dock.reference.currentText() == "flair"
    dock.method.setCurrentIndex(dock.method.findData("staple"))
    result, dis, rows = dock.run_now()

    raters = [read_nifti(phantom_paths[f"rater_{s}"]).data for s in styles + ["misses_small"]]
    core = fuse(raters, "staple")
    np.testing.assert_allclose(result.sensitivity, core.sensitivity)
    np.testing.assert_allclose(result.specificity, core.specificity)
    assert [r["name"] for r in rows] == styles + ["rater_misses_small"]
    # the rater that marks everything touched is the most sensitive, the core-only one the least
    assert np.argmax(core.sensitivity) == 1 and np.argmin(core.sensitivity) == 0
    fused = viewer.layers["flair fused (staple)"]
    np.testing.assert_allclose(fused.affine.affine_matrix, scan.affine.affine_matrix)
    np.testing.assert_array_equal(viewer.layers["flair consensus (staple)"].data, core.hard)
    all_agree = np.all([r == raters[0] for r in raters[1:]], axis=0)
    assert np.all(dis[all_agree] == 0) and np.all(dis[~all_agree] > 0)
    np.testing.assert_allclose(dis, disagreement_map(raters), rtol=1e-6)

    # another method adds its own three layers next to the first ones (method in every name);
    # running the same method again replaces them instead of piling them up
    dock.method.setCurrentIndex(dock.method.findData("average"))
    n = len(viewer.layers)
    dock.run_now()
    assert len(viewer.layers) == n + 3
    assert {"flair fused (average)", "flair consensus (average)", "flair disagreement (average)"} <= {
        lay.name for lay in viewer.layers}
    np.testing.assert_array_equal(viewer.layers["flair consensus (staple)"].data, core.hard)  # kept
    dock.run_now()
    assert len(viewer.layers) == n + 3
    np.testing.assert_allclose(viewer.layers["flair fused (average)"].data, np.mean(raters, axis=0), atol=1e-6)
    assert all(row[1] == "-" for row in table(dock))  # no sensitivity without STAPLE


def test_soft_rater_layers_and_clear_messages_for_mismatched_grids(make_napari_viewer, tmp_path, monkeypatch):
    from _notes import Notifications

    from napari_softseg.io.nifti import read_nifti
    from napari_softseg.widgets.annotation.dock import SoftAnnotationWidget

    errors = Notifications("error")
    monkeypatch.setenv("NAPARI_SOFTSEG_DATA", str(tmp_path / "userdata"))
    viewer = make_napari_viewer()
    vol = read_nifti(SHARED / "sct_mt" / "mt1.nii.gz")
    viewer.add_image(vol.data, affine=vol.affine, metadata=vol.geometry_metadata(), name="mt1")
    ann = SoftAnnotationWidget(viewer)
    viewer.window.add_dock_widget(ann)
    a, b = ann.add_rater("a"), ann.add_rater("b")
    a.data[10:20, 10:20, 2] = 7
    b.data[15:25, 10:20, 2] = 3
    dock = open_dock(viewer)
    dock.method.setCurrentIndex(dock.method.findData("average"))
    dock.run_now()
    fused = viewer.layers["mt1 fused (average)"].data
    assert fused[12, 12, 2] == pytest.approx(0.35) and fused[17, 12, 2] == pytest.approx(0.5)
    assert fused[22, 12, 2] == pytest.approx(0.15) and fused[12, 12, 1] == 0

    # a rater on another grid, a scan-less rater file of another shape: one sentence, no crash
    n = len(viewer.layers)
    add_volume(viewer, ISBI / "training01_rater1.nii.gz", name="isbi")
    dock.select(["a", "isbi"])
    assert dock.start() is None
    assert errors[-1] == ("Rater 'isbi' has shape (181, 217, 181) but the scan 'mt1' is (40, 40, 5); "
                          "fused raters must share the scan's grid.")
    shifted = read_nifti(SHARED / "sct_mt" / "mt1_seg.nii.gz")
    aff = shifted.affine.copy()
    aff[0, 3] += 2.0
    viewer.add_labels(shifted.data, affine=aff, name="shifted")
    dock.select(["a", "shifted"])
    assert dock.start() is None
    assert "'shifted' is not aligned with the scan 'mt1'" in errors[-1]
    dock.select(["a"])
    dock.start()
    assert errors[-1] == "Tick at least two raters to fuse."
    assert len(viewer.layers) == n + 2  # only the two layers added here


@pytest.mark.parametrize("name, cls", [("Soft annotation", "SoftAnnotationWidget"), ("Rater fusion", "FusionWidget")])
def test_docks_open_from_the_plugin_menu(make_napari_viewer, name, cls):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-softseg", name)
    assert type(widget).__name__ == cls
