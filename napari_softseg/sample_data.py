"""Where the shipped sample scans live (no Qt).

The files sit in the repository's top-level ``sample_data/`` folder (with their licences
in ``sample_data/LICENSES.md``); a wheel installs them as ``napari_softseg/sample_data``.
"""

from __future__ import annotations

from pathlib import Path

from .errors import UserError

_HERE = Path(__file__).resolve().parent


def sample_dir() -> Path:
    for candidate in (_HERE / "sample_data", _HERE.parent / "sample_data"):
        if (candidate / "LICENSES.md").exists():
            return candidate
    raise UserError("The sample data folder is missing from this installation of napari_softseg.")


def sample_path(*parts: str) -> Path:
    path = sample_dir().joinpath(*parts)
    if not path.exists():
        raise UserError(f"Sample file {'/'.join(parts)} is missing from this installation.")
    return path
