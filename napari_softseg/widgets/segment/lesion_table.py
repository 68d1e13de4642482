"""The lesion table of the Segment dock: one sortable row per lesion (and per possible
missed lesion), flagged rows highlighted.

Rows are identified by the lesion id (the value in the lesion label image), kept in the
first column's ``UserRole`` so that sorting never loses track of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

#: background of flagged rows (amber, readable on napari's dark and light themes)
FLAG_COLOUR = QColor(255, 170, 0, 90)
REJECTED_COLOUR = QColor(128, 128, 128)


@dataclass(frozen=True)
class Column:
    title: str
    value: Callable  # (record, decision) -> value shown and sorted on
    fmt: str = "{}"
    tooltip: str = ""


#: how the kind of a record is shown
KIND_TEXT = {"lesion": "lesion", "candidate": "possible"}


def _num(v):
    return v if not (isinstance(v, float) and not math.isfinite(v)) else None


COLUMNS: tuple[Column, ...] = (
    Column("id", lambda r, d: r.id, tooltip="Lesion number (its value in the lesion label image)"),
    Column("kind", lambda r, d: KIND_TEXT.get(r.kind, r.kind),
           tooltip="lesion: a part of the mask; possible: a sub-threshold blob that may be a lesion the mask "
                   "missed (not in the mask unless you accept it)"),
    Column("flag", lambda r, d: "⚑" if r.flagged else "", tooltip="Flagged for review (see the reason)"),
    Column("score", lambda r, d: _num(r.flag_score), "{:.2f}",
           "Lesions: probability that the lesion needs a correction (false, wrong outline, merged or split), "
           "learned for the model at its own threshold. Possible lesions: probability that it is a lesion the "
           "mask missed."),
    Column("decision", lambda r, d: d.status, tooltip="pending, accepted, rejected (removed from the final mask) or edited"),
    Column("vol mm³", lambda r, d: r.hard_volume_mm3, "{:.1f}", "Hard volume: voxels x voxel volume"),
    Column("soft mm³", lambda r, d: r.soft_volume_mm3, "{:.1f}",
           "Soft volume: sum of probabilities over the lesion and its sub-threshold rim x voxel volume"),
    Column("mean p", lambda r, d: r.mean_probability, "{:.2f}", "Mean probability over the lesion"),
    Column("min p", lambda r, d: r.min_probability, "{:.2f}", "Lowest probability in the lesion"),
    Column("entropy", lambda r, d: r.mean_entropy, "{:.2f}", "Mean voxel entropy (bits)"),
    Column("IoU", lambda r, d: _num(r.sample_iou), "{:.2f}",
           "IoU of the lesion across MC-dropout / TTA samples (blank without samples)"),
    Column("vol CV", lambda r, d: _num(r.volume_cv), "{:.2f}",
           "Coefficient of variation of the lesion volume across samples (blank without samples)"),
    Column("voxels", lambda r, d: r.voxels, tooltip="Voxels above the threshold"),
    Column("reason", lambda r, d: r.reason, tooltip="Why the lesion is flagged"),
    Column("comment", lambda r, d: d.comment, tooltip="Reviewer's comment"),
)


class _Item(QTableWidgetItem):
    """An item that sorts numerically when it holds a number (blanks last)."""

    def __init__(self, value, fmt: str) -> None:
        text = "" if value is None else (fmt.format(value) if isinstance(value, (int, float)) else str(value))
        super().__init__(text)
        self._key = value
        self.setFlags(self.flags() & ~Qt.ItemFlag.ItemIsEditable)

    def __lt__(self, other) -> bool:
        a, b = self._key, getattr(other, "_key", None)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return a < b
        if a is None or b is None:
            return b is None and a is not None
        return str(a) < str(b)


class LesionTableWidget(QTableWidget):
    """Sortable lesion table; ``lesion_selected(id)`` is emitted when the current row changes."""

    lesion_selected = Signal(int)

    def __init__(self, parent=None) -> None:
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels([c.title for c in COLUMNS])
        for i, c in enumerate(COLUMNS):
            self.horizontalHeaderItem(i).setToolTip(c.tooltip)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setDefaultSectionSize(20)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)  # widths set once per fill
        header.setStretchLastSection(True)
        self.setSortingEnabled(True)
        header.setSortIndicator(0, Qt.SortOrder.AscendingOrder)  # by id until the user sorts
        self.setMinimumHeight(160)
        self._records: dict[int, object] = {}
        self._emit = True
        self.itemSelectionChanged.connect(self._selection_changed)

    # ---------------------------------------------------------------- content

    def set_lesions(self, records, decision: Callable) -> None:
        """Fill the table from lesion records; ``decision(id)`` gives each row's Decision."""
        keep = self.selected_id()
        self._emit = False
        sort_col = self.horizontalHeader().sortIndicatorSection()
        sort_order = self.horizontalHeader().sortIndicatorOrder()
        self.setSortingEnabled(False)
        self.setUpdatesEnabled(False)  # one repaint and one layout for the whole fill
        self.clearContents()
        self.setRowCount(len(records))
        self._records = {r.id: r for r in records}
        for row, rec in enumerate(records):
            self._fill_row(row, rec, decision(rec.id))
        self.setSortingEnabled(True)
        self.sortItems(sort_col if 0 <= sort_col < len(COLUMNS) else 0, sort_order)
        self.resizeColumnsToContents()
        self.setUpdatesEnabled(True)
        self._emit = True
        if keep is not None and keep in self._records:
            self.select_id(keep, emit=False)

    def _fill_row(self, row: int, rec, dec) -> None:
        for col, c in enumerate(COLUMNS):
            item = _Item(c.value(rec, dec), c.fmt)
            if col == 0:
                item.setData(Qt.ItemDataRole.UserRole, int(rec.id))
            if rec.flagged:
                item.setBackground(QBrush(FLAG_COLOUR))
                if c.title == "flag":
                    item.setToolTip(rec.reason)
            if dec.status == "rejected":
                item.setForeground(QBrush(REJECTED_COLOUR))
            self.setItem(row, col, item)

    def update_decision(self, lesion_id: int, dec) -> None:
        row = self.row_of(lesion_id)
        rec = self._records.get(lesion_id)
        if row is None or rec is None:
            return
        self._emit = False
        sorting = self.isSortingEnabled()
        self.setSortingEnabled(False)
        self._fill_row(row, rec, dec)
        self.setSortingEnabled(sorting)
        self._emit = True
        self.select_id(lesion_id, emit=False)

    # ---------------------------------------------------------------- rows and ids

    def id_at(self, row: int) -> int | None:
        item = self.item(row, 0)
        return None if item is None else int(item.data(Qt.ItemDataRole.UserRole))

    def row_of(self, lesion_id: int) -> int | None:
        for row in range(self.rowCount()):
            if self.id_at(row) == lesion_id:
                return row
        return None

    def ids_in_order(self) -> list[int]:
        """Lesion ids in the displayed (sorted) order."""
        return [i for i in (self.id_at(r) for r in range(self.rowCount())) if i is not None]

    def selected_id(self) -> int | None:
        rows = {i.row() for i in self.selectedIndexes()}
        return self.id_at(min(rows)) if rows else None

    def select_id(self, lesion_id: int, emit: bool = True) -> None:
        row = self.row_of(lesion_id)
        if row is None:
            return
        self._emit = emit
        self.selectRow(row)
        self.scrollToItem(self.item(row, 0))
        self._emit = True

    def step_flagged(self, step: int) -> int | None:
        """Select the next (``step=1``) or previous (``-1``) flagged lesion in display order,
        wrapping around; returns its id (None when nothing is flagged)."""
        order = self.ids_in_order()
        flagged = [i for i in order if self._records[i].flagged]
        if not flagged:
            return None
        current = self.selected_id()
        if current is None or current not in order:
            target = flagged[0] if step > 0 else flagged[-1]
        else:
            pos = order.index(current)
            n = len(order)
            target = next(order[(pos + k * step) % n] for k in range(1, n + 1) if self._records[order[(pos + k * step) % n]].flagged)
        self.select_id(target)
        return target

    def _selection_changed(self) -> None:
        if not self._emit:
            return
        lesion_id = self.selected_id()
        if lesion_id is not None:
            self.lesion_selected.emit(lesion_id)
