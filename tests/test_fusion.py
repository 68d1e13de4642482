"""Label fusion: identities, tie rules, STAPLE against SimpleITK and an independent EM."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from napari_softseg.errors import UserError
from napari_softseg.fusion.methods import METHODS, RandomRaterSampler, disagreement_map, fuse, rater_statistics
from napari_softseg.fusion.staple import soft_staple, staple

from _oracles import itk_staple as run_itk  # SimpleITK: a test requirement, never skipped
from _oracles import reference_soft_staple


# --------------------------------------------------------------------------- helpers


def synthetic_raters(shape=(40, 40, 40), sens=(0.95, 0.85, 0.7, 0.9, 0.6), spec=(0.99, 0.995, 0.98, 0.97, 0.999), seed=0):
    """Spheres as truth; each rater misses foreground with 1-sens and adds background with 1-spec."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    truth = np.zeros(shape, bool)
    for c, r in (((12, 12, 12), 7), ((28, 26, 25), 9), ((10, 30, 30), 4)):
        truth |= sum((g - ci) ** 2 for g, ci in zip(grid, c)) <= r * r
    raters = []
    for p, q in zip(sens, spec):
        u = rng.random(shape)
        raters.append(np.where(truth, u < p, u > q).astype(np.uint8))
    return truth, raters


def assert_matches_itk(raters, res):
    post, sens, spec, elapsed = run_itk(raters)
    agree = np.mean((post > 0.5) == (res.posterior > 0.5))
    assert agree >= 0.999
    np.testing.assert_allclose(res.sensitivity, sens, atol=1e-6)
    np.testing.assert_allclose(res.specificity, spec, atol=1e-6)
    np.testing.assert_allclose(res.posterior, post, atol=1e-5)
    assert abs(res.iterations - (elapsed + 1)) <= 1  # ITK reports the 0-based index of the last iteration
    return agree


def reference_multiclass_staple(labels, K, iters=300):
    """Direct voxel-wise multi-class STAPLE (Warfield 2004, section II-C) in float64."""
    L = np.stack([np.asarray(x).ravel() for x in labels])  # (R, N)
    R, N = L.shape
    W = np.stack([(L == k).mean(axis=0) for k in range(K)], axis=1)  # (N, K)
    f = W.mean(axis=0)
    for _ in range(iters):
        theta = np.empty((R, K, K))
        for j in range(R):
            for l in range(K):
                theta[j, l] = W[L[j] == l].sum(axis=0) / W.sum(axis=0)
        logw = np.log(f)[None, :].repeat(N, 0)
        for j in range(R):
            logw += np.log(theta[j, L[j], :])
        W = np.exp(logw - logw.max(1, keepdims=True))
        W /= W.sum(1, keepdims=True)
    return W.reshape(np.shape(labels[0]) + (K,)), theta


# --------------------------------------------------------------------------- identities and tie rules


def test_registry_names_match_cli_choices():
    from napari_softseg.commands.fuse import METHOD_NAMES

    assert tuple(METHODS) == METHOD_NAMES == ("average", "majority", "staple", "soft-staple")


@pytest.mark.parametrize("method", ["average", "staple", "soft-staple"])
def test_identical_binary_raters_fuse_to_that_rater(method):
    _, raters = synthetic_raters(shape=(16, 16, 16))
    r = raters[0]
    res = fuse([r, r, r], method)
    np.testing.assert_array_equal(res.hard, r)
    np.testing.assert_allclose(res.soft, r, atol=1e-6)
    assert res.soft.dtype == np.float32 and res.hard.dtype == np.uint8
    if method != "average":
        np.testing.assert_allclose(res.sensitivity, 1.0, atol=1e-6)
        np.testing.assert_allclose(res.specificity, 1.0, atol=1e-6)


def test_average_of_identical_soft_raters_is_that_rater():
    r = np.random.default_rng(1).random((8, 9, 10)).astype(np.float32)
    np.testing.assert_allclose(fuse([r, r, r, r], "average").soft, r, rtol=0, atol=1e-7)


def test_average_values_and_half_split_is_foreground():
    a = np.array([[0, 1, 1, 0]], np.uint8)
    b = np.array([[0, 1, 0, 0]], np.uint8)
    c = np.array([[0, 1, 0, 1]], np.uint8)
    res = fuse([a, b, c], "average")
    np.testing.assert_allclose(res.soft, [[0, 1, 1 / 3, 1 / 3]], atol=1e-7)
    two = fuse([a, b], "average")
    np.testing.assert_allclose(two.soft, [[0, 1, 0.5, 0]])
    np.testing.assert_array_equal(two.hard, [[0, 1, 1, 0]])  # binarize: 0.5 >= 0.5


def test_majority_of_three_with_known_pattern():
    r1 = np.array([1, 1, 0, 0, 1, 0, 1, 0], np.uint8)
    r2 = np.array([1, 0, 1, 0, 1, 0, 0, 1], np.uint8)
    r3 = np.array([1, 0, 0, 1, 0, 0, 1, 1], np.uint8)
    # votes:      3  1  1  1  2  0  2  2
    res = fuse([r1, r2, r3], "majority")
    np.testing.assert_array_equal(res.hard, [1, 0, 0, 0, 1, 0, 1, 1])
    np.testing.assert_array_equal(res.soft, res.hard.astype(np.float32))


def test_majority_tie_is_background_and_soft_raters_are_binarised_first():
    r1 = np.array([1, 1, 0, 0.6, 0.5], np.float32)
    r2 = np.array([1, 0, 0, 0.7, 1.0], np.float32)
    r3 = np.array([1, 1, 1, 0.2, 0.5], np.float32)
    r4 = np.array([0, 0, 1, 0.9, 0.4], np.float32)
    # votes (binarize: >= 0.5): 3, 2, 2, 3, 3 of 4 -> ties (2 of 4) are background
    np.testing.assert_array_equal(fuse([r1, r2, r3, r4], "majority").hard, [1, 0, 0, 1, 1])


def test_multiclass_average_and_majority_ties_go_to_lowest_label():
    r1 = np.array([0, 1, 2, 2], np.uint8)
    r2 = np.array([1, 2, 2, 1], np.uint8)
    r3 = np.array([2, 1, 0, 1], np.uint8)
    maj = fuse([r1, r2, r3], "majority", n_classes=3)
    np.testing.assert_array_equal(maj.hard, [0, 1, 2, 1])  # voxel 0: one vote each -> label 0
    assert maj.soft.shape == (4, 3)
    avg = fuse([r1, r2, r3], "average", multiclass=True)
    np.testing.assert_allclose(avg.soft[0], [1 / 3, 1 / 3, 1 / 3], atol=1e-7)
    np.testing.assert_allclose(avg.soft[2], [1 / 3, 0, 2 / 3], atol=1e-7)
    np.testing.assert_array_equal(avg.hard, [0, 1, 2, 1])


# --------------------------------------------------------------------------- STAPLE vs SimpleITK


@pytest.mark.slow
def test_staple_matches_simpleitk_on_real_raters_full_volume(shared_data):
    from napari_softseg.io.nifti import read_nifti

    d = shared_data / "isbi2015_raters"
    raters = [read_nifti(d / f"training01_rater{i}.nii.gz").data for i in (1, 2)]
    assert raters[0].shape == (181, 217, 181)
    res = staple(raters)
    assert res.posterior.dtype == np.float32
    assert_matches_itk(raters, res)
    assert res.converged
    np.testing.assert_allclose(res.prior, np.mean([r.mean() for r in raters]), rtol=1e-9)  # ITK's global prior


@pytest.mark.parametrize("patient", [2, 3, 4, 5])
def test_staple_matches_simpleitk_on_other_real_patients(shared_data, patient):
    from napari_softseg.io.nifti import read_nifti

    d = shared_data / "isbi2015_raters"
    raters = [read_nifti(d / f"training0{patient}_rater{i}.nii.gz").data for i in (1, 2)]
    # the lesions' bounding box plus a margin keeps the test quick; both sides see the same crop
    idx = np.argwhere(raters[0] | raters[1])
    box = tuple(slice(max(lo - 8, 0), hi + 9) for lo, hi in zip(idx.min(0), idx.max(0)))
    cropped = [np.ascontiguousarray(r[box]) for r in raters]
    assert_matches_itk(cropped, staple(cropped))


def test_staple_matches_simpleitk_on_synthetic_raters_and_recovers_performance():
    truth, raters = synthetic_raters()
    res = staple(raters)
    assert_matches_itk(raters, res)
    # the estimates approach the simulated rates (loosely: 7 % foreground, finite sample)
    np.testing.assert_allclose(res.sensitivity, [0.95, 0.85, 0.7, 0.9, 0.6], atol=0.05)
    np.testing.assert_allclose(res.specificity, [0.99, 0.995, 0.98, 0.97, 0.999], atol=0.01)
    assert np.mean(res.hard() == truth) > 0.99


def test_staple_with_many_raters_uses_the_large_pattern_path():
    _, raters = synthetic_raters(shape=(12, 12, 12), sens=[0.8] * 22, spec=[0.95] * 22, seed=3)
    res = staple(raters)  # 2**22 possible patterns: unique-based histogram
    ref = soft_staple(raters)  # the voxel-wise engine on the same binary maps
    np.testing.assert_allclose(res.posterior, ref.posterior, atol=1e-4)
    np.testing.assert_allclose(res.sensitivity, ref.sensitivity, atol=1e-5)
    assert_matches_itk(raters, res)


def test_staple_makes_no_float64_copy_per_rater():
    rng = np.random.default_rng(0)
    raters = [(rng.random((100, 100, 100)) < 0.1 + 0.02 * j).astype(np.uint8) for j in range(7)]
    tracemalloc.start()
    res = staple(raters)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    one_float64_copy_each = 8 * raters[0].size * len(raters)
    assert res.posterior.dtype == np.float32
    assert peak < 0.5 * one_float64_copy_each


# --------------------------------------------------------------------------- STAPLE options and variants


def test_soft_staple_equals_staple_on_binary_raters():
    _, raters = synthetic_raters(shape=(24, 24, 24))
    a, b = staple(raters), soft_staple(raters)
    np.testing.assert_allclose(b.posterior, a.posterior, atol=2e-5)
    np.testing.assert_allclose(b.sensitivity, a.sensitivity, atol=1e-6)
    np.testing.assert_allclose(b.specificity, a.specificity, atol=1e-6)


def test_soft_staple_matches_an_independent_float64_em_on_soft_raters():
    truth, raters = synthetic_raters(shape=(20, 20, 20))
    from scipy import ndimage

    soft = [np.clip(ndimage.gaussian_filter(r.astype(np.float32), 0.8), 0, 1) for r in raters]
    res = fuse(soft, "soft-staple", tol=1e-9)
    W, p, q = reference_soft_staple(soft)
    np.testing.assert_allclose(res.soft, W, atol=2e-4)
    np.testing.assert_allclose(res.sensitivity, p, atol=1e-4)
    np.testing.assert_allclose(res.specificity, q, atol=1e-5)
    assert 0 < res.soft.min() and res.soft.max() <= 1


def test_multiclass_staple_with_two_classes_equals_binary_staple():
    from napari_softseg.fusion.staple import em_patterns, pattern_histogram

    _, raters = synthetic_raters(shape=(16, 16, 16))
    binary = staple(raters)
    pats, counts, _, _ = pattern_histogram([r.astype(bool) for r in raters], 2)
    W, theta, f, it, _ = em_patterns(pats, counts, 2)
    np.testing.assert_allclose(theta[:, 1, 1], binary.sensitivity, atol=1e-12)
    assert it == binary.iterations


def test_multiclass_staple_matches_direct_em():
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 3, size=(10, 10, 10))
    labels = []
    for acc in (0.9, 0.8, 0.7, 0.85):
        noise = rng.integers(0, 3, size=truth.shape)
        labels.append(np.where(rng.random(truth.shape) < acc, truth, noise).astype(np.uint8))
    res = fuse(labels, "staple", n_classes=3, tol=1e-12, max_iter=300)
    W, theta = reference_multiclass_staple(labels, 3)
    assert res.soft.shape == (10, 10, 10, 3)
    np.testing.assert_allclose(res.soft, W, atol=1e-5)
    np.testing.assert_allclose(res.sensitivity, np.stack([theta[:, k, k] for k in range(3)], 1), atol=1e-6)
    np.testing.assert_array_equal(res.hard, np.argmax(W, axis=-1))


def test_multiclass_staple_with_an_unused_label():
    rng = np.random.default_rng(6)
    labels = [rng.integers(0, 3, size=(8, 8, 8)).astype(np.uint8) for _ in range(3)]
    three = fuse(labels, "staple", n_classes=3)
    four = fuse(labels, "staple", n_classes=4)  # label 3 never used: zero prior, zero posterior
    np.testing.assert_allclose(four.soft[..., :3], three.soft, atol=1e-6)
    assert np.all(four.soft[..., 3] == 0)
    np.testing.assert_array_equal(four.hard, three.hard)


def test_per_voxel_prior_equal_to_the_global_prior_gives_the_same_result():
    _, raters = synthetic_raters(shape=(20, 20, 20))
    g = 0.1
    a = staple(raters, prior=g)
    b = staple(raters, prior=np.full(raters[0].shape, g, np.float32))
    np.testing.assert_allclose(b.posterior, a.posterior, atol=2e-5)
    np.testing.assert_allclose(b.sensitivity, a.sensitivity, atol=1e-5)
    assert a.prior == g


def test_restrict_to_disagreement_keeps_consensus_and_estimates_elsewhere():
    _, raters = synthetic_raters(shape=(20, 20, 20))
    res = staple(raters, restrict_to_disagreement=True)
    stack = np.stack(raters)
    all_on, all_off = stack.min(0) == 1, stack.max(0) == 0
    assert np.all(res.posterior[all_on] == 1) and np.all(res.posterior[all_off] == 0)
    dense = soft_staple(raters, restrict_to_disagreement=True)
    np.testing.assert_allclose(dense.posterior, res.posterior, atol=2e-5)
    np.testing.assert_allclose(dense.sensitivity, res.sensitivity, atol=1e-6)
    # only disagreement voxels are counted: sensitivity = sum over the rater's marks of W / sum W
    dis = ~(all_on | all_off)
    W = res.posterior[dis].astype(np.float64)
    np.testing.assert_allclose(res.sensitivity[0], W[raters[0][dis] == 1].sum() / W.sum(), rtol=1e-5)


def test_initial_performance_values_start_with_an_e_step():
    _, raters = synthetic_raters(shape=(20, 20, 20))
    a = staple(raters, init_sensitivity=0.99999, init_specificity=0.99999)
    b = soft_staple(raters, init_sensitivity=0.99999, init_specificity=0.99999)
    np.testing.assert_allclose(a.sensitivity, b.sensitivity, atol=1e-4)
    c = staple(raters)
    np.testing.assert_allclose(a.sensitivity, c.sensitivity, atol=1e-3)  # same fixed point
    one = staple(raters, init_sensitivity=0.9, init_specificity=0.9, max_iter=1)
    # one E-step from p = q = 0.9 with ITK's prior: W = g a / (g a + (1-g) b)
    votes = np.sum(raters, axis=0)
    g = np.mean(votes) / len(raters)
    a1 = 0.9 ** votes * 0.1 ** (len(raters) - votes)
    b1 = 0.1 ** votes * 0.9 ** (len(raters) - votes)
    np.testing.assert_allclose(one.posterior, g * a1 / (g * a1 + (1 - g) * b1), atol=1e-6)
    assert one.iterations == 1 and not one.converged


def test_staple_with_no_foreground_is_defined():
    z = np.zeros((4, 4, 4), np.uint8)
    res = staple([z, z])
    assert np.all(res.posterior == 0)
    assert math.isnan(res.sensitivity[0])  # undefined, as in ITK (0/0)
    np.testing.assert_allclose(res.specificity, 1.0)


# --------------------------------------------------------------------------- other helpers


def test_random_rater_sampler_is_deterministic_and_varies_by_epoch():
    s = RandomRaterSampler(4, seed=7)
    a, b = s.draw(0, 1000), RandomRaterSampler(4, seed=7).draw(0, 1000)
    assert a.dtype == np.int64 and a.shape == (1000,)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, s.draw(1, 1000))
    assert not np.array_equal(a, RandomRaterSampler(4, seed=8).draw(0, 1000))
    assert a.min() == 0 and a.max() == 3
    counts = np.bincount(np.concatenate([s.draw(e, 1000) for e in range(10)]), minlength=4)
    assert np.all(np.abs(counts - 2500) < 200)
    with pytest.raises(UserError):
        RandomRaterSampler(0)


def test_disagreement_map_is_entropy_of_the_average():
    r1 = np.array([0, 1, 1, 0, 1], np.uint8)
    r2 = np.array([0, 1, 0, 0, 0], np.uint8)
    r3 = np.array([0, 1, 0, 1, 1], np.uint8)
    h = disagreement_map([r1, r2, r3])
    h13 = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3)) / math.log(2)  # 0.6365 nats / ln 2 = 0.918 bits
    np.testing.assert_allclose(h, [0, 0, h13, h13, h13], atol=1e-6)
    np.testing.assert_allclose(disagreement_map([r1, r2])[2], math.log(2) / math.log(2), atol=1e-6)
    assert h.dtype == np.float32


def test_rater_statistics_dice_against_consensus():
    r1 = np.array([1, 1, 1, 0, 0, 0], np.uint8)
    r2 = np.array([1, 1, 0, 0, 0, 0], np.uint8)
    r3 = np.array([1, 0, 1, 1, 0, 0], np.uint8)
    res = fuse([r1, r2, r3], "majority")  # consensus [1, 1, 1, 0, 0, 0]
    rows = rater_statistics([r1, r2, r3], res, names=["a", "b", "c"], spacing=(1, 1, 2))
    assert [r["name"] for r in rows] == ["a", "b", "c"]
    np.testing.assert_allclose([r["dice"] for r in rows], [100.0, 80.0, 200 * 2 / 6])  # TP 3/2/2, sizes 3/2/3 vs 3
    assert rows[2]["volume_mm3"] == 6.0 and "sensitivity" not in rows[0]
    st = rater_statistics([r1, r2, r3], fuse([r1, r2, r3], "staple"))
    assert 0 <= st[0]["sensitivity"] <= 1


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda r: fuse(r, "median"), "Unknown fusion method"),
        (lambda r: fuse([r[0], r[1][:-1]], "average"), "shape"),
        (lambda r: fuse([r[0] * 3, r[1]], "staple"), "n_classes"),
        (lambda r: fuse(r, "average", max_iter=3), "does not take"),
        (lambda r: fuse([r[0] * 2, r[1]], "soft-staple", n_classes=3), "binary or soft"),
        (lambda r: fuse([r[0] * 5, r[1]], "majority", n_classes=3), "outside 0..2"),
    ],
)
def test_fusion_user_errors(call, words):
    _, raters = synthetic_raters(shape=(6, 6, 6))
    with pytest.raises(UserError, match=words):
        call(raters)
