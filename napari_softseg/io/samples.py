"""Where the shipped sample scans live (no Qt).

The files sit in the package, ``napari_softseg/sample_data/`` (with their licences in
``sample_data/LICENSES.md`` and a licence file in every folder), so a wheel or a package
index installs them with the code: File > Open Sample, the lesion phantom (built from
``brain_t1``) and the demo work wherever the package is installed.
"""

from __future__ import annotations

from pathlib import Path

from napari_softseg.errors import UserError

_PACKAGE = Path(__file__).resolve().parents[1]


def sample_dir() -> Path:
    candidate = _PACKAGE / "sample_data"
    if (candidate / "LICENSES.md").exists():
        return candidate
    raise UserError("The sample data folder is missing from this installation of napari_softseg.")


def sample_path(*parts: str) -> Path:
    path = sample_dir().joinpath(*parts)
    if not path.exists():
        raise UserError(f"Sample file {'/'.join(parts)} is missing from this installation.")
    return path
