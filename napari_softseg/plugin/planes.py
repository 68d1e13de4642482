"""Scans in a readable plane: how a NIfTI voxel grid is placed in napari's world (numpy only).

napari slices a layer exactly only when each world axis belongs to the data axis of the same
index: an affine that rotates data axes into one another (an oblique scan, even by 2°) makes
napari warn "Non-orthogonal slicing … not fully supported" on every slice, draw the slice
without its out-of-plane rotation, and number the slider from the rotated bounding box (a
stroke painted on slice 5 then shows at slider position 6). napari also shows data axis 0 on
the slider, which for a NIfTI file (stored x, y, z) is a sagittal reformat: thick-slice scans
become stripes, brains lie on their side.

The rule, as ITK-SNAP does it: **the voxel grid is shown in its nearest orthogonal
orientation**.

* Each data axis ``j`` is assigned the anatomical axis closest to its direction
  (nibabel's ``io_orientation``: R-L, A-P or S-I). Display world axis ``j`` is that
  anatomical axis, in millimetres, increasing towards R, A or S (the RAS convention of NIfTI
  world coordinates); its label says so (``"L→R"``, ``"P→A"``, ``"I→S"``) and its unit is mm.
* The layer affine is :func:`display_affine`: ``D = T · A`` with ``T = diag(σ) · Q⁻¹``,
  where ``A`` is the file's affine, ``Q`` its unit column directions and ``σ`` their signs
  along the assigned axes. ``D``'s 3x3 part is diagonal (``σⱼ · voxel sizeⱼ``): every slice is
  an exact voxel slice, painting hits exactly the voxels under the brush, and the slider
  position is the voxel index along the slider's axis (the acquired slice for a scan stored
  from inferior to superior, as every sample is). For a grid without obliquity ``T`` is the
  identity and ``D = A`` (to 1e-6 mm, :data:`GRID_QUANTUM`): nothing moves.
* ``T`` is one rigid turn about the world origin (for a grid without shear), so every grid
  with the same obliquity, such as a scan and its masks or two acquisitions of one session,
  lands in the same display frame and overlays exactly. A grid with a different obliquity is
  placed by its own nearest orientation; its misplacement against the first is at most the
  difference of their tilts. To overlay such a grid exactly on a scan, map it through the
  scan's turn: ``display_affine(other, reference=scan_affine)`` (napari then slices that
  layer obliquely and says so).
* The file's true affine and header stay in the layer's ``metadata`` (``"affine"``,
  ``"nifti_header"``): writers, autosave and exports write the true geometry, byte for byte.

The reader can only describe layers; it cannot change the viewer. Which plane the viewer
shows is set by :func:`napari_softseg.plugin.viewer.show_acquisition_plane` (the docks call it
when the first scan arrives, the demo at start): the **acquisition plane**, i.e. the thick
axis on the slider (axial when the voxels are isotropic), drawn radiologically (patient's right
on the screen's left, anterior or superior up, as ITK-SNAP and most PACS viewers show it).
"""

from __future__ import annotations

import numpy as np

#: anatomical axis names of the RAS world axes, as the positive direction ("from → to")
AXIS_NAMES = ("L→R", "P→A", "I→S")
#: plane shown when each anatomical axis is on the slider
PLANE_OF_AXIS = ("sagittal", "coronal", "axial")
#: patient's right on the screen's left (radiological); False for neurological
RADIOLOGICAL = True
#: world unit of every NIfTI layer
UNIT = "mm"


def assigned_axes(affine) -> tuple[np.ndarray, np.ndarray]:
    """For each data axis: the RAS world axis nearest to its direction and the sign (+1/-1)
    of its direction along that axis (nibabel's ``io_orientation``, which never assigns one
    world axis twice)."""
    from nibabel.orientations import io_orientation

    ornt = io_orientation(np.asarray(affine, dtype=float))
    return ornt[:, 0].astype(int), ornt[:, 1].astype(float)


def to_display(affine) -> np.ndarray:
    """The 4x4 map ``T`` from true world coordinates to this grid's display frame (see the
    module docstring): ``T · affine`` has a diagonal 3x3 part."""
    affine = np.asarray(affine, dtype=float)
    m = affine[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    q = m / spacing  # unit directions of the data axes
    _, signs = assigned_axes(affine)
    turn = np.eye(4)
    turn[:3, :3] = np.diag(signs) @ np.linalg.inv(q)
    return turn


#: display placements are rounded to multiples of 2^-20 mm (1e-6 mm): then the world
#: position of every voxel centre is an exact binary fraction, and napari, which counts the
#: slider's steps as ``floor((last - first) / step) + 1``, sees 11 slices in an 11-slice scan
#: (with a spacing of 7.5000021 mm, ``(t + 10 s - t) / s`` is 9.999999999999998).
GRID_QUANTUM = 2.0**-20


def _quantised(x: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(x, dtype=float) / GRID_QUANTUM) * GRID_QUANTUM


def display_affine(affine, reference=None) -> np.ndarray:
    """The layer affine napari gets for a grid: its nearest orthogonal placement (exact
    voxel slices; diagonal, in multiples of :data:`GRID_QUANTUM`), or, with ``reference``, the
    grid mapped through the reference grid's turn (exact overlay on the reference; oblique
    when the two grids' tilts differ)."""
    affine = np.asarray(affine, dtype=float)
    if reference is not None:
        return to_display(reference) @ affine
    out = np.eye(4)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    _, signs = assigned_axes(affine)
    out[:3, :3] = np.diag(_quantised(signs * spacing))  # exactly diagonal
    out[:3, 3] = _quantised((to_display(affine) @ affine)[:3, 3])
    return out


def on_grid(layer_affine, true_affine, atol: float = 1e-6) -> bool:
    """Whether a layer whose data-to-world matrix is ``layer_affine`` shows the grid of
    ``true_affine`` unmoved: placed by :func:`display_affine`, or by the true affine itself
    (a layer added from a script with the file's affine)."""
    layer_affine, true_affine = np.asarray(layer_affine, float), np.asarray(true_affine, float)
    return (np.allclose(layer_affine, true_affine, atol=atol)
            or np.allclose(layer_affine, display_affine(true_affine), atol=atol))


def axis_labels(affine) -> tuple[str, ...]:
    """Labels of the display world axes: the anatomical axis of each data axis, e.g.
    ``("L→R", "P→A", "I→S")`` for any RAS, LAS or LPS grid."""
    world, _ = assigned_axes(affine)
    return tuple(AXIS_NAMES[w] for w in world)


def layer_frame(affine) -> dict:
    """The keyword arguments that place a napari layer on this grid: ``affine`` (display),
    ``axis_labels`` and ``units``."""
    return {"affine": display_affine(affine), "axis_labels": axis_labels(affine), "units": (UNIT,) * 3}


def thick_axis(affine) -> int:
    """The data axis to put on the slider: the one with the largest voxel size (the slice
    axis of a thick-slice scan), else the one nearest to S-I (axial)."""
    affine = np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if spacing.max() > 1.01 * spacing.min():
        return int(np.argmax(spacing))
    world, _ = assigned_axes(affine)
    return int(np.flatnonzero(world == 2)[0])


def plane_view(affine, axis: int | None = None) -> tuple[tuple[int, int, int], tuple[str, str], str]:
    """How to show the plane perpendicular to data axis ``axis`` (default :func:`thick_axis`)
    of a grid with the true ``affine`` (the file's: which data axis is which anatomical axis).

    Returns ``(dims order, camera orientation2d, plane name)``: the slider axis first, then the
    vertical and horizontal axes of the screen. Vertical is A-P in an axial plane and S-I
    otherwise, growing upwards; horizontal is R-L (patient's right on the screen's left when
    :data:`RADIOLOGICAL`) or, in a sagittal plane, A-P with anterior on the left.
    """
    world, _ = assigned_axes(affine)
    axis = thick_axis(affine) if axis is None else int(axis)
    slider = int(world[axis])
    vertical_world = 1 if slider == 2 else 2
    horizontal_world = ({0, 1, 2} - {slider, vertical_world}).pop()
    data_of = {int(w): j for j, w in enumerate(world)}
    order = (axis, data_of[vertical_world], data_of[horizontal_world])
    leftwards = horizontal_world == 1 or RADIOLOGICAL  # anterior on the left in a sagittal view
    return order, ("up", "left" if leftwards else "right"), PLANE_OF_AXIS[slider]
