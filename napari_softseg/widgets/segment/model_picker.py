"""Choosing a model in the Segment dock: shipped defaults, models trained in this session
(the training dock's :data:`~napari_softseg.widgets.models.RECENT_MODELS`) and checkpoint
files, with a one-paragraph description of the chosen model from its checkpoint config."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_softseg.errors import UserError
from napari_softseg.widgets.base import widget_row
from napari_softseg.widgets.models import RECENT_MODELS


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model list: ``name`` is what :func:`~napari_softseg.engine.predict.load_model` takes."""

    label: str
    name: str  # a shipped model's name or a checkpoint path
    kind: str  # "shipped", "session" or "file"


def shipped_choices() -> list[ModelChoice]:
    from napari_softseg.engine.predict import MODELS_DIR, SHIPPED_MODELS

    return [ModelChoice(f"{name} — {what}", name, "shipped")
            for name, what in SHIPPED_MODELS.items() if (MODELS_DIR / f"{name}.pt").is_file()]


def model_config(name: str) -> tuple[Path, dict]:
    """Resolve a model name/path and read its checkpoint config (no network is built)."""
    from napari_softseg.engine.checkpoint import load_checkpoint
    from napari_softseg.engine.predict import resolve_model_path

    path = resolve_model_path(name)
    _, config = load_checkpoint(path)
    return path, config


def describe(config: dict, path: Path | None = None) -> str:
    """Rich-text description: what the model was trained on, its contrasts and threshold."""
    training = config.get("training") or {}
    data = training.get("data") or _data_from_summary(training)
    contrasts = ", ".join(config.get("contrasts") or []) or "?"
    n = int(config.get("n_channels", 1))
    classes = ", ".join(config.get("classes") or [])
    epochs = training.get("epochs_total") or training.get("best_epoch") or training.get("epochs")
    parts = [
        f"<b>Segments:</b> {html.escape(classes)}" if classes else "",
        f"<b>Trained on:</b> {html.escape(str(data))}" if data else "<b>Trained on:</b> (not recorded)",
        f"<b>Contrasts:</b> {n} ({html.escape(contrasts)})",
        f"<b>Threshold:</b> {float(config.get('threshold', 0.5)):.2f} &nbsp; <b>Preset:</b> {html.escape(str(config.get('preset')))}"
        + (f" &nbsp; <b>Epochs:</b> {epochs}" if epochs else ""),
    ]
    if training.get("note"):
        parts.append(f"<b>Note:</b> {html.escape(str(training['note']))}")
    if path is not None:
        parts.append(f"<span style='color:gray'>{html.escape(path.name)}</span>")
    return "<br>".join(p for p in parts if p)


def _data_from_summary(training: dict) -> str:
    n = training.get("n_volumes")
    src = training.get("label_source")
    if not n:
        return ""
    return f"{n} volume{'s' if n != 1 else ''}" + (f", labels: {src}" if src else "")


class ModelPicker(QWidget):
    """A combo box of models plus a file button and the description of the current one.

    ``changed`` is emitted with the new choice's name (or path) whenever it changes.
    """

    changed = Signal(str)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._files: list[ModelChoice] = []
        self._choices: list[ModelChoice] = []
        self._config: dict | None = None
        self._path: Path | None = None
        self._error = ""
        self.combo = QComboBox()
        self.combo.setToolTip("Shipped default models, models trained in this session (Train SoftSeg dock) "
                              "and checkpoint files you opened.")
        self.browse = QPushButton("File…")
        self.browse.setToolTip("Open a napari-softseg checkpoint (.pt) file.")
        self.info = QLabel()
        self.info.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(widget_row(self.combo, self.browse))
        lay.addWidget(self.info)
        self.combo.currentIndexChanged.connect(self._on_index)
        self.browse.clicked.connect(self._browse)
        RECENT_MODELS.follow(self, self._recent_changed)
        self.refresh()

    # ---------------------------------------------------------------- list

    def refresh(self, select: str | None = None) -> None:
        keep = select if select is not None else (self.current().name if self.current() else None)
        session = [ModelChoice(f"{m.label} (trained in this session)", str(m.path), "session")
                   for m in reversed(RECENT_MODELS.items())]
        self._choices = session + shipped_choices() + self._files
        self.combo.blockSignals(True)
        self.combo.clear()
        for c in self._choices:
            self.combo.addItem(c.label)
            self.combo.setItemData(self.combo.count() - 1, c.name, 3)  # tooltip role
        if not self._choices:
            self.combo.addItem("(no model: open a checkpoint file)")
        index = next((i for i, c in enumerate(self._choices) if c.name == keep), 0)
        self.combo.setCurrentIndex(index)
        self.combo.blockSignals(False)
        self._on_index(index)

    def _recent_changed(self) -> None:
        latest = RECENT_MODELS.latest()
        self.refresh(select=str(latest.path) if latest is not None else None)

    def add_file(self, path: str | Path) -> None:
        """Add a checkpoint file to the list and select it."""
        path = str(Path(path).expanduser().resolve())
        if not any(c.name == path for c in self._files):
            self._files.append(ModelChoice(f"{Path(path).name} (file)", path, "file"))
        self.refresh(select=path)

    def set_model(self, name: str | Path) -> None:
        """Select a shipped model by name, or a checkpoint file by path."""
        text = str(name)
        if any(c.name == text for c in self._choices):
            self.refresh(select=text)
        else:
            self.add_file(text)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a napari-softseg model", "", "Models (*.pt);;All files (*)")
        if path:
            self.add_file(path)

    # ---------------------------------------------------------------- current

    def choices(self) -> list[ModelChoice]:
        """The models offered, in list order."""
        return list(self._choices)

    def current(self) -> ModelChoice | None:
        i = self.combo.currentIndex()
        return self._choices[i] if 0 <= i < len(self._choices) else None

    def config(self) -> dict | None:
        return self._config

    def path(self) -> Path | None:
        return self._path

    def error(self) -> str:
        return self._error

    def _on_index(self, index: int) -> None:
        choice = self.current()
        self._config, self._path, self._error = None, None, ""
        if choice is None:
            self.info.setText("Choose a model: a shipped default, one trained in this session, or a file.")
            self.changed.emit("")
            return
        try:
            self._path, self._config = model_config(choice.name)
            self.info.setText(describe(self._config, self._path if choice.kind != "shipped" else None))
        except UserError as err:
            self._error = str(err)
            self.info.setText(f"<span style='color:#e05050'>{html.escape(self._error)}</span>")
        self.changed.emit(choice.name)
