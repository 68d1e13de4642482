"""Rater layers: napari ``Labels`` whose integers are confidence levels (no Qt here).

A rater layer has the scan's shape and data-to-world transform, the confidence colormap
(:func:`napari_softseg.labels.levels.level_colors`), and ``metadata`` holding the scan's NIfTI
geometry (``affine``, ``shape``, ``nifti_header``, so napari's "Save layer" and the export
write it on the scan's grid) plus ``softseg_role = "rater"``, ``softseg_scan_path`` and
``softseg_scan_name``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_softseg.io.nifti import ScanGeometry
from napari_softseg.labels.autosave import AutosaveStore
from napari_softseg.labels.levels import N_LEVELS, level_colors
from napari_softseg.labels.soft_edge import brush_coverage, soft_edge_values, sweep_path
from napari_softseg.plugin import roles
from napari_softseg.widgets import napari_private
from napari_softseg.widgets.base import frame_kwargs, layer_geometry

#: Alt+1 ... Alt+9 select levels 1-9 and Alt+0 level 10 (plain digits switch napari's
#: Labels modes; Shift+digit is consumed by the keyboard layout). napari's own "-" / "="
#: (decrease / increase label) step the level by one.
LEVEL_KEYS = {f"Alt-{k % 10}": k for k in range(1, N_LEVELS + 1)}


def rater_colormap():
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=level_colors(N_LEVELS))


def rater_metadata(geo: ScanGeometry, scan_name: str) -> dict:
    return {
        roles.ROLE_KEY: roles.RATER,
        "source_path": None,
        "affine": np.asarray(geo.affine, float).tolist(),
        "shape": list(geo.shape),
        "nifti_header": geo.header.copy() if geo.header is not None else None,
        "softseg_scan_path": str(geo.path) if geo.path is not None else None,
        "softseg_scan_name": scan_name,
        "softseg_levels": N_LEVELS,
    }


def add_rater_layer(viewer, name: str, scan_layer, data: np.ndarray | None = None):
    """Add an empty (or ``data``) rater layer on ``scan_layer``'s grid and return it."""
    geo = layer_geometry(scan_layer)
    levels = np.zeros(geo.shape, np.uint8) if data is None else np.asarray(data, dtype=np.uint8)
    layer = viewer.add_labels(
        levels,
        name=name,
        **frame_kwargs(scan_layer),
        metadata=rater_metadata(geo, scan_layer.name),
        opacity=0.8,
    )
    prepare_rater_layer(layer)
    return layer


def prepare_rater_layer(layer) -> None:
    """Colormap, level keys and a level in range; safe to call twice."""
    layer.colormap = rater_colormap()
    for key, k in LEVEL_KEYS.items():
        layer.bind_key(key, _level_setter(k), overwrite=True)
    if not 1 <= layer.selected_label <= N_LEVELS:
        layer.selected_label = N_LEVELS


def _level_setter(k: int):
    def set_level(layer):
        layer.selected_label = k

    set_level.__doc__ = f"Soft annotation: paint with confidence {k / N_LEVELS:.1f}."
    return set_level


def rater_geometry(layer) -> ScanGeometry:
    """The scan geometry saved in a rater layer (its scan's path included)."""
    geo = layer_geometry(layer)
    scan_path = (layer.metadata or {}).get("softseg_scan_path")
    geo.path = Path(scan_path) if scan_path else None
    return geo


def scan_identity(layer) -> tuple[str, str]:
    """What ties raters to a scan: its file path, else its layer name."""
    md = layer.metadata or {}
    if md.get(roles.ROLE_KEY) == roles.RATER:
        if md.get("softseg_scan_path"):
            return ("path", str(md["softseg_scan_path"]))
        return ("name", str(md.get("softseg_scan_name")))
    path = md.get("source_path")
    return ("path", str(path)) if path else ("name", layer.name)


def history_signature(layer) -> tuple:
    """Changes whenever an edit, undo or redo happens (lengths and tips of both stacks)."""
    undo = napari_private.undo_history(layer)
    redo = napari_private.redo_history(layer)
    return (len(undo), len(redo), id(undo[-1]) if undo else 0, id(redo[-1]) if redo else 0)


@dataclass
class RaterState:
    """What the annotation dock keeps per rater layer."""

    layer: object
    name: str
    store: AutosaveStore | None
    voxel_volume: float
    recorder: "StrokeRecorder" = field(default_factory=lambda: StrokeRecorder())
    signature: tuple = ()
    soft: float = 0.0
    hard: float = 0.0
    saved: str = "-"

    @classmethod
    def for_layer(cls, layer) -> "RaterState":
        geo = rater_geometry(layer)
        store = AutosaveStore(geo) if geo.path is not None else None
        return cls(layer, layer.name, store, geo.voxel_volume, signature=history_signature(layer))


class StrokeRecorder:
    """A ``mouse_drag_callbacks`` entry that records the exact path of brush strokes.

    napari paints with the brush centred on rounded positions; the soft edge needs the
    true path to know how much of each voxel the brush disc covered.
    """

    def __init__(self):
        self.points: list[np.ndarray] = []
        self.dims: list[int] = []
        self.brush_size = 0.0

    def __call__(self, layer, event):
        if layer.mode not in ("paint", "erase") or getattr(event, "button", None) == 2:
            return
        if getattr(layer, "cursor", None) == "circle_frozen":
            return
        self.points = []
        self.dims = napari_private.dims_to_paint(layer)
        self.brush_size = float(layer.brush_size)
        self._add(layer, event)
        yield
        while event.type == "mouse_move":
            self._add(layer, event)
            yield

    def _add(self, layer, event) -> None:
        coord = napari_private.labels_coordinate(layer, event)
        if coord is not None:
            self.points.append(np.asarray(coord, dtype=float))

    def take(self):
        """``(path (K, d) in painted dims, dims, brush_size)`` of the last stroke, or None."""
        points, self.points = self.points, []
        if not points or not self.dims:
            return None
        arr = np.stack(points)[:, self.dims]
        return sweep_path(arr), list(self.dims), self.brush_size


def stroke_voxels(atoms, shape) -> tuple[np.ndarray, np.ndarray]:
    """Voxels changed by one undo item and their values before it: ``(idx (N, nd), old (N,))``.

    Understands napari's mask atoms (``slice_key, mask, old_values, new_value``) and the
    ``(indices, old, new)`` tuples of ``data_setitem``.
    """
    idx_parts, old_parts = [], []
    ndim = len(shape)
    for atom in atoms:
        if hasattr(atom, "slice_key"):
            offs = np.array([s.start or 0 for s in atom.slice_key])
            if atom.mask is None:
                box = tuple((s.stop or shape[i]) - (s.start or 0) for i, s in enumerate(atom.slice_key))
                local = np.indices(box).reshape(ndim, -1).T
            else:
                local = np.argwhere(atom.mask)
            idx_parts.append(local + offs)
            old_parts.append(np.asarray(atom.old_values).reshape(-1))
        else:
            indices, old, _new = atom
            ind = np.stack([np.asarray(i).reshape(-1) for i in indices], axis=1)
            idx_parts.append(ind)
            old_parts.append(np.broadcast_to(np.asarray(old), (len(ind),)).reshape(-1))
    if not idx_parts:
        return np.zeros((0, ndim), int), np.zeros(0, np.uint8)
    idx = np.concatenate(idx_parts).astype(np.intp)
    old = np.concatenate(old_parts)
    # a voxel touched twice in one stroke: its first old value is the one before the stroke
    _, first = np.unique(np.ravel_multi_index(tuple(idx.T), shape), return_index=True)
    return idx[first], old[first]


def apply_soft_edge(layer, atoms, stroke, level: int) -> int:
    """Give the voxels of one finished stroke their partial-volume level.

    ``stroke`` is :meth:`StrokeRecorder.take`'s result. The change is recorded in the same
    undo step as the stroke, so one undo reverts both. Returns the number of voxels changed.
    """
    path, dims, brush_size = stroke
    idx, old = stroke_voxels(atoms, layer.data.shape)
    if not len(idx):
        return 0
    now = np.asarray(layer.data[tuple(idx.T)])
    keep = now == level
    idx, old, now = idx[keep], old[keep], now[keep]
    cov = brush_coverage(idx[:, dims], path, radius=brush_size / 2.0)
    new = soft_edge_values(old, level, cov)
    change = new != now
    if not np.any(change):
        return 0
    before = len(napari_private.undo_history(layer))
    layer.data_setitem(tuple(idx[change].T), new[change])
    napari_private.merge_last_undo_items(layer, before)
    return int(np.count_nonzero(change))

