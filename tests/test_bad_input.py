"""Every bad input gives one clear sentence (API, CLI exit status 2, napari notification)."""

from __future__ import annotations

import gzip
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from napari_softseg.errors import UserError
from napari_softseg.io.nifti import read_nifti, write_nifti


def _save(path, data, affine=None):
    img = nib.Nifti1Image(data, np.eye(4))
    if affine is not None:  # written straight into the sform (nibabel refuses to build a qform from it)
        img.header.set_qform(None, code=0)
        img.header["sform_code"] = 2
        img.header["srow_x"], img.header["srow_y"], img.header["srow_z"] = affine[:3]
        img = nib.Nifti1Image(data, None, header=img.header)
    nib.save(img, str(path))
    return path


@pytest.fixture
def bad_files(tmp_path, shared_data):
    files = {}
    good = (shared_data / "sct_mt/mt1.nii.gz").read_bytes()
    raw = gzip.decompress(good)
    files["truncated"] = tmp_path / "truncated.nii.gz"
    files["truncated"].write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    files["truncated_raw"] = tmp_path / "truncated_raw.nii"
    files["truncated_raw"].write_bytes(raw[: len(raw) // 2])
    files["not_nifti"] = tmp_path / "notes.nii.gz"
    files["not_nifti"].write_bytes(gzip.compress(b"this is a text file, not an image\n" * 20))
    files["five_d"] = _save(tmp_path / "five_d.nii.gz", np.zeros((4, 4, 4, 2, 3), np.float32))
    nan = np.ones((5, 5, 5), np.float32)
    nan[1, 2, 3] = np.nan
    nan[0, 0, 0] = np.inf
    files["nan"] = _save(tmp_path / "nan.nii.gz", nan)
    files["empty_axis"] = _save(tmp_path / "empty.nii.gz", np.zeros((4, 0, 4), np.uint8))
    singular = np.eye(4)
    singular[2, 2] = 0.0
    files["singular"] = _save(tmp_path / "singular.nii.gz", np.zeros((4, 4, 4), np.uint8), singular)
    nonfinite = np.eye(4)
    nonfinite[0, 3] = np.nan
    files["nonfinite"] = _save(tmp_path / "nonfinite.nii.gz", np.zeros((4, 4, 4), np.uint8), nonfinite)
    files["wrong_suffix"] = tmp_path / "scan.png"
    files["wrong_suffix"].write_bytes(b"\x89PNG")
    return files


EXPECTED = {
    "truncated": "truncated.nii.gz is",
    "truncated_raw": "truncated_raw.nii is truncated or corrupt",
    "not_nifti": "notes.nii.gz is not a readable NIfTI file",
    "five_d": "five_d.nii.gz has 5 dimensions",
    "nan": "nan.nii.gz contains 1 infinite voxel;",  # NaN alone would be background
    "empty_axis": "empty.nii.gz has an empty axis",
    "singular": "singular.nii.gz has a singular affine",
    "nonfinite": "nonfinite.nii.gz has a non-finite affine",
    "wrong_suffix": "scan.png is not a NIfTI file",
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_read_nifti_messages(bad_files, case):
    with pytest.raises(UserError) as info:
        read_nifti(bad_files[case])
    message = str(info.value)
    assert EXPECTED[case] in message
    assert "\n" not in message and message.endswith(".")


def test_truncated_gzip_names_the_problem(bad_files):
    with pytest.raises(UserError, match="truncated or corrupt|not a readable NIfTI"):
        read_nifti(bad_files["truncated"])


@pytest.mark.parametrize("case", ["truncated", "five_d", "nan", "singular", "not_nifti"])
def test_cli_exit_status_2_with_one_sentence(bad_files, case):
    proc = subprocess.run([sys.executable, "-m", "napari_softseg", "info", str(bad_files[case])],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and EXPECTED[case] in lines[0]
    assert "Traceback" not in proc.stderr


def test_mask_on_another_grid_is_refused(shared_data, tmp_path):
    scan = shared_data / "sct_t2s/t2s_uncropped.nii.gz"
    other = shared_data / "sct_mt/mt1_seg.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "napari_softseg", "info", str(scan), "--mask", str(other)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "mt1_seg does not match t2s_uncropped: shape (40, 40, 5) vs (320, 320, 11)" in proc.stderr
    # same shape, shifted affine
    vol = read_nifti(shared_data / "sct_t2s/t2s_uncropped_gmseg_manual.nii.gz")
    shifted = vol.affine.copy()
    shifted[0, 3] += 2.0
    moved = write_nifti(tmp_path / "moved.nii.gz", vol.data, affine=shifted)
    proc = subprocess.run([sys.executable, "-m", "napari_softseg", "info", str(scan), "--mask", str(moved)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "their affines differ by up to 2" in proc.stderr


def test_reader_notifies_instead_of_raising(bad_files, shared_data):
    from _notes import Notifications

    from napari_softseg.plugin import reader as _reader

    seen = Notifications("error")
    for case in ("truncated", "nan", "five_d", "singular"):
        reader = _reader.get_reader(str(bad_files[case]))
        assert reader is not None
        assert reader(str(bad_files[case])) == [(None,)]
    assert len(seen) == 4 and all(msg.endswith(".") for msg in seen)
    assert "has 5 dimensions" in seen[2]
    # a mask paired with a scan of another grid
    pair = [str(shared_data / "sct_t2s/t2s_uncropped.nii.gz"), str(shared_data / "sct_mt/mt1_seg.nii.gz")]
    assert _reader.get_reader(pair)(pair) == [(None,)]
    assert "does not match" in seen[-1]
    assert _reader.get_reader("image.tif") is None


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    import nibabel

    target = tmp_path / "out.nii.gz"
    data = np.ones((8, 8, 8), np.float32)

    def explode(self, filename, **kwargs):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(nibabel.Nifti1Image, "to_filename", explode)
    with pytest.raises(KeyboardInterrupt):
        write_nifti(target, data, affine=np.eye(4))
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_file(tmp_path, monkeypatch):
    import nibabel

    target = write_nifti(tmp_path / "out.nii.gz", np.zeros((4, 4, 4), np.float32), affine=np.eye(4))
    before = target.read_bytes()

    def explode(self, filename, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(nibabel.Nifti1Image, "to_filename", explode)
    with pytest.raises(UserError, match=r"^Cannot write out\.nii\.gz: disk full \(in .*\)\.$"):  # one sentence
        write_nifti(target, np.ones((4, 4, 4), np.float32), affine=np.eye(4))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_writer_rejects_bad_data(tmp_path):
    with pytest.raises(UserError, match="contain NaN"):
        write_nifti(tmp_path / "x.nii.gz", np.full((2, 2, 2), np.nan, np.float32), affine=np.eye(4))
    with pytest.raises(UserError, match="differs from the reference"):
        ref = write_nifti(tmp_path / "r.nii.gz", np.zeros((3, 3, 3), np.uint8), affine=np.eye(4))
        write_nifti(tmp_path / "y.nii.gz", np.zeros((4, 3, 3), np.uint8), like=ref)
    with pytest.raises(UserError, match="must end in .nii or .nii.gz"):
        write_nifti(tmp_path / "z.png", np.zeros((3, 3, 3)), affine=np.eye(4))
