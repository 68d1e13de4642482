"""Files that are damaged, too large or unusual, through the reader, the CLI and the napari reader."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bad_inputs.harness import cli, digest, refused, save
from napari_softseg.errors import UserError
from napari_softseg.io.nifti import read_nifti, write_nifti

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
GIB = 1 << 30


@pytest.fixture
def memory(monkeypatch):
    """A machine with 8 GiB available of 16 GiB, whatever runs the test."""
    monkeypatch.setattr("napari_softseg.io.checks.memory_figures", lambda: (8 * GIB, 16 * GIB))


def _huge(path: Path, shape, dtype, header_class=nib.Nifti1Header) -> Path:
    header = header_class()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    payload = header.binaryblock + b"\0" * 4 + b"\0" * 64
    path.write_bytes(gzip.compress(payload) if path.name.endswith(".gz") else payload)
    return path


HUGE = [
    ("huge.nii", (32767, 32767, 32767), np.int16, nib.Nifti1Header,
     "huge.nii (32767×32767×32767 voxels of int16) would need 64.0 TiB of memory, but this machine has "
     "8.0 GiB available (16.0 GiB in all), so it was not loaded."),
    ("huge.nii.gz", (32767, 32767, 32767), np.int16, nib.Nifti1Header,
     "huge.nii.gz (32767×32767×32767 voxels of int16) would need 64.0 TiB of memory, but this machine has "
     "8.0 GiB available (16.0 GiB in all), so it was not loaded."),
    ("huge2.nii", (100000, 100000, 100000), np.float32, nib.Nifti2Header,
     "huge2.nii (100000×100000×100000 voxels of float32) would need 3.6 PiB of memory, but this machine has "
     "8.0 GiB available (16.0 GiB in all), so it was not loaded."),
    ("wide.nii", (3000, 3000, 300), np.float32, nib.Nifti1Header,  # 10 GiB: more than is available here
     "wide.nii (3000×3000×300 voxels of float32) would need 10.1 GiB of memory, but this machine has "
     "8.0 GiB available (16.0 GiB in all), so it was not loaded."),
]


@pytest.mark.parametrize("name, shape, dtype, header_class, sentence", HUGE, ids=[h[0] for h in HUGE])
def test_a_header_claiming_huge_dimensions_is_refused_before_any_allocation(
        capsys, tmp_path, memory, name, shape, dtype, header_class, sentence):
    path = _huge(tmp_path / name, shape, dtype, header_class)
    with pytest.raises(UserError) as info:
        read_nifti(path)
    assert str(info.value) == sentence
    refused(capsys, tmp_path, ["info", path], sentence)


def test_the_napari_reader_shows_the_sentence_and_adds_nothing(tmp_path, memory, monkeypatch):
    from napari_softseg.plugin import reader

    shown = []
    monkeypatch.setattr(reader, "notify_error", shown.append)
    path = _huge(tmp_path / "huge.nii", (32767, 32767, 32767), np.int16)
    assert reader.get_reader(str(path))(str(path)) == [(None,)]
    assert shown == [HUGE[0][-1]]


def _gz_with(tmp_path, flip_at: int) -> tuple[Path, bytes]:
    """A .nii.gz whose gzip trailer (CRC at -8, length at -4) has one byte changed, and the
    uncompressed bytes of the good file."""
    good = write_nifti(tmp_path / "good.nii.gz", np.linspace(0, 1, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6),
                       affine=np.eye(4))
    content = gzip.decompress(good.read_bytes())
    raw = bytearray(good.read_bytes())
    raw[flip_at] ^= 0xFF
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(raw))
    good.unlink()
    return bad, content


@pytest.mark.parametrize("where", [-8, -3], ids=["crc", "length"])
def test_a_gzip_file_with_a_wrong_checksum_is_reported_not_opened(capsys, tmp_path, where):
    bad, content = _gz_with(tmp_path, where)
    with gzip.open(bad) as stream:  # the voxels themselves are intact (read short of the trailer)
        assert stream.read(len(content)) == content
    sentence = ("bad.nii.gz is damaged: its gzip checksum does not match its content, so it was not opened "
                "(copy the file again from its source).")
    with pytest.raises(UserError) as info:
        read_nifti(bad)
    assert str(info.value) == sentence
    refused(capsys, tmp_path, ["info", bad], sentence)


def test_a_large_gzip_file_with_a_wrong_checksum_is_reported_after_reading(tmp_path):
    """Big enough that nibabel reads the header without reaching the end of the stream."""
    data = np.random.default_rng(0).random((64, 64, 40), dtype=np.float32)
    good = write_nifti(tmp_path / "big.nii.gz", data, affine=np.eye(4))
    raw = bytearray(good.read_bytes())
    raw[-6] ^= 0x01
    good.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"^big\.nii\.gz is damaged: its gzip checksum does not match its content"):
        read_nifti(good)


def test_an_uncompressed_file_shorter_than_its_header_says(capsys, tmp_path):
    path = save(tmp_path / "short.nii", np.ones((10, 10, 10), np.float32))
    path.write_bytes(path.read_bytes()[:-1000])
    sentence = ("short.nii is truncated or corrupt: its header announces 4000 bytes of voxels (10×10×10 of float32) "
                "but the file holds only 3000 after the header.")
    refused(capsys, tmp_path, ["info", path], sentence)


def test_nan_voxels_open_as_background_with_a_one_line_note(capsys, tmp_path):
    path = Path(shutil.copy(NIBABEL_DATA / "resampled_anat_moved.nii", tmp_path))
    raw = np.asanyarray(nib.load(path).dataobj)
    vol = read_nifti(path)
    note = ("resampled_anat_moved.nii: 153 NaN voxels (no data, e.g. outside the field of view) "
            "are treated as background (0).")
    assert vol.notes == [note]
    assert int(np.isnan(raw).sum()) == 153 and not np.isnan(vol.data).any()
    assert np.array_equal(vol.data[np.isnan(raw)], np.zeros(153)) and np.array_equal(vol.data[~np.isnan(raw)],
                                                                                      raw[~np.isnan(raw)])
    assert vol.data.dtype.isnative  # the file is big-endian; torch needs native order
    before = digest(tmp_path)
    run = cli(capsys, "info", path)
    assert run.status == 0 and run.err == f"note: {note}\n" and digest(tmp_path) == before


def test_nan_voxels_go_to_the_model_as_background(tmp_path):
    from bad_inputs.harness import tiny_model
    from napari_softseg.engine.predict import load_model, predict_volume

    path = Path(shutil.copy(NIBABEL_DATA / "resampled_anat_moved.nii", tmp_path))
    soft = predict_volume(load_model(tiny_model(tmp_path / "m.pt")), read_nifti(path).data, device="cpu")
    assert soft.shape == (17, 21, 3) and np.isfinite(soft).all()


def test_the_napari_reader_notes_nan_voxels(tmp_path, monkeypatch):
    from napari_softseg.plugin import reader

    notes = []
    monkeypatch.setattr(reader, "notify_info", notes.append)
    path = Path(shutil.copy(NIBABEL_DATA / "resampled_anat_moved.nii", tmp_path))
    layers = reader.layer_data(str(path))
    assert len(layers) == 1 and not np.isnan(layers[0][0]).any()
    assert notes == [read_nifti(path).notes[0]]


def test_a_file_of_nan_only_or_with_infinite_voxels_is_refused(capsys, tmp_path):
    allnan = save(tmp_path / "allnan.nii.gz", np.full((3, 3, 3), np.nan, np.float32))
    inf = np.ones((3, 3, 3), np.float32)
    inf[0, 0, 0], inf[1, 1, 1] = np.inf, np.nan
    inf = save(tmp_path / "inf.nii.gz", inf)
    refused(capsys, tmp_path, ["info", allnan], "allnan.nii.gz holds only NaN voxels, so it has no image to show.")
    refused(capsys, tmp_path, ["info", inf],
            "inf.nii.gz contains 1 infinite voxel; replace them (for example with 0) before opening it.")


def test_an_int16_4d_scan_written_back_keeps_its_type_and_exact_values(tmp_path):
    src = Path(shutil.copy(NIBABEL_DATA / "functional.nii", tmp_path))
    vol = read_nifti(src)
    out = write_nifti(tmp_path / "back.nii.gz", vol.data, like=vol)
    a, b = nib.load(src), nib.load(out)
    assert b.get_data_dtype() == np.int16 == a.get_data_dtype().newbyteorder("=")
    assert np.array_equal(np.asanyarray(b.dataobj.get_unscaled()), np.asanyarray(a.dataobj.get_unscaled()))
    assert np.array_equal(read_nifti(out).data, vol.data)  # the scaled values, bit for bit
    assert (b.dataobj.slope, b.dataobj.inter) == (a.dataobj.slope, a.dataobj.inter)


def test_a_changed_scan_that_int16_cannot_hold_is_written_as_float(tmp_path):
    vol = read_nifti(Path(shutil.copy(NIBABEL_DATA / "functional.nii", tmp_path)))
    out = write_nifti(tmp_path / "half.nii.gz", vol.data / 3.0, like=vol)
    assert nib.load(out).get_data_dtype() == np.float32
    np.testing.assert_allclose(read_nifti(out).data, vol.data / 3.0, rtol=1e-6)


READ_ERRORS = [
    ("five_d", lambda d: save(d / "five_d.nii.gz", np.zeros((2, 2, 2, 2, 3), np.float32)),
     "five_d.nii.gz has 5 dimensions (2, 2, 2, 2, 3); napari_softseg reads 3-D scans and 4-D files whose last axis "
     "holds contrasts."),
    ("empty_axis", lambda d: save(d / "empty.nii.gz", np.zeros((4, 0, 4), np.uint8)),
     "empty.nii.gz has an empty axis (shape (4, 0, 4)), so it holds no voxels."),
    ("folder", lambda d: (d / "dir.nii.gz").mkdir() or d / "dir.nii.gz", "dir.nii.gz is a folder, not a NIfTI file."),
    ("missing", lambda d: d / "gone.nii.gz", "gone.nii.gz: no such file."),
    ("suffix", lambda d: (d / "scan.png").write_bytes(b"\x89PNG") and d / "scan.png",
     "scan.png is not a NIfTI file (expected a .nii or .nii.gz name)."),
    ("text", lambda d: (d / "notes.nii").write_bytes(b"hello\n" * 100) and d / "notes.nii",
     "notes.nii is not a readable NIfTI file (Cannot work out file type of \"{d}/notes.nii\")."),
]


@pytest.mark.parametrize("make, sentence", [r[1:] for r in READ_ERRORS], ids=[r[0] for r in READ_ERRORS])
def test_files_that_are_not_scans(capsys, tmp_path, make, sentence):
    path = make(tmp_path)
    refused(capsys, tmp_path, ["info", path], sentence.format(d=tmp_path))


def test_soft_maps_follow_one_tolerance_rule(capsys, tmp_path, shared_data):
    from napari_softseg.io.nifti import classify
    from napari_softseg.labels.levels import mask_to_levels

    wm = read_nifti(shared_data / "sct_mt" / "mt1_wmseg.nii.gz")  # max 1.108: interpolation overshoot
    assert classify(wm.data) == "soft"
    q = mask_to_levels(wm.data, name="mt1_wmseg.nii.gz")
    assert q.clip_change == pytest.approx(float(wm.data.max()) - 1.0)
    assert 0.107 < q.clip_change < 0.109
    over = save(tmp_path / "over.nii.gz", np.full((3, 3, 3), 1.2, np.float32))
    with pytest.raises(UserError) as info:
        mask_to_levels(read_nifti(over).data, name="over.nii.gz")
    assert str(info.value) == ("over.nii.gz has values from 1.2 to 1.2; a soft map must lie in [0, 1] "
                               "(values at most 0.15 outside it, from interpolation, are clipped).")
    # the command line applies the same rule, with a note naming the largest change
    truth = Path(shutil.copy(shared_data / "sct_mt" / "mt1_gmseg.nii.gz", tmp_path))
    run = cli(capsys, "evaluate", "--pred", Path(shutil.copy(shared_data / "sct_mt" / "mt1_wmseg.nii.gz", tmp_path)),
              "--truth", truth)
    assert run.status == 0
    assert run.err == ("note: mt1_wmseg.nii.gz (prediction): values outside [0, 1] were clipped (largest change 0.108).\n"
                       "note: mt1_gmseg.nii.gz (truth): values outside [0, 1] were clipped (largest change 0.0592).\n")


def test_reading_never_changes_the_file(tmp_path):
    path = Path(shutil.copy(NIBABEL_DATA / "functional.nii", tmp_path))
    before = digest(tmp_path)
    read_nifti(path)
    assert digest(tmp_path) == before and os.stat(path).st_size > 0


def test_evaluate_refuses_a_label_map_and_a_4d_map(capsys, own):
    labels = save(own.folder / "labels.nii.gz", np.indices((16, 16, 6))[0] % 3, dtype=np.uint8)
    four = save(own.folder / "four.nii.gz", np.zeros((16, 16, 6, 2), np.float32))
    refused(capsys, own.folder, ["evaluate", "--pred", own.soft, "--truth", labels],
            "labels.nii.gz (truth) holds values from 0 to 2; evaluate expects masks or probabilities in [0, 1].")
    refused(capsys, own.folder, ["evaluate", "--pred", four, "--truth", own.a],
            "four.nii.gz (prediction) is 4-D (16, 16, 6, 2); evaluate compares 3-D maps.")
