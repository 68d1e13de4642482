"""The data half of the training dock's inputs: the label source, one row per training scan
(scan picker + label checklist) and folders of NIfTI image/label pairs."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_softseg.engine.training.data import LABEL_SOURCES, get_label_source
from napari_softseg.engine.training.pairing import pair_folder
from napari_softseg.engine.training.sources import check_contrasts
from napari_softseg.errors import UserError
from napari_softseg.plugin.notify import user_errors
from napari_softseg.plugin.roles import is_rater
from napari_softseg.widgets.base import widget_row
from napari_softseg.widgets.napari_private import unwrap
from napari_softseg.widgets.training.layers import ScanEntry, is_label_candidate, on_same_grid, scan_entries, snapshot_scan

_NONE = "(no scan open)"


class ScanRow(QWidget):
    """One training scan: a scan picker and a checklist of its label layers."""

    remove_requested = Signal(object)

    def __init__(self, viewer, multi_rater: bool, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.multi_rater = multi_rater
        self._entries: list[ScanEntry] = []
        self._label_layers: list = []
        self._touched = False
        self.scan_combo = QComboBox()
        self.scan_combo.setToolTip("A scan (Image layer; the contrasts of one scan opened together count as one).")
        self.remove_button = QPushButton("✕")
        self.remove_button.setFixedWidth(28)
        self.remove_button.setToolTip("Remove this scan from the training data.")
        self.remove_button.clicked.connect(lambda: self.remove_requested.emit(self))
        self.labels_list = QListWidget()
        self.labels_list.setMaximumHeight(74)
        self.labels_list.setToolTip(
            "Label layers for this scan: a soft map, a label map, or several rater layers "
            "(confidence 1-10 = 0.1-1.0) for a fusion or random sampling."
        )
        lay = QFormLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addRow("Scan", widget_row(self.scan_combo, self.remove_button))
        lay.addRow("Labels", self.labels_list)
        self.scan_combo.currentIndexChanged.connect(self._scan_changed)
        self.labels_list.itemChanged.connect(self._item_changed)
        self.refresh()

    # ------------------------------------------------------------------ state
    def entries(self) -> list[ScanEntry]:
        """The scans offered in this row's picker."""
        return list(self._entries)

    def entry(self) -> ScanEntry | None:
        i = self.scan_combo.currentIndex()
        return self._entries[i] if 0 <= i < len(self._entries) else None

    def set_scan(self, name_or_layer) -> None:
        for i, e in enumerate(self._entries):
            if e.name == name_or_layer or any(lay is unwrap(name_or_layer) for lay in e.layers):
                self.scan_combo.setCurrentIndex(i)
                return
        raise ValueError(f"no scan {name_or_layer!r}")

    def checked_labels(self) -> list:
        return [lay for i, lay in enumerate(self._label_layers)
                if self.labels_list.item(i).checkState() == Qt.CheckState.Checked]

    def set_labels(self, layers) -> None:
        """Check exactly ``layers`` (by identity)."""
        self._set_checks(lambda lay: any(lay is unwrap(x) for x in layers))
        self._touched = True

    def set_multi_rater(self, multi: bool) -> None:
        self.multi_rater = multi
        if not self._touched:
            self._apply_defaults()

    # ------------------------------------------------------------------ refresh
    def refresh(self, event=None) -> None:
        keep = self.entry()
        checked = self.checked_labels()
        self._entries = scan_entries(self.viewer.layers)
        self.scan_combo.blockSignals(True)
        self.scan_combo.clear()
        self.scan_combo.addItems([e.name for e in self._entries] or [_NONE])
        index = next((i for i, e in enumerate(self._entries) if keep is not None and e.layers[0] is keep.layers[0]), 0)
        self.scan_combo.setCurrentIndex(index)
        self.scan_combo.blockSignals(False)
        self._fill_labels(checked)
        if keep is None or self.entry() is None or self.entry().layers[0] is not keep.layers[0]:
            self._touched = False
        if not self.checked_labels():
            self._apply_defaults()

    def _fill_labels(self, checked) -> None:
        self._label_layers = [lay for lay in self.viewer.layers if is_label_candidate(lay)]
        self.labels_list.blockSignals(True)
        self.labels_list.clear()
        for lay in self._label_layers:
            item = QListWidgetItem(lay.name + ("  (rater)" if is_rater(lay) else ""))
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if any(lay is c for c in checked) else Qt.CheckState.Unchecked)
            self.labels_list.addItem(item)
        self.labels_list.blockSignals(False)

    def _scan_changed(self, index: int) -> None:
        self._touched = False
        self._set_checks(lambda lay: False)
        self._apply_defaults()

    def _item_changed(self, item) -> None:
        self._touched = True

    def _apply_defaults(self) -> None:
        """Raters on the scan's grid for multi-rater sources, else its first other label."""
        entry = self.entry()
        if entry is None:
            return
        ref = entry.reference
        same = [lay for lay in self._label_layers if on_same_grid(ref, lay)]
        if self.multi_rater:
            chosen = [lay for lay in same if is_rater(lay)]
        else:
            plain = [lay for lay in same if not is_rater(lay)] or same
            chosen = plain[:1]
        self._set_checks(lambda lay: any(lay is c for c in chosen))

    def _set_checks(self, want) -> None:
        self.labels_list.blockSignals(True)
        for i, lay in enumerate(self._label_layers):
            self.labels_list.item(i).setCheckState(Qt.CheckState.Checked if want(lay) else Qt.CheckState.Unchecked)
        self.labels_list.blockSignals(False)


class DataPanel(QWidget):
    """Label source, scan rows and folders; :meth:`snapshots` copies what was chosen."""

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.rows: list[ScanRow] = []
        self.folders: list[tuple[Path, Path]] = []
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.source_combo = QComboBox()
        for key, src in LABEL_SOURCES.items():
            self.source_combo.addItem(src.title, key)
        self.source_combo.setToolTip(
            "How each scan's target is made: one label map; the average, majority vote or STAPLE "
            "estimate of its raters; or a rater drawn at random for every slice and epoch."
        )
        src_row = QHBoxLayout()
        src_row.addWidget(QLabel("Label source"))
        src_row.addWidget(self.source_combo, 1)
        lay.addLayout(src_row)
        self._rows_layout = QVBoxLayout()
        lay.addLayout(self._rows_layout)
        self.add_scan_button = QPushButton("Add scan")
        self.add_scan_button.setToolTip("Train on one more open scan.")
        self.add_folders_button = QPushButton("Add folders…")
        self.add_folders_button.setToolTip("Add a folder of NIfTI images and the folder of their labels (may be the same): "
                                           "label <stem>.nii.gz or <stem>_<name>.nii.gz for image <stem>.nii.gz.")
        self.remove_folders_button = QPushButton("Clear folders")
        buttons = QHBoxLayout()
        for b in (self.add_scan_button, self.add_folders_button, self.remove_folders_button):
            buttons.addWidget(b)
        lay.addLayout(buttons)
        self.folders_list = QListWidget()
        self.folders_list.setMaximumHeight(44)
        self.folders_list.setVisible(False)
        lay.addWidget(self.folders_list)
        self.source_combo.currentIndexChanged.connect(self._source_changed)
        self.add_scan_button.clicked.connect(lambda: self.add_row())
        self.add_folders_button.clicked.connect(self._browse_folders)
        self.remove_folders_button.clicked.connect(self.clear_folders)
        ev = viewer.layers.events
        for emitter in (ev.inserted, ev.removed, ev.moved):
            emitter.connect(self._layers_changed)
        self.add_row()

    @property
    def label_source(self) -> str:
        return self.source_combo.currentData()

    def set_label_source(self, key: str) -> None:
        self.source_combo.setCurrentIndex(self.source_combo.findData(key))

    def _multi_rater(self) -> bool:
        return get_label_source(self.label_source).multi_rater

    def add_row(self) -> ScanRow:
        row = ScanRow(self.viewer, self._multi_rater())
        row.remove_requested.connect(self._remove_row)
        self.rows.append(row)
        self._rows_layout.addWidget(row)
        if len(self.rows) > 1:  # a new row proposes the next scan not yet used
            used = {id(r.entry().reference) for r in self.rows[:-1] if r.entry()}
            free = [e for e in row.entries() if id(e.reference) not in used]
            if free:
                row.set_scan(free[0].reference)
        return row

    def _remove_row(self, row) -> None:
        if row in self.rows:
            self.rows.remove(row)
            row.setParent(None)
            row.deleteLater()

    def _source_changed(self, *_):
        multi = self._multi_rater()
        for row in self.rows:
            row.set_multi_rater(multi)

    def _layers_changed(self, event=None) -> None:
        for row in self.rows:
            row.refresh()

    def add_folder_pair(self, images_dir, labels_dir) -> None:
        """Train also on the NIfTI pairs of two folders (see :func:`napari_softseg.engine.training.pairing.pair_folder`)."""
        with user_errors():
            pairs = pair_folder(images_dir, labels_dir)
            self.folders.append((Path(images_dir), Path(labels_dir)))
            self.folders_list.addItem(f"{Path(images_dir).name} ↔ {Path(labels_dir).name} ({len(pairs)} images)")
            self.folders_list.setVisible(True)

    def _browse_folders(self) -> None:
        images = QFileDialog.getExistingDirectory(self, "Folder of training images")
        if images:
            labels = QFileDialog.getExistingDirectory(self, "Folder of their labels", images)
            if labels:
                self.add_folder_pair(images, labels)

    def clear_folders(self) -> None:
        self.folders.clear()
        self.folders_list.clear()
        self.folders_list.setVisible(False)

    def snapshots(self) -> list:
        """Checked copies of every row's scan and labels (:class:`UserError` on a mismatch)."""
        snaps = [snapshot_scan(r.entry(), r.checked_labels()) for r in self.rows if r.entry() is not None]
        check_contrasts(snaps)
        if not snaps and not self.folders:
            raise UserError("Choose at least one scan with a label, or add a folder of image/label pairs.")
        return snaps
