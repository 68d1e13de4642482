"""Soft-label preserving augmentation: geometry, identical transforms, softness, mass."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_softseg.engine.training.augment import AffineParams, RandomAffine
from napari_softseg.engine.preprocess import binarise


def _blob(h=64, w=64, radius=10.0, cy=None, cx=None):
    """A disc with a soft (linear) edge of 2 pixels: values strictly between 0 and 1 on the rim."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    cy = (h - 1) / 2 if cy is None else cy
    cx = (w - 1) / 2 if cx is None else cx
    r = np.hypot(yy - cy, xx - cx)
    return torch.from_numpy(np.clip((radius + 1 - r) / 2, 0, 1)[None, None])


def _params(angle_deg=0.0, scale=1.0, shift=(0.0, 0.0), n=1):
    return AffineParams(
        angle=torch.full((n,), math.radians(angle_deg)),
        scale=torch.full((n,), float(scale)),
        shift=torch.tensor([shift] * n, dtype=torch.float32),
    )


def test_identity_parameters_change_nothing():
    img = torch.randn(2, 3, 16, 24)
    lab = torch.rand(2, 1, 16, 24)
    out_img, out_lab = RandomAffine().apply(img, lab, _params(n=2))
    torch.testing.assert_close(out_img, img, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_lab, lab, atol=1e-5, rtol=0)


def test_quarter_turn_is_rot90_on_a_square():
    img = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    out, _ = RandomAffine().apply(img, None, _params(90.0))
    matches = [torch.allclose(out, torch.rot90(img, k, dims=(2, 3)), atol=1e-4) for k in (1, -1)]
    assert any(matches)


def test_translation_moves_by_the_fraction_of_the_width():
    img = torch.arange(16, dtype=torch.float32).repeat(4, 1)[None, None]  # (1, 1, 4, 16), x ramp
    out, _ = RandomAffine().apply(img, None, _params(shift=(0.125, 0.0)))  # 12.5 % of 16 px = 2 px
    # theta maps output to input: output pixel x samples input x + 2 (edge value repeated)
    expected = torch.clamp(img + 2, max=15)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_rotation_is_rigid_on_a_non_square_slice():
    """An elongated ellipse turned by 90° on a 48x96 slice swaps its axes but keeps their lengths."""
    h, w = 48, 96
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    ell = ((((yy - 23.5) / 6) ** 2 + ((xx - 47.5) / 14) ** 2) <= 1).astype(np.float32)
    out, _ = RandomAffine().apply(torch.from_numpy(ell)[None, None], None, _params(90.0))
    out = out[0, 0].numpy()

    def extents(m):
        ys, xs = np.nonzero(m > 0.5)
        return ys.max() - ys.min(), xs.max() - xs.min()

    ey, ex = extents(ell)
    oy, ox = extents(out)
    assert (oy, ox) == pytest.approx((ex, ey), abs=1.5)
    assert out.sum() == pytest.approx(ell.sum(), rel=0.03)


def test_image_and_label_get_the_same_transform():
    g = torch.Generator().manual_seed(3)
    img = torch.rand(6, 1, 40, 56, generator=g)
    lab = img.clone()  # a "label" equal to the (normalised to [0, 1]) image
    out_img, out_lab = RandomAffine()(img, lab, generator=g)
    assert not torch.allclose(out_img, img, atol=1e-3)  # something happened
    torch.testing.assert_close(out_lab, out_img, atol=1e-6, rtol=0)


def test_every_sample_gets_its_own_parameters():
    img = _blob().repeat(4, 1, 1, 1)
    out, _ = RandomAffine()(img, None, generator=torch.Generator().manual_seed(0))
    diffs = [float((out[0] - out[i]).abs().max()) for i in range(1, 4)]
    assert min(diffs) > 0.05


def test_soft_labels_stay_soft_and_keep_their_mass():
    lab = _blob(radius=12.0).repeat(16, 1, 1, 1)
    aug = RandomAffine()
    params = aug.sample(16, generator=torch.Generator().manual_seed(1))
    _, out = aug.apply(torch.zeros_like(lab), lab, params, hard=False)
    soft_in = ((lab > 0) & (lab < 1)).float().mean()
    soft_out = ((out > 0) & (out < 1)).float().mean()
    assert out.min() >= 0 and out.max() <= 1
    assert soft_out > 0.5 * soft_in  # the partial-volume rim survives
    assert not torch.equal(out, (out >= 0.5).float())
    # content is magnified by `scale`, so the mass scales with its square
    mass_in = lab.sum(dim=(1, 2, 3))
    mass_out = out.sum(dim=(1, 2, 3))
    ratio = mass_out / (mass_in * params.scale**2)
    assert torch.allclose(ratio, torch.ones(16), atol=0.02)


def test_hard_mode_is_exactly_binary_and_binarises_after_interpolation():
    lab = _blob(radius=12.0).repeat(8, 1, 1, 1)
    aug = RandomAffine()
    params = aug.sample(8, generator=torch.Generator().manual_seed(2))
    _, soft = aug.apply(torch.zeros_like(lab), lab, params, hard=False)
    _, hard = aug.apply(torch.zeros_like(lab), lab, params, hard=True)
    assert set(torch.unique(hard).tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(hard, (soft >= 0.5).float())


def test_multiclass_hard_labels_are_one_hot_argmax():
    fg = torch.tensor([[0.6, 0.1], [0.3, 0.3], [0.2, 0.45]]).T.reshape(1, 2, 1, 3)  # classes x voxels
    # voxel 0: bg 0.3, c1 0.6, c2 0.1 -> c1; voxel 1: bg 0.4, 0.3, 0.3 -> bg; voxel 2: bg .35, .2, .45 -> c2
    hard = binarise(fg, multiclass=True)
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).reshape(1, 2, 1, 3)
    torch.testing.assert_close(hard, expected)


def test_bicubic_images_with_linear_labels():
    lab = _blob()
    img = lab * 3.0 - 1.0
    out_img, out_lab = RandomAffine(image_mode="bicubic").apply(img, lab, _params(15.0, 1.05, (0.02, -0.01)))
    _, lin = RandomAffine().apply(img, lab, _params(15.0, 1.05, (0.02, -0.01)))
    torch.testing.assert_close(out_lab, lin)  # labels stay linear
    assert float((out_img - (out_lab * 3.0 - 1.0)).abs().max()) < 0.5
