"""``napari-softseg demo``: napari with the lesion phantom, the default model and the docks.

With a display it opens the viewer and runs the workflow interactively. Without one it
re-runs itself under ``xvfb-run`` (a virtual screen), performs the same workflow, saves a
screenshot and the outputs to a folder and prints where they are.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from napari_softseg.errors import UserError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="open napari with the sample scan, the default model and the docks",
        description=__doc__,
    )
    p.add_argument("--out", default="demo_output", help="folder for the screenshot and outputs (default: %(default)s)")
    p.add_argument("--headless", action="store_true",
                   help="run the workflow, save a screenshot and outputs, and exit (implied without a display)")
    p.set_defaults(run=run)


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run(args) -> int:
    """Start the demo application (:mod:`napari_softseg.widgets.demo`) as its own process,
    on a virtual screen when there is no display."""
    from napari_softseg.commands import guard
    from napari_softseg.io.outputs import Output

    guard([Output("--out", Path(args.out), "folder")])
    out = Path(args.out).resolve()
    app = [sys.executable, "-m", "napari_softseg.widgets.demo", "--out", str(out)]
    if _has_display():
        return subprocess.call(app + (["--headless"] if args.headless else []))
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        raise UserError("No display was found and xvfb-run is not installed; install the 'xvfb' package or run 'make demo'.")
    return subprocess.call([xvfb, "-a", "-s", "-screen 0 1600x1000x24", *app, "--headless"])
