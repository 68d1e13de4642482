"""A small base for the docks: layer pickers, user-error reporting, layer geometry.

Docks stay thin: they collect choices, call core functions and turn results into layers.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import numpy as np
from qtpy.QtWidgets import QComboBox, QGroupBox, QLabel, QVBoxLayout, QWidget

from napari_softseg.io.nifti import ScanGeometry
from napari_softseg.errors import UserError

#: ``metadata["softseg_role"]`` of the layers this package creates or reads.
ROLE_KEY = "softseg_role"
ROLE_RATER = "rater"


def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


@contextmanager
def user_errors():
    """Turn a :class:`UserError` (and unreadable files) into one napari error notification."""
    try:
        yield
    except UserError as err:
        notify_error(str(err))
    except OSError as err:
        notify_error(f"{getattr(err, 'filename', None) or 'File'}: {err.strerror or err}.")


def role(layer) -> str | None:
    return (getattr(layer, "metadata", None) or {}).get(ROLE_KEY)


def is_rater(layer) -> bool:
    from napari.layers import Labels

    return isinstance(layer, Labels) and role(layer) == ROLE_RATER


def is_scan(layer) -> bool:
    """3-D greyscale Image layers that are not soft maps or results of this package."""
    from napari.layers import Image

    return (
        isinstance(layer, Image)
        and not getattr(layer, "rgb", False)
        and layer.ndim == 3
        and role(layer) not in ("soft", "fused", "disagreement")
    )


def data_to_world(layer) -> np.ndarray:
    """The layer's full 4x4 data-to-world matrix (affine composed with scale/translate...)."""
    return np.asarray(layer.affine.affine_matrix @ _scale_translate(layer), dtype=float)


def _scale_translate(layer) -> np.ndarray:
    from napari.utils.transforms import Affine

    t = Affine(scale=layer.scale, translate=layer.translate, rotate=layer.rotate, shear=layer.shear)
    return t.affine_matrix


def layer_geometry(layer) -> ScanGeometry:
    """Geometry of a scan (or rater) layer: from the reader's metadata when present and
    consistent with the layer, else from the layer's own transform (no header, no path)."""
    md = getattr(layer, "metadata", None) or {}
    shape = tuple(int(s) for s in np.shape(layer.data)[:3])
    matrix = data_to_world(layer)
    if md.get("affine") is not None and tuple(md.get("shape", ())) == shape:
        geo = ScanGeometry.from_metadata(md)
        if np.allclose(geo.affine, matrix, atol=1e-4):
            return geo
    return ScanGeometry(path=None, shape=shape, affine=matrix, header=None)  # type: ignore[arg-type]


def same_geometry(a, b, atol: float = 1e-3) -> bool:
    return tuple(np.shape(a.data)) == tuple(np.shape(b.data)) and np.allclose(
        data_to_world(a), data_to_world(b), atol=atol
    )


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
        for i, lay in enumerate(self._layers):
            if lay is layer:
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
        if keep is not None and any(lay is keep for lay in self._layers):
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


class DockBase(QWidget):
    """Common layout: a vertical stack of titled groups and a status line at the bottom."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(6, 6, 6, 6)
        self.status = QLabel("")
        self.status.setWordWrap(True)

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
