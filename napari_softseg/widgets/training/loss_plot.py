"""The dock's live plot of training/validation loss and validation Dice per epoch.

A pixmap of the matplotlib figure of :mod:`napari_softseg.engine.training.plot`. While training, the training
process draws it and the dock only shows the images it receives (:meth:`LossPlot.show_image`);
otherwise (a resize after training) it is drawn here, at most every 250 ms.
"""

from __future__ import annotations

from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QSizePolicy

from napari_softseg.engine.training.plot import BG, finite_or_nan, plot_state


class LossPlot(QLabel):
    """The plot widget; ``epochs``, ``train_loss``, ``val_loss`` and ``val_dice`` hold one
    point per epoch (NaN where a value is missing), ``start`` the validation loss before the
    first step; ``rendered_points`` is the number of epochs in the image on screen.

    ``remote``: True while another process draws (resizes are then only announced through
    ``size_changed``).
    """

    size_changed = Signal(object)  # (width, height, device pixel ratio)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumSize(100, 200)  # never the pixmap's size: the pixmap follows the widget
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setStyleSheet(f"background-color: {BG};")
        self.remote = False
        self.rendered_points = -1
        self._figure = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(250)
        self._timer.timeout.connect(self._draw_here)
        self.clear()

    # ------------------------------------------------------------------ data
    def clear(self) -> None:
        self.epochs: list[int] = []
        self.train_loss: list[float] = []
        self.val_loss: list[float] = []
        self.val_dice: list[float] = []
        self.start: tuple[int, float] | None = None

    def set_start(self, epoch: int, loss) -> None:
        self.start = (int(epoch), float(loss)) if loss is not None else None

    def add_epoch(self, epoch: int, train_loss, val_loss, val_dice) -> None:
        self.epochs.append(int(epoch))
        self.train_loss.append(finite_or_nan(train_loss))
        self.val_loss.append(finite_or_nan(val_loss))
        self.val_dice.append(finite_or_nan(val_dice))

    def pixel_size(self) -> tuple[int, int, float]:
        return max(self.width(), 120), max(self.height(), 100), float(self.devicePixelRatioF() or 1.0)

    # ------------------------------------------------------------------ drawing
    def show_image(self, rgba, points: int) -> None:
        """Show a drawn figure (``(H, W, 4)`` uint8 RGBA, physical pixels)."""
        h, w = rgba.shape[:2]
        image = QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()
        pixmap = QPixmap.fromImage(image)
        pixmap.setDevicePixelRatio(self.devicePixelRatioF() or 1.0)
        self.setPixmap(pixmap)
        self.rendered_points = points

    def redraw(self) -> None:
        """Draw here soon (coalesced), unless another process draws."""
        if not self.remote:
            self._timer.start()

    def _draw_here(self) -> None:
        from napari_softseg.engine.training.plot import LossFigure

        if self._figure is None:
            self._figure = LossFigure()
        w, h, ratio = self.pixel_size()
        state = plot_state(self.epochs, self.train_loss, self.val_loss, self.val_dice, self.start, (w, h), ratio)
        self.show_image(self._figure.render(state), len(self.epochs))

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self.size_changed.emit(self.pixel_size())
        self.redraw()
