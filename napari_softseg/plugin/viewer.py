"""Viewer helpers shared by the demo and the docks (napari, no Qt)."""

from __future__ import annotations

import numpy as np

from napari_softseg.io import geometry


def show_slices_along(viewer, affine: np.ndarray, axis: int | None = None) -> int:
    """Show the plane perpendicular to the world axis closest to array ``axis``.

    ``axis`` defaults to the axis with the largest voxel size (the slice axis of a
    thick-slice scan), else the last one. For a RAS/LAS/LPS scan sliced along its third
    axis this is the axial plane, drawn with anterior/posterior vertical and the first
    array axis horizontal, superior-looking-down ("up" = increasing second world axis).
    Returns the world axis used as slider.
    """
    affine = np.asarray(affine, dtype=float)
    spacing = np.asarray(geometry.spacing(affine))
    if axis is None:
        axis = int(np.argmax(spacing)) if spacing.max() > 1.01 * spacing.min() else 2
    world = int(np.argmax(np.abs(affine[:3, axis])))
    others = [a for a in range(3) if a != world]
    if viewer.dims.ndim == 3:
        viewer.dims.order = (world, others[1], others[0])
        getattr(viewer, "scene", viewer).camera.orientation2d = ("up", "right")
    return world


def centre_on(viewer, world_point) -> None:
    """Move the sliders and the camera centre to a world point."""
    point = list(viewer.dims.point)
    for ax in range(min(len(point), len(world_point))):
        point[ax] = float(world_point[ax])
    viewer.dims.point = point
    displayed = viewer.dims.displayed
    camera = getattr(viewer, "scene", viewer).camera  # napari >= 0.9 moved the camera to the scene
    camera.center = tuple(float(world_point[a]) for a in displayed)
