"""Where the shipped sample scans live (no Qt).

The files sit in the repository's top-level ``sample_data/`` folder (with their licences
in ``sample_data/LICENSES.md``); a wheel installs them as ``napari_softseg/sample_data``.
"""

from __future__ import annotations

from pathlib import Path

from napari_softseg.errors import UserError

_PACKAGE = Path(__file__).resolve().parents[1]


def sample_dir() -> Path:
    for candidate in (_PACKAGE / "sample_data", _PACKAGE.parent / "sample_data"):
        if (candidate / "LICENSES.md").exists():
            return candidate
    raise UserError("The sample data folder is missing from this installation of napari_softseg.")


def sample_path(*parts: str) -> Path:
    path = sample_dir().joinpath(*parts)
    if not path.exists():
        raise UserError(f"Sample file {'/'.join(parts)} is missing from this installation.")
    return path
