"""The model half of the training dock's inputs: preset, hyperparameters (paper defaults,
tooltips), device, mixed precision and the start point (scratch or a checkpoint)."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QWidget,
)

from napari_softseg.engine.presets import DEFAULT_PRESET, PRESETS
from napari_softseg.widgets.base import widget_row
from napari_softseg.widgets.models import RECENT_MODELS


# ---------------------------------------------------------------------- hyperparameters
def _spin(lo: int, hi: int, value: int, tip: str, step: int = 1, special: str | None = None) -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    box.setToolTip(tip)
    if special:
        box.setSpecialValueText(special)
    return box


def _dspin(lo: float, hi: float, value: float, decimals: int, step: float, tip: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    box.setToolTip(tip)
    return box


class HyperParameters(QWidget):
    """Preset, the few hyperparameters, device, precision and the start point."""

    def __init__(self, defaults, parent=None):
        super().__init__(parent)
        from napari_softseg.engine.devices import training_dtype

        self._training_dtype = training_dtype
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self._build_preset(form)
        self._build_start(form)
        self._build_hyperparameters(form, defaults)
        self._build_device(form)
        self._device_changed()
        self._start_changed()
        self._recent_changed()

    def _build_preset(self, form: QFormLayout) -> None:
        self.preset_combo = QComboBox()
        for key, preset in PRESETS.items():
            self.preset_combo.addItem(preset.title + (" (SoftSeg)" if key == DEFAULT_PRESET else ""), key)
            self.preset_combo.setItemData(self.preset_combo.count() - 1, preset.description, Qt.ItemDataRole.ToolTipRole)
        self.preset_combo.setCurrentIndex(list(PRESETS).index(DEFAULT_PRESET))
        self.preset_combo.setToolTip(
            "Labels-Activation-Loss recipe (Gros et al. 2021): SoftSeg keeps labels soft, ends in a "
            "normalised ReLU and trains with the Adaptive Wing loss; Hard-Sig-Dice is the conventional baseline."
        )
        form.addRow("Preset", self.preset_combo)

    def _build_start(self, form: QFormLayout) -> None:
        """From scratch or fine-tune, and the checkpoint to fine-tune."""
        self.scratch_radio = QRadioButton("From scratch")
        self.finetune_radio = QRadioButton("Fine-tune")
        self.scratch_radio.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.scratch_radio)
        group.addButton(self.finetune_radio)
        row = QHBoxLayout()
        row.addWidget(self.scratch_radio)
        row.addWidget(self.finetune_radio)
        row.addStretch(1)
        form.addRow("Start", row)
        self.init_path = QLineEdit()
        self.init_path.setPlaceholderText("model checkpoint (.pt), or ms-lesion / brain-gm")
        self.init_path.setToolTip("The checkpoint to fine-tune (a file, or a shipped model's name): its architecture, "
                                  "slice axis, voxel size and crop are kept.")
        self.browse_button = QPushButton("…")
        self.browse_button.setFixedWidth(28)
        self.browse_button.setToolTip("Choose a checkpoint file.")
        self.last_button = QPushButton("Last")
        self.last_button.setToolTip("The model trained last in this session.")
        form.addRow("Model", widget_row(self.init_path, self.browse_button, self.last_button))
        self.browse_button.clicked.connect(self._browse)
        self.last_button.clicked.connect(self._use_last)
        self.finetune_radio.toggled.connect(self._start_changed)
        self.init_path.textChanged.connect(self._init_changed)
        RECENT_MODELS.follow(self, self._recent_changed)

    def _build_hyperparameters(self, form: QFormLayout, d) -> None:
        """The few hyperparameters, with the paper's values (``d``) as defaults."""
        self.epochs = _spin(1, 100000, d.epochs, f"Maximum number of passes over the training slices (paper: {d.epochs}); "
                            f"training stops early when the validation loss has not improved for {d.patience} epochs.")
        self.batch_size = _spin(1, 512, d.batch_size, f"Slices per optimisation step (paper: {d.batch_size}); lower it if memory runs out.")
        self.lr = _dspin(1e-6, 1.0, d.lr, 6, 1e-4, f"Initial Adam learning rate (paper: {d.lr:g}), annealed to 0 by a cosine over the epochs.")
        self.crop_size = _spin(0, 2048, 0, "In-plane size of the training slices, a multiple of 2^depth; auto: the largest "
                               "slice, padded (or the checkpoint's when fine-tuning).", step=16, special="auto")
        self.depth = _spin(1, 6, d.depth, f"Number of down-sampling levels of the U-Net (paper: {d.depth}); ignored when fine-tuning.")
        self.base_features = _spin(2, 256, d.base_features, f"Feature maps of the first U-Net level, doubled at each level "
                                   f"(paper: {d.base_features}); ignored when fine-tuning.")
        self.val_fraction = _dspin(0.0, 0.9, d.val_fraction, 2, 0.05, f"Share of the volumes held out for validation (paper: {d.val_fraction:g}); "
                                   "with one volume, a contiguous block of its slices.")
        for label, box in (("Epochs", self.epochs), ("Batch size", self.batch_size), ("Learning rate", self.lr),
                           ("Crop size", self.crop_size), ("Depth", self.depth), ("Base features", self.base_features),
                           ("Validation", self.val_fraction)):
            form.addRow(label, box)

    def _build_device(self, form: QFormLayout) -> None:
        from napari_softseg.engine.devices import available_devices

        self.device_combo = QComboBox()
        for dev in available_devices():
            self.device_combo.addItem(dev.label, dev.name)
        self.device_combo.setToolTip("Devices found on this computer; the first is the fastest.")
        self.mixed_precision = QCheckBox("Mixed precision")
        self.mixed_precision.setToolTip("bfloat16/float16 autocast where the device computes it natively "
                                        "(NVIDIA GPUs, CPUs with AVX512-BF16/AMX); float32 elsewhere, "
                                        "and always on Apple GPUs (MPS).")
        form.addRow("Device", widget_row(self.device_combo, self.mixed_precision))
        self.device_combo.currentIndexChanged.connect(self._device_changed)

    def device_names(self) -> list[str]:
        return [self.device_combo.itemData(i) for i in range(self.device_combo.count())]

    def _device_changed(self, *_):
        # what training will really use on that device: unticked and disabled where it is float32 (MPS)
        helps = self._training_dtype(self.device_combo.currentData() or "cpu") is not None
        self.mixed_precision.setEnabled(helps)
        self.mixed_precision.setChecked(helps)

    def _start_changed(self, *_):
        fine = self.finetune_radio.isChecked()
        for w in (self.init_path, self.browse_button):
            w.setEnabled(fine)
        self.last_button.setEnabled(fine and RECENT_MODELS.latest() is not None)
        self.depth.setEnabled(not fine)
        self.base_features.setEnabled(not fine)

    def _init_changed(self, text: str) -> None:
        """Follow the chosen checkpoint's preset (fine-tuning keeps its final activation)."""
        path = _init_path(text)
        if path is None or not path.is_file():
            return
        from napari_softseg.engine.checkpoint import load_checkpoint
        from napari_softseg.errors import UserError

        try:
            preset = load_checkpoint(path)[1].get("preset")
        except UserError:
            return
        index = self.preset_combo.findData(preset)
        if index >= 0:
            self.preset_combo.setCurrentIndex(index)

    def _recent_changed(self, *_):
        try:
            self.last_button.setEnabled(self.finetune_radio.isChecked() and RECENT_MODELS.latest() is not None)
        except RuntimeError:  # the dock was closed
            RECENT_MODELS.unfollow(self._recent_changed)

    def _use_last(self):
        last = RECENT_MODELS.latest()
        if last is not None:
            self.init_path.setText(str(last.path))

    def _browse(self):
        path, _ = QFileDialog.getOpenFileName(self, "Model to fine-tune", self.init_path.text(), "Checkpoints (*.pt *.pth);;All files (*)")
        if path:
            self.init_path.setText(path)

    def init_checkpoint(self) -> Path | None:
        if not self.finetune_radio.isChecked():
            return None
        return _init_path(self.init_path.text())


def _init_path(text: str) -> Path | None:
    """The checkpoint the "Model" box names: a file, or a shipped model by name (as in
    ``napari-softseg train --init ms-lesion``)."""
    from napari_softseg.engine.predict import SHIPPED_MODELS, resolve_model_path

    text = text.strip()
    if text in SHIPPED_MODELS:
        return resolve_model_path(text)
    return Path(text).expanduser() if text else None
