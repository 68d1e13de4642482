"""``napari-softseg fuse`` and ``evaluate``: NIfTI round trips, reports and clear errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_softseg.commands import main
from napari_softseg.io.nifti import read_nifti, write_nifti

from _oracles import dice_percent, itk_staple, reference_soft_staple

AFFINE = np.array([[-1.0, 0, 0, 20], [0, 1.0, 0, -10], [0, 0, 2.0, 5], [0, 0, 0, 1]])  # LAS-like, 2 mm slices


@pytest.fixture()
def raters(tmp_path):
    rng = np.random.default_rng(0)
    truth = np.zeros((16, 14, 10), np.uint8)
    truth[3:9, 3:9, 2:6] = 1
    truth[11:14, 9:12, 6:9] = 1
    paths, arrays = [], []
    for j, (fn, fp) in enumerate([(0.05, 0.01), (0.2, 0.02), (0.1, 0.05)]):
        u = rng.random(truth.shape)
        r = np.where(truth == 1, u > fn, u < fp).astype(np.uint8)
        path = tmp_path / f"rater{j + 1}.nii.gz"
        write_nifti(path, r, affine=AFFINE)
        paths.append(str(path))
        arrays.append(r)
    return paths, arrays, truth


def test_fuse_average_round_trip_keeps_geometry(raters, tmp_path, capsys):
    paths, arrays, _ = raters
    out = tmp_path / "avg.nii.gz"
    assert main(["fuse", "--method", "average", "-o", str(out), *paths]) == 0
    vol = read_nifti(out)
    np.testing.assert_allclose(vol.affine, AFFINE)
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data, np.mean(arrays, axis=0), atol=1e-6)
    assert "average: 3 raters fused" in capsys.readouterr().out


def test_fuse_staple_report_matches_simpleitk(raters, tmp_path):
    paths, arrays, _ = raters
    out, hard, report = tmp_path / "st.nii.gz", tmp_path / "hard.nii.gz", tmp_path / "report.json"
    rc = main(["fuse", "-m", "staple", "-o", str(out), "--hard", str(hard), "--report", str(report), *paths])
    assert rc == 0
    post, sens, spec, elapsed = itk_staple(arrays)
    np.testing.assert_allclose(read_nifti(out).data, post, atol=1e-5)
    consensus = read_nifti(hard).data
    clear = np.abs(post - 0.5) > 1e-4
    np.testing.assert_array_equal(consensus[clear], (post >= 0.5)[clear])
    doc = json.loads(report.read_text())
    assert doc["method"] == "staple" and abs(doc["iterations"] - (elapsed + 1)) <= 1 and doc["converged"] is True
    assert [r["name"] for r in doc["raters"]] == ["rater1", "rater2", "rater3"]
    np.testing.assert_allclose([r["sensitivity"] for r in doc["raters"]], sens, atol=1e-6)
    np.testing.assert_allclose([r["specificity"] for r in doc["raters"]], spec, atol=1e-6)
    assert doc["consensus_volume_mm3"] == pytest.approx(2.0 * np.count_nonzero(consensus))  # 1 x 1 x 2 mm voxels
    for r, a in zip(doc["raters"], arrays):
        assert r["dice"] == pytest.approx(dice_percent(a, consensus), abs=1e-6)


def test_fuse_soft_staple_of_soft_rater_files(raters, tmp_path, capsys):
    """`fuse -m soft-staple` on float maps: soft votes as fractional counts (float64 EM oracle)."""
    from scipy import ndimage

    _, arrays, _ = raters
    paths, soft = [], []
    for j, a in enumerate(arrays):
        s = np.clip(ndimage.gaussian_filter(a.astype(np.float32), 0.7), 0, 1).astype(np.float32)
        path = tmp_path / f"soft{j + 1}.nii.gz"
        write_nifti(path, s, affine=AFFINE)
        paths.append(str(path))
        soft.append(read_nifti(path).data.astype(np.float64))
    out, report = tmp_path / "ss.nii.gz", tmp_path / "ss.json"
    assert main(["fuse", "-m", "soft-staple", "-o", str(out), "--report", str(report), *paths]) == 0
    W, p, q = reference_soft_staple(soft)
    fused = read_nifti(out)
    np.testing.assert_allclose(fused.affine, AFFINE)
    np.testing.assert_allclose(fused.data, W, atol=2e-4)
    doc = json.loads(report.read_text())
    assert doc["method"] == "soft-staple"
    np.testing.assert_allclose([r["sensitivity"] for r in doc["raters"]], p, atol=1e-4)
    np.testing.assert_allclose([r["specificity"] for r in doc["raters"]], q, atol=1e-5)
    assert np.abs(fused.data - np.mean(soft, axis=0)).max() > 0.05  # not the plain average


def test_fuse_majority_writes_labels_and_multiclass_writes_classes_last(raters, tmp_path):
    paths, arrays, _ = raters
    out = tmp_path / "maj.nii.gz"
    assert main(["fuse", "-m", "majority", "-o", str(out), *paths]) == 0
    data = read_nifti(out).data
    assert data.dtype == np.uint8
    np.testing.assert_array_equal(data, (np.sum(arrays, axis=0) >= 2).astype(np.uint8))
    labels = []
    for j, a in enumerate(arrays):
        lab = a * (1 + (np.indices(a.shape)[0] > 8))  # labels 0, 1, 2
        p = tmp_path / f"lab{j}.nii.gz"
        write_nifti(p, lab.astype(np.uint8), affine=AFFINE)
        labels.append(str(p))
    mc, mc_hard = tmp_path / "mc.nii.gz", tmp_path / "mc_hard.nii.gz"
    assert main(["fuse", "-m", "staple", "--n-classes", "3", "-o", str(mc), "--hard", str(mc_hard), *labels]) == 0
    soft = read_nifti(mc).data
    assert soft.shape == (16, 14, 10, 3)
    np.testing.assert_allclose(soft.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(read_nifti(mc_hard).data, np.argmax(soft, -1))


def test_fuse_mismatched_raters_exit_2_with_one_sentence(raters, tmp_path, capsys):
    paths, arrays, _ = raters
    other_shape = tmp_path / "small.nii.gz"
    write_nifti(other_shape, arrays[0][:-1], affine=AFFINE)
    assert main(["fuse", "-m", "staple", "-o", str(tmp_path / "x.nii.gz"), paths[0], str(other_shape)]) == 2
    err = capsys.readouterr().err.strip()
    assert "small does not match rater1: shape" in err and err.count("\n") == 0
    shifted = tmp_path / "shifted.nii.gz"
    aff = AFFINE.copy()
    aff[0, 3] += 5
    write_nifti(shifted, arrays[1], affine=aff)
    assert main(["fuse", "-m", "average", "-o", str(tmp_path / "y.nii.gz"), paths[0], str(shifted)]) == 2
    assert "affines differ" in capsys.readouterr().err
    assert main(["fuse", "-m", "average", "-o", str(tmp_path / "z.nii.gz"), paths[0]]) == 2
    assert "at least two rater files" in capsys.readouterr().err
    assert main(["fuse", "-m", "average", "--max-iter", "5", "-o", str(tmp_path / "w.nii.gz"), *paths]) == 2
    assert "applies to STAPLE" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in ("x.nii.gz", "y.nii.gz", "z.nii.gz", "w.nii.gz"))


def test_evaluate_round_trip_json(raters, tmp_path, capsys):
    paths, arrays, truth = raters
    fused = np.mean(arrays, axis=0).astype(np.float32)  # values 0, 1/3, 2/3, 1
    pred_path, truth_path, js = tmp_path / "pred.nii.gz", tmp_path / "truth.nii.gz", tmp_path / "m.json"
    write_nifti(pred_path, fused, affine=AFFINE)
    write_nifti(truth_path, truth, affine=AFFINE)
    rc = main(["evaluate", "--pred", str(pred_path), "--truth", str(truth_path), "--raters", *paths, "--json", str(js)])
    assert rc == 0
    doc = json.loads(js.read_text())
    # by hand, in numpy: the prediction binarised at >= 0.5, volumes in mm³ (2 mm slices)
    hard, t = fused >= 0.5, truth > 0
    tp, fp, fn = int((hard & t).sum()), int((hard & ~t).sum()), int((~hard & t).sum())
    assert doc["dice"] == pytest.approx(200.0 * tp / (2 * tp + fp + fn), rel=1e-9)
    assert doc["precision"] == pytest.approx(100.0 * tp / (tp + fp), rel=1e-9)
    assert doc["recall"] == pytest.approx(100.0 * tp / (tp + fn), rel=1e-9)
    assert doc["avd"] == pytest.approx(100.0 * abs(int(hard.sum()) - int(t.sum())) / int(t.sum()), rel=1e-9)
    assert doc["mse"] == pytest.approx(float(np.mean((fused.astype(np.float64) - truth) ** 2)), rel=1e-6)
    assert doc["soft_dice"] == pytest.approx(200.0 * float((fused * truth).sum()) / float(fused.sum() + truth.sum()),
                                             rel=1e-6)
    # lesions: 18-connected components; a truth lesion is found with >= 3 voxels of overlap,
    # a predicted one is false when it touches no truth voxel
    from _oracles import components

    t_lab, n_t = components(t)
    p_lab, n_p = components(hard)
    found = sum(int((hard & (t_lab == k)).sum()) >= min(3, int((t_lab == k).sum())) for k in range(1, n_t + 1))
    false = sum(not (t & (p_lab == k)).any() for k in range(1, n_p + 1))
    assert (n_t, found) == (2, 2) and false >= 1  # this noise makes a false lesion
    assert doc["ltpr"] == pytest.approx(100.0 * found / n_t) and doc["lfdr"] == pytest.approx(100.0 * false / n_p)
    # the rater average is the prediction itself: the entropy error is 0
    assert doc["entropy_mae"] == pytest.approx(0.0, abs=1e-9)
    assert doc["volume_truth_mm3"] == pytest.approx(2.0 * truth.sum()) and doc["units"]["dice"] == "%"
    text = capsys.readouterr().out
    assert "dice" in text and "entropy_mae" in text


def test_evaluate_empty_truth_gives_null_with_reason(raters, tmp_path, capsys):
    paths, arrays, _ = raters
    pred_path, truth_path, js = tmp_path / "p.nii.gz", tmp_path / "t.nii.gz", tmp_path / "e.json"
    write_nifti(pred_path, arrays[0].astype(np.float32), affine=AFFINE)
    write_nifti(truth_path, np.zeros_like(arrays[0]), affine=AFFINE)
    assert main(["evaluate", "--pred", str(pred_path), "--truth", str(truth_path), "--json", str(js)]) == 0
    doc = json.loads(js.read_text())
    assert doc["rvd"] is None and doc["ltpr"] is None and "truth is empty" in doc["nan_reasons"]["rvd"]
    assert "entropy_mae" not in doc and not math.isnan(doc["dice"])
    assert "note: rvd is n/a" in capsys.readouterr().out


def test_evaluate_grid_mismatch_and_non_probability_exit_2(raters, tmp_path, capsys):
    paths, arrays, _ = raters
    moved = tmp_path / "moved.nii.gz"
    aff = AFFINE.copy()
    aff[2, 2] = 3.0
    write_nifti(moved, arrays[0], affine=aff)
    assert main(["evaluate", "--pred", paths[0], "--truth", str(moved)]) == 2
    assert "does not match" in capsys.readouterr().err
    big = tmp_path / "big.nii.gz"
    write_nifti(big, arrays[0] * 7, affine=AFFINE)
    assert main(["evaluate", "--pred", str(big), "--truth", paths[1]]) == 2
    assert "expects masks or probabilities" in capsys.readouterr().err
