"""The "Soft annotation" dock: rater layers painted with confidence, live volumes,
import/export and crash-safe autosave.

Painting itself is napari's: brush, fill, polygon, eraser, brush size, undo/redo all work
unchanged on the rater layer; the painted integer is the confidence level (``selected_label``).
The dock only reacts to napari's ``paint`` event (emitted once per finished stroke) and to
undo/redo (seen as a change of the layer's edit history at its next refresh).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox, QFileDialog, QFrame, QGridLayout, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QPushButton,
    QSlider, QTableWidget, QTableWidgetItem,
)

from napari_softseg.errors import UserError
from napari_softseg.labels.autosave import AutosaveStore, SavedRater
from napari_softseg.labels.levels import N_LEVELS, level_colors, levels_hard_volume, levels_soft_volume
from napari_softseg.plugin.notify import notify_info, notify_warning, user_errors
from napari_softseg.plugin.roles import is_rater, is_scan
from napari_softseg.widgets.annotation import rater_io as rio
from napari_softseg.widgets.annotation import rater_layers as rl
from napari_softseg.widgets.annotation.autosave import RaterAutosave
from napari_softseg.widgets.base import DockBase, LayerCombo, layer_geometry
from napari_softseg.widgets.napari_private import unwrap


class SoftAnnotationWidget(DockBase):
    """Paint confidence-weighted soft labels, one rater layer per rater."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self._raters: dict[int, rl.RaterState] = {}  # by id of the layer behind any proxy
        self._offer: list[SavedRater] = []
        self._offer_store: AutosaveStore | None = None
        self._busy = False
        self.level = N_LEVELS
        # napari emits ``paint`` before writing a single (non-stroke) paint call, so volumes
        # are measured on the next turn of the event loop
        self._to_measure: set[int] = set()
        self._measure_timer = QTimer(self)
        self._measure_timer.setSingleShot(True)
        self._measure_timer.setInterval(0)
        self._measure_timer.timeout.connect(self._measure_pending)
        self._build_scan_group()
        self._build_confidence_group()
        self._build_files_group()
        self._build_autosave_group()
        self.finish_layout()
        self._show_level()
        self.saver = RaterAutosave(self, lambda: self._raters, self.autosave.isChecked)
        self.saver.saved.connect(self._on_saved)
        v = self.viewer
        v.layers.events.inserted.connect(self._on_inserted)
        v.layers.events.removed.connect(self._on_removed)
        v.layers.selection.events.active.connect(self._on_active)
        for layer in list(v.layers):
            if is_rater(layer):
                self._adopt(layer)
        self._scan_changed()

    # ------------------------------------------------------------------ layout
    def _build_scan_group(self) -> None:
        g = self.group("Scan and rater")
        self.scan_combo = LayerCombo(self.viewer, is_scan, empty_text="(open a scan first)")
        self.scan_combo.currentIndexChanged.connect(self._scan_changed)
        g.addWidget(self.scan_combo)
        row = QHBoxLayout()
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("rater name")
        self.add_button = QPushButton("Add rater")
        self.add_button.clicked.connect(lambda: self._guard(self.add_rater, self.name_edit.text()))
        row.addWidget(self.name_edit)
        row.addWidget(self.add_button)
        g.addLayout(row)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Rater", "Soft mm³", "Hard mm³", "Saved"])
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setMaximumHeight(130)
        self.table.cellClicked.connect(self._table_clicked)
        g.addWidget(self.table)
        self.volume_label = QLabel("")
        g.addWidget(self.volume_label)

    def _build_confidence_group(self) -> None:
        g = self.group("Confidence")
        row = QHBoxLayout()
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, N_LEVELS)
        self.slider.setValue(self.level)
        self.slider.valueChanged.connect(self.set_level)
        self.level_label = QLabel()
        self.level_label.setMinimumWidth(70)
        row.addWidget(self.slider)
        row.addWidget(self.level_label)
        g.addLayout(row)
        grid = QGridLayout()
        grid.setSpacing(2)
        self.level_buttons = [self._level_button(k, rgba) for k, rgba in level_colors(N_LEVELS).items() if k]
        for k, b in enumerate(self.level_buttons, start=1):
            grid.addWidget(b, (k - 1) // 5, (k - 1) % 5)
        g.addLayout(grid)
        self.soft_edge = QCheckBox("Soft edge (partial-volume stroke border)")
        self.soft_edge.setToolTip("After each brush stroke, border voxels get round(c·L + (1-c)·old) "
                                  "where c is the fraction of the voxel covered by the brush disc.")
        g.addWidget(self.soft_edge)
        hint = QLabel("Keys: Alt+1…Alt+9, Alt+0 = 1.0; - / = step the level. Paint, fill, polygon, "
                      "erase and Ctrl+Z are napari's own.")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: gray; font-size: 10px;")
        g.addWidget(hint)

    def _level_button(self, k: int, rgba) -> QPushButton:
        """The button of confidence level ``k``, in the level's colour."""
        b = QPushButton(f"{k / N_LEVELS:.1f}")
        b.setCheckable(True)
        r, g, bl, a = (int(255 * c) for c in rgba)
        fg = "black" if k > N_LEVELS // 2 else "white"
        b.setStyleSheet(f"QPushButton {{background: rgba({r},{g},{bl},{max(a, 90)}); color: {fg};"
                        f" padding: 2px;}} QPushButton:checked {{border: 2px solid white;}}")
        b.setToolTip(f"Confidence {k / N_LEVELS:.1f} (Alt+{k % 10})")
        b.clicked.connect(lambda _=False, k=k: self.set_level(k))
        return b

    def _build_files_group(self) -> None:
        g = self.group("Files")
        row = QHBoxLayout()
        for text, slot in (("Import masks…", self._import_dialog), ("Export rater…", self._export_dialog),
                           ("Export all…", self._export_all_dialog)):
            b = QPushButton(text)
            b.clicked.connect(slot)
            row.addWidget(b)
        g.addLayout(row)
        self.import_report = QLabel("")
        self.import_report.setWordWrap(True)
        g.addWidget(self.import_report)

    def _build_autosave_group(self) -> None:
        g = self.group("Autosave")
        self.autosave = QCheckBox("Autosave after every stroke")
        self.autosave.setChecked(True)
        g.addWidget(self.autosave)
        self.banner = QFrame()
        self.banner.setStyleSheet("QFrame {background: #4a3b00; border-radius: 4px;}")
        bl = QHBoxLayout(self.banner)
        self.banner_label = QLabel()
        self.banner_label.setWordWrap(True)
        self.restore_button = QPushButton("Restore")
        self.restore_button.clicked.connect(lambda: self._guard(self.restore_saved))
        self.discard_button = QPushButton("Move aside")
        self.discard_button.clicked.connect(lambda: self._guard(self.discard_saved))
        bl.addWidget(self.banner_label, 1)
        bl.addWidget(self.restore_button)
        bl.addWidget(self.discard_button)
        self.banner.hide()
        g.addWidget(self.banner)
        self.autosave_label = QLabel("")
        self.autosave_label.setWordWrap(True)
        g.addWidget(self.autosave_label)

    @property
    def writer(self):
        """The shared autosave writer thread."""
        return self.saver.writer

    def _guard(self, fn, *args):
        with user_errors():
            return fn(*args)

    def _state(self, layer) -> rl.RaterState | None:
        """The dock's state of a rater layer (a proxy or the layer itself), None if not a rater."""
        return None if layer is None else self._raters.get(id(unwrap(layer)))

    # ------------------------------------------------------------------ raters
    @property
    def scan(self):
        return self.scan_combo.current()

    def raters(self, scan=None) -> list:
        """Rater layers of ``scan`` (default: the dock's scan), in layer-list order."""
        scan = scan if scan is not None else self.scan
        if scan is None:
            return []
        ident = rl.scan_identity(scan)
        return [lay for lay in self.viewer.layers if is_rater(lay) and rl.scan_identity(lay) == ident]

    @property
    def active_rater(self):
        active = self.viewer.layers.selection.active
        if is_rater(active):
            return active
        raters = self.raters()
        return raters[-1] if raters else None

    def add_rater(self, name: str = "", data: np.ndarray | None = None):
        """Add a rater layer for the dock's scan and make it the active, painting layer."""
        scan = self.scan
        if scan is None:
            raise UserError("Open or select a 3-D scan before adding a rater.")
        name = self._unique_name(name.strip() or "rater")
        layer = rl.add_rater_layer(self.viewer, name, scan, data)
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        self.set_level(self.level)
        self.name_edit.clear()
        return layer

    def _unique_name(self, base: str) -> str:
        taken = {lay.name for lay in self.viewer.layers} | {s.name for s in self._offer}
        if base not in taken and base != "rater":
            return base
        k = 1
        while f"{base} {k}" in taken:
            k += 1
        return f"{base} {k}"

    def _adopt(self, layer) -> None:
        layer = unwrap(layer)
        if id(layer) in self._raters:
            return
        rl.prepare_rater_layer(layer)
        st = rl.RaterState.for_layer(layer)
        self._raters[id(layer)] = st
        layer.mouse_drag_callbacks.insert(0, st.recorder)
        for ev, cb in self._layer_callbacks(layer):
            ev.connect(cb)
        self._measure(st)

    def _layer_callbacks(self, layer):
        e = layer.events
        return ((e.paint, self._on_paint), (e.set_data, self._on_set_data), (e.data, self._on_data),
                (e.selected_label, self._on_selected_label), (e.name, self._on_rename))

    def _on_inserted(self, event) -> None:
        layer = event.value
        if is_rater(layer):
            self._adopt(layer)
            self._refresh_table()

    def _on_removed(self, event) -> None:
        st = self._raters.pop(id(unwrap(event.value)), None)
        if st is None:
            return
        self.saver.forget(st)
        self.saver.submit(st)  # the last state is on disk even if the layer was removed by mistake
        self.writer.flush(timeout=5.0)
        for ev, cb in self._layer_callbacks(st.layer):
            ev.disconnect(cb)
        if st.recorder in st.layer.mouse_drag_callbacks:
            st.layer.mouse_drag_callbacks.remove(st.recorder)
        self._refresh_table()
        self._check_restore()

    def _on_active(self, event=None) -> None:
        layer = self.viewer.layers.selection.active
        if is_rater(layer):
            if self.scan is None or rl.scan_identity(layer) != rl.scan_identity(self.scan):
                for scan in self.scan_combo.layers():
                    if rl.scan_identity(scan) == rl.scan_identity(layer):
                        self.scan_combo.set_current(scan)
                        break
            self.set_level(self.level)
        self._refresh_table()

    def _on_rename(self, event) -> None:
        st = self._state(event.source)
        if st is None or st.name == event.source.name:
            return
        old, st.name = st.name, event.source.name
        self.saver.rename(st, old)
        self._refresh_table()

    # ------------------------------------------------------------------ level
    def set_level(self, level: int) -> None:
        """Set the confidence level (0 = erase, 1..10) for the active rater."""
        level = int(min(max(int(level), 0), N_LEVELS))
        self.level = level
        layer = self.active_rater
        if layer is not None and layer.selected_label != level:
            layer.selected_label = level
        self._show_level()

    def _on_selected_label(self, event) -> None:
        layer = event.source
        if layer.selected_label > N_LEVELS:
            layer.selected_label = N_LEVELS
            return
        if layer is unwrap(self.viewer.layers.selection.active):
            self.level = int(layer.selected_label)
            self._show_level()

    def _show_level(self) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(self.level)
        self.slider.blockSignals(False)
        self.level_label.setText("erase" if self.level == 0 else f"{self.level / N_LEVELS:.1f}")
        for k, b in enumerate(self.level_buttons, start=1):
            b.setChecked(k == self.level)

    # ------------------------------------------------------------------ edits
    def _on_paint(self, event) -> None:
        st = self._state(event.source)
        if st is None or self._busy:
            return
        stroke = st.recorder.take()
        if self.soft_edge.isChecked() and stroke is not None and event.source.mode in ("paint", "erase"):
            label = event.source.selected_label if event.source.mode == "paint" else 0
            self._busy = True
            try:
                rl.apply_soft_edge(event.source, event.value, stroke, int(label))
            finally:
                self._busy = False
        self._edited(st)

    def _on_set_data(self, event) -> None:
        st = self._state(event.source)
        if st is not None and not self._busy and rl.history_signature(st.layer) != st.signature:
            self._edited(st)  # undo / redo

    def _on_data(self, event) -> None:
        st = self._state(event.source)
        if st is not None:
            self._edited(st)

    def _edited(self, st: rl.RaterState) -> None:
        st.signature = rl.history_signature(st.layer)
        self._to_measure.add(id(st.layer))
        self._measure_timer.start()
        self.saver.mark(st)

    def _measure_pending(self) -> None:
        keys, self._to_measure = self._to_measure, set()
        for key in keys:
            st = self._raters.get(key)
            if st is not None:
                self._measure(st)
        self._refresh_table()

    def _measure(self, st: rl.RaterState) -> None:
        data = st.layer.data
        st.soft = levels_soft_volume(data, st.voxel_volume)
        st.hard = levels_hard_volume(data, st.voxel_volume)

    # ------------------------------------------------------------------ autosave
    def flush(self, timeout: float = 30.0) -> bool:
        """Save every edited rater now and wait until the files are written."""
        return self.saver.flush(timeout)

    def _on_saved(self, name: str, path: str, error: str) -> None:
        for st in self._raters.values():
            if st.name == name:
                st.saved = "failed" if error else time.strftime("%H:%M:%S")
        if error:
            notify_warning(f"Autosave of rater {name!r} failed: {error}")
        elif path:
            self.autosave_label.setText(f"Saved {name!r} at {time.strftime('%H:%M:%S')} in {Path(path).parent}")
        self._refresh_table()

    # ------------------------------------------------------------------ restore
    def _scan_changed(self, *_) -> None:
        self._check_restore()
        self._refresh_table()

    def _check_restore(self) -> None:
        scan = self.scan
        self._offer, self._offer_store = [], None
        if scan is not None:
            geo = layer_geometry(scan)
            if geo.path is not None:
                store = AutosaveStore(geo)
                present = {lay.name for lay in self.raters(scan)}
                self._offer = [s for s in store.saved() if s.name not in present]
                self._offer_store = store
            else:
                self.autosave_label.setText("This scan has no file; its raters are not autosaved.")
        if self._offer:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(max(s.mtime for s in self._offer)))
            names = ", ".join(s.name for s in self._offer)
            n = len(self._offer)
            self.banner_label.setText(f"{n} autosaved rater{'s' if n > 1 else ''} for this scan "
                                      f"({names}), last saved {when}.")
            self.restore_button.setText(f"Restore {n}")
        self.banner.setVisible(bool(self._offer))

    def restore_saved(self) -> list:
        """Add the autosaved raters offered in the banner as rater layers."""
        offer, store, scan = list(self._offer), self._offer_store, self.scan
        layers = []
        for saved in offer:
            try:
                data = store.load(saved)
            except UserError as err:
                notify_warning(str(err))
                continue
            layer = rl.add_rater_layer(self.viewer, saved.name, scan, data)
            layers.append(layer)
        if layers:
            self.viewer.layers.selection.active = layers[-1]
            self.say(f"Restored {len(layers)} rater(s) from {offer[0].path.parent}.")
        self._check_restore()
        return layers

    def discard_saved(self) -> None:
        """Move the offered autosaves into a ``discarded-<date>`` sub-folder (nothing is deleted)."""
        if self._offer_store is not None and self._offer:
            target = self._offer_store.discard([s.name for s in self._offer])
            self.say(f"Moved the autosaved raters to {target}.")
        self._check_restore()

    # ------------------------------------------------------------------ import / export
    def import_masks(self, paths) -> list:
        """Import binary or soft NIfTI masks of the dock's scan as rater layers.

        Soft values are rounded to the nearest level; the dock reports the largest change.
        """
        layers, msg = rio.import_masks(self.scan, paths, self.add_rater)
        if layers:
            self.import_report.setText(msg)
            notify_info(msg)
        return layers

    def export_rater(self, layer, path) -> Path:
        """Write one rater as a float32 soft NIfTI (level / 10) with its scan's geometry."""
        out = rio.export_rater(layer, path)
        self.say(f"Exported {layer.name} to {out}.")
        return out

    def export_all(self, folder) -> list[Path]:
        """Export every rater of the dock's scan as ``<scan>_<rater>_soft.nii.gz`` into ``folder``."""
        outs = rio.export_all(self.raters(), folder, self.scan.name if self.scan is not None else "scan")
        self.say(f"Exported {len(outs)} rater(s) to {folder}.")
        return outs

    def _import_dialog(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Import rater masks", "", "NIfTI (*.nii *.nii.gz)")
        if paths:
            self._guard(self.import_masks, paths)

    def _export_dialog(self) -> None:
        layer = self.active_rater
        if layer is None:
            return self._guard(self.export_rater, None, "")
        path, _ = QFileDialog.getSaveFileName(self, "Export rater", f"{layer.name}_soft.nii.gz", "NIfTI (*.nii.gz *.nii)")
        if path:
            self._guard(self.export_rater, layer, path)

    def _export_all_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export all raters to")
        if folder:
            self._guard(self.export_all, folder)

    # ------------------------------------------------------------------ table
    def _refresh_table(self) -> None:
        raters = self.raters()
        active = self.active_rater
        self.table.setRowCount(len(raters))
        for row, lay in enumerate(raters):
            st = self._state(lay)
            vals = [lay.name, f"{st.soft:.1f}" if st else "", f"{st.hard:.1f}" if st else "",
                    (st.saved if st and st.store else "off") if st else ""]
            for col, text in enumerate(vals):
                item = self.table.item(row, col)
                if item is None:
                    item = QTableWidgetItem()
                    self.table.setItem(row, col, item)
                item.setText(text)
                if col:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        st = self._state(active)
        if st is not None:
            self.volume_label.setText(f"<b>{active.name}</b>: soft {st.soft:.1f} mm³ · hard (≥ 0.5) {st.hard:.1f} mm³")
        else:
            self.volume_label.setText("Add a rater (or import masks) to start painting.")

    def _table_clicked(self, row: int, col: int) -> None:
        raters = self.raters()
        if 0 <= row < len(raters):
            self.viewer.layers.selection.active = raters[row]
