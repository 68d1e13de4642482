"""Where the real data live (importable from tests as ``from _paths import SHARED``)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    env = os.environ.get("NAPARI_SOFTSEG_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data", REPO / "shared" / "data"]
    for c in candidates:
        if (c / "README.md").exists():
            return c
    raise RuntimeError(
        "The real MRI data folder (../shared/data beside the repository) was not found; "
        "set NAPARI_SOFTSEG_SHARED_DATA to its path."
    )


SHARED = shared_data_dir()
