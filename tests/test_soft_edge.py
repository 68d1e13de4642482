"""Soft-edge coverage of a brush stroke (no display needed)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_softseg.labels.soft_edge import brush_coverage, soft_edge_values, sweep_path


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


def test_soft_edge_rounds_to_the_nearest_level_never_truncates():
    """README: round(c·L + (1−c)·v₀); halves go up (the module's floor(x + 1/2))."""
    # 0.48 x 10 = 4.8 -> 5 (truncation would give 4); 0.44 x 10 = 4.4 -> 4
    assert soft_edge_values(np.array([0, 0]), 10, np.array([0.48, 0.44])).tolist() == [5, 4]
    # blends: 0.3 x 9 + 0.7 x 2 = 4.1 -> 4; 0.6 x 9 + 0.4 x 2 = 6.2 -> 6; 0.7 x 9 + 0.3 x 2 = 6.9 -> 7
    assert soft_edge_values(np.array([2, 2, 2]), 9, np.array([0.3, 0.6, 0.7])).tolist() == [4, 6, 7]
    # exact halves (coverages are multiples of 1/64): 0.25 x 10 = 2.5 -> 3, erasing 0.75 of 10 -> 2.5 -> 3
    assert soft_edge_values(np.array([0, 10]), 0, np.array([0.0, 0.75])).tolist() == [0, 3]
    assert soft_edge_values(np.array([0]), 10, np.array([0.25])).tolist() == [3]
    # the eraser's rim keeps (1 - c) of the old level
    assert soft_edge_values(np.array([10, 10, 10]), 0, np.array([1.0, 0.5, 0.12])).tolist() == [0, 5, 9]


def test_sweep_path_spacing():
    p = sweep_path(np.array([[0.0, 0.0], [0.0, 2.0], [3.0, 2.0]]), step=0.25)
    steps = np.linalg.norm(np.diff(p, axis=0), axis=1)
    assert steps.max() <= 0.25 + 1e-9
    np.testing.assert_allclose(p[[0, -1]], [[0, 0], [3, 2]])
