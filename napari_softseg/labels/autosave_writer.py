"""The autosave writer thread: rater snapshots are written off the UI thread, newest first.

The caller (a dock) copies the array on its own thread (about 1 ms for 3.6 MB) and hands
the copy to :meth:`AutosaveWriter.submit`, which returns at once. One background thread
writes the snapshots with :meth:`napari_softseg.labels.autosave.AutosaveStore.save`; snapshots of
a rater that arrive while it is busy are coalesced so only the newest is written. The
thread runs at a lower OS priority on Linux and its file format code releases the GIL for
the heavy parts, so painting stays as fluid with autosave on as off. Pending writes are
flushed at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from napari_softseg.labels.autosave import AutosaveStore

Callback = Callable[[str, "Path | None", "Exception | None"], None]


@dataclass
class _Job:
    store: AutosaveStore
    name: str
    data: np.ndarray | None  # None: delete
    callback: Callback | None


class AutosaveWriter:
    """Writes rater snapshots in one background thread, newest snapshot per rater wins.

    ``submit`` never blocks on I/O. ``callback(name, path, error)`` is called in the
    writer thread after each write (``error`` is the exception, or None): GUI code must
    hand it to its own thread (e.g. with a Qt signal).
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._pending: dict[tuple[str, str], _Job] = {}
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="napari-softseg-autosave", daemon=True)
        self._thread.start()
        self.n_written = 0
        _WRITERS.add(self)

    def submit(self, store: AutosaveStore, name: str, snapshot: np.ndarray,
               callback: Callback | None = None) -> None:
        """Queue ``snapshot`` (the caller's private copy) to be saved as rater ``name``."""
        self._put(_Job(store, name, snapshot, callback))

    def delete(self, store: AutosaveStore, name: str, callback: Callback | None = None) -> None:
        """Queue the removal of rater ``name``'s file (after pending writes of other raters)."""
        self._put(_Job(store, name, None, callback))

    def _put(self, job: _Job) -> None:
        key = (str(job.store.scan.path), job.name)
        with self._cond:
            if self._closed:
                raise RuntimeError("the autosave writer is closed")
            self._pending.pop(key, None)  # newest wins, and moves to the end of the queue
            self._pending[key] = job
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._pending) + (1 if self._busy else 0)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything submitted so far is on disk; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float | None = 30.0) -> bool:
        """Flush, then stop the thread."""
        done = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=1.0)
        _WRITERS.discard(self)
        return done

    def _run(self) -> None:
        _lower_thread_priority()
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending and self._closed:
                    return
                key = next(iter(self._pending))
                job = self._pending.pop(key)
                self._busy = True
            path, error = None, None
            try:
                if job.data is None:
                    job.store.remove(job.name)
                else:
                    path = job.store.save(job.name, job.data)
                    self.n_written += 1
            except Exception as err:  # reported to the caller, never kills the thread
                error = err
            finally:
                job.data = None
            callback, name = job.callback, job.name
            job = None  # the idle thread must not keep the caller (a dock, a viewer) alive
            if callback is not None:
                try:
                    callback(name, path, error)
                except Exception:  # pragma: no cover - a broken callback must not stop saving
                    pass
            callback = None
            with self._cond:
                self._busy = False
                self._cond.notify_all()


def _lower_thread_priority(niceness: int = 10) -> None:
    """On Linux, nice values are per thread: let the UI thread win the CPU over the writer
    (the writer's work — copying, compressing — is never urgent, the UI's always is)."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
        except (AttributeError, OSError):
            pass


_WRITERS: "weakref.WeakSet[AutosaveWriter]" = weakref.WeakSet()
_SHARED: AutosaveWriter | None = None
_SHARED_LOCK = threading.Lock()


def shared_writer() -> AutosaveWriter:
    """The process-wide writer (one thread for every dock and viewer)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or _SHARED._closed:
            _SHARED = AutosaveWriter()
        return _SHARED


@atexit.register
def _flush_all_at_exit() -> None:  # pragma: no cover - runs at interpreter exit
    for writer in list(_WRITERS):
        try:
            writer.flush(timeout=20.0)
        except Exception:
            pass
