"""Shared fixtures. GUI tests use napari's ``make_napari_viewer`` (pytest-qt) under Xvfb.

Isolation: every test gets its own autosave and model folder (``$NAPARI_SOFTSEG_DATA`` in
its ``tmp_path``), the run shares one temporary cache (the phantom is built once), and the
real data folder and the repository count as read-only data for autosave
(``$NAPARI_SOFTSEG_READ_ONLY_DATA``), so a rater painted on a shared scan is saved in the
test's folder. At the end of the run, :func:`pytest_sessionfinish` fails the run if the
data folder or the repository gained, lost or changed a file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from _paths import REPO, shared_data_dir  # noqa: F401

# One torch/OpenMP thread in the suite and in every process it starts: on a busy 2-core
# machine two OpenMP threads spin against the other processes (30 training steps of a small
# U-Net took 125 s with 2 threads and 13 s with 1 at a load average of 9). Tests assert
# values, not speed, so one thread costs them nothing but time on an idle machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """The in-process torch thread count (torch may have been imported before this file)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    yield
    torch.set_num_threads(old)


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



_SNAPSHOTS: dict[str, object] = {}


# ----------------------------------------------------------------------------- isolation
@pytest.fixture(scope="session", autouse=True)
def _session_folders(tmp_path_factory):
    """The run's cache folder, and the shared data and the repository declared read-only."""
    root = tmp_path_factory.mktemp("softseg-home")
    keys = ("NAPARI_SOFTSEG_CACHE", "NAPARI_SOFTSEG_DATA", "NAPARI_SOFTSEG_READ_ONLY_DATA")
    old = {k: os.environ.get(k) for k in keys}
    os.environ["NAPARI_SOFTSEG_CACHE"] = str(root / "cache")
    os.environ["NAPARI_SOFTSEG_DATA"] = str(root / "data")  # for session-scoped fixtures
    os.environ["NAPARI_SOFTSEG_READ_ONLY_DATA"] = os.pathsep.join([str(shared_data_dir()), str(REPO)])
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _isolated_folders(_session_folders, tmp_path, monkeypatch):
    """Autosaves and trained models of this test go to ``tmp_path / "userdata"``; models
    published by an earlier test are forgotten."""
    monkeypatch.setenv("NAPARI_SOFTSEG_DATA", str(tmp_path / "userdata"))
    _forget_recent_models()
    yield
    _forget_recent_models()


def _forget_recent_models() -> None:
    """Empty the list of models trained in this session (when the docks were imported)."""
    models = sys.modules.get("napari_softseg.widgets.models")
    if models is not None:
        models.RECENT_MODELS.clear()


# ----------------------------------------------------------------------------- shared data
@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: the real scans and annotations (see its README)."""
    return shared_data_dir()


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


# ----------------------------------------------------------------------------- nothing written outside tmp
def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``folder``: relative path -> (size, mtime in ns)."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            p = Path(dirpath, name)
            try:
                st = p.stat()
            except OSError:
                continue
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


def _git_status() -> set[str] | None:
    """``git status --porcelain --untracked-files=all`` of the repository (gitignored files,
    such as bytecode caches, are left out by git); None without git."""
    try:
        proc = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=all"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return set(proc.stdout.splitlines()) if proc.returncode == 0 else None


def pytest_sessionstart(session) -> None:
    _SNAPSHOTS["shared"] = _listing(shared_data_dir())
    _SNAPSHOTS["git"] = _git_status()


def pytest_sessionfinish(session, exitstatus) -> None:
    if "shared" not in _SNAPSHOTS:
        return
    problems = []
    after = _listing(shared_data_dir())
    before = _SNAPSHOTS["shared"]
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        problems.append(f"the data folder {shared_data_dir()} changed: " + ", ".join(changed[:20]))
    git_before, git_after = _SNAPSHOTS["git"], _git_status()
    if git_before is not None and git_after is not None and git_after != git_before:
        lines = sorted(git_after ^ git_before)
        problems.append(f"the repository {REPO} changed (git status): " + "; ".join(lines[:20]))
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for text in problems:
            if reporter is not None:
                reporter.write_line(f"ERROR: the tests wrote outside their temporary folders: {text}", red=True)
            else:
                print(f"ERROR: the tests wrote outside their temporary folders: {text}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
