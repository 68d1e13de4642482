"""Voxel size and voxel volume from an affine (napari_softseg.io.geometry), by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_softseg.errors import UserError
from napari_softseg.io import geometry
from napari_softseg.io.nifti import ScanGeometry, read_nifti, write_nifti


def test_spacing_and_volume_of_a_rotated_flipped_grid():
    c, s = math.cos(0.3), math.sin(0.3)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-0.5, 0.8, 3.0])  # x flipped, rotated about z
    assert geometry.spacing(affine) == pytest.approx((0.5, 0.8, 3.0))
    assert geometry.voxel_volume(affine) == pytest.approx(1.2)
    assert geometry.spacing_volume(geometry.spacing(affine)) == pytest.approx(1.2)


def test_a_sheared_grid_has_less_volume_than_its_spacing_product():
    affine = np.eye(4)
    affine[0, 1] = 1.0  # second axis leans 45 degrees: columns (1, 0, 0) and (1, 1, 0)
    assert geometry.spacing(affine) == pytest.approx((1.0, math.sqrt(2), 1.0))
    assert geometry.voxel_volume(affine) == pytest.approx(1.0)  # |det|, not sqrt(2)


def test_singular_and_non_finite_affines_are_refused():
    with pytest.raises(UserError, match="scan.nii has a singular affine"):
        geometry.check_affine(np.diag([1.0, 0.0, 1.0, 1.0]), "scan.nii")
    with pytest.raises(UserError, match="non-finite"):
        geometry.check_affine(np.full((4, 4), np.nan), "scan.nii")


def test_volumes_and_scan_geometry_agree(tmp_path):
    affine = np.array([[0.0, 0.0, 2.0, 1.0], [-0.5, 0.0, 0.0, 2.0], [0.0, 0.7, 0.0, 3.0], [0, 0, 0, 1]])
    vol = read_nifti(write_nifti(tmp_path / "s.nii.gz", np.zeros((3, 4, 5), np.uint8), affine=affine))
    geo = ScanGeometry.from_metadata(vol.geometry_metadata())
    assert vol.spacing == pytest.approx((0.5, 0.7, 2.0))
    assert vol.voxel_volume == pytest.approx(0.7) == geo.voxel_volume
    assert vol.geometry_metadata()["orientation"] == "".join(geometry.axis_codes(affine)) == "PSR"
