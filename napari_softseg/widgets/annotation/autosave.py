"""Autosave of rater layers from the annotation dock (Qt side of :mod:`napari_softseg.labels.autosave`).

After an edit the rater is marked dirty; on the next turn of the event loop
(:data:`AUTOSAVE_DELAY_MS`) each dirty rater's array is copied (about 1 ms for 3.6 MB) and
handed to the shared writer thread, which writes it atomically. Raters are also saved when
their layer is removed, when the main window closes and when the application quits.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from qtpy.QtCore import QEvent, QObject, QTimer, Signal
from qtpy.QtWidgets import QApplication, QWidget

from napari_softseg.labels.autosave import shared_writer

#: Delay between the end of a stroke and its autosave snapshot. 0 = the next turn of the
#: event loop: edits made within one turn (a stroke and its soft edge) share one snapshot,
#: and the writer thread coalesces snapshots that arrive while it is busy, so a process
#: killed at any moment loses at most the stroke whose file was still being written.
AUTOSAVE_DELAY_MS = 0


class RaterAutosave(QObject):
    """Dirty raters → snapshots → the writer thread; ``saved(name, path, error)`` reports back
    on the UI thread. ``states()`` returns the dock's rater states (``.layer``, ``.name``,
    ``.store``, ``.saved``); ``enabled()`` says whether autosave is on."""

    saved = Signal(str, str, str)

    def __init__(self, parent, states: Callable, enabled: Callable[[], bool]):
        super().__init__(parent)
        self._states = states
        self._enabled = enabled
        self._dirty: set[int] = set()
        self.writer = shared_writer()
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(AUTOSAVE_DELAY_MS)
        self.timer.timeout.connect(self.save_pending)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.save_all_now)
        self._window = None
        QTimer.singleShot(0, self._watch_window)

    def mark(self, st) -> None:
        """Note an edit; the snapshot follows on the next turn of the event loop."""
        if st.store is None or not self._enabled():
            return
        self._dirty.add(id(st.layer))
        if not self.timer.isActive():  # throttle, never postpone: continuous painting still saves
            self.timer.start()

    def forget(self, st) -> None:
        self._dirty.discard(id(st.layer))

    def save_pending(self) -> None:
        """Snapshot every rater edited since its last save and hand it to the writer."""
        dirty, self._dirty = self._dirty, set()
        states = self._states()
        for key in dirty:
            st = states.get(key)
            if st is not None:
                self.submit(st)

    def submit(self, st) -> None:
        if st.store is None or not self._enabled():
            return
        snapshot = np.array(st.layer.data, dtype=np.uint8, copy=True)
        st.saved = "…"
        self.writer.submit(st.store, st.name, snapshot, callback=self._from_thread)

    def rename(self, st, old_name: str) -> None:
        """Save under the new name, then remove the old file (in that order)."""
        if st.store is not None and self._enabled():
            self.submit(st)
            self.writer.delete(st.store, old_name)

    def flush(self, timeout: float = 30.0) -> bool:
        """Save everything edited now and wait for the writer."""
        self.timer.stop()
        self.save_pending()
        return self.writer.flush(timeout)

    def save_all_now(self) -> None:
        try:
            self.flush(timeout=20.0)
        except RuntimeError:  # the dock is being deleted
            pass

    def _from_thread(self, name, path, error) -> None:
        try:
            self.saved.emit(name, str(path or ""), "" if error is None else str(error))
        except RuntimeError:  # deleted meanwhile
            pass

    def _watch_window(self) -> None:
        try:
            window = self.parent().window()
        except (RuntimeError, AttributeError):
            return
        if isinstance(window, QWidget) and window is not self.parent():
            self._window = window
            window.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:
        if obj is self._window and event.type() == QEvent.Type.Close:
            self.save_all_now()
        return False
