"""Widgets of the "Soft annotation" dock (layout only; behaviour lives in the dock)."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox, QFrame, QGridLayout, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QPushButton,
    QSlider, QTableWidget,
)

from napari_softseg.labels.levels import N_LEVELS, level_colors
from napari_softseg.widgets.base import LayerCombo, is_scan


def build_ui(dock) -> None:
    """Create the dock's groups and controls as attributes of ``dock`` and wire them."""
    g = dock.group("Scan and rater")
    dock.scan_combo = LayerCombo(dock.viewer, is_scan, empty_text="(open a scan first)")
    dock.scan_combo.currentIndexChanged.connect(dock._scan_changed)
    g.addWidget(dock.scan_combo)
    row = QHBoxLayout()
    dock.name_edit = QLineEdit()
    dock.name_edit.setPlaceholderText("rater name")
    dock.add_button = QPushButton("Add rater")
    dock.add_button.clicked.connect(lambda: dock._guard(dock.add_rater, dock.name_edit.text()))
    row.addWidget(dock.name_edit)
    row.addWidget(dock.add_button)
    g.addLayout(row)
    dock.table = QTableWidget(0, 4)
    dock.table.setHorizontalHeaderLabels(["Rater", "Soft mm³", "Hard mm³", "Saved"])
    dock.table.verticalHeader().hide()
    dock.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    dock.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    dock.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
    dock.table.setMaximumHeight(130)
    dock.table.cellClicked.connect(dock._table_clicked)
    g.addWidget(dock.table)
    dock.volume_label = QLabel("")
    g.addWidget(dock.volume_label)

    g = dock.group("Confidence")
    row = QHBoxLayout()
    dock.slider = QSlider(Qt.Orientation.Horizontal)
    dock.slider.setRange(0, N_LEVELS)
    dock.slider.setValue(dock.level)
    dock.slider.valueChanged.connect(dock.set_level)
    dock.level_label = QLabel()
    dock.level_label.setMinimumWidth(70)
    row.addWidget(dock.slider)
    row.addWidget(dock.level_label)
    g.addLayout(row)
    grid = QGridLayout()
    grid.setSpacing(2)
    dock.level_buttons = []
    for k, rgba in level_colors(N_LEVELS).items():
        if not k:
            continue
        b = QPushButton(f"{k / N_LEVELS:.1f}")
        b.setCheckable(True)
        r, gg, bb, a = (int(255 * c) for c in rgba)
        fg = "black" if k > N_LEVELS // 2 else "white"
        b.setStyleSheet(f"QPushButton {{background: rgba({r},{gg},{bb},{max(a, 90)}); color: {fg};"
                        f" padding: 2px;}} QPushButton:checked {{border: 2px solid white;}}")
        b.setToolTip(f"Confidence {k / N_LEVELS:.1f} (Alt+{k % 10})")
        b.clicked.connect(lambda _=False, k=k: dock.set_level(k))
        grid.addWidget(b, (k - 1) // 5, (k - 1) % 5)
        dock.level_buttons.append(b)
    g.addLayout(grid)
    dock.soft_edge = QCheckBox("Soft edge (partial-volume stroke border)")
    dock.soft_edge.setToolTip("After each brush stroke, border voxels get round(c·L + (1-c)·old) "
                              "where c is the fraction of the voxel covered by the brush disc.")
    g.addWidget(dock.soft_edge)
    hint = QLabel("Keys: Alt+1…Alt+9, Alt+0 = 1.0; - / = step the level. Paint, fill, polygon, "
                  "erase and Ctrl+Z are napari's own.")
    hint.setWordWrap(True)
    hint.setStyleSheet("color: gray; font-size: 10px;")
    g.addWidget(hint)

    g = dock.group("Files")
    row = QHBoxLayout()
    for text, slot in (("Import masks…", dock._import_dialog), ("Export rater…", dock._export_dialog),
                       ("Export all…", dock._export_all_dialog)):
        b = QPushButton(text)
        b.clicked.connect(slot)
        row.addWidget(b)
    g.addLayout(row)
    dock.import_report = QLabel("")
    dock.import_report.setWordWrap(True)
    g.addWidget(dock.import_report)

    g = dock.group("Autosave")
    dock.autosave = QCheckBox("Autosave after every stroke")
    dock.autosave.setChecked(True)
    g.addWidget(dock.autosave)
    dock.banner = QFrame()
    dock.banner.setStyleSheet("QFrame {background: #4a3b00; border-radius: 4px;}")
    bl = QHBoxLayout(dock.banner)
    dock.banner_label = QLabel()
    dock.banner_label.setWordWrap(True)
    dock.restore_button = QPushButton("Restore")
    dock.restore_button.clicked.connect(lambda: dock._guard(dock.restore_saved))
    dock.discard_button = QPushButton("Move aside")
    dock.discard_button.clicked.connect(lambda: dock._guard(dock.discard_saved))
    bl.addWidget(dock.banner_label, 1)
    bl.addWidget(dock.restore_button)
    bl.addWidget(dock.discard_button)
    dock.banner.hide()
    g.addWidget(dock.banner)
    dock.autosave_label = QLabel("")
    dock.autosave_label.setWordWrap(True)
    g.addWidget(dock.autosave_label)
    dock.finish_layout()
    dock._show_level()

