"""Shared fixtures. GUI tests use napari's ``make_napari_viewer`` (pytest-qt) under Xvfb."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from _paths import REPO, shared_data_dir  # noqa: F401


@pytest.fixture(scope="session", autouse=True)
def _cpu_unless_asked():
    """``"auto"`` means the CPU in every test and in the processes tests start (the CLI, the
    training process, torchrun): on a GPU the suite's tolerances would meet TF32 and
    non-deterministic kernels. A test that wants an accelerator asks for :func:`requested_device`."""
    from napari_softseg.engine.devices import DEVICE_ENV

    old = os.environ.get(DEVICE_ENV)
    os.environ[DEVICE_ENV] = "cpu"
    yield
    if old is None:
        os.environ.pop(DEVICE_ENV, None)
    else:
        os.environ[DEVICE_ENV] = old


@pytest.fixture(scope="session")
def requested_device() -> str:
    """The device of the tests that ask for one: ``$NAPARI_SOFTSEG_TEST_DEVICE`` (e.g. ``cuda``,
    ``mps``), else ``cpu``."""
    return os.environ.get("NAPARI_SOFTSEG_TEST_DEVICE", "cpu") or "cpu"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: the real scans and annotations (see its README)."""
    return shared_data_dir()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Phantom cache and autosave folders go to a per-run temporary folder."""
    root = tmp_path_factory.mktemp("softseg-home")
    old = {k: os.environ.get(k) for k in ("NAPARI_SOFTSEG_CACHE", "NAPARI_SOFTSEG_DATA")}
    os.environ["NAPARI_SOFTSEG_CACHE"] = str(root / "cache")
    os.environ["NAPARI_SOFTSEG_DATA"] = str(root / "data")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def phantom():
    """The lesion phantom, built once per test run."""
    from napari_softseg.io.phantom import build_phantom

    return build_phantom()


@pytest.fixture(scope="session")
def phantom_paths(phantom):
    """The phantom written as NIfTI files (built on first use, in the run's cache)."""
    from napari_softseg.io.phantom import phantom_files

    return phantom_files(phantom=phantom)
