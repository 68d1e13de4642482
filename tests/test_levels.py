"""Confidence levels, colormap data and volumes (no display needed)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_softseg.errors import UserError
from napari_softseg.labels.levels import (
    N_LEVELS, level_colors, levels_hard_volume, levels_soft_volume, levels_to_soft, mask_to_levels, soft_to_levels,
    soft_volume,
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
    assert levels_soft_volume(levels, 2.0) == pytest.approx(3.4)
    assert soft_volume(levels_to_soft(levels), 2.0) == pytest.approx(3.4)
    assert levels_hard_volume(levels, 2.0) == pytest.approx(4.0)  # levels 10 and 5 are >= 0.5
    assert levels_hard_volume(levels, 2.0, threshold=0.2) == pytest.approx(6.0)  # level 2 is 0.2: kept
