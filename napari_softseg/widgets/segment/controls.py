"""Run options, Segment/Cancel, progress, the threshold slider and the save buttons of the
Segment dock."""

from __future__ import annotations

import time

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton, QSlider, QSpinBox,
    QVBoxLayout, QWidget,
)

from napari_softseg.widgets.base import widget_row


def fixed_lines(label, lines: int) -> None:
    """Give a word-wrapped label a fixed height of ``lines`` text lines: changing its text
    then never asks the main window for a new layout (costly in napari's window)."""
    label.setWordWrap(True)
    label.setFixedHeight(label.fontMetrics().lineSpacing() * lines + 4)


PROGRESS_INTERVAL_S = 0.25

#: test-time augmentation choices: label -> number of views (see inference.TTA_FLIPS)
TTA_CHOICES = {"off": 0, "2 views (flip)": 2, "4 views (flips)": 4}


MC_TIP = ("Monte-Carlo dropout: predict this many times with dropout on; the mean is the soft map and the samples "
          "give each lesion's IoU and volume CV (0 = off; each sample costs one prediction).")
MC_OFF_TIP = ("This model has no dropout (networks with the normalised ReLU train without it), so Monte-Carlo "
              "dropout would draw the same map every time; use test-time augmentation for samples.")


class RunControls(QWidget):
    """MC-dropout samples, test-time augmentation, Segment / Cancel and a progress bar."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        self.mc_spin = QSpinBox()
        self.mc_spin.setRange(0, 30)
        self.mc_spin.setToolTip(MC_TIP)
        self.tta_combo = QComboBox()
        self.tta_combo.addItems(list(TTA_CHOICES))
        self.tta_combo.setToolTip("Test-time augmentation: also predict flipped slices and average; the views feed the "
                                  "per-lesion statistics like MC dropout (with both, samples = MC x views).")
        form.addRow("MC dropout samples", self.mc_spin)
        form.addRow("Test-time augmentation", self.tta_combo)
        lay.addLayout(form)
        self.segment_button = QPushButton("Segment")
        self.segment_button.setToolTip("Predict the soft map of the scan with the chosen model (in the background).")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        lay.addLayout(widget_row(self.segment_button, self.cancel_button))
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)
        self.progress.setFixedHeight(self.progress.sizeHint().height())
        self._last_progress = 0.0
        lay.addWidget(self.progress)

    def set_model(self, config: dict | None) -> None:
        """MC dropout only for a model that has dropout (its checkpoint's architecture)."""
        dropout = float(((config or {}).get("architecture") or {}).get("dropout", 0.3) or 0.0)
        has = config is None or dropout > 0.0
        if not has:
            self.mc_spin.setValue(0)
        self.mc_spin.setEnabled(has)
        self.mc_spin.setToolTip(MC_TIP if has else MC_OFF_TIP)

    def tta(self) -> int:
        return TTA_CHOICES[self.tta_combo.currentText()]

    def set_running(self, running: bool) -> None:
        self.segment_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running:
            self._last_progress = 0.0
            self.progress.setValue(0)

    def set_progress(self, done: int, total: int) -> None:
        """Show progress, at most every :data:`PROGRESS_INTERVAL_S` (each repaint of napari's
        window costs tens of milliseconds under software OpenGL) and always at the end."""
        now = time.perf_counter()
        if done < total and now - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress = now
        if self.progress.maximum() != max(total, 1):
            self.progress.setMaximum(max(total, 1))
        self.progress.setValue(done)


class ThresholdControl(QWidget):
    """A slider (0.01 steps) and a spin box kept in step; ``changed(float)`` on user changes."""

    changed = Signal(float)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(1, 99)
        self.slider.setValue(50)
        tip = ("Binarisation threshold: voxels with a probability above it form the mask. Segment sets the model's "
               "optimised threshold; moving it re-binarises at once without re-running the model, and the lesion "
               "table follows a moment later.")
        self.slider.setToolTip(tip)
        self.spin = QDoubleSpinBox()
        self.spin.setRange(0.01, 0.99)
        self.spin.setSingleStep(0.01)
        self.spin.setDecimals(2)
        self.spin.setValue(0.5)
        self.spin.setToolTip(tip)
        lay.addLayout(widget_row(self.slider, self.spin))
        self.info = QLabel("")
        fixed_lines(self.info, 1)
        lay.addWidget(self.info)
        self.slider.valueChanged.connect(lambda v: self.spin.setValue(v / 100.0))
        self.spin.valueChanged.connect(self._from_spin)

    def value(self) -> float:
        return float(self.spin.value())

    def set_value(self, value: float, emit: bool = True) -> None:
        """Move the slider and spin box; ``changed`` is emitted only with ``emit``."""
        for w in (self.slider, self.spin):
            w.blockSignals(True)
        self.spin.setValue(float(value))
        self.slider.setValue(int(round(float(value) * 100)))
        for w in (self.slider, self.spin):
            w.blockSignals(False)
        if emit:
            self.changed.emit(self.value())

    def _from_spin(self, value: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(int(round(value * 100)))
        self.slider.blockSignals(False)
        self.changed.emit(float(value))


class SaveControls(QWidget):
    """"Save predictions…" (raw model outputs) and "Export review…" (the reviewed result)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.save_button = QPushButton("Save predictions…")
        self.save_button.setToolTip("Write the soft map (float32), the mask and the entropy map as NIfTI with the "
                                    "scan's geometry.")
        self.export_button = QPushButton("Export review…")
        self.export_button.setToolTip("Write the lesion table (CSV and JSON: statistics, decisions, comments, model) "
                                      "and the final soft and binary masks (NIfTI, the scan's geometry).")
        row.addWidget(self.save_button)
        row.addWidget(self.export_button)
