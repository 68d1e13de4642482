"""NIfTI round trips on every real file, and the geometry kept in layer metadata."""

from __future__ import annotations

import numpy as np
import pytest

from napari_softseg.io.nifti import classify, read_nifti, write_nifti

from _paths import SHARED

ALL_FILES = sorted(p.relative_to(SHARED) for p in SHARED.glob("*/*.nii.gz"))


@pytest.mark.parametrize("rel", ALL_FILES, ids=str)
def test_round_trip_every_shared_file(rel, shared_data, tmp_path):
    import nibabel as nib

    src = read_nifti(shared_data / rel)
    out = write_nifti(tmp_path / rel.name, src.data, like=src)
    back = read_nifti(out)
    kind = classify(src.data)
    # written back with its source's geometry, a scan keeps its values exactly and its on-disk type
    assert back.data.dtype == src.data.dtype
    np.testing.assert_array_equal(back.data, src.data)
    np.testing.assert_array_equal(back.affine, src.affine)
    h0, h1 = nib.load(shared_data / rel).header, nib.load(out).header
    assert h1.get_data_dtype().newbyteorder("=") == h0.get_data_dtype().newbyteorder("=")
    for key in ("qform_code", "sform_code", "pixdim", "xyzt_units", "quatern_b", "quatern_c", "quatern_d",
                "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "descrip"):
        np.testing.assert_array_equal(h1[key], h0[key], err_msg=key)
    assert kind in {"labels", "soft", "image"}


def test_classification_of_real_files(shared_data):
    kinds = {
        "sct_t2s/t2s_uncropped_gmseg_manual.nii.gz": "labels",
        "sct_t2s/t2s_uncropped.nii.gz": "image",
        "fast_t1/pve_1.nii.gz": "soft",
        "sct_mt/mt1_gmseg.nii.gz": "soft",  # interpolated soft map, max 1.059
        "isbi2015_raters/training01_rater1.nii.gz": "labels",
        "brats_case/segmentation.nii.gz": "labels",
        "brats_case/t1n.nii.gz": "image",
    }
    for rel, kind in kinds.items():
        assert read_nifti(shared_data / rel).kind() == kind, rel


def test_orientations_and_spacing(shared_data):
    t2s = read_nifti(shared_data / "sct_t2s/t2s_uncropped.nii.gz")
    assert t2s.geometry_metadata()["orientation"] == "LAS"
    np.testing.assert_allclose(t2s.spacing, (0.5, 0.5, 7.5), atol=1e-5)
    assert read_nifti(shared_data / "brats_case/t1n.nii.gz").geometry_metadata()["orientation"] == "LPS"
    assert read_nifti(shared_data / "fast_t1/bet.nii.gz").geometry_metadata()["orientation"] == "RAS"


def test_write_without_reference_uses_affine(tmp_path):
    affine = np.diag([0.5, 0.7, 3.0, 1.0])
    affine[:3, 3] = (10, -20, 5)
    data = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    back = read_nifti(write_nifti(tmp_path / "a.nii", data, affine=affine))
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)  # the header stores float32
    np.testing.assert_array_equal(back.data, data)
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 1


def test_integer_types_are_the_smallest_that_fit(tmp_path):
    ref = np.eye(4)
    assert read_nifti(write_nifti(tmp_path / "b.nii.gz", np.ones((3, 3, 3), bool), affine=ref)).data.dtype == np.uint8
    big = np.full((3, 3, 3), 300, np.int64)
    assert read_nifti(write_nifti(tmp_path / "c.nii.gz", big, affine=ref)).data.dtype == np.int16
