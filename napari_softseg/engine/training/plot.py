"""The loss/Dice figure of the training dock, drawn with matplotlib's Agg backend (no Qt).

:class:`LossFigure` turns a plot state (:func:`plot_state`) into an RGBA image. The training
process draws it (:class:`PlotFeed`) and sends the image with its progress events, so the
viewer's process only shows a pixmap: drawing this small figure takes 50-90 ms on a busy
two-core machine and allocates enough objects to trigger full garbage collections of the
viewer's heap (up to ~0.9 s were measured when it was drawn in a thread of the viewer).
"""

from __future__ import annotations

import math
import time

import numpy as np

BG, FG, GRID = "#262930", "#d6d6d6", "#414851"
TRAIN, VAL, DICE, START = "#4fa3ff", "#ffa63d", "#7bd88f", "#ff6b8b"
DPI = 90


def plot_state(epochs, train, val, dice, start, size=(360, 220), ratio: float = 1.0) -> dict:
    """What a drawing depends on: points per epoch, the starting validation loss
    ``(epoch, loss)`` or None, the size in logical pixels and the device pixel ratio."""
    return {"epochs": list(epochs), "train": list(train), "val": list(val), "dice": list(dice),
            "start": start, "size": (int(size[0]), int(size[1])), "ratio": float(ratio)}


def finite_or_nan(value) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else math.nan


class LossFigure:
    """Loss curves (left axis) and validation Dice (right axis, 0-1) against the epoch."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        self.figure = Figure(figsize=(4, 2.4), dpi=DPI, facecolor=BG)
        self.canvas = FigureCanvasAgg(self.figure)
        self.ax = self.figure.add_subplot(111)
        self.ax2 = self.ax.twinx()
        for ax in (self.ax, self.ax2):
            ax.set_facecolor(BG)
            ax.tick_params(colors=FG, labelsize=7)
            for spine in ax.spines.values():
                spine.set_color(GRID)
        self.ax.grid(True, color=GRID, lw=0.5)
        self.ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        self.ax.set_xlabel("epoch", color=FG, fontsize=8)
        self.ax.set_ylabel("loss", color=FG, fontsize=8)
        self.ax2.set_ylabel("val Dice", color=DICE, fontsize=8)
        self.ax2.set_ylim(0.0, 1.0)
        (self.train,) = self.ax.plot([], [], "-o", color=TRAIN, ms=3, lw=1.4, label="train loss")
        (self.val,) = self.ax.plot([], [], "-o", color=VAL, ms=3, lw=1.4, label="val loss")
        (self.start,) = self.ax.plot([], [], "*", color=START, ms=9, label="start (val)")
        (self.dice,) = self.ax2.plot([], [], "--s", color=DICE, ms=3, lw=1.2, label="val Dice")
        self.ax.legend(handles=[self.train, self.val, self.dice, self.start], loc="lower center", ncol=4,
                       bbox_to_anchor=(0.5, 1.0), fontsize=7, frameon=False, labelcolor=FG, handlelength=1.6,
                       columnspacing=1.0, borderaxespad=0.2)

    def render(self, s: dict) -> np.ndarray:
        """``(H, W, 4)`` uint8 RGBA of state ``s`` (physical pixels)."""
        (w, h), ratio = s["size"], s["ratio"]
        w, h = max(w, 120), max(h, 100)
        self.figure.set_dpi(DPI * ratio)
        self.figure.set_size_inches(w / DPI, h / DPI)
        left, right = 46 / w, 1 - 46 / w
        self.figure.subplots_adjust(left=left, right=max(right, left + 0.1), bottom=34 / h, top=1 - 22 / h)
        self.train.set_data(s["epochs"], s["train"])
        self.val.set_data(s["epochs"], s["val"])
        self.dice.set_data(s["epochs"], s["dice"])
        start = s["start"]
        self.start.set_data(([start[0]], [start[1]]) if start else ([], []))
        xs = list(s["epochs"]) + ([start[0]] if start else [])
        ys = [v for v in s["train"] + s["val"] + ([start[1]] if start else []) if math.isfinite(v)]
        lo_x, hi_x = (min(xs), max(xs)) if xs else (0, 1)
        self.ax.set_xlim(lo_x - 0.5, max(hi_x, lo_x + 1) + 0.5)
        if ys:
            lo, hi = min(ys), max(ys)
            pad = 0.08 * (hi - lo) if hi > lo else 0.1 * max(abs(hi), 1e-3)
            self.ax.set_ylim(max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
        self.canvas.draw()
        return np.asarray(self.canvas.buffer_rgba()).copy()


class PlotImage:
    """A drawn figure and the number of epochs it shows (sent by the training process)."""

    def __init__(self, rgba: np.ndarray, points: int) -> None:
        self.rgba, self.points = rgba, points


class PlotFeed:
    """Follows a run's events in the training process and draws the figure at most every
    ``interval`` seconds (always after the last epoch)."""

    def __init__(self, size=(360, 220), ratio: float = 1.0, interval: float = 0.5) -> None:
        self.size, self.ratio, self.interval = size, ratio, interval
        self.epochs, self.train, self.val, self.dice = [], [], [], []
        self.start = None
        self._figure = None
        self._last = -math.inf
        self._dirty = False

    def resize(self, size, ratio: float) -> None:
        if (tuple(size), ratio) != (tuple(self.size), self.ratio):
            self.size, self.ratio, self._dirty = tuple(size), ratio, True

    def feed(self, event) -> PlotImage | None:
        if event.kind == "start":
            self.start = (event.start_epoch, event.start_loss) if event.start_loss is not None else None
            self._dirty = True
        elif event.kind == "epoch":
            self.epochs.append(event.start_epoch + event.epoch)
            self.train.append(finite_or_nan(event.train_loss))
            self.val.append(finite_or_nan(event.val_loss))
            self.dice.append(finite_or_nan(event.val_dice))
            self._dirty = True
        last = event.kind == "done" or (event.kind == "epoch" and event.epoch == event.epochs)
        if not self._dirty or (not last and time.perf_counter() - self._last < self.interval):
            return None
        return self.draw()

    def draw(self) -> PlotImage:
        if self._figure is None:
            self._figure = LossFigure()
        state = plot_state(self.epochs, self.train, self.val, self.dice, self.start, self.size, self.ratio)
        image = PlotImage(self._figure.render(state), len(self.epochs))
        self._last, self._dirty = time.perf_counter(), False
        return image
