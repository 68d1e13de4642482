"""In a real napari viewer: layers land where their affines say, and the screen shows them."""

from __future__ import annotations

import numpy as np
import pytest

from napari_softseg.plugin.viewer import centre_on, show_slices_along
from napari_softseg.io.nifti import read_nifti

pytestmark = pytest.mark.gui


def _world(affine, voxel):
    return (np.asarray(affine) @ np.r_[voxel, 1.0])[:3]


def test_las_scan_and_mask_and_lps_scan_land_by_their_affines(make_napari_viewer, shared_data):
    from napari.layers import Image, Labels

    viewer = make_napari_viewer()
    scan_path = shared_data / "sct_t2s/t2s_uncropped.nii.gz"
    mask_path = shared_data / "sct_t2s/t2s_uncropped_gmseg_manual.nii.gz"
    lps_path = shared_data / "brats_case/t1n.nii.gz"
    scan = viewer.open(str(scan_path), plugin="napari-softseg")[0]
    mask = viewer.open(str(mask_path), plugin="napari-softseg")[0]
    lps = viewer.open(str(lps_path), plugin="napari-softseg")[0]
    assert isinstance(scan, Image) and isinstance(mask, Labels)
    las_affine = read_nifti(scan_path).affine
    lps_affine = read_nifti(lps_path).affine
    assert las_affine[0, 0] < 0 and las_affine[1, 1] > 0  # L: x decreases with i
    assert lps_affine[0, 0] < 0 and lps_affine[1, 1] < 0  # LP: x and y decrease
    # the cord is 4.3 degrees oblique: shown on its voxel grid turned rigidly to the nearest
    # orthogonal orientation (plugin/planes.py), i.e. a diagonal placement and one rotation
    np.testing.assert_allclose(scan.affine.affine_matrix[:3, :3], np.diag([-0.5, 0.5, 7.5]), atol=1e-5)
    turn = scan.affine.affine_matrix @ np.linalg.inv(las_affine)
    np.testing.assert_allclose(turn[:3, :3] @ turn[:3, :3].T, np.eye(3), atol=1e-6)
    for voxel in [(0, 0, 0), (160, 100, 5), (319, 319, 10)]:
        np.testing.assert_allclose(scan.data_to_world(voxel), (turn @ np.r_[_world(las_affine, voxel), 1])[:3], atol=1e-4)
        np.testing.assert_allclose(mask.data_to_world(voxel), scan.data_to_world(voxel), atol=1e-4)
    for voxel in [(0, 0, 0), (120, 100, 77)]:
        np.testing.assert_allclose(lps.data_to_world(voxel), _world(lps_affine, voxel), atol=1e-4)
    # a gray-matter voxel of the mask sits on the same world point as the scan voxel
    gm_voxel = np.argwhere(mask.data > 0)[0]
    world = mask.data_to_world(gm_voxel)
    np.testing.assert_allclose(scan.world_to_data(world), gm_voxel, atol=1e-4)
    # geometry kept for exact write-back
    md = scan.metadata
    assert md["orientation"] == "LAS" and md["qform_code"] == 2 and md["sform_code"] == 1
    np.testing.assert_allclose(md["spacing"], (0.5, 0.5, 7.5), atol=1e-5)


def test_writer_round_trip_from_viewer(make_napari_viewer, shared_data, tmp_path):
    viewer = make_napari_viewer()
    soft = viewer.open(str(shared_data / "sct_mt/mt1_gmseg.nii.gz"), plugin="napari-softseg")[0]
    assert soft.contrast_limits == [0.0, 1.0] and soft.blending == "translucent"
    out = soft.save(str(tmp_path / "soft.nii.gz"), plugin="napari-softseg")
    back = read_nifti(out[0] if isinstance(out, list) else out)
    src = read_nifti(shared_data / "sct_mt/mt1_gmseg.nii.gz")
    assert back.data.dtype == np.float32
    np.testing.assert_array_equal(back.data, src.data)
    np.testing.assert_array_equal(back.affine, src.affine)
    labels = viewer.open(str(shared_data / "sct_mt/mt1_seg.nii.gz"), plugin="napari-softseg")[0]
    out = labels.save(str(tmp_path / "seg.nii.gz"), plugin="napari-softseg")
    back = read_nifti(out[0] if isinstance(out, list) else out)
    assert np.issubdtype(back.data.dtype, np.integer)
    np.testing.assert_array_equal(back.data, read_nifti(shared_data / "sct_mt/mt1_seg.nii.gz").data)


def test_several_files_open_as_contrasts_of_one_scan(make_napari_viewer, shared_data):
    viewer = make_napari_viewer()
    paths = [str(shared_data / f"brats_case/{c}.nii.gz") for c in ("t1n", "t1c", "t2w", "t2f")]
    layers = viewer.open(paths, stack=True, plugin="napari-softseg")
    assert [layer.name for layer in layers] == ["t1n", "t1c", "t2w", "t2f"]
    groups = {layer.metadata["softseg_scan"]["group"] for layer in layers}
    assert len(groups) == 1
    assert [layer.metadata["softseg_scan"]["channel"] for layer in layers] == [0, 1, 2, 3]
    for layer in layers:
        np.testing.assert_allclose(layer.affine.affine_matrix, layers[0].affine.affine_matrix)


def test_four_d_short_last_axis_is_channels(make_napari_viewer, tmp_path):
    from napari_softseg.io.nifti import write_nifti

    data = np.random.default_rng(1).random((6, 7, 8, 3)).astype(np.float32) * 100
    path = write_nifti(tmp_path / "multi.nii.gz", data, affine=np.diag([2.0, 2.0, 4.0, 1.0]))
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-softseg")
    assert len(layers) == 3
    for c, layer in enumerate(layers):
        np.testing.assert_allclose(layer.data, data[..., c])
        np.testing.assert_allclose(layer.data_to_world((1, 1, 1)), (2, 2, 4))


def test_screenshot_shows_scan_and_overlay(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-softseg", "sct_t2s")
    scan, mask = viewer.layers["t2s"], viewer.layers["gm_expert"]
    show_slices_along(viewer, scan.affine.affine_matrix)
    k = int(np.argmax(mask.data.sum(axis=(0, 1))))
    centroid = np.r_[np.argwhere(mask.data[..., k] > 0).mean(axis=0), k]
    viewer.reset_view()
    centre_on(viewer, mask.data_to_world(centroid))
    getattr(viewer, "scene", viewer).camera.zoom *= 5  # napari >= 0.9 moved the camera to the scene
    mask.opacity = 1.0
    shot = viewer.screenshot(canvas_only=True, flash=False)
    rgb = shot[..., :3].astype(float)
    assert rgb.std() > 10  # not a blank canvas: the scan is drawn
    gray = np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])
    assert (gray > 60).sum() > 50  # coloured label pixels of the overlay are visible
    mask.visible = False
    shot2 = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    gray2 = np.abs(shot2[..., 0] - shot2[..., 1]) + np.abs(shot2[..., 1] - shot2[..., 2])
    assert (gray2 > 60).sum() < (gray > 60).sum() / 10


def test_rater_layer_saves_as_soft_map(make_napari_viewer, shared_data, tmp_path):
    viewer = make_napari_viewer()
    scan = viewer.open(str(shared_data / "sct_mt/mt1.nii.gz"), plugin="napari-softseg")[0]
    levels = np.zeros(scan.data.shape, np.uint8)
    levels[10:14, 12:15, 2] = 7
    levels[20, 20, 3] = 10
    rater = viewer.add_labels(levels, affine=scan.affine, name="alice",
                              metadata={**scan.metadata, "softseg_role": "rater"})
    out = rater.save(str(tmp_path / "alice.nii.gz"), plugin="napari-softseg")
    back = read_nifti(out[0] if isinstance(out, list) else out)
    assert back.data.dtype == np.float32
    expected = np.zeros(levels.shape, np.float32)
    expected[10:14, 12:15, 2] = np.float32(7) / np.float32(10)
    expected[20, 20, 3] = 1.0
    np.testing.assert_array_equal(back.data, expected)
    np.testing.assert_array_equal(back.affine, read_nifti(shared_data / "sct_mt/mt1.nii.gz").affine)
