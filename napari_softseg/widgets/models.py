"""Models trained in this napari session, shared between the training and Segment docks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from psygnal import Signal


@dataclass(frozen=True)
class TrainedModel:
    path: Path
    label: str


class _RecentModels:
    """An evented list: the training dock adds, the Segment dock listens."""

    changed = Signal()

    def __init__(self) -> None:
        self._items: list[TrainedModel] = []

    def add(self, path: str | Path, label: str) -> TrainedModel:
        item = TrainedModel(Path(path), label)
        self._items = [m for m in self._items if m.path != item.path] + [item]
        self.changed.emit()
        return item

    def follow(self, widget, callback) -> None:
        """Call ``callback`` after every change until ``widget`` (a QObject) is destroyed."""
        self.changed.connect(callback)
        widget.destroyed.connect(lambda *_: self.unfollow(callback))

    def unfollow(self, callback) -> None:
        try:
            self.changed.disconnect(callback)
        except (ValueError, RuntimeError):
            pass

    def items(self) -> list[TrainedModel]:
        return list(self._items)

    def latest(self) -> TrainedModel | None:
        return self._items[-1] if self._items else None

    def clear(self) -> None:
        self._items.clear()
        self.changed.emit()


RECENT_MODELS = _RecentModels()
