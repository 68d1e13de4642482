"""A small base for the docks: layer pickers, layer geometry and the dock layout.

Docks stay thin: they collect choices, call core functions and turn results into layers.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import QComboBox, QDockWidget, QGroupBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from napari_softseg.io.nifti import ScanGeometry
from napari_softseg.plugin import roles
from napari_softseg.plugin.planes import on_grid
from napari_softseg.plugin.viewer import show_acquisition_plane
from napari_softseg.widgets.napari_private import unwrap


def data_to_world(layer) -> np.ndarray:
    """The layer's full 4x4 data-to-world matrix (affine composed with scale/translate...)."""
    return np.asarray(layer.affine.affine_matrix @ _scale_translate(layer), dtype=float)


def _scale_translate(layer) -> np.ndarray:
    from napari.utils.transforms import Affine

    t = Affine(scale=layer.scale, translate=layer.translate, rotate=layer.rotate, shear=layer.shear)
    return t.affine_matrix


def layer_geometry(layer) -> ScanGeometry:
    """True geometry of a scan (or rater) layer: from the reader's metadata when present and
    the layer still sits on that grid (its display placement, see
    :mod:`napari_softseg.plugin.planes`), else from the layer's own transform (no header, no path)."""
    md = getattr(layer, "metadata", None) or {}
    shape = tuple(int(s) for s in np.shape(layer.data)[:3])
    matrix = data_to_world(layer)
    if md.get("affine") is not None and tuple(md.get("shape", ())) == shape:
        geo = ScanGeometry.from_metadata(md)
        if on_grid(matrix, geo.affine, atol=1e-4):
            return geo
    return ScanGeometry(path=None, shape=shape, affine=matrix, header=None)  # type: ignore[arg-type]


def true_affine(layer) -> np.ndarray:
    """The voxel-to-world (mm) matrix of the file behind ``layer`` (:func:`layer_geometry`);
    compare grids with this, never with the display placement."""
    return layer_geometry(layer).affine


def same_grid(a, b, atol: float = 1e-3) -> bool:
    """Whether layers ``a`` and ``b`` hold the same voxel grid: same shape, and placed at the
    same place in the viewer or read from files with the same affine (a layer added from a
    script on a scan's display placement, or with the scan file's affine, is on its grid)."""
    if tuple(np.shape(a.data)[:3]) != tuple(np.shape(b.data)[:3]):
        return False
    return bool(np.allclose(data_to_world(a), data_to_world(b), atol=atol)
                or np.allclose(true_affine(a), true_affine(b), atol=atol))


def frame_kwargs(layer) -> dict:
    """``affine``, ``axis_labels`` and ``units`` that put a new layer exactly on ``layer``'s
    grid and frame (for the layers the docks add on a scan's grid)."""
    return {"affine": data_to_world(layer), "axis_labels": tuple(layer.axis_labels),
            "units": tuple(str(u) for u in layer.units)}


def alive(viewer, layer) -> bool:
    """Whether ``layer`` is (still) in the viewer. Docks opened from napari's menu see the
    viewer through a proxy whose layers are new wrapper objects each time, so layers are
    compared by the objects they wrap, never by ``in`` or ``is`` on the wrappers."""
    if layer is None:
        return False
    target = unwrap(layer)
    return any(unwrap(lay) is target for lay in viewer.layers)


def widget_row(first, *rest) -> QHBoxLayout:
    """A row without margins: ``first`` takes the free width, ``rest`` keep their size."""
    row = QHBoxLayout()
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(first, 1)
    for widget in rest:
        row.addWidget(widget)
    return row


class LayerCombo(QComboBox):
    """A combo box of the viewer's layers that pass ``accept``, kept in sync with the list."""

    def __init__(self, viewer, accept: Callable, parent=None, empty_text: str = "(none)"):
        super().__init__(parent)
        self._viewer = viewer
        self._accept = accept
        self._empty = empty_text
        self._layers: list = []
        ev = viewer.layers.events
        ev.inserted.connect(self.refresh)
        ev.removed.connect(self.refresh)
        ev.moved.connect(self.refresh)
        self.refresh()

    def layers(self) -> list:
        return list(self._layers)

    def current(self):
        i = self.currentIndex()
        return self._layers[i] if 0 <= i < len(self._layers) else None

    def set_current(self, layer) -> None:
        target = unwrap(layer)
        for i, lay in enumerate(self._layers):
            if unwrap(lay) is target:
                self.setCurrentIndex(i)
                return

    def refresh(self, event=None) -> None:
        keep = self.current()
        for lay in self._layers:
            _disconnect(lay.events.name, self._rename)
        self._layers = [lay for lay in self._viewer.layers if self._accept(lay)]
        self.blockSignals(True)
        self.clear()
        for lay in self._layers:
            self.addItem(lay.name)
            lay.events.name.connect(self._rename)
        if not self._layers:
            self.addItem(self._empty)
        self.blockSignals(False)
        if keep is not None and any(unwrap(lay) is unwrap(keep) for lay in self._layers):
            self.set_current(keep)
        else:
            self.setCurrentIndex(0)
            self.currentIndexChanged.emit(0)

    def _rename(self, event=None) -> None:
        for i, lay in enumerate(self._layers):
            self.setItemText(i, lay.name)


def _disconnect(emitter, callback) -> None:
    try:
        emitter.disconnect(callback)
    except (TypeError, ValueError, RuntimeError):
        pass


def _opened_scan(layer) -> bool:
    """A 3-D scan opened by this package's reader or sample data (it carries its role)."""
    return roles.role(layer) == roles.SCAN and getattr(layer, "ndim", 0) == 3


def follow_acquisition_plane(widget, viewer) -> None:
    """Show a scan's acquisition plane (:func:`~napari_softseg.plugin.viewer.show_acquisition_plane`)
    when it is the first scan opened in the viewer, and at once when ``widget`` (a dock) opens on
    a viewer still in napari's default axis order. The reader cannot change the viewer; the
    docks do it for the scans that arrive while one of them is open. Stops with ``widget``."""

    def on_inserted(event) -> None:
        layer = event.value
        if _opened_scan(layer) and sum(_opened_scan(lay) for lay in viewer.layers) == 1:
            show_acquisition_plane(viewer, layer)

    viewer.layers.events.inserted.connect(on_inserted)
    widget.destroyed.connect(lambda *_: _disconnect(viewer.layers.events.inserted, on_inserted))
    scans = [lay for lay in viewer.layers if _opened_scan(lay)]
    if scans and tuple(viewer.dims.order) == tuple(range(viewer.dims.ndim)):
        show_acquisition_plane(viewer, scans[0])


def escape_dock_title(widget) -> None:
    """Double the ``&`` of the title of the dock that holds ``widget``: Qt takes a single ``&``
    in a tab's text (tabbed docks) and in the Window menu's entry as a keyboard mnemonic, so
    "Segment & review" read "Segment _review". napari's own title bar shows the name as it is."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    if parent is None:
        return
    title = parent.windowTitle()
    if "&" in title and "&&" not in title:
        parent.setWindowTitle(title.replace("&", "&&"))


class DockBase(QWidget):
    """Common layout: a vertical stack of titled groups and a status line at the bottom.
    Every dock shows the acquisition plane of the scans opened (:func:`follow_acquisition_plane`)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        follow_acquisition_plane(self, napari_viewer)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(6, 6, 6, 6)
        self.status = QLabel("")
        self.status.setWordWrap(True)

    def event(self, event) -> bool:  # noqa: D102 - Qt API
        if event.type() == QEvent.Type.ParentChange:
            escape_dock_title(self)
            QTimer.singleShot(0, lambda: escape_dock_title(self))
        return super().event(event)

    def group(self, title: str) -> QVBoxLayout:
        box = QGroupBox(title)
        lay = QVBoxLayout(box)
        lay.setContentsMargins(6, 4, 6, 4)
        self._layout.addWidget(box)
        return lay

    def finish_layout(self) -> None:
        self._layout.addWidget(self.status)
        self._layout.addStretch(1)

    def say(self, text: str) -> None:
        self.status.setText(text)
