"""The napari notifications a test caused: the one way the package tells the user something."""

from __future__ import annotations


class Notifications:
    """Messages of the notifications dispatched since this object was made, oldest first;
    with ``severity`` ("error", "warning", "info") only those. Reads like a list."""

    def __init__(self, severity: str | None = None) -> None:
        from napari.utils.notifications import notification_manager

        self._records = notification_manager.records
        self._start = len(self._records)
        self._severity = severity

    def messages(self) -> list[str]:
        return [str(n.message) for n in self._records[self._start:]
                if self._severity is None or str(n.severity) == self._severity]

    def __len__(self) -> int:
        return len(self.messages())

    def __getitem__(self, index):
        return self.messages()[index]

    def __iter__(self):
        return iter(self.messages())
