"""The ``napari-softseg`` command line.

Every module in this package that defines ``add_parser(subparsers)`` contributes one
subcommand; ``add_parser`` must register a ``run(args) -> int`` function with
``parser.set_defaults(run=...)`` and import heavy libraries (torch, napari) only inside
``run``, so that ``napari-softseg --help`` stays instant.

Errors a user can cause are raised as :class:`napari_softseg.errors.UserError`; they are
printed as one sentence and the process exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from napari_softseg.errors import UserError

USER_ERROR_STATUS = 2


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return USER_ERROR_STATUS
    try:
        return int(args.run(args) or 0)
    except UserError as err:
        print(f"napari-softseg {args.command}: error: {err}", file=sys.stderr)
        return USER_ERROR_STATUS
    except KeyboardInterrupt:
        print(f"napari-softseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
