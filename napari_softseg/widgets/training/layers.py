"""Layer side of the training dock's data: which layers are scans and labels, and their
snapshot (checked copies) for the training process."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from napari_softseg.engine.training.sources import ScanSnapshot
from napari_softseg.errors import UserError
from napari_softseg.io import geometry
from napari_softseg.plugin import roles
from napari_softseg.widgets.base import alive, data_to_world, frame_kwargs, same_grid
from napari_softseg.widgets.napari_private import shown_slice_point


def is_label_candidate(layer) -> bool:
    """Labels layers (raters or class maps) and soft-map Image layers."""
    from napari.layers import Labels

    return isinstance(layer, Labels) or roles.is_soft_map(layer)


@dataclass
class ScanEntry:
    """One scan offered in the dock: a layer, or the contrasts of one scan (reader group)."""

    name: str
    layers: list  # ordered by contrast

    @property
    def reference(self):
        return self.layers[0]


def scan_entries(layers) -> list[ScanEntry]:
    """Scans among ``layers``; layers tagged ``metadata["softseg_scan"]`` with the same
    ``group`` become one multi-contrast entry, ordered by their ``channel``."""
    entries: list[ScanEntry] = []
    groups: dict[str, ScanEntry] = {}
    for layer in layers:
        if not roles.is_scan(layer):
            continue
        tag = (layer.metadata or {}).get("softseg_scan")
        if isinstance(tag, dict) and tag.get("group"):
            group = str(tag["group"])
            if group not in groups:
                groups[group] = ScanEntry(group, [])
                entries.append(groups[group])
            groups[group].layers.append(layer)
        else:
            entries.append(ScanEntry(layer.name, [layer]))
    for entry in groups.values():
        entry.layers.sort(key=lambda lay: int((lay.metadata or {}).get("softseg_scan", {}).get("channel", 0)))
    return entries


def layer_spacing(layer) -> tuple[float, float, float]:
    """Voxel size along the array axes: column norms of the data-to-world matrix."""
    return geometry.spacing(data_to_world(layer))


def on_same_grid(a, b, atol: float = 1e-3) -> bool:
    return same_grid(a, b, atol)


def snapshot_scan(entry: ScanEntry, label_layers: Sequence) -> ScanSnapshot:
    """Check and copy a scan and its chosen label layers; :class:`UserError` on mismatch."""
    ref = entry.reference
    shape = tuple(np.shape(ref.data))
    if len(shape) != 3:
        raise UserError(f"Scan '{entry.name}' is not a 3-D volume (shape {shape}).")
    for lay in entry.layers[1:]:
        if not on_same_grid(ref, lay):
            raise UserError(f"The contrasts of scan '{entry.name}' do not share one voxel grid ('{lay.name}' differs).")
    if not label_layers:
        raise UserError(f"Choose at least one label layer for scan '{entry.name}'.")
    labels, kinds, names = [], [], []
    for lab in label_layers:
        lshape = tuple(np.shape(lab.data))
        if lshape[:3] != shape:
            raise UserError(f"Label layer '{lab.name}' has shape {lshape[:3]} but scan '{entry.name}' has {shape}; choose a label drawn on that scan.")
        if not same_grid(lab, ref):
            raise UserError(f"Label layer '{lab.name}' has the shape of scan '{entry.name}' but lies elsewhere in world space (different position, orientation or voxel size).")
        data = np.array(lab.data, copy=True)
        if not np.any(data):
            raise UserError(f"Label layer '{lab.name}' is empty: paint or load a label before training.")
        labels.append(data)
        kinds.append("rater" if roles.is_rater(lab) else ("classes" if np.issubdtype(data.dtype, np.integer) else "soft"))
        names.append(lab.name)
    arrays = [np.array(lay.data, copy=True) for lay in entry.layers]
    image = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=-1)
    return ScanSnapshot(entry.name, image, labels, kinds, names, layer_spacing(ref),
                        [lay.name for lay in entry.layers], ref)




class TrainingPreview:
    """The "training preview" layer: the newest prediction of one slice of the first scan,
    on that scan's grid (an Image layer in greens, distinct from the soft label's colormap)."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.layer = None
        self.snapshot: ScanSnapshot | None = None
        self.axis: int | None = None

    def target(self, snapshot: ScanSnapshot | None, init, config):
        """``((0, slice), slice_axis)``: the slice of ``snapshot`` shown in the viewer along the
        axis the trainer will slice (the config's, the checkpoint's, else the coarsest)."""
        if snapshot is None:
            return None, None
        axis = config.slice_axis
        if axis is None and init is not None:
            from napari_softseg.engine.checkpoint import load_checkpoint

            axis = load_checkpoint(init)[1].get("slice_axis")
        if axis is None:
            from napari_softseg.engine.preprocess import choose_slice_axis

            axis = choose_slice_axis(snapshot.spacing)
        n = snapshot.image.shape[axis]
        try:
            # the slice napari shows (with an oblique affine it ignores the out-of-plane
            # rotation, so world_to_data can differ); world_to_data if that is unknown
            shown = shown_slice_point(snapshot.layer)
            coord = shown if shown is not None and np.isfinite(shown[axis]) else \
                snapshot.layer.world_to_data(np.asarray(self.viewer.dims.point)[-3:])
            index = int(np.floor(float(np.asarray(coord)[-3:][axis]) + 0.5))
        except Exception:  # noqa: BLE001 - unusual viewer dimensions: the middle slice
            index = -1
        return (0, index if 0 <= index < n else n // 2), int(axis)

    def prepare(self, snapshot: ScanSnapshot | None, axis) -> None:
        """Create (or re-place) the layer before training: adding a layer is slow in napari."""
        self.snapshot, self.axis = snapshot, axis
        if snapshot is None:
            return
        try:
            self._layer()
        except Exception:  # noqa: BLE001 - a preview is not worth a failed start
            logging.getLogger(__name__).exception("no training preview")
            self.snapshot = None

    def _layer(self):
        snap, matrix = self.snapshot, data_to_world(self.snapshot.layer)
        layer = self.layer
        if not alive(self.viewer, layer) or layer.data.shape != snap.image.shape[:3]:
            from napari_softseg.plugin.layers import preview_colormap

            layer = self.viewer.add_image(
                np.zeros(snap.image.shape[:3], np.float32), name="training preview", **frame_kwargs(snap.layer),
                colormap=preview_colormap(), contrast_limits=(0.0, 1.0), opacity=0.7, blending="translucent",
                metadata={roles.ROLE_KEY: roles.TRAINING_PREVIEW}, rgb=False,
            )
            self.layer = layer
        elif not np.allclose(layer.affine.affine_matrix, matrix):
            layer.affine = matrix
        return layer

    def show(self, preview: np.ndarray, where) -> None:
        """Put a ``(H, W)`` (or ``(K, H, W)``: summed) prediction at slice ``where[1]``."""
        if self.snapshot is None or self.axis is None or where is None:
            return
        layer = self._layer()
        index = [slice(None)] * 3
        index[self.axis] = int(where[1])
        layer.data[tuple(index)] = np.clip(preview.sum(axis=0), 0, 1) if preview.ndim == 3 else preview
        layer.refresh()
