"""Telling the user: one napari notification per message (napari, no Qt).

The reader, the writers and the docks report through these functions only. When napari
cannot show a notification (not installed, or failing itself) the message goes to stderr:
reporting a problem never raises.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

from napari_softseg.errors import UserError


def _show(severity: str, message: str) -> None:
    try:
        from napari.utils import notifications

        show = {"error": notifications.show_error, "warning": notifications.show_warning,
                "info": notifications.show_info}[severity]
        show(message)
    except Exception:  # noqa: BLE001 - napari missing or broken: still tell the user
        print(message, file=sys.stderr)


def notify_error(message: str) -> None:
    _show("error", message)


def notify_warning(message: str) -> None:
    _show("warning", message)


def notify_info(message: str) -> None:
    _show("info", message)


@contextmanager
def user_errors():
    """Turn a :class:`UserError` (and an unreadable file) into one error notification."""
    try:
        yield
    except UserError as err:
        notify_error(str(err))
    except OSError as err:
        notify_error(f"{getattr(err, 'filename', None) or 'File'}: {err.strerror or err}.")
