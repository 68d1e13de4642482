"""The Segment dock's inputs: which open layer feeds which input contrast of the model.

One row per model input, named after the contrast the checkpoint lists (``FLAIR``, ``T1w``
...), each with a combo box of the open scans. When the model changes, or a scan is
opened, the rows are filled by :func:`napari_softseg.plugin.contrasts.match_inputs` (by
contrast name, from the layer name, the file name or the file's metadata); a row the user
set by hand keeps their choice until the model changes. A layer whose contrast is known to
differ from its row's gets one warning sentence (:func:`napari_softseg.plugin.contrasts.mismatch`).
Choosing a layer shows it (and hides the other contrasts opened with it, which would cover it).
"""

from __future__ import annotations

import html

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QFormLayout, QLabel, QVBoxLayout, QWidget

from napari_softseg.plugin.contrasts import contrast_of, match_inputs, mismatch
from napari_softseg.plugin.roles import is_scan
from napari_softseg.review.segment import contrast_message
from napari_softseg.widgets.base import LayerCombo, alive, same_grid
from napari_softseg.widgets.napari_private import unwrap


class ContrastInputs(QWidget):
    """Rows ``contrast <- layer``; ``combos[0]`` is the scan (its grid is the prediction's).
    ``changed`` is emitted whenever a row's layer changes."""

    changed = Signal()

    def __init__(self, viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.wanted: list[str] = ["scan"]
        self.config: dict = {}
        self._manual: set[int] = set()
        self._filling = False
        self._shown: list = []
        self.form = QFormLayout()
        self.form.setContentsMargins(0, 0, 0, 0)
        self.combos: list[LayerCombo] = []
        self.note = QLabel()
        self.note.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(self.form)
        lay.addWidget(self.note)
        self._add_row()
        viewer.layers.events.inserted.connect(self._on_inserted)
        self.destroyed.connect(lambda *_: _disconnect(viewer.layers.events.inserted, self._on_inserted))

    # ---------------------------------------------------------------- rows
    def _add_row(self) -> None:
        i = len(self.combos)
        combo = LayerCombo(self.viewer, is_scan, empty_text="(open a scan)")
        combo.setToolTip("The open layer that feeds this input of the model.")
        combo.activated.connect(lambda *_: self._manual.add(i))
        combo.currentIndexChanged.connect(lambda *_: self._row_changed(i))
        self.combos.append(combo)
        self._shown.append(combo.current())
        self.form.addRow(QLabel(), combo)

    def set_model(self, config: dict | None) -> None:
        """One row per model input (the checkpoint ``config``'s ``contrasts``), then match
        them. Rows beyond the model's inputs are hidden, never deleted (their combo boxes
        follow the layer list)."""
        self.config = config or {}
        contrasts = self.config.get("contrasts")
        self.wanted = list(contrasts) if contrasts else ["scan"]
        while len(self.combos) < len(self.wanted):
            self._add_row()
        for i in range(len(self.combos)):
            self.form.setRowVisible(i, i < len(self.wanted))
            if i < len(self.wanted):
                self.form.itemAt(i, QFormLayout.ItemRole.LabelRole).widget().setText(html.escape(self.wanted[i]))
        self._manual.clear()
        self.match()

    def match(self, keep_manual: bool = False) -> None:
        """Fill the rows from the open scans (see the module docstring)."""
        scans = [lay for lay in self.viewer.layers if is_scan(lay)]
        anchor = self.combos[0].current()
        picks = [anchor] if self.wanted == ["scan"] else match_inputs(self.wanted, scans, anchor=anchor)
        self._filling = True
        try:
            for i, layer in enumerate(picks):
                current = self.combos[i].current()
                if keep_manual and (i in self._manual or (current is not None and not mismatch(self.wanted[i], current))):
                    continue
                if layer is not None:
                    self.combos[i].set_current(layer)
        finally:
            self._filling = False
        self._update()

    def _on_inserted(self, event=None) -> None:
        if is_scan(event.value if event is not None else None):
            self.match(keep_manual=True)

    def _row_changed(self, i: int) -> None:
        layer = self.combos[i].current()
        if layer is not None and (self._shown[i] is None or unwrap(layer) is not unwrap(self._shown[i])):
            self._shown[i] = layer
            show_alone(self.viewer, layer)
        self._update()

    # ---------------------------------------------------------------- state
    def layers(self) -> list:
        """The layer of each input, in the model's order (None where none is open)."""
        return [combo.current() for combo in self.combos[: len(self.wanted)]]

    def warnings(self) -> list[str]:
        """One sentence per input whose layer holds another contrast."""
        if self.wanted == ["scan"]:
            return []
        return [w for w in (mismatch(want, lay) for want, lay in zip(self.wanted, self.layers())) if w]

    def problem(self) -> str:
        """Why the inputs cannot be predicted on (one sentence), or ''."""
        layers = self.layers()
        if layers[0] is None:
            return "Open a scan (File > Open, or File > Open Sample > SoftSeg)."
        chosen = [lay for lay in layers if lay is not None]
        distinct = len({id(unwrap(lay)) for lay in chosen})
        if distinct < len(layers):
            n_open = sum(is_scan(lay) for lay in self.viewer.layers)
            if n_open < len(layers) or len(chosen) < len(layers):
                return contrast_message(self.config, distinct, f"scan '{layers[0].name}'")
            twice = next(lay.name for k, lay in enumerate(chosen)
                         if any(unwrap(lay) is unwrap(other) for other in chosen[:k]))
            return f"Each input needs its own layer, but '{twice}' feeds two of them; choose another."
        ref = layers[0]
        for lay in layers[1:]:
            if not same_grid(lay, ref):
                return f"'{lay.name}' does not lie on the voxel grid of '{ref.name}'; the contrasts must share one grid."
        return ""

    def _update(self) -> None:
        if self._filling:
            return
        lines = []
        if self.wanted != ["scan"]:
            for want, lay in zip(self.wanted, self.layers()):
                if lay is not None and not mismatch(want, lay):
                    found = contrast_of(lay)
                    how = f"from its {found.source}" if found.name else "contrast unknown: matched by position"
                    lines.append(f"{html.escape(want)} ← {html.escape(lay.name)} ({how})")
        warn = self.warnings()
        text = "<br>".join(lines)
        if warn:
            text += ("<br>" if text else "") + "".join(f"<span style='color:#e0a030'>{html.escape(w)}</span>"
                                                        for w in warn[:1])
        self.note.setText(text)
        self.note.setVisible(bool(text))
        self.changed.emit()


def show_alone(viewer, layer) -> None:
    """Make ``layer`` visible and hide the other contrasts opened with it (same reader group),
    which would cover it: one contrast of a scan is seen at a time."""
    group = ((layer.metadata or {}).get("softseg_scan") or {}).get("group")
    if not alive(viewer, layer):
        return
    layer.visible = True
    if not group:
        return
    target = unwrap(layer)
    for other in viewer.layers:
        tag = (other.metadata or {}).get("softseg_scan") or {}
        if tag.get("group") == group and unwrap(other) is not target:
            other.visible = False


def _disconnect(emitter, callback) -> None:
    try:
        emitter.disconnect(callback)
    except (TypeError, ValueError, RuntimeError):
        pass
