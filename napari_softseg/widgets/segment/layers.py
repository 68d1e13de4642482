"""Layers and files of the Segment dock's results, on the scan's world geometry."""

from __future__ import annotations

import numpy as np

from napari_softseg.plugin import roles
from napari_softseg.widgets.base import alive, data_to_world, frame_kwargs, layer_geometry

#: colours of the mask outline, of the selected lesion's outline and of a selected possible
#: lesion (a candidate, shown in the mask layer but not part of the mask)
MASK_COLOUR, HIGHLIGHT_COLOUR, CANDIDATE_COLOUR = (0.25, 0.85, 1.0, 1.0), (0.3, 1.0, 0.3, 1.0), (1.0, 0.8, 0.1, 1.0)
#: metadata keys copied from the scan so that the result layers save with its geometry
GEOMETRY_KEYS = ("source_path", "affine", "shape", "spacing", "qform_code", "sform_code", "units", "orientation",
                 "nifti_header")


#: value of the selected lesion's voxels in the mask layer (the others are 1), and of a
#: selected candidate's voxels outside the mask (never part of the final mask)
SELECTED, CANDIDATE = 2, 3


def result_layer_steps(viewer, scan, review, entropy: np.ndarray, model: dict, layers: dict) -> list:
    """The additions of a Segment's layers, one callable per layer (run them in order).

    Adding a napari layer costs tens of milliseconds or more (visuals, controls), so the dock
    runs one step per turn of the event loop. The steps add, or update when a previous
    Segment left a layer with the same name and shape, into ``layers`` (``{key: layer}``):

    * ``soft``: the soft prediction, a transparent-to-opaque perceptual colormap, contrast 0-1;
    * ``mask``: Labels, 1 = the final mask (outlined), :data:`SELECTED` = the selected lesion;
    * ``entropy``: voxel-wise entropy (hidden at first).

    Every layer gets the scan's full data-to-world transform as its affine (and its axis
    labels and units) and the scan's NIfTI geometry in ``metadata`` (plus ``softseg_role`` and ``softseg_model``).
    """
    from napari.utils.colormaps import DirectLabelColormap

    from napari_softseg.plugin.layers import soft_colormap

    base = scan.name
    md = {k: v for k, v in (scan.metadata or {}).items() if k in GEOMETRY_KEYS}
    geo = layer_geometry(scan)
    md.setdefault("affine", geo.affine.tolist())
    md.setdefault("shape", list(geo.shape))
    frame = frame_kwargs(scan)

    def kwargs(role: str, **extra) -> dict:
        return {**frame, "metadata": {**md, roles.ROLE_KEY: role, "softseg_model": model}, **extra}

    def soft() -> None:
        _put(viewer, layers, "soft", f"{base} soft", review.soft, "image", kwargs(
            roles.SOFT, colormap=soft_colormap(), contrast_limits=(0.0, 1.0), blending="translucent", opacity=0.8,
            interpolation2d="nearest"))

    def mask() -> None:
        colours = {1: MASK_COLOUR, SELECTED: HIGHLIGHT_COLOUR, CANDIDATE: CANDIDATE_COLOUR, None: (0, 0, 0, 0)}
        _put(viewer, layers, "mask", f"{base} mask", review.final_mask().astype(np.uint8), "labels", kwargs(
            roles.PREDICTION_MASK, opacity=1.0, colormap=DirectLabelColormap(color_dict=colours)))
        layers["mask"].contour = 1
        layers["mask"].selected_label = 1

    def uncertainty() -> None:
        _put(viewer, layers, "entropy", f"{base} entropy", entropy, "image", kwargs(
            roles.ENTROPY, colormap="viridis", contrast_limits=(0.0, 1.0), blending="additive", opacity=0.7, visible=False))
        names = [lay.name for lay in viewer.layers]
        soft_name, entropy_name = layers["soft"].name, layers["entropy"].name
        if soft_name in names and entropy_name in names and names.index(entropy_name) > names.index(soft_name):
            viewer.layers.move(names.index(entropy_name), names.index(soft_name))  # under the soft map

    return [soft, mask, uncertainty]


def _put(viewer, layers: dict, key: str, name: str, data, kind: str, kwargs: dict) -> None:
    old = layers.get(key)
    if alive(viewer, old) and old.name == name and old.data.shape == data.shape:
        old.affine = kwargs["affine"]
        old.metadata = kwargs["metadata"]
        old.data = data
        return
    if name in viewer.layers:
        viewer.layers.remove(name)
    add = viewer.add_image if kind == "image" else viewer.add_labels
    layers[key] = add(data, name=name, **kwargs)


def write_mask(layer, final: np.ndarray, labels: np.ndarray | None, selected: int | None,
               candidate: bool = False) -> None:
    """Write the final mask (1) and the selected lesion (:data:`SELECTED`) into ``layer`` in
    place; a selected ``candidate`` (a possible lesion) is shown outside the mask as
    :data:`CANDIDATE`."""
    data = layer.data
    np.copyto(data, final, casting="unsafe")
    if selected is not None and labels is not None:
        region = labels == selected
        data[region & final] = SELECTED
        if candidate:
            data[region & ~final] = CANDIDATE
    layer.refresh()


def painted_mask(data: np.ndarray) -> np.ndarray:
    """The final mask as the reviewer left it in the mask layer (1 and :data:`SELECTED`;
    a shown candidate, :data:`CANDIDATE`, is not part of it)."""
    return (data == 1) | (data == SELECTED)


def world_point(layer, voxel) -> np.ndarray:
    """World coordinates of a (fractional) voxel index of ``layer``."""
    return (data_to_world(layer) @ np.append(np.asarray(voxel, float), 1.0))[:3]


def describe_model(choice, path, config: dict | None) -> dict:
    """What the export records about a model (:func:`napari_softseg.review.profile.describe_model`)."""
    from napari_softseg.review.profile import describe_model as describe

    return describe(choice.name if choice else None, choice.kind if choice else None, path, config)


def file_stem(scan) -> str:
    """The scan's file name without .nii(.gz), or its layer name."""
    from napari_softseg.io.nifti import nifti_stem

    src = (scan.metadata or {}).get("source_path")
    return nifti_stem(src) if src else scan.name.replace(" ", "_")


def write_predictions(folder, scan, review, entropy: np.ndarray) -> dict:
    """Soft map (float32), final mask (uint8) and entropy as NIfTI with the scan's geometry."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    geo, stem = layer_geometry(scan), file_stem(scan)
    out = {"soft": folder / f"{stem}_soft.nii.gz", "mask": folder / f"{stem}_mask.nii.gz",
           "entropy": folder / f"{stem}_entropy.nii.gz"}
    geo.write(out["soft"], review.soft, dtype=np.float32)
    geo.write(out["mask"], review.final_mask().astype(np.uint8), dtype=np.uint8)
    geo.write(out["entropy"], entropy, dtype=np.float32)
    return out


def write_review(folder, scan, review, model: dict) -> dict:
    """The review's CSV, JSON and final soft / binary NIfTI (see :meth:`Review.export`)."""
    geo = layer_geometry(scan)
    src = (scan.metadata or {}).get("source_path")
    return review.export(folder, f"{file_stem(scan)}_review", like=geo.reference(), affine=geo.affine,
                         model=model, scan=src or scan.name)

