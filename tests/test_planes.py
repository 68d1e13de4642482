"""Scans open in a readable plane (plugin/planes.py): the nearest orthogonal placement of a
voxel grid, anatomical axis labels, the acquisition plane on screen, exact painting on
oblique scans and the true affine written back.

Oracles: hand-built affines (a 10-degree tilt, permuted axes) with their expected placement
worked out on paper; the files' own affines read with nibabel; voxel indices of painted
strokes.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_softseg.plugin import planes

CORD = "sct_t2s/t2s_uncropped.nii.gz"
T1 = "fast_t1/bet.nii.gz"
BRATS = [f"brats_case/{c}.nii.gz" for c in ("t1n", "t1c", "t2w", "t2f")]


def _tilt_x(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def _affine(linear, translation) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = translation
    return out


# ---------------------------------------------------------------------------- pure geometry

def test_oblique_grid_is_placed_diagonally_by_one_rotation():
    rot = _tilt_x(10.0)
    spacing = np.diag([-0.5, 0.5, 3.0])  # LAS, thick slices
    true = _affine(rot @ spacing, (80.0, -90.0, 20.0))
    shown = planes.display_affine(true)
    np.testing.assert_array_equal(shown[:3, :3], np.diag([-0.5, 0.5, 3.0]))  # exactly diagonal
    # the turn is the tilt undone about the world origin: translation rotated back by 10 degrees
    np.testing.assert_allclose(shown[:3, 3], rot.T @ np.array([80.0, -90.0, 20.0]), atol=1e-6)
    turn = planes.to_display(true)
    np.testing.assert_allclose(turn[:3, :3], rot.T, atol=1e-12)
    assert planes.axis_labels(true) == ("L→R", "P→A", "I→S")
    assert planes.on_grid(shown, true) and planes.on_grid(true, true)
    assert not planes.on_grid(shown + np.diag([0, 0, 0.1, 0]), true)


def test_axis_aligned_grids_are_not_moved():
    lps = _affine(np.diag([-1.0, -1.0, 1.0]), (0.0, 239.0, 0.0))  # the BraTS affine
    np.testing.assert_array_equal(planes.display_affine(lps), lps)
    np.testing.assert_array_equal(planes.to_display(lps), np.eye(4))
    assert planes.axis_labels(lps) == ("L→R", "P→A", "I→S")


def test_grids_with_the_same_tilt_share_one_frame_and_overlay_exactly():
    rot = _tilt_x(7.0)
    fine = _affine(rot @ np.diag([0.5, 0.5, 0.5]), (10.0, 20.0, 30.0))
    coarse = _affine(rot @ np.diag([2.0, 2.0, 6.0]), (11.0, 19.0, 28.0))
    world = np.array([12.5, 23.0, 41.0, 1.0])  # a point in the scanner's world
    # the voxel of each grid at that point lands on the same display point
    v_fine, v_coarse = np.linalg.solve(fine, world), np.linalg.solve(coarse, world)
    np.testing.assert_allclose(planes.display_affine(fine) @ v_fine, planes.display_affine(coarse) @ v_coarse, atol=1e-5)
    # a grid with another tilt, mapped through the first grid's turn, also overlays exactly
    other = _affine(_tilt_x(-3.0) @ np.diag([1.0, 1.0, 1.0]), (0.0, 0.0, 0.0))
    v_other = np.linalg.solve(other, world)
    mapped = planes.display_affine(other, reference=fine)
    np.testing.assert_allclose(mapped @ v_other, planes.display_affine(fine) @ v_fine, atol=1e-5)


def test_permuted_axes_get_their_own_labels_and_plane():
    # a sagittal acquisition stored P, I, R (array axis 0 runs to posterior, 1 to inferior, 2 to the right), 5 mm slices
    pir = _affine(np.array([[0, 0, 5.0], [-1.0, 0, 0], [0, -1.0, 0]]), (0.0, 0.0, 0.0))
    assert planes.axis_labels(pir) == ("P→A", "I→S", "L→R")
    order, orientation, plane = planes.plane_view(pir)
    # slider: the 5 mm axis (sagittal); up the screen: S-I (array axis 1); across: A-P (array axis 0), anterior left
    assert (order, orientation, plane) == ((2, 1, 0), ("up", "left"), "sagittal")


@pytest.mark.parametrize("spacing, plane, order", [
    ((0.5, 0.5, 7.5), "axial", (2, 1, 0)),  # thick axial slices: the cord
    ((1.0, 1.0, 1.0), "axial", (2, 1, 0)),  # isotropic: axial
    ((1.0, 4.0, 1.0), "coronal", (1, 2, 0)),  # thick coronal: S up, R-L across
    ((5.0, 1.0, 1.0), "sagittal", (0, 2, 1)),  # thick sagittal: S up, A-P across
])
def test_the_thick_axis_goes_on_the_slider(spacing, plane, order):
    ras = np.diag([*spacing, 1.0])
    got_order, orientation, got_plane = planes.plane_view(ras)
    assert (got_order, got_plane) == (order, plane)
    assert orientation == ("up", "left")  # superior / anterior up; patient's right (or anterior) on the left


def test_reader_layers_carry_frame_and_true_geometry(shared_data):
    import nibabel as nib

    from napari_softseg.plugin.reader import layer_data

    (data, kwargs, kind), = layer_data(str(shared_data / T1))
    true = nib.load(str(shared_data / T1)).affine
    assert kind == "image" and kwargs["axis_labels"] == ("L→R", "P→A", "I→S") and kwargs["units"] == ("mm",) * 3
    np.testing.assert_allclose(kwargs["metadata"]["affine"], true)  # the file's affine, for writing
    lin = kwargs["affine"][:3, :3]
    np.testing.assert_allclose(lin, np.diag(np.diag(lin)), atol=0)  # diagonal placement
    np.testing.assert_allclose(np.abs(np.diag(lin)), np.linalg.norm(true[:3, :3], axis=0), rtol=1e-6)
    assert np.max(np.abs(true[:3, :3] - np.diag(np.diag(true[:3, :3])))) > 0.05  # the T1 really is oblique


# ---------------------------------------------------------------------------- in napari

def _viewer_with_dock(make_napari_viewer, dock: str = "Soft annotation"):
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-softseg", dock)
    return viewer, widget


def _no_oblique_warning(caught) -> bool:
    return not any("Non-orthogonal slicing" in str(w.message) for w in caught)


@pytest.mark.gui
@pytest.mark.parametrize("paths, shape_on_slider, visible", [
    ([CORD], 11, 1), ([T1], 142, 1), (BRATS, 155, 1),
])
def test_samples_open_axial_with_anatomical_labels_and_no_warning(make_napari_viewer, shared_data, paths,
                                                                 shape_on_slider, visible):
    viewer, _ = _viewer_with_dock(make_napari_viewer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = [str(shared_data / p) for p in paths]
        layers = viewer.open(files, stack=len(files) > 1, plugin="napari-softseg")
        for step in (0, shape_on_slider // 2, shape_on_slider - 1):
            viewer.dims.set_current_step(2, step)
        viewer.screenshot(canvas_only=True, flash=False)
    assert _no_oblique_warning(caught)
    assert tuple(viewer.dims.order) == (2, 1, 0)  # slider: the slice axis; screen: the acquired plane
    assert tuple(viewer.dims.axis_labels) == ("L→R", "P→A", "I→S")
    assert [str(u) for u in viewer.dims.units] == ["millimeter"] * 3
    assert tuple(str(o) for o in viewer.scene.camera.orientation2d) == ("up", "left")
    assert viewer.dims.nsteps[2] == shape_on_slider
    assert sum(layer.visible for layer in layers) == visible  # the contrasts of BraTS: one at a time


@pytest.mark.gui
def test_a_stroke_on_slice_5_of_the_oblique_t1_paints_slice_5(make_napari_viewer, shared_data):
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks

    from _strokes import MouseEvent

    viewer, dock = _viewer_with_dock(make_napari_viewer)
    scan = viewer.open(str(shared_data / T1), plugin="napari-softseg")[0]
    rater = viewer.layers[dock.add_rater("alice").name]
    rater.brush_size = 3
    viewer.dims.set_current_step(2, 5)
    assert viewer.dims.current_step[2] == 5  # what the slider shows
    # drag across the screen through the centre of voxels (60..80, 90, 5), at the dims point's depth
    starts = [scan.data_to_world((i, 90, 5)) for i in (60, 70, 80)]
    point = np.asarray(viewer.dims.point, float)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k, (callbacks, kind) in enumerate([(mouse_press_callbacks, "mouse_press"), (mouse_move_callbacks, "mouse_move"),
                                               (mouse_move_callbacks, "mouse_move"), (mouse_release_callbacks, "mouse_release")]):
            w = starts[min(k, 2)]
            pos = point.copy()
            pos[list(viewer.dims.displayed)] = np.asarray(w)[list(viewer.dims.displayed)]
            event = MouseEvent(kind, tuple(pos), is_dragging=kind == "mouse_move",
                               dims_displayed=tuple(viewer.dims.displayed), dims_point=list(point))
            callbacks(rater, ReadOnlyWrapper(event))
    assert _no_oblique_warning(caught)
    painted = np.argwhere(rater.data > 0)
    assert painted.size and set(painted[:, 2]) == {5}  # every voxel on the acquired slice shown
    assert painted[:, 0].min() <= 60 and painted[:, 0].max() >= 80 and set(painted[:, 1]) <= {89, 90, 91}


@pytest.mark.gui
def test_oblique_layers_save_and_autosave_with_their_true_affine(make_napari_viewer, shared_data, tmp_path):
    import nibabel as nib

    from napari_softseg.io.nifti import read_nifti

    viewer, dock = _viewer_with_dock(make_napari_viewer)
    scan = viewer.open(str(shared_data / CORD), plugin="napari-softseg")[0]
    true = nib.load(str(shared_data / CORD)).affine
    out = scan.save(str(tmp_path / "cord.nii.gz"), plugin="napari-softseg")
    back = read_nifti(out[0] if isinstance(out, list) else out)
    np.testing.assert_array_equal(back.affine, read_nifti(shared_data / CORD).affine)
    rater = viewer.layers[dock.add_rater("bob").name]
    np.testing.assert_allclose(rater.affine.affine_matrix, scan.affine.affine_matrix)  # on the scan's frame
    assert tuple(rater.axis_labels) == tuple(scan.axis_labels)
    rater.data[150:160, 150:160, 4] = 7
    out = rater.save(str(tmp_path / "bob.nii.gz"), plugin="napari-softseg")
    back = read_nifti(out[0] if isinstance(out, list) else out)
    np.testing.assert_allclose(back.affine, true, atol=1e-5)
    assert back.data[155, 155, 4] == pytest.approx(0.7)


@pytest.mark.gui
def test_a_dock_opened_after_the_scan_shows_its_plane(make_napari_viewer, shared_data):
    viewer = make_napari_viewer(show=True)
    viewer.open(str(shared_data / CORD), plugin="napari-softseg")
    assert tuple(viewer.dims.order) == (0, 1, 2)  # the reader alone cannot change the viewer
    viewer.window.add_plugin_dock_widget("napari-softseg", "Segment & review")
    assert tuple(viewer.dims.order) == (2, 1, 0)
    viewer.dims.order = (0, 2, 1)  # the user's own choice is kept by the next dock
    viewer.window.add_plugin_dock_widget("napari-softseg", "Rater fusion")
    assert tuple(viewer.dims.order) == (0, 2, 1)
