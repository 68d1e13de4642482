"""Ctrl-C (SIGINT) on the command line: exit 130 with one line, at any moment.

* While a command imports its heavy libraries (torch, nibabel, scipy), SIGINT is held back
  (:func:`quiet_imports`): an interrupt raised inside an extension module's initialisation can
  abort the process or leave a half-imported module behind (seen as a ``RecursionError`` or a
  C++ ``terminate`` of pybind11). The held-back interrupt takes effect as soon as the imports
  are done.
* Elsewhere it raises :class:`KeyboardInterrupt` as usual: atomic writes remove their
  temporary file, and :func:`napari_softseg.commands.main` prints
  ``napari-softseg COMMAND: interrupted`` plus the command's :func:`note` (e.g. where the best
  weights of an interrupted training are) and returns 130. Further interrupts during that
  short exit are ignored, so no second traceback appears.
* A process started with SIGINT ignored (``nohup``, a background job of a script) keeps
  ignoring it.
"""

from __future__ import annotations

import importlib
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_note: list[str] = []


def set_note(text: str | None) -> None:
    """What the interrupted-line should add (``None``: nothing)."""
    _note.clear()
    if text:
        _note.append(text)


def note() -> str:
    """The current note, as ``"; <note>"`` or ``""``."""
    return f"; {_note[0]}" if _note else ""


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def quiet_imports() -> Iterator[None]:
    """Hold SIGINT back during the block and act on it afterwards (main thread only).

    The Python-level handler is swapped for one that only records the interrupt: blocking the
    signal for the main thread would not do, since the operating system hands it to any
    thread that does not block it (numpy's and torch's worker threads) and Python then runs
    the handler in the main thread all the same."""
    if not _main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # ignored (or default): nothing to defer
        yield
        return
    seen: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if seen:
        previous(signal.SIGINT, None)


def preload(*modules: str) -> None:
    """Import ``modules`` with SIGINT held back (see the module docstring)."""
    with quiet_imports():
        for name in modules:
            importlib.import_module(name)


@contextmanager
def handled_interrupts() -> Iterator[None]:
    """Around a whole command: forget an earlier note, and restore the SIGINT handler after."""
    set_note(None)
    previous = signal.getsignal(signal.SIGINT) if _main_thread() else None
    try:
        yield
    finally:
        if previous is not None and signal.getsignal(signal.SIGINT) is not previous:
            signal.signal(signal.SIGINT, previous)
        set_note(None)


def ignore_further() -> None:
    """Ignore SIGINT from now on (while the process reports an interrupt and exits)."""
    if _main_thread() and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
