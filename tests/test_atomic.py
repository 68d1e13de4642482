"""The one atomic write (napari_softseg.io.atomic) and the strict JSON writer."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

from napari_softseg.errors import UserError
from napari_softseg.io.atomic import atomic_open, atomic_path, split_suffix, write_bytes_atomic, write_text_atomic
from napari_softseg.io.jsondoc import json_ready, write_json


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("name, expected", [
    ("scan.nii.gz", ("scan", ".nii.gz")), ("scan.nii", ("scan", ".nii")), ("model.pt", ("model", ".pt")),
    ("table.v2.csv", ("table.v2", ".csv")), ("README", ("README", "")), ("a.tar.gz", ("a", ".tar.gz")),
])
def test_split_suffix(name, expected):
    assert split_suffix(name) == expected


def test_the_temporary_file_is_hidden_next_to_the_target_with_its_suffix(tmp_path):
    target = tmp_path / "mask.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".mask.") and tmp.name.endswith(".softseg-tmp.nii.gz")
        assert f"-{os.getpid()}-" in tmp.name  # the writing process is named, for the clean-up of killed runs
        tmp.write_bytes(gzip.compress(b"new"))
        assert not target.exists()  # nothing is published before the block ends
    assert gzip.decompress(target.read_bytes()) == b"new"
    assert _leftovers(tmp_path) == []


def test_a_failure_keeps_the_previous_file_and_removes_the_temporary_one(tmp_path):
    target = write_text_atomic(tmp_path / "table.csv", "old\n")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(target, "w", encoding="utf-8") as fh:
            fh.write("half a new table")
            raise RuntimeError("boom")
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_missing_folder_and_os_errors_are_one_sentence_naming_the_file(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"^Cannot write x\.json: folder .*nowhere does not exist\.$"):
        write_text_atomic(tmp_path / "nowhere" / "x.json", "{}")

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(UserError, match=r"^Cannot write model\.pt: permission denied: you cannot create files in .*\.$"):
        write_bytes_atomic(tmp_path / "model.pt", b"weights")
    monkeypatch.undo()
    assert _leftovers(tmp_path) == [] and not (tmp_path / "model.pt").exists()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match=r"^Cannot write big\.bin: the disk holding .* is full \(or your disk quota is used up\)\.$"):
        with atomic_path(tmp_path / "big.bin") as tmp:
            tmp.write_bytes(b"x")
            full()
    assert _leftovers(tmp_path) == []


def test_only_write_modes_are_accepted(tmp_path):
    with pytest.raises(ValueError, match="not a 'w' mode"):
        with atomic_open(tmp_path / "a.txt", "a"):
            pass


def test_json_documents_are_strict(tmp_path):
    doc = {"n": np.int64(3), "x": np.float32(0.5), "bad": float("nan"), "inf": np.inf, "ok": np.bool_(True),
           "arr": np.array([1.0, np.nan]), "path": tmp_path / "p", 7: (1, 2)}
    assert json_ready(doc) == {"n": 3, "x": 0.5, "bad": None, "inf": None, "ok": True, "arr": [1.0, None],
                               "path": str(tmp_path / "p"), "7": [1, 2]}
    path = write_json(tmp_path / "r.json", {"name": "Ærø", "v": float("nan")})
    text = path.read_text(encoding="utf-8")
    assert "Ærø" in text and json.loads(text) == {"name": "Ærø", "v": None}


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_files_get_the_users_normal_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = write_bytes_atomic(tmp_path / f"m{umask:o}.pt", b"weights")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_stale_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from napari_softseg.io.atomic import remove_stale_temporaries, stale_temporaries, temporary_name

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    mine = tmp_path / temporary_name("scan.nii.gz")  # this (live) process
    theirs = tmp_path / temporary_name("model.pt").replace(f"-{os.getpid()}-", f"-{dead_pid}-")
    own_host = temporary_name("x").split(".")[2][:4]
    other_host = tmp_path / f".x.{'ffff' if own_host != 'ffff' else '0000'}-{dead_pid}-00aa.softseg-tmp.pt"
    unrelated = tmp_path / ".hidden.tmp.txt"
    for p in (mine, theirs, other_host, unrelated):
        p.write_bytes(b"12345")
    assert stale_temporaries(tmp_path) == [theirs]
    assert remove_stale_temporaries(tmp_path) == (1, 5)
    assert not theirs.exists() and mine.exists() and unrelated.exists()
