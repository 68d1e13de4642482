"""The one exception type for errors a user can cause.

Its message is a single clear sentence meant for a person: the GUI shows it as a napari
notification and the CLI prints it and exits with status 2. Programming errors keep their
ordinary exception types and tracebacks.
"""

from __future__ import annotations


class UserError(ValueError):
    """An error caused by the user's input (bad file, wrong shape, impossible setting)."""
