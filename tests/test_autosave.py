"""Sidecar locations, atomic saves, the background writer and restore listing (no display)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from napari_softseg.io.nifti import ScanGeometry, read_nifti, write_nifti
from napari_softseg.labels.autosave import (
    AutosaveStore, AutosaveWriter, candidate_dirs, rater_filename, rater_name, scan_key, sidecar_dir, user_data_dir,
)

AFFINE = np.array([[-0.5, 0, 0, 10.0], [0, 0.5, 0, -20.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
SHAPE = (12, 10, 6)


@pytest.fixture
def scan(tmp_path, monkeypatch) -> ScanGeometry:
    monkeypatch.setenv("NAPARI_SOFTSEG_DATA", str(tmp_path / "userdata"))
    folder = tmp_path / "scans"
    folder.mkdir()
    path = write_nifti(folder / "sub-01_T2w.nii.gz", np.random.default_rng(0).random(SHAPE), affine=AFFINE)
    vol = read_nifti(path)
    return ScanGeometry.from_metadata(vol.geometry_metadata())


def test_sidecar_next_to_writable_scan(scan):
    store = AutosaveStore(scan)
    levels = np.zeros(SHAPE, np.uint8)
    levels[2:5, 3:6, 1] = 7
    path = store.save("Dr. Jones", levels)
    assert path.parent == scan.path.parent / "sub-01_T2w.softseg"
    assert path.name == "Dr. Jones.nii.gz"
    back = read_nifti(path)
    assert back.data.dtype == np.uint8 and np.array_equal(back.data, levels)
    np.testing.assert_allclose(back.affine, AFFINE)
    assert int(back.header["sform_code"]) == int(scan.header["sform_code"])
    [saved] = store.saved()
    assert saved.name == "Dr. Jones" and np.array_equal(store.load(saved), levels)
    assert (path.parent / "scan.json").exists()


def test_read_only_scan_folder_goes_to_user_dir(scan):
    os.chmod(scan.path.parent, 0o555)  # read-only: respected even when running as root
    try:
        store = AutosaveStore(scan)
        path = store.save("r1", np.ones(SHAPE, np.uint8))
        assert path.parent == user_data_dir() / scan_key(scan.path)
        assert not sidecar_dir(scan.path).exists()
        assert [s.name for s in AutosaveStore(scan).saved()] == ["r1"]
        assert candidate_dirs(scan.path)[1] == path.parent
    finally:
        os.chmod(scan.path.parent, 0o755)


def test_folders_declared_read_only_data_get_no_sidecar(scan, monkeypatch):
    """A writable folder listed in $NAPARI_SOFTSEG_READ_ONLY_DATA (here the scan folder's
    parent) is left untouched: the rater goes to the per-user folder and is offered again."""
    import os as _os

    roots = ["/nonexistent", str(scan.path.parent.parent)]
    monkeypatch.setenv("NAPARI_SOFTSEG_READ_ONLY_DATA", _os.pathsep.join(roots))
    path = AutosaveStore(scan).save("r1", np.full(SHAPE, 3, np.uint8))
    assert path.parent == user_data_dir() / scan_key(scan.path)
    assert not sidecar_dir(scan.path).exists()
    assert sorted(p.name for p in scan.path.parent.iterdir()) == ["sub-01_T2w.nii.gz"]
    assert [s.name for s in AutosaveStore(scan).saved()] == ["r1"]
    monkeypatch.setenv("NAPARI_SOFTSEG_READ_ONLY_DATA", str(scan.path.parent.parent / "other"))
    # a folder declared elsewhere: the sidecar next to the scan, as usual
    assert AutosaveStore(scan).save("r2", np.ones(SHAPE, np.uint8)).parent == sidecar_dir(scan.path)


@pytest.mark.parametrize("name", ["rater 1", "a/b\\c:d", ".hidden", "Ærøskøbing – 2nd pass", "x%41"])
def test_rater_names_round_trip_through_file_names(name):
    fname = rater_filename(name)
    assert "/" not in fname and not fname.startswith(".")
    assert rater_name(fname) == name


def test_writer_coalesces_and_keeps_newest(scan):
    store = AutosaveStore(scan)
    writer = AutosaveWriter()
    done = []
    try:
        for k in range(1, 31):
            writer.submit(store, "r", np.full(SHAPE, k, np.uint8), callback=lambda *a: done.append(a))
        assert writer.flush(timeout=30)
    finally:
        writer.close()
    assert np.all(read_nifti(store.rater_path("r")).data == 30)
    assert 1 <= writer.n_written <= 30 and len(done) == writer.n_written
    assert all(err is None for _, _, err in done)


def test_writer_reports_errors_and_keeps_going(scan, monkeypatch):
    store = AutosaveStore(scan)
    writer = AutosaveWriter()
    errors = []
    try:
        writer.submit(store, "bad", np.zeros((3, 3, 3), np.uint8), callback=lambda n, p, e: errors.append(e))
        writer.submit(store, "good", np.zeros(SHAPE, np.uint8))
        assert writer.flush(timeout=30)
    finally:
        writer.close()
    assert len(errors) == 1 and "differs from the scan" in str(errors[0])
    assert [s.name for s in store.saved()] == ["good"]


def test_rename_then_delete_and_discard(scan):
    store = AutosaveStore(scan)
    writer = AutosaveWriter()
    try:
        writer.submit(store, "old", np.ones(SHAPE, np.uint8))
        writer.flush()
        writer.submit(store, "new", np.ones(SHAPE, np.uint8))
        writer.delete(store, "old")
        writer.flush()
    finally:
        writer.close()
    assert [s.name for s in store.saved()] == ["new"]
    target = store.discard()
    assert store.saved() == [] and (target / "new.nii.gz").exists() and target.name.startswith("discarded-")


def test_restore_rejects_a_file_of_another_shape(scan):
    store = AutosaveStore(scan)
    store.save("r", np.zeros(SHAPE, np.uint8))
    write_nifti(store.rater_path("r"), np.zeros((4, 4, 4), np.uint8), affine=AFFINE)
    from napari_softseg.errors import UserError

    with pytest.raises(UserError, match="different version of the scan"):
        store.load(store.saved()[0])


_LOOP = textwrap.dedent(
    """
    import sys, numpy as np
    from napari_softseg.labels.autosave import AutosaveStore
    from napari_softseg.io.nifti import ScanGeometry, read_nifti
    store = AutosaveStore(ScanGeometry.from_metadata(read_nifti(sys.argv[1]).geometry_metadata()))
    shape = store.scan.shape
    k = 0
    while True:
        k = k % 250 + 1
        store.save("r", np.full(shape, k, np.uint8))
        if k == 3:
            print("saving", flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_during_saves_leaves_a_complete_file(scan):
    """Kill a process that saves in a tight loop: the sidecar is always one whole snapshot."""
    big = write_nifti(scan.path.parent / "big.nii.gz", np.zeros((96, 96, 64), np.float32), affine=AFFINE)
    for delay in (0.05, 0.23):
        proc = subprocess.Popen([sys.executable, "-c", _LOOP, str(big)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "saving"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        store = AutosaveStore(ScanGeometry.from_metadata(read_nifti(big).geometry_metadata()))
        data = store.load(store.saved()[0])
        assert data.shape == (96, 96, 64)
        assert np.unique(data).size == 1 and data.flat[0] >= 1
