"""Confidence levels, colormap data, volumes and soft-edge coverage (no display needed)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_softseg.errors import UserError
from napari_softseg.labels.softlabels import (
    N_LEVELS, brush_coverage, hard_volume, level_colors, levels_to_soft, mask_to_levels,
    soft_edge_values, soft_to_levels, soft_volume, sweep_path,
)


def test_levels_round_trip_and_nearest_rounding():
    levels = np.arange(N_LEVELS + 1, dtype=np.uint8)
    soft = levels_to_soft(levels)
    assert soft.dtype == np.float32
    np.testing.assert_allclose(soft, np.arange(11) / 10)
    assert np.array_equal(soft_to_levels(soft).levels, levels)
    # 0.34 -> 3 (error .04), 0.36 -> 4 (error .04), 0.25 -> 3 (half up), 1.06 -> clipped to 10
    q = soft_to_levels(np.array([0.34, 0.36, 0.25, 1.06, 0.0]))
    assert q.levels.tolist() == [3, 4, 3, 10, 0]
    assert q.max_error == pytest.approx(0.05)  # 0.25 vs 0.3
    assert q.n_clipped == 1


def test_mask_to_levels_binary_soft_and_errors():
    b = mask_to_levels(np.array([[0, 1], [1, 0]], np.int16))
    assert b.kind == "binary" and b.max_error == 0.0 and b.levels.tolist() == [[0, 10], [10, 0]]
    assert mask_to_levels(np.array([True, False])).levels.tolist() == [10, 0]
    s = mask_to_levels(np.array([0.0, 0.52, 0.97], np.float32), name="r.nii.gz")
    assert s.kind == "soft" and s.levels.tolist() == [0, 5, 10]
    assert s.max_error == pytest.approx(0.03, abs=1e-6)
    assert mask_to_levels(np.array([0.0, 1.0])).kind == "binary"
    with pytest.raises(UserError, match="seg.nii.gz holds integer labels"):
        mask_to_levels(np.array([0, 1, 2, 3]), name="seg.nii.gz")
    with pytest.raises(UserError, match="must lie in"):
        mask_to_levels(np.array([-0.2, 0.5]))
    with pytest.raises(UserError, match="NaN"):
        mask_to_levels(np.array([np.nan, 0.5]))


def test_colormap_opacity_and_brightness_grow_with_confidence():
    colors = level_colors()
    assert colors[0][3] == 0.0 and colors[None][3] == 0.0
    alphas = [colors[k][3] for k in range(1, N_LEVELS + 1)]
    lum = [0.2126 * colors[k][0] + 0.7152 * colors[k][1] + 0.0722 * colors[k][2] for k in range(1, 11)]
    assert np.all(np.diff(alphas) > 0) and alphas[-1] == 1.0 and alphas[0] == pytest.approx(0.35)
    assert np.all(np.diff(lum) > 0)


def test_volumes_by_hand():
    levels = np.zeros((4, 4, 4), np.uint8)
    levels[0, 0, :3] = [10, 5, 2]  # confidences 1.0 + 0.5 + 0.2 = 1.7 voxels
    assert soft_volume(levels, 2.0) == pytest.approx(3.4)
    assert hard_volume(levels, 2.0) == pytest.approx(4.0)  # levels 10 and 5 are >= 0.5


def test_coverage_of_a_half_plane_and_inside_outside():
    # a long horizontal stroke of radius 3 along row 10: the band |y - 10| <= 3
    path = sweep_path(np.array([[10.0, -50.0], [10.0, 50.0]]))
    vox = np.array([[10, 0], [12, 0], [13, 0], [14, 0], [7, 0]])
    cov = brush_coverage(vox, path, radius=3.0)
    # row 13 spans [12.5, 13.5] and the band ends at 13.0: half covered
    np.testing.assert_allclose(cov, [1.0, 1.0, 0.5, 0.0, 0.5], atol=0.02)


def test_coverage_of_a_single_disc_matches_area():
    # a disc of radius 4 centred on a voxel centre: total coverage = pi r^2
    yy, xx = np.mgrid[-6:7, -6:7]
    vox = np.stack([yy.ravel(), xx.ravel()], axis=1)
    cov = brush_coverage(vox, np.array([[0.0, 0.0]]), radius=4.0, samples_per_voxel=256)
    assert cov.sum() == pytest.approx(np.pi * 16, rel=0.01)
    # 3-D ball, default sampling (4x4x4)
    g = np.mgrid[-4:5, -4:5, -4:5].reshape(3, -1).T
    cov3 = brush_coverage(g, np.zeros((1, 3)), radius=3.0)
    assert cov3.sum() == pytest.approx(4 / 3 * np.pi * 27, rel=0.03)


def test_soft_edge_values_blend_with_old_level():
    old = np.array([0, 0, 10, 4])
    cov = np.array([1.0, 0.5, 0.5, 0.24])
    # painting level 6: 6; 3; 0.5*6 + 0.5*10 = 8; 0.24*6 + 0.76*4 = 4.48 -> 4
    assert soft_edge_values(old, 6, cov).tolist() == [6, 3, 8, 4]
    # erasing (level 0) leaves (1 - c) * old
    assert soft_edge_values(np.array([10, 10]), 0, np.array([1.0, 0.3])).tolist() == [0, 7]


def test_sweep_path_spacing():
    p = sweep_path(np.array([[0.0, 0.0], [0.0, 2.0], [3.0, 2.0]]), step=0.25)
    steps = np.linalg.norm(np.diff(p, axis=0), axis=1)
    assert steps.max() <= 0.25 + 1e-9
    np.testing.assert_allclose(p[[0, -1]], [[0, 0], [3, 2]])
