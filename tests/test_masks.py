"""The one binarisation rule (labels.masks.binarize, value >= threshold) holds in every layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_softseg.commands.predict import binarise as cli_mask
from napari_softseg.fusion.methods import fuse
from napari_softseg.fusion.staple import StapleResult
from napari_softseg.labels.levels import levels_hard_volume, levels_to_soft
from napari_softseg.labels.masks import binarize
from napari_softseg.metrics import segmentation as M
from napari_softseg.metrics.calibration import confidence_and_correctness
from napari_softseg.metrics.detection import lesion_detection
from napari_softseg.review.lesions import analyse_lesions
from napari_softseg.review.session import Review


def test_binarize_is_inclusive_and_compares_in_the_values_precision():
    x = np.array([0.2, 0.3, 0.5, 0.7], np.float32)
    expected = [False, True, True, True]
    assert binarize(x, 0.3).tolist() == expected  # float32(0.3) >= 0.3 in float32
    assert binarize(x, np.float64(0.3)).tolist() == expected  # a numpy float64 threshold too
    assert binarize(x.astype(np.float64), 0.3).tolist() == expected
    assert binarize(np.array([0, 1, 2], np.uint8), 1).tolist() == [False, True, True]
    assert binarize(np.array([True, False]), 0.5).tolist() == [True, False]
    assert binarize(torch.tensor([0.2, 0.3, 0.5]), 0.3).tolist() == [False, True, True]
    assert binarize(torch.tensor([0.2, 0.3, 0.5]), np.float64(0.3)).tolist() == [False, True, True]


def _map_with_values_at_the_threshold(t: float) -> np.ndarray:
    soft = np.zeros((9, 9, 9), np.float32)
    soft[1:4, 1:4, 1:4] = 0.9  # a lesion well above the threshold
    soft[6:8, 6:8, 6:8] = t  # a lesion exactly at the threshold
    return soft


@pytest.mark.parametrize("t", [0.5, 0.3])
def test_every_layer_keeps_a_voxel_that_equals_the_threshold(t):
    soft = _map_with_values_at_the_threshold(t)
    n = 27 + 8
    assert int(binarize(soft, t).sum()) == n
    assert int(cli_mask(soft, t).sum()) == n  # the CLI's --threshold mask
    assert M.volume(soft, threshold=t) == n
    assert M.segmentation_scores(soft, soft, threshold=t, truth_threshold=t)["volume_pred_mm3"] == n
    sweep = M.threshold_sweep(soft, binarize(soft, t), thresholds=[t])
    assert sweep.dice[0] == pytest.approx(100.0)
    assert lesion_detection(soft, soft, threshold=t, truth_threshold=t).n_pred == 2
    table = analyse_lesions(soft, threshold=t)
    assert sorted(r.voxels for r in table) == [8, 27]
    review = Review(soft, threshold=t)
    review.analyse()
    assert int(review.final_mask().sum()) == n and int(binarize(review.final_soft(), t).sum()) == n
    hard = StapleResult(soft, None, None, 0, 0.0, True).hard(t)
    assert int(hard.sum()) == n


def test_fusion_and_levels_use_the_same_rule():
    a = np.array([0, 1, 1, 0], np.uint8)
    b = np.array([0, 1, 0, 0], np.uint8)
    assert fuse([a, b], "average").hard.tolist() == [0, 1, 1, 0]  # a 1-of-2 split (0.5) is foreground
    # majority: raters are binarised by the same rule, then a vote needs more than half
    half = np.array([0.5, 0.5, 0.4], np.float32)
    assert fuse([half, half, np.ones(3, np.float32)], "majority").hard.tolist() == [1, 1, 0]
    levels = np.array([0, 4, 5, 10], np.uint8)  # confidence 0, 0.4, 0.5, 1.0
    assert levels_hard_volume(levels, 1.0) == int(binarize(levels_to_soft(levels), 0.5).sum()) == 2
    _, correct = confidence_and_correctness(np.array([0.5]), np.array([1.0]))
    assert correct.tolist() == [1.0]  # p = 0.5 predicts foreground
