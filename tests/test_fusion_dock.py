"""The Rater fusion dock, opened from the Plugins menu, on real raters (ISBI 2015) and the
lesion phantom's raters.

Expected values never come from the fusion module the dock calls: STAPLE from SimpleITK's
``STAPLEImageFilter``, soft STAPLE from a plain float64 EM, majority votes, averages, Dice and
entropies from numpy.
"""

from __future__ import annotations

import numpy as np
import pytest

from _docks import ANNOTATION, FUSION, SEGMENT, TRAINING, open_dock
from _oracles import binary_entropy_bits, dice_percent, itk_staple, majority_vote, reference_soft_staple
from _paths import SHARED

pytestmark = pytest.mark.gui

ISBI = SHARED / "isbi2015_raters"


def add_volume(viewer, path, name=None, labels=True):
    from napari_softseg.io.nifti import read_nifti

    vol = read_nifti(path)
    add = viewer.add_labels if labels else viewer.add_image
    data = vol.data.astype(np.uint8) if labels else vol.data
    return add(data, affine=vol.affine, metadata=vol.geometry_metadata(), name=name or vol.name)


def table(dock):
    return [[dock.table.item(r, c).text() for c in range(dock.table.columnCount())]
            for r in range(dock.table.rowCount())]


def pick(dock, method):
    index = dock.method.findData(method)
    assert index >= 0, method
    dock.method.setCurrentIndex(index)


def test_staple_on_two_real_raters_in_a_worker(make_napari_viewer, qtbot):
    from napari_softseg.io.nifti import read_nifti

    viewer = make_napari_viewer()
    paths = [ISBI / f"training01_rater{k}.nii.gz" for k in (1, 2)]
    for k, p in enumerate(paths, 1):
        add_volume(viewer, p, name=f"rater{k}")
    dock = open_dock(viewer, FUSION)
    assert dock.reference.currentText() == "(first rater)"  # no image comes with these raters
    pick(dock, "staple")
    worker = dock.start()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
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
    post, sens, spec, _ = itk_staple([r1, r2])  # SimpleITK's STAPLE
    np.testing.assert_allclose(fused.data, post, atol=1e-5)
    clear = np.abs(post - 0.5) > 1e-4  # the consensus is fused >= 0.5
    np.testing.assert_array_equal(consensus.data[clear], (post >= 0.5)[clear])
    rows = table(dock)
    assert [row[0] for row in rows] == ["rater1", "rater2"]
    for row, r, se, sp in zip(rows, (r1, r2), sens, spec):
        assert float(row[1]) == pytest.approx(se, abs=6e-5) and float(row[2]) == pytest.approx(sp, abs=6e-5)
        assert float(row[3]) == pytest.approx(dice_percent(r, consensus.data), abs=0.051)
        assert row[4] == f"{float(np.count_nonzero(r)):.0f}"  # 1 mm³ voxels
    # zero where the raters agree, 1 bit where one of two marks the voxel
    agree = r1 == r2
    assert np.all(dis.data[agree] == 0)
    np.testing.assert_allclose(dis.data[~agree], 1.0, rtol=1e-6)
    assert (~agree).sum() > 1000


def test_phantom_raters_with_the_scan_as_reference(make_napari_viewer, phantom_paths):
    from napari_softseg.io.nifti import read_nifti

    viewer = make_napari_viewer()
    scan = add_volume(viewer, phantom_paths["image"], name="flair", labels=False)
    styles = ["conservative", "generous", "jitter"]
    for style in styles:
        add_volume(viewer, phantom_paths[f"rater_{style}"], name=style)
    dock = open_dock(viewer, FUSION)
    dock.add_files([phantom_paths["rater_misses_small"]])  # a fourth rater straight from its file
    assert dock.reference.currentText() == "flair"
    pick(dock, "staple")
    dock.run_now()

    raters = [read_nifti(phantom_paths[f"rater_{s}"]).data for s in styles + ["misses_small"]]
    post, sens, spec, _ = itk_staple(raters)
    assert [row[0] for row in table(dock)] == styles + ["rater_misses_small"]
    np.testing.assert_allclose([float(row[1]) for row in table(dock)], sens, atol=6e-5)
    np.testing.assert_allclose([float(row[2]) for row in table(dock)], spec, atol=6e-5)
    # the rater that marks everything touched is the most sensitive, the core-only one the least
    assert np.argmax(sens) == 1 and np.argmin(sens) == 0
    fused = viewer.layers["flair fused (staple)"]
    np.testing.assert_allclose(fused.affine.affine_matrix, scan.affine.affine_matrix)
    np.testing.assert_allclose(fused.data, post, atol=1e-5)
    clear = np.abs(post - 0.5) > 1e-4
    np.testing.assert_array_equal(viewer.layers["flair consensus (staple)"].data[clear], (post >= 0.5)[clear])
    staple_consensus = viewer.layers["flair consensus (staple)"].data.copy()
    # disagreement: entropy (bits) of the raters' average, 0 exactly where all agree
    dis = viewer.layers["flair disagreement (staple)"].data
    all_agree = np.all([r == raters[0] for r in raters[1:]], axis=0)
    assert np.all(dis[all_agree] == 0) and np.all(dis[~all_agree] > 0)
    np.testing.assert_allclose(dis, binary_entropy_bits(np.mean(raters, axis=0)), atol=1e-5)

    # another method adds its own three layers next to the first ones (method in every name);
    # running the same method again replaces them instead of piling them up
    pick(dock, "average")
    n = len(viewer.layers)
    dock.run_now()
    assert len(viewer.layers) == n + 3
    assert {"flair fused (average)", "flair consensus (average)", "flair disagreement (average)"} <= {
        lay.name for lay in viewer.layers}
    np.testing.assert_array_equal(viewer.layers["flair consensus (staple)"].data, staple_consensus)  # kept
    dock.run_now()
    assert len(viewer.layers) == n + 3
    np.testing.assert_allclose(viewer.layers["flair fused (average)"].data, np.mean(raters, axis=0), atol=1e-6)
    assert all(row[1] == "-" for row in table(dock))  # no sensitivity without STAPLE

    # majority vote: more than half of the four raters, a 2-2 tie is background
    pick(dock, "majority")
    dock.run_now()
    expected = majority_vote(raters)
    assert int(((np.sum(raters, axis=0) == 2)).sum()) > 0  # ties occur on this phantom
    np.testing.assert_array_equal(viewer.layers["flair consensus (majority)"].data, expected)
    np.testing.assert_array_equal(viewer.layers["flair fused (majority)"].data, expected.astype(np.float32))
    for row, r in zip(table(dock), raters):
        assert float(row[3]) == pytest.approx(dice_percent(r, expected), abs=0.051)


def test_soft_raters_painted_in_the_annotation_dock_fuse_with_soft_staple(make_napari_viewer):
    """Rater layers hold confidence levels; the fusion dock reads them as level / 10."""
    viewer = make_napari_viewer()
    viewer.open(str(SHARED / "sct_mt" / "mt1.nii.gz"), plugin="napari-softseg")
    ann = open_dock(viewer, ANNOTATION)
    rng = np.random.default_rng(3)
    truth = np.zeros((40, 40, 5), bool)
    truth[12:26, 14:28, 1:4] = True
    levels = []
    for name, (hit, miss) in {"a": (9, 1), "b": (7, 2), "c": (10, 3)}.items():
        lv = np.where(truth, hit, np.where(rng.random(truth.shape) < 0.05, miss, 0)).astype(np.uint8)
        lv[rng.random(truth.shape) < 0.03] = 4
        ann.add_rater(name, data=lv)
        levels.append(lv)
    dock = open_dock(viewer, FUSION)
    pick(dock, "soft-staple")
    dock.select(["a", "b", "c"])
    dock.run_now()
    soft_raters = [lv / 10.0 for lv in levels]
    W, p, q = reference_soft_staple(soft_raters)
    fused = viewer.layers["mt1 fused (soft-staple)"].data
    np.testing.assert_allclose(fused, W, atol=2e-4)
    np.testing.assert_allclose([float(row[1]) for row in table(dock)], p, atol=2e-4)
    np.testing.assert_allclose([float(row[2]) for row in table(dock)], q, atol=2e-4)
    # soft STAPLE differs from the plain average on these raters (the EM weights them)
    assert np.abs(fused - np.mean(soft_raters, axis=0)).max() > 0.05


def test_soft_rater_layers_and_clear_messages_for_mismatched_grids(make_napari_viewer):
    from _notes import Notifications

    from napari_softseg.io.nifti import read_nifti

    errors = Notifications("error")
    viewer = make_napari_viewer()
    vol = read_nifti(SHARED / "sct_mt" / "mt1.nii.gz")
    viewer.add_image(vol.data, affine=vol.affine, metadata=vol.geometry_metadata(), name="mt1")
    ann = open_dock(viewer, ANNOTATION)
    a, b = ann.add_rater("a"), ann.add_rater("b")
    assert (a.name, b.name) == ("a", "b")
    a.data[10:20, 10:20, 2] = 7
    b.data[15:25, 10:20, 2] = 3
    dock = open_dock(viewer, FUSION)
    pick(dock, "average")
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


@pytest.mark.parametrize("name, cls", [(ANNOTATION, "SoftAnnotationWidget"), (FUSION, "FusionWidget"),
                                       (TRAINING, "TrainingWidget"), (SEGMENT, "SegmentWidget")])
def test_docks_open_from_the_plugin_menu(make_napari_viewer, name, cls):
    viewer = make_napari_viewer()
    widget = open_dock(viewer, name)  # asserts that the dock got napari's proxy viewer
    assert type(widget).__name__ == cls
