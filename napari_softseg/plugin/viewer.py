"""Viewer helpers shared by the demo and the docks (napari, no Qt)."""

from __future__ import annotations

import numpy as np

from napari_softseg.plugin import planes


def show_slices_along(viewer, affine: np.ndarray, axis: int | None = None) -> int:
    """Show the plane perpendicular to array ``axis`` of a layer whose file has ``affine``
    (its true affine: the display placement of a grid stored with permuted axes no longer
    says which axis is which), drawn radiologically (see :func:`planes.plane_view`).

    ``axis`` defaults to the scan's acquisition axis (:func:`planes.thick_axis`: the largest
    voxel size, else the axis nearest to S-I). Returns the world axis put on the slider (the
    display world axis of a layer is its data axis of the same index)."""
    order, orientation, _ = planes.plane_view(affine, axis)
    if viewer.dims.ndim == 3:
        viewer.dims.order = order
        getattr(viewer, "scene", viewer).camera.orientation2d = orientation
    return int(order[0])


def show_acquisition_plane(viewer, layer, reset: bool = True) -> str:
    """Put ``layer``'s acquisition plane on screen: its thick axis on the slider, on the
    middle slice when ``reset`` (napari's view reset), anatomical directions as
    :func:`show_slices_along` draws them. Returns the plane's name ("axial", ...)."""
    true = (getattr(layer, "metadata", None) or {}).get("affine")
    affine = np.asarray(true, float) if true is not None else layer.affine.affine_matrix
    order, _, plane = planes.plane_view(affine)
    show_slices_along(viewer, affine, order[0])
    if reset:
        viewer.reset_view()
    return plane


def centre_on(viewer, world_point) -> None:
    """Move the sliders and the camera centre to a world point."""
    point = list(viewer.dims.point)
    for ax in range(min(len(point), len(world_point))):
        point[ax] = float(world_point[ax])
    viewer.dims.point = point
    displayed = viewer.dims.displayed
    camera = getattr(viewer, "scene", viewer).camera  # napari >= 0.9 moved the camera to the scene
    camera.center = tuple(float(world_point[a]) for a in displayed)
