"""Lesion analysis on a constructed volume whose lesions, sizes and soft volumes are known."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from napari_softseg.review.lesions import FlagRule, LesionRecord, analyse_lesions

SPACING = (1.0, 1.0, 2.0)  # 2 mm³ voxels
H09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)  # nats / ln 2: entropies are in bits


def constructed():
    """A: 3x3x3 core 0.9 in a one-voxel rim of 0.3 (98 voxels); B: 2x2x2 at 0.55; C: one voxel
    0.8; D and E: 2x2x2 blocks of 1.0 joined by a two-voxel-thick rim of 0.3 (x = 22, 23)."""
    p = np.zeros((40, 40, 40), np.float32)
    p[4:9, 4:9, 4:9] = 0.3
    p[5:8, 5:8, 5:8] = 0.9
    p[20:22, 20:22, 20:22] = 0.55
    p[30, 30, 30] = 0.8
    p[20:22, 5:7, 30:32] = 1.0
    p[22:24, 5:7, 30:32] = 0.3
    p[24:26, 5:7, 30:32] = 1.0
    return p


#: the hand criteria of the rule these tests were written for (the default rule now only
#: flags by the learned flag score, which analyse_lesions alone does not compute)
HAND = FlagRule(min_mean_probability=0.6, min_sample_iou=0.5, max_volume_cv=0.3, min_volume_mm3=3.0)


@pytest.fixture(scope="module")
def table():
    return analyse_lesions(constructed(), spacing=SPACING, rule=HAND)


def rec(t, voxel):
    return t.by_id(int(t.labels[voxel]))


def test_components_sizes_and_volumes(table):
    assert len(table) == 5 and table.labels.dtype == np.int32
    assert sorted(r.id for r in table) == [1, 2, 3, 4, 5]
    a = rec(table, (5, 5, 5))
    assert a.voxels == 27 and a.hard_volume_mm3 == 54.0
    assert a.soft_volume_mm3 == pytest.approx((27 * 0.9 + 98 * 0.3) * 2, rel=1e-6)  # core + rim = 107.4
    assert (a.mean_probability, a.min_probability, a.max_probability) == pytest.approx((0.9, 0.9, 0.9))
    assert a.mean_entropy == pytest.approx(H09, rel=1e-5)
    assert a.centroid == (6.0, 6.0, 6.0) and a.bbox_min == (5, 5, 5) and a.bbox_max == (7, 7, 7)
    b = rec(table, (20, 20, 20))
    assert b.voxels == 8 and b.soft_volume_mm3 == pytest.approx(8 * 0.55 * 2, rel=1e-6)
    c = rec(table, (30, 30, 30))
    assert c.voxels == 1 and c.hard_volume_mm3 == 2.0 and c.soft_volume_mm3 == pytest.approx(1.6, rel=1e-6)
    # the shared rim is split by distance: x = 22 goes to D, x = 23 to E
    d, e = rec(table, (20, 5, 30)), rec(table, (24, 5, 30))
    assert d.id != e.id
    assert d.soft_volume_mm3 == pytest.approx((8 + 4 * 0.3) * 2, rel=1e-6)
    assert e.soft_volume_mm3 == pytest.approx((8 + 4 * 0.3) * 2, rel=1e-6)
    np.testing.assert_array_equal(np.bincount(table.labels.ravel())[1:], [r.voxels for r in table])


def test_hand_rule_flags_and_reasons(table):
    assert not rec(table, (5, 5, 5)).flagged and rec(table, (5, 5, 5)).reason == ""
    b = rec(table, (20, 20, 20))
    assert b.flagged and b.reason == "mean probability 0.55 < 0.60"
    c = rec(table, (30, 30, 30))
    assert c.flagged and c.reason == "volume 2.0 mm³ < 3 mm³"
    assert math.isnan(c.sample_iou) and c.n_samples == 0  # no samples: those criteria stay silent
    assert [r.id for r in table.flagged()] == sorted([b.id, c.id])


def test_rule_is_adjustable_without_recomputing(table):
    assert analyse_lesions(constructed(), spacing=SPACING).flagged() == []  # no score, no hand rule: no flag
    lenient = table.reflag(FlagRule(min_mean_probability=0.5, min_volume_mm3=None))
    assert lenient.flagged() == [] and lenient.labels is table.labels
    strict = table.reflag(FlagRule(min_mean_probability=None, max_mean_entropy=0.3, min_volume_mm3=20))
    a = rec(strict, (5, 5, 5))
    assert a.flagged and a.reason == f"mean entropy {H09:.2f} > 0.30"
    # H(0.55) = 0.688 nats = 0.993 bits
    assert rec(strict, (20, 20, 20)).reason.startswith("mean entropy 0.99 > 0.30; volume 16.0 mm³ < 20 mm³")


def test_sample_iou_and_volume_cv():
    p = constructed()
    s1 = np.zeros_like(p)
    s1[5:8, 5:8, 5:8] = 1  # A: 27 voxels
    s1[20:26, 5:7, 30:32] = 1  # D and E bridged into one 24-voxel component
    s2 = np.zeros_like(p)
    s2[5:9, 5:8, 5:8] = 1  # A plus a face: 36
    s3 = np.zeros_like(p)
    s3[5:7, 5:8, 5:8] = 1  # A minus a slab: 18
    for s in (s1, s2, s3):
        s[30, 30, 30] = 0.9  # C in every sample
    t = analyse_lesions(p, spacing=SPACING, samples=np.stack([s1, s2, s3]), rule=HAND)
    a = rec(t, (5, 5, 5))
    assert a.n_samples == 3
    assert a.sample_iou == pytest.approx(18 / 36)
    assert a.volume_cv == pytest.approx(np.std([54, 72, 36]) / 54)  # 0.272
    assert not a.flagged  # IoU 0.5 is not < 0.5 and CV 0.27 < 0.3
    c = rec(t, (30, 30, 30))
    assert c.sample_iou == 1.0 and c.volume_cv == 0.0
    d = rec(t, (20, 5, 30))
    assert d.sample_iou == 0.0 and d.sample_hits == pytest.approx(1 / 3)  # present in one sample of three
    assert d.volume_cv == pytest.approx(np.std([48, 0, 0]) / 16)
    assert "IoU across 3 samples 0.00 < 0.50" in d.reason and "volume CV across 3 samples 1.41 > 0.30" in d.reason
    b = rec(t, (20, 20, 20))
    assert b.sample_iou == 0.0 and math.isnan(b.volume_cv) and b.sample_hits == 0.0  # in no sample at all
    assert a.sample_hits == 1.0


def test_exports_dict_csv_json_and_sorting(table, tmp_path):
    c = rec(table, (30, 30, 30))
    d = c.to_dict()
    assert d["sample_iou"] is None and d["centroid"] == [30.0, 30.0, 30.0] and d["flagged"] is True
    json.dumps(d)  # strict JSON
    header = table.csv_header()
    assert header[:8] == ["id", "kind", "voxels", "centroid_i", "centroid_j", "centroid_k", "centroid_x_mm",
                          "centroid_y_mm"]
    assert header[-4:] == ["flag_score", "flagged", "reason", "score_reason"]
    path = table.write_csv(tmp_path / "lesions.csv")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 and list(rows[0].keys()) == header
    row_c = next(r for r in rows if int(r["id"]) == c.id)
    assert row_c["reason"] == c.reason and row_c["sample_iou"] == "" and float(row_c["hard_volume_mm3"]) == 2.0
    assert row_c["centroid_x_mm"] == "" and row_c["kind"] == "lesion"  # no affine: no world centre
    doc = json.loads(table.write_json(tmp_path / "lesions.json", scan="x.nii.gz").read_text())
    assert doc["scan"] == "x.nii.gz" and len(doc["lesions"]) == 5 and doc["rule"]["min_mean_probability"] == 0.6
    order = [r.soft_volume_mm3 for r in table.sorted_by("soft_volume_mm3", reverse=True)]
    assert order == sorted(order, reverse=True)
    assert LesionRecord.csv_header(3) == header


def test_many_lesions_and_empty_prediction():
    p = np.zeros((40, 40, 3), np.float32)
    p[::2, ::2, 1] = 0.9  # 400 isolated voxels
    t = analyse_lesions(p, rule=FlagRule(min_volume_mm3=None))
    assert len(t) == 400 and t.labels.max() == 400 and max(r.id for r in t) == 400
    empty = analyse_lesions(np.zeros((5, 5, 5), np.float32))
    assert len(empty) == 0 and not empty.labels.any() and empty.csv_rows() == []


def test_statistics_match_scipy_on_a_random_map():
    from scipy import ndimage

    rng = np.random.default_rng(4)
    p = ndimage.gaussian_filter(rng.random((30, 30, 30)).astype(np.float32), 1.5)
    p = (p - p.min()) / (p.max() - p.min())
    t = analyse_lesions(p, threshold=0.6, rule=FlagRule(min_volume_mm3=None))
    labels, idx = t.labels, np.arange(1, len(t) + 1)
    assert len(t) > 3
    np.testing.assert_array_equal([r.voxels for r in t], ndimage.sum_labels(np.ones_like(p), labels, idx))
    np.testing.assert_allclose([r.mean_probability for r in t], ndimage.mean(p, labels, idx), rtol=1e-6)
    np.testing.assert_allclose([r.min_probability for r in t], ndimage.minimum(p, labels, idx))
    np.testing.assert_allclose([r.max_probability for r in t], ndimage.maximum(p, labels, idx))
    np.testing.assert_allclose([r.centroid for r in t], ndimage.center_of_mass(labels > 0, labels, idx), atol=1e-3)
    assert all(r.soft_volume_mm3 >= r.voxels * r.min_probability for r in t)


def test_rim_is_one_voxel_thick_and_sharpness_by_hand():
    """A 1-voxel part in a wide sub-threshold plateau: only the touching voxels are its rim (the
    rule that let brain-gm's 1 mm³ parts collect 5.7 mm³); sharpness = inner minus outer mean p."""
    p = np.zeros((15, 15, 15), np.float32)
    p[2:13, 2:13, 2:13] = 0.3  # an 11³ plateau just below the threshold
    p[7, 7, 7] = 0.6
    t = analyse_lesions(p, threshold=0.5, spacing=(1.0, 1.0, 1.0), soft_floor=0.05)
    (r,) = t.records
    assert r.soft_volume_mm3 == pytest.approx(0.6 + 26 * 0.3, rel=1e-6)  # not 0.6 + 1330 x 0.3
    assert r.sharpness == pytest.approx(0.6 - 0.3, rel=1e-6)  # its only voxel is its boundary; 6 neighbours at 0.3
    crisp = analyse_lesions(constructed(), spacing=SPACING)
    a = rec(crisp, (5, 5, 5))
    assert a.sharpness == pytest.approx(0.9 - 0.3, rel=1e-6)  # inner shell 0.9, outer 0.3
    c = rec(crisp, (30, 30, 30))
    assert c.sharpness == pytest.approx(0.8, rel=1e-6)  # nothing around it


def test_elongation_by_hand_and_neutral_below_two_small_lesions():
    """sqrt(λ1/λ2) of the voxel boxes' covariance: a row of 10 voxels on a 1x1x3 mm grid has
    variances (10² − 1)/12 + 1/12 = 8.333 along the row, 3²/12 = 0.75 across slices and
    1/12 in-plane, so sqrt(8.333 / 0.75) = 3.333; a 4x4 square of 2x2x2 mm voxels is round in
    its plane (1.0). One voxel or two (3 and 6 mm³ < two 3-mm balls, 28.3 mm³) cannot be
    two merged lesions: 1, where the boxes alone would give 3 and 1.5 (the slice thickness)."""
    p = np.zeros((14, 14, 9), np.float32)
    p[2, 2:12, 2] = 0.9  # 30 mm³
    p[8, 2, 6] = 0.9  # one voxel
    p[11, 2:4, 6] = 0.9  # two voxels in-plane
    t = analyse_lesions(p, threshold=0.5, spacing=(1.0, 1.0, 3.0))
    by_size = {round(r.hard_volume_mm3): r.elongation for r in t.records}
    assert by_size[30] == pytest.approx(math.sqrt((99 / 12 + 1 / 12) / 0.75), rel=1e-9)
    assert by_size[3] == 1.0 and by_size[6] == 1.0
    q = np.zeros((8, 8, 8), np.float32)
    q[2:6, 2:6, 4] = 0.9  # 16 voxels of 8 mm³: in-plane variance 16/12 + 4/12 both ways
    (sq,) = analyse_lesions(q, threshold=0.5, spacing=(2.0, 2.0, 2.0)).records
    assert sq.elongation == pytest.approx(1.0, rel=1e-9)
