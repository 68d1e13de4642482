"""The ``napari-softseg`` command line.

Every module in this package that defines ``add_parser(subparsers)`` contributes one
subcommand; ``add_parser`` must register a ``run(args) -> int`` function with
``parser.set_defaults(run=...)`` and import heavy libraries (torch, napari) only inside
``run``, so that ``napari-softseg --help`` stays instant.

Errors a user can cause are raised as :class:`napari_softseg.errors.UserError`; they are
printed as one sentence and the process exits with status 2. Before any work, every command
checks its settings (:mod:`napari_softseg.io.checks`) and its outputs
(:func:`napari_softseg.io.outputs.guard_outputs`: no output may be an input or another
output, every output folder must take a new file). Ctrl-C prints one line and exits with
status 130 (:mod:`napari_softseg.commands.interrupts`).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from napari_softseg.commands import interrupts
from napari_softseg.errors import UserError

USER_ERROR_STATUS = 2
INTERRUPTED_STATUS = 130


def build_parser() -> argparse.ArgumentParser:
    from napari_softseg import __version__

    parser = argparse.ArgumentParser(
        prog="napari-softseg",
        description="Annotate, fuse, train and review soft segmentations of MRI scans.",
    )
    parser.add_argument("--version", action="version", version=f"napari-softseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "add_parser"):
            module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    prog = "napari-softseg"
    with interrupts.handled_interrupts():
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            if not getattr(args, "run", None):
                parser.print_help()
                return USER_ERROR_STATUS
            prog = f"napari-softseg {args.command}"
            return int(args.run(args) or 0)
        except UserError as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            return USER_ERROR_STATUS
        except KeyboardInterrupt:
            interrupts.ignore_further()
            print(f"{prog}: interrupted{interrupts.note()}.", file=sys.stderr)
            return INTERRUPTED_STATUS


def say(text: str) -> None:
    """A note for the user on stderr (e.g. removed leftovers, NaN voxels taken as background)."""
    print(f"note: {text}", file=sys.stderr)


def guard(outputs, inputs=()) -> None:
    """:func:`napari_softseg.io.outputs.guard_outputs` with its notes printed."""
    from napari_softseg.io.outputs import guard_outputs

    for text in guard_outputs(outputs, inputs):
        say(text)


def read_input(path):
    """:func:`napari_softseg.io.nifti.read_nifti` with its notes printed."""
    from napari_softseg.io.nifti import read_nifti

    vol = read_nifti(path)
    for text in vol.notes:
        say(text)
    return vol


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
