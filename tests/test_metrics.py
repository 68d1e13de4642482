"""Metrics and calibration on small arrays with values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_softseg.io.geometry import spacing_volume
from napari_softseg.labels.levels import soft_volume
from napari_softseg.metrics import calibration as C
from napari_softseg.metrics import detection as D
from napari_softseg.metrics import segmentation as M
from napari_softseg.metrics.calibration import confidence_and_correctness

LN2 = math.log(2)


# --------------------------------------------------------------------------- overlap and volumes


def test_overlap_and_volume_metrics_by_hand():
    pred = np.array([0.9, 0.6, 0.51, 0.7, 0.5, 0.1, 0.0, 0.0], np.float32)  # >= 0.5: 5 voxels (0.5 is)
    truth = np.array([1, 1, 0, 0, 0, 0, 0, 0], np.uint8)
    # TP 2, FP 3, FN 0; V_pred 5, V_truth 2
    s = M.segmentation_scores(pred, truth, spacing=(2.0, 1.0, 1.5))
    assert s["dice"] == pytest.approx(100 * 4 / 7)
    assert s["precision"] == pytest.approx(40.0)
    assert s["recall"] == pytest.approx(100.0)
    assert s["rvd"] == pytest.approx(-150.0)  # (2 - 5) / 2: the prediction is too large
    assert s["avd"] == pytest.approx(150.0)
    assert s["volume_pred_mm3"] == pytest.approx(15.0) and s["volume_truth_mm3"] == pytest.approx(6.0)
    assert s["nan_reasons"] == {}
    assert M.dice(pred, truth) == pytest.approx(57.1428571)
    assert M.rvd(truth, pred) == pytest.approx(60.0)  # swapped: (5 - 2) / 5


def test_threshold_is_inclusive_and_configurable():
    pred = np.array([0.3, 0.5, 0.7], np.float32)
    truth = np.array([0, 1, 1])
    assert M.recall(pred, truth) == pytest.approx(100.0)  # 0.5 >= 0.5
    assert M.recall(pred, truth, threshold=0.6) == pytest.approx(50.0)
    assert M.recall(pred, truth, threshold=0.3) == pytest.approx(100.0)
    assert M.precision(pred, truth, threshold=0.3) == pytest.approx(100 * 2 / 3)  # 0.3 >= 0.3
    assert M.volume(pred, (1, 1, 2)) == 4.0
    assert soft_volume(pred, spacing_volume((1, 1, 2))) == pytest.approx(3.0, rel=1e-6)


def test_edge_cases_both_empty_empty_truth_empty_prediction():
    z = np.zeros(10, np.float32)
    one = z.copy()
    one[3] = 1
    both = M.segmentation_scores(z, z)
    assert both["dice"] == 100 and both["precision"] == 100 and both["recall"] == 100
    assert math.isnan(both["rvd"]) and "truth is empty" in both["nan_reasons"]["rvd"]
    empty_truth = M.segmentation_scores(one, z)
    assert empty_truth["dice"] == 0 and empty_truth["precision"] == 0
    assert math.isnan(empty_truth["recall"]) and math.isnan(empty_truth["avd"])
    assert set(empty_truth["nan_reasons"]) == {"recall", "rvd", "avd"}
    empty_pred = M.segmentation_scores(z, one)
    assert empty_pred["dice"] == 0 and empty_pred["recall"] == 0 and empty_pred["rvd"] == 100
    assert math.isnan(empty_pred["precision"]) and "prediction is empty" in empty_pred["nan_reasons"]["precision"]


def test_mse_brier_soft_dice_by_hand():
    p = np.array([0.2, 0.8, 0.5], np.float32)
    t = np.array([0.0, 1.0, 1.0], np.float32)
    assert M.mse(p, t) == pytest.approx((0.04 + 0.04 + 0.25) / 3, rel=1e-6)
    assert M.brier(p, t) == pytest.approx(0.11, rel=1e-6)
    pk = np.array([[0.7, 0.3], [0.2, 0.8]])
    tk = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert M.brier(pk, tk, class_axis=-1) == pytest.approx((0.18 + 0.08) / 2)
    assert M.soft_dice([0.5, 1.0, 0.0], [1.0, 1.0, 0.0]) == pytest.approx(100 * 3 / 3.5)
    assert M.soft_dice(np.zeros(3), np.zeros(3)) == 100.0
    assert M.mse(p, t, mask=[True, False, False]) == pytest.approx(0.04, rel=1e-6)


# --------------------------------------------------------------------------- calibration and entropy


def test_reliability_diagram_and_ece_by_hand():
    p = np.array([0.95, 0.92, 0.85, 0.25, 0.05, 0.62])
    t = np.array([1, 0, 1, 0, 0, 0])
    # confidence 0.95 .92 .85 .75 .95 .62; predicted 1 1 1 0 0 1; correct 1 0 1 1 1 0
    rd = C.reliability_diagram(p, t)
    np.testing.assert_array_equal(rd.counts, [0, 0, 0, 0, 0, 0, 1, 1, 1, 3])
    np.testing.assert_allclose(rd.confidence[6:], [0.62, 0.75, 0.85, 0.94])
    np.testing.assert_allclose(rd.accuracy[6:], [0.0, 1.0, 1.0, 2 / 3])
    assert np.all(np.isnan(rd.accuracy[:6]))
    expected = 3 / 6 * abs(2 / 3 - 0.94) + (0.15 + 0.25 + 0.62) / 6
    assert rd.ece == pytest.approx(expected) == pytest.approx(0.92 / 3)
    assert C.ece(p, t) == pytest.approx(expected)
    d = rd.to_dict()
    assert d["accuracy"][0] is None and d["counts"][9] == 3 and len(d["edges"]) == 11


def test_ece_with_soft_truth_uses_expected_accuracy():
    assert C.ece(np.array([0.95]), np.array([0.6])) == pytest.approx(0.35)
    conf, corr = confidence_and_correctness(np.array([0.2, 0.5]), np.array([0.3, 1.0]))
    np.testing.assert_allclose(conf, [0.8, 0.5])
    np.testing.assert_allclose(corr, [0.7, 1.0])  # p = 0.5 is foreground (binarize: p >= 0.5)


def test_multiclass_reliability_with_label_truth():
    prob = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.35, 0.45, 0.2]])
    labels = np.array([0, 1, 1])  # correct, wrong, correct
    rd = C.reliability_diagram(prob, labels, class_axis=-1)
    assert rd.counts[7] == 1 and rd.counts[6] == 1 and rd.counts[4] == 1
    assert rd.ece == pytest.approx((abs(1 - 0.7) + abs(0 - 0.6) + abs(1 - 0.45)) / 3)


def test_entropy_by_hand():
    # expectations derived in nats, divided by ln 2: the entropy is in bits
    h = C.entropy(np.array([0.0, 0.5, 1.0, 0.25], np.float32))
    np.testing.assert_allclose(h, np.array([0, LN2, 0, -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]) / LN2, atol=1e-6)
    assert h.dtype == np.float32
    hk = C.entropy(np.array([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]]), class_axis=1)
    np.testing.assert_allclose(hk, np.array([0.5 * LN2 + 0.5 * math.log(4), 0.0]) / LN2)  # 1.5 bits
    # binary map == two-class map [1 - p, p]
    p = np.array([0.1, 0.3, 0.9])
    np.testing.assert_allclose(C.entropy(p), C.entropy(np.stack([1 - p, p], -1), class_axis=-1))


def test_image_entropy_and_entropy_mae_across_images():
    a = np.array([0.5, 0.5, 0.0, 0.0])  # image entropy ln2 / 2 nats = 1/2 bit
    b = np.array([0.5, 0.0, 0.0, 1.0])  # ln2 / 4 nats = 1/4 bit
    assert C.image_entropy(a) == pytest.approx(LN2 / 2 / LN2)
    assert C.image_entropy(a, mask=[True, True, False, False]) == pytest.approx(LN2 / LN2)
    # two images: |ln2/2 - ln2/4| and |ln2/4 - ln2/4| (nats; / ln 2 for bits)
    assert C.entropy_mae([a, b], [b, b]) == pytest.approx(LN2 / 8 / LN2)
    assert C.voxel_entropy_mae(a, b) == pytest.approx(LN2 / 4 / LN2)


# --------------------------------------------------------------------------- lesions


def blocks(shape, boxes, value=1.0):
    x = np.zeros(shape, np.float32)
    for b in boxes:
        x[tuple(slice(a, z) for a, z in b)] = value
    return x


def test_ltpr_lfdr_are_counted_one_side_each():
    """One truth lesion split into three predicted pieces plus one false positive.

    LTPR = 1 detected / 1 truth = 100 %, LFDR = 1 false / 4 predicted = 25 %. ivadomed's
    mixed count FP / (TP_truth + FP) would give 1 / 2 = 50 %.
    """
    shape = (30, 30, 30)
    truth = blocks(shape, [((2, 14), (2, 14), (2, 14))])
    pred = blocks(shape, [((2, 5), (2, 5), (2, 5)), ((8, 11), (2, 5), (2, 5)), ((2, 5), (8, 11), (8, 11)),
                          ((20, 23), (20, 23), (20, 23))])
    det = D.lesion_detection(pred, truth)
    assert (det.n_truth, det.n_pred, det.n_detected, det.n_false) == (1, 4, 1, 1)
    assert det.ltpr == 100.0 and det.lfdr == 25.0
    # merged prediction: two truth lesions, one predicted component covering both
    truth2 = blocks(shape, [((2, 6), (2, 6), (2, 6)), ((8, 12), (2, 6), (2, 6))])
    pred2 = blocks(shape, [((2, 12), (2, 6), (2, 6))])
    det2 = D.lesion_detection(pred2, truth2)
    assert (det2.ltpr, det2.lfdr) == (100.0, 0.0)


def test_detection_overlap_rule_and_soft_predictions():
    shape = (20, 20, 20)
    truth = blocks(shape, [((2, 6), (2, 6), (2, 6)), ((10, 11), (10, 12), (10, 11))])  # 64 and 2 voxels
    pred = np.zeros(shape, np.float32)
    pred[2, 2, 2:4] = 0.7  # 2 voxels of the big lesion: below the 3-voxel rule
    pred[10, 10:12, 10] = 0.7  # the whole 2-voxel lesion: min(3, size) = 2 suffices
    det = D.lesion_detection(pred, truth)
    assert det.n_detected == 1 and det.ltpr == 50.0
    assert D.lesion_detection(pred, truth, min_overlap=2).n_detected == 2
    assert D.lesion_detection(pred, truth, min_overlap_fraction=0.5).n_detected == 1
    assert D.lesion_detection(pred * 0.7, truth).n_detected == 0  # 0.49 is below the threshold
    assert D.lesion_detection(pred, truth, threshold=0.3).n_detected == 1  # floats are thresholded, never truncated


def test_connectivity_options():
    m = np.zeros((3, 3, 3), bool)
    m[0, 0, 0] = m[1, 1, 0] = True  # edge neighbours
    assert D.connected_components(m, 6)[1] == 2 and D.connected_components(m, 18)[1] == 1
    c = np.zeros((3, 3, 3), bool)
    c[0, 0, 0] = c[1, 1, 1] = True  # corner neighbours
    assert D.connected_components(c, 18)[1] == 2 and D.connected_components(c, 26)[1] == 1
    with pytest.raises(ValueError):
        D.connected_components(m, 8)


def test_more_than_255_components_do_not_wrap():
    m = np.zeros((40, 40, 40), bool)
    m[::2, ::2, :3:2] = True  # 20 x 20 x 2 = 800 isolated voxels
    labels, n = D.connected_components(m)
    assert n == 800 and labels.max() == 800 and labels.dtype == np.int32
    det = D.lesion_detection(m.astype(np.float32), m)
    assert (det.n_truth, det.n_pred, det.n_detected, det.ltpr, det.lfdr) == (800, 800, 800, 100.0, 0.0)


# --------------------------------------------------------------------------- ranking, sweep, evaluate


def test_composite_score_by_hand():
    results = {
        "A": {"dice": 80, "precision": 70, "recall": 90, "avd": 10},
        "B": {"dice": 70, "precision": 70, "recall": 80, "avd": 20},
        "C": {"dice": 90, "precision": 70, "recall": 70, "avd": 30},
    }
    z = math.sqrt(1.5)  # (x - mean) / population std for three equally spaced values
    s = M.composite_score(results)
    assert s["A"] == pytest.approx(2 * z) and s["B"] == pytest.approx(-z) and s["C"] == pytest.approx(-z)


def test_threshold_sweep_by_hand_and_against_direct_dice():
    pred = np.array([0.1, 0.3, 0.6, 0.9], np.float32)
    truth = np.array([0, 1, 1, 1])
    sw = M.threshold_sweep(pred, truth)
    assert len(sw.thresholds) == 19 and sw.thresholds[0] == 0.05 and sw.thresholds[-1] == 0.95
    by_t = dict(zip(np.round(sw.thresholds, 2), sw.dice))
    assert by_t[0.05] == pytest.approx(100 * 6 / 7)  # 4 predicted, TP 3
    assert by_t[0.2] == pytest.approx(100.0)
    assert by_t[0.3] == pytest.approx(100.0)  # 0.3 >= 0.3
    assert by_t[0.35] == pytest.approx(80.0)
    assert by_t[0.6] == pytest.approx(80.0) and by_t[0.9] == pytest.approx(50.0) and by_t[0.95] == 0.0
    np.testing.assert_allclose(sw.dice, [M.dice(pred, truth, threshold=t) for t in sw.thresholds])
    np.testing.assert_allclose(sw.precision, [M.precision(pred, truth, threshold=t) if t < 0.95 else np.nan for t in sw.thresholds])
    assert sw.best_threshold == 0.15 and sw.best_dice == 100.0  # the first of the best (0.1 >= 0.1 keeps 4)
    rng = np.random.default_rng(0)
    p, t = rng.random((20, 20)).astype(np.float32), rng.random((20, 20)) > 0.7
    custom = [0.9, 0.1, 0.5]
    np.testing.assert_allclose(M.threshold_sweep(p, t, custom).dice, [M.dice(p, t, threshold=x) for x in custom])


def test_evaluate_keys_and_consistency():
    rng = np.random.default_rng(2)
    shape = (20, 20, 20)
    truth = blocks(shape, [((3, 9), (3, 9), (3, 9)), ((12, 16), (12, 16), (12, 16))])
    raters = [np.clip(truth + (rng.random(shape) < 0.02), 0, 1) for _ in range(3)]
    pred = np.clip(truth * 0.8 + rng.random(shape).astype(np.float32) * 0.3, 0, 1)
    out = M.evaluate(pred, truth, raters=raters, spacing=(1, 1, 2))
    for key in "dice precision recall avd rvd mse brier ece ltpr lfdr entropy_mae".split():
        assert key in out and isinstance(out[key], float)
    assert out["dice"] == pytest.approx(M.dice(pred, truth))
    assert out["ece"] == pytest.approx(C.ece(pred, truth))
    avg = np.mean(raters, axis=0)
    assert out["brier"] == pytest.approx(M.mse(pred, avg), rel=1e-5)
    assert out["entropy_mae"] == pytest.approx(abs(C.image_entropy(pred) - C.image_entropy(avg)), rel=1e-5)
    assert out["volume_truth_mm3"] == 2 * (216 + 64)
    assert set(M.EVALUATE_UNITS) | set(M.RATER_UNITS) | {"nan_reasons"} == set(out)
    no_raters = M.evaluate(pred, truth)
    assert "entropy_mae" not in no_raters and no_raters["brier"] == no_raters["mse"]
    empty = M.evaluate(pred * 0, np.zeros(shape))
    assert empty["dice"] == 100.0 and math.isnan(empty["rvd"]) and math.isnan(empty["ltpr"])
    assert {"rvd", "avd", "ltpr", "lfdr"} <= set(empty["nan_reasons"])
