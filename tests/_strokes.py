"""Simulated mouse strokes through napari's own Labels mouse bindings (tests and helper scripts)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MouseEvent:
    """The fields napari's Labels drag callbacks read from a vispy mouse event."""

    type: str
    position: tuple
    is_dragging: bool = False
    dims_displayed: tuple = (1, 2)
    dims_point: list | None = None
    view_direction: list | None = None
    pos: tuple = (0, 0)
    button: int = 1
    handled: bool = False
    modifiers: tuple = ()


def stroke_events(layer, data_points):
    """``(callback, event)`` pairs for press, moves and release along ``data_points``."""
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import (
        mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks,
    )

    world = [tuple(float(c) for c in layer.data_to_world(np.asarray(p, float))) for p in data_points]
    out = [(mouse_press_callbacks, ReadOnlyWrapper(MouseEvent("mouse_press", world[0])))]
    out += [(mouse_move_callbacks, ReadOnlyWrapper(MouseEvent("mouse_move", w, True))) for w in world[1:]]
    out.append((mouse_release_callbacks, ReadOnlyWrapper(MouseEvent("mouse_release", world[-1]))))
    return out


def stroke(layer, data_points) -> None:
    """One brush stroke (press, drag through the points, release) in data coordinates."""
    for callback, event in stroke_events(layer, data_points):
        callback(layer, event)


def kill_test_strokes(shape, n: int):
    """The strokes of the kill -9 test: stroke i paints level i % 10 + 1 along a short line."""
    x = shape[0] // 2
    out = []
    for i in range(n):
        y = 20 + 9 * (i % 12)
        z0 = 20 + 30 * (i // 12)
        out.append((i % 10 + 1, [(x, y, z0), (x, y, z0 + 12), (x, y + 3, z0 + 20)]))
    return out


def sweep_strokes(layer, n: int):
    """The ``(callback, event)`` pairs of ``n`` parallel strokes (the responsiveness test and benchmark)."""
    events = []
    for i in range(n):
        x = 30 + 2 * i
        events += stroke_events(layer, [(x, 40, 40), (x, 60, 50), (x, 80, 70), (x, 100, 75)])
    return events


def play(layer, events, interval_ms: int = 12, timeout_s: float = 60.0) -> None:
    """Feed ``events`` to ``layer`` one per ``interval_ms`` timer tick, as a user's mouse
    does, running the Qt event loop in between; returns when all are played."""
    import time

    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    events = list(events)
    driver = QTimer()
    driver.setInterval(interval_ms)

    def drive():
        if events:
            callback, event = events.pop(0)
            callback(layer, event)
        else:
            driver.stop()

    driver.timeout.connect(drive)
    driver.start()
    end = time.monotonic() + timeout_s
    while (events or driver.isActive()) and time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.001)
    driver.stop()
    if events:
        raise TimeoutError(f"{len(events)} mouse events were not played within {timeout_s} s")
