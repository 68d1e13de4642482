"""The learned flag score, candidates for missed lesions, model targets and the final counts
of the review export, on volumes built by hand (and the phantom's truth)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from napari_softseg.review.flag_fit import (
    auroc, candidate_metrics, case_data, correction_labels, candidate_operating_point, fit_flag_model,
    missed_lesions, recall_operating_point,
)
from napari_softseg.review.flags import FlagModel, Logistic, sampling_kind
from napari_softseg.review.lesions import FlagRule
from napari_softseg.review.profile import (
    decide_target, review_profile, sidecar_path, store_review_metadata,
)
from napari_softseg.review.session import Review


# ----------------------------------------------------------------------------- the score model


def test_logistic_fit_is_sign_constrained_monotone_and_worded():
    rng = np.random.default_rng(0)
    mean_p = rng.uniform(0.0, 1.0, 400)
    y = rng.random(400) < 1.0 / (1.0 + np.exp(-(4.0 - 8.0 * mean_p)))  # low p: more often wrong
    entropy = 1.0 - mean_p + rng.normal(0, 0.05, 400)  # would get a *negative* weight unconstrained ...
    entropy[y] -= 0.6  # ... because errors are given a lower entropy here
    model = Logistic.fit(np.c_[mean_p, entropy], y, ("mean_p", "entropy"))
    assert model.weights[0] < 0  # lower mean probability, higher score
    assert model.weights[1] == 0.0  # "higher entropy is worse" is kept: bounded at 0, not negative
    s = model.score(np.c_[np.linspace(0.9, 0.1, 9), np.full(9, 0.5)])
    assert np.all(np.diff(s) > 0)
    assert model.reasons(np.array([[0.05, 0.5]])) == ["low mean probability (0.05)"]
    assert model.reasons(np.array([[0.99, 0.5]])) == [""]  # nothing pushes a sure lesion up
    again = Logistic.from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_allclose(again.score(np.c_[mean_p, entropy]), model.score(np.c_[mean_p, entropy]))


def test_sampling_kinds_and_fallback():
    assert [sampling_kind(0, 0), sampling_kind(0, 4), sampling_kind(5, 0), sampling_kind(5, 2)] == \
        ["none", "tta", "mc", "mc+tta"]
    m = Logistic(("mean_p",), np.zeros(1), np.ones(1), -np.ones(1), 0.0, 0.3)
    flags = FlagModel({"none": m, "mc": m}, {}, 0.05, 0.01)
    assert flags.lesion_model("mc+tta") is flags.lesion["mc"] and flags.lesion_model("tta") is flags.lesion["none"]
    assert flags.candidate_model("none") is None
    assert flags.rule("tta") == FlagRule(flag_score=0.3, candidate_score=None)


def test_auroc_and_operating_points_by_hand():
    # pairs (pos, neg): (0.35 > 0.1) (0.35 < 0.4) (0.8 > 0.1) (0.8 > 0.4): 3 of 4
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auroc([0.5, 0.5], [0, 1]) == 0.5 and math.isnan(auroc([0.2], [1]))
    # positives 0.9, 0.7, 0.3: 2 of 3 (>= 0.66) are flagged from 0.7 down
    assert recall_operating_point([0.9, 0.1, 0.7, 0.3, 0.8], [1, 0, 1, 1, 0], 0.66) == 0.7


# ----------------------------------------------------------------------------- labels from the truth


def _cube(a, lo, hi, value=1):
    a[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = value


def test_correction_labels_and_missed_lesions_by_hand():
    truth = np.zeros((40, 20, 10), np.int32)
    pred = np.zeros_like(truth)
    _cube(truth, (1, 1, 1), (4, 4, 4), 1); _cube(pred, (1, 1, 1), (4, 4, 4), 1)  # noqa: E702 - exact: correct
    _cube(pred, (1, 10, 1), (3, 12, 3), 2)  # nothing under it: false
    _cube(truth, (8, 1, 1), (10, 4, 4), 2); _cube(truth, (10, 1, 1), (12, 4, 4), 3)  # noqa: E702 - two lesions ...
    _cube(pred, (8, 1, 1), (12, 4, 4), 3)  # ... under one predicted lesion: merge
    _cube(truth, (15, 1, 1), (21, 4, 4), 4)
    _cube(pred, (15, 1, 1), (17, 4, 4), 4); _cube(pred, (19, 1, 1), (21, 4, 4), 5)  # noqa: E702 - one split in two
    _cube(truth, (25, 1, 1), (31, 5, 5), 5)  # 96 voxels
    _cube(pred, (25, 1, 1), (26, 3, 3), 6)  # 4 of them: Dice 2*4/(4+96) = 0.08
    _cube(truth, (35, 1, 1), (37, 3, 3), 6)  # 8 voxels, touched by 2 predicted voxels: missed
    pred[35, 1, 1] = 7
    pred[36, 1, 1] = 7
    needs, why = correction_labels(pred, 7, truth)
    assert why == ["", "false", "merge", "split", "split", "extent (Dice 0.08)", "extent (Dice 0.40)"]
    assert needs.tolist() == [False, True, True, True, True, True, True]
    assert missed_lesions(pred > 0, truth) == [6]


def test_candidate_metrics_and_operating_point_by_hand():
    from napari_softseg.review.flag_fit import CaseData

    def case(true, recovers, missed):
        return CaseData("c", "mc", np.zeros((0, 9)), np.zeros(0, bool), [], np.zeros((len(true), 5)),
                        np.array(true, bool), recovers, missed, 5)

    a = case([True, False, False], [[3], [], []], [3, 4])
    b = case([False, True], [[], [2]], [2])
    scores = [np.array([0.9, 0.8, 0.2]), np.array([0.6, 0.7])]
    m = candidate_metrics([a, b], scores, 0.5)  # listed: a 0.9 (true), 0.8 (false); b 0.6 (false), 0.7 (true)
    assert m == {"n_missed": 3, "recovered": 2, "recall": 2 / 3, "false_per_scan": 1.0, "listed_per_scan": 2.0}
    # false per scan: at 0.6 a's 0.8 and b's 0.6 (1.0); at 0.7 a's 0.8 only (0.5); at 0.9 none.
    # Recovered: 2 of 3 from 0.7 down, 1 at 0.8 and 0.9: the highest threshold with the most
    assert candidate_operating_point([a, b], scores, 0.5) == 0.7
    assert candidate_operating_point([a, b], scores, 2.0) == 0.7  # more false ones allowed, none gained
    assert candidate_operating_point([a, b], scores, 0.0) == 0.9


def _phantom_case_volumes():
    """Two true lesions; the model finds the big one well, half of a second one, and leaves a
    faint sub-threshold blob where a third one is, plus one noise blob."""
    truth = np.zeros((30, 30, 10), np.int32)
    soft = np.zeros(truth.shape, np.float32)
    _cube(truth, (2, 2, 2), (8, 8, 6), 1); _cube(soft, (2, 2, 2), (8, 8, 6), 0.9)  # noqa: E702
    _cube(truth, (12, 2, 2), (18, 8, 6), 2); _cube(soft, (12, 2, 2), (14, 4, 3), 0.6)  # noqa: E702
    _cube(truth, (22, 22, 2), (26, 26, 5), 3); _cube(soft, (22, 22, 2), (26, 26, 5), 0.03)  # noqa: E702
    soft[2, 25, 8] = 0.02  # noise
    return soft, truth


def test_case_data_labels_lesions_and_candidates():
    soft, truth = _phantom_case_volumes()
    c = case_data("hand", soft, truth, threshold=0.05, floor=0.01, spacing=(1.0, 1.0, 1.0))
    assert c.lesion_y.tolist() == [False, True] and c.lesion_why[1].startswith("extent")
    assert c.missed == [3] and c.cand_true.tolist() == [False, True] and c.cand_recovers == [[], [3]]  # raster order
    assert c.lesion_x.shape == (2, 11) and c.cand_x.shape == (2, 5)
    assert math.isnan(c.lesion_x[0, 8])  # no samples: sample IoU is missing


def test_fit_flag_model_on_hand_cases_ranks_and_lists():
    rng = np.random.default_rng(1)
    cases = []
    for k in range(6):
        soft, truth = _phantom_case_volumes()
        soft = np.clip(soft + rng.normal(0, 0.002, soft.shape).astype(np.float32) * (soft > 0), 0, 1)
        cases.append(case_data(f"hand {k}", soft, truth, threshold=0.05, floor=0.01, spacing=(1.0, 1.0, 1.0)))
    flags = fit_flag_model(cases, threshold=0.05, floor=0.01, label="hand")
    les, cand = flags.lesion_model("none"), flags.candidate_model("none")
    assert les.info["cv"]["auroc"] == 1.0 and les.info["cv"]["recall"] == 1.0
    assert cand.info["cv"]["recall"] >= 0.8 and cand.info["cv"]["false_per_scan"] <= 2.0
    doc = json.loads(json.dumps(flags.to_dict()))
    assert FlagModel.from_dict(doc).lesion_model("none").operating_point == les.operating_point


# ----------------------------------------------------------------------------- flags in the review


def _hand_flags() -> FlagModel:
    """A flag model by hand: lower mean p (and, with samples, lower IoU) -> higher score."""
    les = Logistic(("mean_p",), np.array([0.5]), np.array([0.2]), np.array([-2.0]), 0.0, 0.5)
    les_s = Logistic(("mean_p", "sample_iou"), np.array([0.5, 0.5]), np.array([0.2, 0.2]), np.array([-2.0, -2.0]),
                     0.0, 0.5)
    cand = Logistic(("cand_max_p",), np.array([0.025]), np.array([0.005]), np.array([3.0]), 0.0, 0.5)
    return FlagModel({"none": les, "tta": les_s}, {"none": cand}, 0.2, 0.01, "by hand")


def test_flags_are_computed_at_the_model_threshold_whatever_the_slider():
    soft = np.zeros((30, 12, 8), np.float32)
    _cube(soft, (2, 2, 2), (6, 6, 6), 0.95)  # a sure lesion
    _cube(soft, (12, 2, 2), (16, 6, 6), 0.3)  # an unsure one ...
    soft[13:15, 3:5, 3:5] = 0.6  # ... with a brighter core
    review = Review(soft, threshold=0.2, flags=_hand_flags())
    table = review.analyse()
    sure, unsure = (table.by_id(int(table.labels[v])) for v in ((3, 3, 3), (13, 3, 3)))
    assert unsure.flag_score > 0.5 > sure.flag_score and unsure.flagged and not sure.flagged
    assert unsure.reason.startswith(f"flag score {unsure.flag_score:.2f}: low mean probability")
    for t in (0.5, 0.1):  # the slider moves: the unsure lesion shrinks to its core, or stays
        table = review.analyse(threshold=t)
        assert table.by_id(int(table.labels[13, 3, 3])).flag_score == unsure.flag_score
        assert table.by_id(int(table.labels[3, 3, 3])).flag_score == sure.flag_score
    assert review.table.rule == FlagRule(flag_score=0.5, candidate_score=0.5)  # the fitted operating points


def test_flag_score_responds_monotonically_to_certain_and_uncertain_lesions():
    """Same size, lower probability -> higher score; with samples, less agreement -> higher score."""
    soft = np.zeros((60, 10, 10), np.float32)
    levels = (0.95, 0.8, 0.6, 0.45, 0.3)
    for k, p in enumerate(levels):
        _cube(soft, (2 + 10 * k, 2, 2), (6 + 10 * k, 6, 6), p)
    review = Review(soft, threshold=0.2, flags=_hand_flags())
    table = review.analyse()
    scores = [table.by_id(int(table.labels[3 + 10 * k, 3, 3])).flag_score for k in range(len(levels))]
    assert np.all(np.diff(scores) > 0)
    samples = np.stack([soft] * 4)
    samples[1:, 22:26] = 0.0  # the 0.6 lesion is in one sample of four
    samples[2:, 12:16] = 0.0  # the 0.8 lesion in two
    with_samples = Review(soft, threshold=0.2, flags=_hand_flags(), samples=samples, sampling="tta").analyse()
    s = {k: with_samples.by_id(int(with_samples.labels[3 + 10 * k, 3, 3])) for k in range(3)}
    assert (s[0].sample_iou, s[1].sample_iou, s[2].sample_iou) == (1.0, 0.0, 0.0)
    assert s[0].flag_score < scores[0]  # full agreement lowers the score of a sure lesion ...
    assert s[1].flag_score > scores[1]  # ... disagreement raises it


def test_candidates_are_listed_accepted_into_the_mask_and_exported(tmp_path):
    soft, _ = _phantom_case_volumes()
    review = Review(soft, threshold=0.2, flags=_hand_flags())
    table = review.analyse()
    lesions, cands = review.records("lesion"), review.records("candidate")
    assert len(lesions) == 2 and len(cands) == 1  # the faint blob (max 0.03); the noise blob (0.02) scores < 0.5
    cand = cands[0]
    assert cand.id == 3 and cand.flagged and cand.reason.startswith("possible missed lesion, score")
    assert (table.labels == 3).sum() == 48 and not review.final_mask()[table.labels == 3].any()
    review.decide(cand.id, "accepted")
    final = review.final_mask()
    assert final[table.labels == 3].all() and review.final_soft()[23, 23, 3] == 1.0
    rows = {r["id"]: r for r in review.rows()}
    assert rows[3]["kind"] == "candidate" and rows[3]["final_voxels"] == 48
    assert sum(r["final_voxels"] for r in rows.values()) == final.sum()
    review.analyse(threshold=0.02)  # the slider goes below the blob: it is a lesion now, still accepted
    now = review.table.by_id(int(review.table.labels[23, 23, 3]))
    assert now.kind == "lesion" and review.decision(now.id).status == "accepted"
    none = Review(soft, threshold=0.2, flags=_hand_flags(), rule=FlagRule(candidate_score=None)).analyse()
    assert [r.kind for r in none] == ["lesion", "lesion"]


def _synthetic_case(rng, threshold=0.05, floor=0.01):
    """A prediction with lesions it finds, faint lesions it leaves below its threshold (a blob
    peaking at 0.3-0.9 x threshold) and sub-threshold noise specks, with the truth."""
    from scipy import ndimage

    shape = (48, 48, 12)
    truth = np.zeros(shape, np.int32)
    soft = np.zeros(shape, np.float32)
    for k in range(6):
        c = (6 + 8 * (k % 5), 8 + 30 * (k // 5) + int(rng.integers(0, 6)), 6)
        r = rng.uniform(1.5, 3.5)
        ball = sum(((np.indices(shape)[a] - c[a]) * (1, 1, 2)[a]) ** 2 for a in range(3)) <= r * r
        truth[ball] = k + 1
        faint = k % 2 == 1
        blur = ndimage.gaussian_filter(ball.astype(np.float32), 1.0)
        peak = threshold * rng.uniform(0.3, 0.9) if faint else rng.uniform(0.6, 1.0)
        soft = np.maximum(soft, peak * blur / blur.max())
    for _ in range(int(rng.integers(2, 6))):  # noise specks away from the lesions
        v = (int(rng.integers(0, 48)), int(rng.integers(20, 28)), int(rng.integers(0, 12)))
        soft[v] = max(soft[v], rng.uniform(floor, threshold))
    return soft, truth


def test_candidates_find_the_faint_lesion_of_the_phantom():
    """A candidate model fitted on predictions that leave faint lesions below the threshold
    finds the sample phantom's faint lesions in such a prediction, with at most 3 false ones."""
    from napari_softseg.io.nifti import read_nifti
    from napari_softseg.io.phantom import Lesion, phantom_files, render_fraction

    rng = np.random.default_rng(7)
    cases = [case_data(f"synthetic {k}", *_synthetic_case(rng), threshold=0.05, floor=0.01, spacing=(1.0, 1.0, 2.0))
             for k in range(8)]
    flags = fit_flag_model(cases, threshold=0.05, floor=0.01, label="synthetic")
    cand = flags.candidate_model("none")
    assert cand is not None and cand.info["cv"]["recall"] >= 0.5 and cand.info["cv"]["false_per_scan"] <= 2.0
    files = phantom_files()
    truth = read_nifti(files["truth"]).data.astype(np.float32)
    faint = np.zeros(truth.shape, bool)
    for d in json.loads(files["lesions"].read_text())["lesions"]:
        if d["faint"]:
            lesion = Lesion(**{k: d[k] for k in ("id", "centre", "semi_axes", "rotation", "faint", "touching")})
            box, frac = render_fraction(lesion, truth.shape)
            faint[box] |= frac > 0
    soft = np.where(faint, 0.6 * 0.05 * truth, truth).astype(np.float32)  # faint lesions peak at 0.6 x threshold
    specks = rng.choice(np.flatnonzero(truth == 0), 20, replace=False)
    soft.ravel()[specks] = rng.uniform(0.01, 0.05, 20).astype(np.float32)  # and 20 sub-threshold specks
    review = Review(soft, spacing=(1.0, 1.0, 3.0), threshold=0.05, flags=flags)
    review.analyse()
    cands = review.records("candidate")
    found = [c for c in cands if faint[review.table.labels == c.id].any()]
    assert len(found) >= 2 and len(cands) - len(found) <= 3
    assert all(c.flagged and "possible missed lesion" in c.reason for c in cands)


# ----------------------------------------------------------------------------- export reflects the review


def test_export_counts_come_from_the_edited_mask(tmp_path):
    from napari_softseg.io.nifti import read_nifti

    soft = np.zeros((40, 40, 10), np.float32)
    _cube(soft, (2, 2, 2), (5, 5, 5), 0.9)  # lesion A: 27 voxels
    _cube(soft, (20, 20, 2), (22, 22, 4), 0.9)  # lesion B: 8 voxels
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    review = Review(soft, spacing=(1.0, 1.0, 2.0), threshold=0.5, affine=affine)
    table = review.analyse()
    a, b = int(table.labels[2, 2, 2]), int(table.labels[20, 20, 2])
    painted = review.final_mask().copy()
    painted[5:12, 2:7, 2:7] = True  # 7 x 5 x 5 = 175 voxels painted onto A (touching it)
    painted[30:32, 30:32, 8] = True  # 4 voxels far from every lesion
    review.sync_edits(painted)
    review.decide(b, "rejected")
    paths = review.export(tmp_path, "case", affine=affine)
    with open(paths["csv"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    by_id = {int(r["id"]): r for r in rows}
    assert by_id[a]["decision"] == "edited" and int(by_id[a]["final_voxels"]) == 27 + 175
    assert float(by_id[a]["final_volume_mm3"]) == (27 + 175) * 2.0
    assert by_id[b]["decision"] == "rejected" and int(by_id[b]["final_voxels"]) == 0
    drawn = [r for r in rows if r["kind"] == "drawn"]
    assert len(drawn) == 1 and int(drawn[0]["final_voxels"]) == 4 and float(drawn[0]["centroid_z_mm"]) == 16.0
    mask = read_nifti(paths["binary"]).data > 0
    assert sum(int(r["final_voxels"]) for r in rows) == mask.sum() == 27 + 175 + 4
    assert not mask[table.labels == b].any()
    doc = json.loads(paths["json"].read_text())
    assert doc["summary"]["final_voxels"] == mask.sum() == sum(r["final_voxels"] for r in doc["lesions"])
    assert float(by_id[a]["centroid_x_mm"]) == 3.0 and float(by_id[a]["centroid_z_mm"]) == 6.0  # voxel (3, 3, 3)


# ----------------------------------------------------------------------------- what models segment


def test_shipped_models_declare_their_targets_and_old_checkpoints_fall_back(tmp_path):
    import shutil

    from napari_softseg.engine.checkpoint import load_checkpoint, make_config, save_checkpoint
    from napari_softseg.engine.model import UNet
    from napari_softseg.engine.predict import MODELS_DIR

    assert review_profile(None, MODELS_DIR / "brain-gm.pt").target == "tissue"
    lesion = review_profile(load_checkpoint(MODELS_DIR / "ms-lesion.pt")[1], MODELS_DIR / "ms-lesion.pt")
    assert lesion.target == "lesions" and lesion.flags is not None and "sidecar" in lesion.flags_source
    net = UNet(1, 1, depth=1, base_features=2)
    old = save_checkpoint(tmp_path / "old.pt", net, make_config(net, classes=["thing"]))
    p = review_profile(load_checkpoint(old)[1], old)
    assert p.target is None and p.flags_source.startswith("default: fitted for the shipped ms-lesion")
    assert decide_target(None, 30, 1000) == "tissue" and decide_target(None, 10, 1000) == "lesions"
    named = save_checkpoint(tmp_path / "named.pt", net, make_config(net, classes=["MS lesion"]))
    assert review_profile(load_checkpoint(named)[1], named).target == "lesions"
    # fit_flags.py stores into the checkpoint (weights untouched) or a sidecar
    before = load_checkpoint(old)[0]
    store_review_metadata(old, target="tissue", flags=_hand_flags())
    state, config = load_checkpoint(old)
    assert all(np.array_equal(state[k].numpy(), before[k].numpy()) for k in before)
    p = review_profile(config, old)
    assert p.target == "tissue" and p.flags.label == "by hand" and "stored in the checkpoint" in p.flags_source
    copy = tmp_path / "copy.pt"
    shutil.copy(named, copy)
    assert store_review_metadata(copy, target="lesions", flags=_hand_flags(), sidecar=True) == sidecar_path(copy)
    assert review_profile(load_checkpoint(copy)[1], copy).flags_source == "fitted for this model (sidecar file)"
    save_checkpoint(copy, UNet(1, 1, depth=1, base_features=2), make_config(net))  # retrained: another file
    assert "another version" in review_profile(load_checkpoint(copy)[1], copy).flags_source


def test_tissue_review_has_no_lesion_table_and_summarises_the_structure(tmp_path):
    soft = np.zeros((20, 20, 10), np.float32)
    soft[2:12, 2:12, 2:8] = 1.0
    soft[12, 2:12, 2:8] = 0.5  # a partial-volume edge: 60 voxels at 0.5
    samples = np.stack([soft, soft])
    samples[1, 2:4] = 0.0  # the second sample lacks 2 of 10 rows: 480 of 660 voxels
    review = Review(soft, spacing=(1.0, 1.0, 2.0), threshold=0.5, target="tissue", samples=samples)
    assert len(review.analyse()) == 0 and review.rows() == []
    st = review.summary()["structure"]
    assert st["hard_voxels"] == 660 and st["hard_volume_mm3"] == 1320.0
    assert st["soft_volume_mm3"] == pytest.approx((600 + 30) * 2.0)
    assert st["boundary_volume_mm3"] == 120.0 and st["boundary_fraction"] == pytest.approx(60 / 660)
    assert st["mean_entropy_bits"] == pytest.approx(60 / 660)  # 600 voxels at 0 bits, 60 at 1 bit
    assert st["sample_iou"] == pytest.approx(540 / 660)
    assert st["hard_volume_cv"] == pytest.approx(np.std([1320, 1080]) / np.mean([1320, 1080]))
    paths = review.export(tmp_path, "gm", affine=np.eye(4))
    with open(paths["csv"], newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert float(row["hard_volume_mm3"]) == 1320.0 and float(row["soft_volume_mm3"]) == pytest.approx(1260.0)
    doc = json.loads(paths["json"].read_text())
    assert doc["target"] == "tissue" and doc["lesions"] == [] and doc["summary"]["structure"]["hard_voxels"] == 660


def test_the_shipped_fit_scores_an_uncertain_lesion_above_a_certain_one():
    """The shipped ms-lesion fit (no samples): same size and shape, the lesion whose probability
    sits near 0.5 (entropy near 1 bit) scores higher than the sure one, monotonically; an
    elongated one (two touching lesions merged) scores higher than a round one."""
    from napari_softseg.engine.predict import MODELS_DIR

    flags = review_profile(None, MODELS_DIR / "ms-lesion.pt").flags
    soft = np.zeros((80, 12, 8), np.float32)
    levels = (0.98, 0.9, 0.75, 0.6, 0.5)
    for k, p in enumerate(levels):  # 4 x 4 x 3 mm: round
        _cube(soft, (2 + 10 * k, 2, 3), (6 + 10 * k, 6, 4), p)
    _cube(soft, (60, 2, 3), (72, 5, 4), 0.98)  # 12 x 3 x 3 mm: elongated
    review = Review(soft, spacing=(1.0, 1.0, 3.0), threshold=flags.model_threshold, flags=flags)
    table = review.analyse()
    scores = [table.by_id(int(table.labels[3 + 10 * k, 3, 3])).flag_score for k in range(len(levels))]
    assert np.all(np.diff(scores) > 0)
    long = table.by_id(int(table.labels[61, 3, 3]))
    assert long.flag_score > scores[0] and "elongated" in long.score_reason
