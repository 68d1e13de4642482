"""The lesion phantom: exact truth, documented rater styles, determinism, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_softseg.io.nifti import read_nifti
from napari_softseg.io.phantom import RATER_STYLES, SLAB, render_fraction

S18 = ndi.generate_binary_structure(3, 2)


def _dice(a, b):
    a, b = a > 0, b > 0
    return 2 * np.sum(a & b) / (a.sum() + b.sum())


def test_truth_volume_equals_analytic_volume(phantom):
    total = float(phantom.truth.sum(dtype=np.float64)) * phantom.voxel_volume
    analytic = phantom.analytic_volume_mm3()
    assert abs(total - analytic) / analytic < 0.005
    # and lesion by lesion (each rendered alone), for every size from 3 mm
    for les in phantom.lesions:
        _, frac = render_fraction(les, phantom.truth.shape)
        assert abs(frac.sum() * phantom.voxel_volume - les.volume_mm3) / les.volume_mm3 < 0.01


def test_lesion_design(phantom):
    diam = [les.diameter_mm for les in phantom.lesions]
    assert min(diam) == pytest.approx(3.0) and max(diam) == pytest.approx(15.0)
    faint = [les for les in phantom.lesions if les.faint]
    assert len(faint) == 3
    pairs = [les for les in phantom.lesions if les.touching]
    assert len(pairs) == 4
    for les in pairs:
        other = phantom.lesions[les.touching - 1]
        d = np.linalg.norm(np.subtract(les.centre, other.centre))
        assert d == pytest.approx(les.semi_axes[0] + other.semi_axes[0], abs=1e-9)  # tangent spheres
    assert phantom.truth.min() >= 0 and phantom.truth.max() <= 1
    partial = np.count_nonzero((phantom.truth > 0) & (phantom.truth < 1))
    assert partial > np.count_nonzero(phantom.truth == 1)  # thick slices: mostly partial volume
    np.testing.assert_allclose(phantom.affine[:3, :3], np.diag([1.0, 1.0, SLAB]), atol=1e-12)  # axis-aligned RAS


def test_lesions_are_hyperintense_and_faint_ones_less(phantom):
    img, truth = phantom.image, phantom.truth
    wm_like = img[(truth == 0) & (img > 0)]
    for les in phantom.lesions:
        box, frac = render_fraction(les, truth.shape)
        core = img[box][frac > 0.9]
        if core.size == 0:
            continue
        contrast = core.mean() / np.median(wm_like)
        assert (1.1 < contrast < 1.6) if les.faint else (contrast > 1.6), (les.id, contrast)


def test_raters_follow_their_styles(phantom):
    truth, r = phantom.truth, phantom.raters
    ref = truth >= 0.5
    n_ref = ndi.label(ref, S18)[1]
    # conservative: only cores, inside the reference, clearly smaller
    assert np.all(r["conservative"] <= ref)
    assert r["conservative"].sum() < 0.85 * ref.sum()
    # generous: covers the reference and is clearly larger
    assert np.all(r["generous"] >= ref)
    assert r["generous"].sum() > 1.5 * ref.sum()
    # jitter: same lesions, boundaries moved both ways
    assert abs(ndi.label(r["jitter"], S18)[1] - n_ref) <= 1
    assert 0.6 < _dice(r["jitter"], ref) < 0.95
    assert np.any(r["jitter"] & ~ref) and np.any(ref & ~r["jitter"])
    # misses_small: exact elsewhere, misses the faint lesions and those under 5 mm
    for les in phantom.lesions:
        box, frac = render_fraction(les, truth.shape)
        marked = r["misses_small"][box][frac >= 0.5]
        if les.faint or les.diameter_mm < 5.0:
            assert not marked.any(), les.id
        elif les.touching is None or not (phantom.lesions[les.touching - 1].diameter_mm < 5.0):
            assert marked.all(), les.id
    assert ndi.label(r["misses_small"], S18)[1] < n_ref
    assert set(r) == set(RATER_STYLES)


def test_files_match_the_phantom(phantom, phantom_paths):
    truth = read_nifti(phantom_paths["truth"])
    np.testing.assert_array_equal(truth.data, phantom.truth)
    np.testing.assert_allclose(truth.affine, phantom.affine, atol=1e-5)
    image = read_nifti(phantom_paths["image"])
    assert image.kind() == "image" and image.data.shape == phantom.truth.shape
    for style in RATER_STYLES:
        np.testing.assert_array_equal(read_nifti(phantom_paths[f"rater_{style}"]).data, phantom.raters[style])
    info = json.loads(phantom_paths["lesions"].read_text())
    assert info["analytic_volume_mm3"] == pytest.approx(phantom.analytic_volume_mm3())
    assert len(info["lesions"]) == len(phantom.lesions)


def test_deterministic(phantom):
    from napari_softseg.io.phantom import _load_sources, _place_lesions

    _, _, _, _, wm = _load_sources()
    again = _place_lesions(wm, np.random.default_rng(20210917))
    assert [l.centre for l in again] == [l.centre for l in phantom.lesions]
    assert [l.semi_axes for l in again] == [l.semi_axes for l in phantom.lesions]
