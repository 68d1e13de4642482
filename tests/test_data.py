"""Training data: slicing axis, normalisation, resampling, crop, label sources, splits, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_softseg.engine.training.data import LABEL_SOURCES, TrainingData, TrainingSubject
from napari_softseg.engine.training.slices import prepare_slices
from napari_softseg.errors import UserError
from napari_softseg.io.nifti import write_nifti
from napari_softseg.engine.preprocess import (
    center_crop_or_pad,
    choose_slice_axis,
    resample_inplane,
    split_validation,
    uncrop,
    zscore,
)


def _ball(shape=(20, 24, 6), radius=5.0):
    idx = np.indices(shape).astype(np.float32)
    c = [(s - 1) / 2 for s in shape]
    r = np.sqrt(sum((idx[i] - c[i]) ** 2 for i in range(2)))
    return np.clip(radius + 0.5 - r, 0, 1).astype(np.float32)


@pytest.mark.parametrize(
    "spacing, axis",
    [((1, 1, 3), 2), ((3, 1, 1), 0), ((1, 5, 1), 1), ((1, 1, 1), 2), ((2, 1, 2), 2), ((2, 2, 1), 1),
     ((0.5, 0.5, 7.5), 2), ((1.0000001, 0.9999999, 1.0), 2)],
)
def test_slice_axis_is_the_coarsest_ties_to_the_last(spacing, axis):
    assert choose_slice_axis(spacing) == axis


def test_zscore_per_contrast():
    rng = np.random.default_rng(0)
    img = np.stack([rng.normal(5, 3, (8, 8, 4)), np.full((8, 8, 4), 7.0)], axis=-1)
    z = zscore(img)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z[..., 0].mean(), 0, atol=1e-5)
    np.testing.assert_allclose(z[..., 0].std(), 1, atol=1e-5)
    np.testing.assert_array_equal(z[..., 1], 0)  # constant contrast: centred only


def test_linear_label_resampling_keeps_partial_volume():
    # halving the resolution averages pixel pairs: (0,1) (1,1) (1,1) (1,0) -> .5 1 1 .5
    row = np.array([0, 1, 1, 1, 1, 1, 1, 0], np.float32)
    lab = np.tile(row, (8, 1))[None, None]
    out = resample_inplane(lab, (1.0, 0.5), order=1)
    np.testing.assert_allclose(out[0, 0, 3], [0.5, 1, 1, 0.5], atol=1e-6)


def test_quadratic_image_resampling_reproduces_a_ramp_inside():
    ramp = np.tile(np.arange(32, dtype=np.float32), (4, 1))[None, None]
    out = resample_inplane(ramp, (1.0, 2.0), order=2)
    # output pixel j covers input position (j + 0.5) / 2 - 0.5
    expected = (np.arange(64) + 0.5) / 2 - 0.5
    np.testing.assert_allclose(out[0, 0, 1, 8:-8], expected[8:-8], atol=1e-3)


def test_center_crop_and_pad_round_trip():
    a = np.arange(5 * 7, dtype=np.float32).reshape(1, 5, 7)
    c = center_crop_or_pad(a, (3, 8), pad_value=-1)
    # rows 1..3 kept (crop 5 -> 3), columns padded 7 -> 8 with the extra column at the end
    np.testing.assert_array_equal(c[0, :, :7], a[0, 1:4])
    np.testing.assert_array_equal(c[0, :, 7], -1)
    back = uncrop(c, (5, 7))
    np.testing.assert_array_equal(back[0, 1:4], a[0, 1:4])
    np.testing.assert_array_equal(back[0, [0, 4]], 0)


def test_validation_split_by_volume_and_by_slab():
    volume = np.repeat(np.arange(5), 4)
    fg = np.ones(20, bool)
    tr, va = split_validation(volume, fg, 0.2, seed=0)
    assert len(np.unique(volume[va])) == 1 and set(tr) | set(va) == set(range(20)) and not set(tr) & set(va)
    # one volume: a contiguous slab with foreground
    volume = np.zeros(20, int)
    fg = np.zeros(20, bool)
    fg[8:12] = True
    tr, va = split_validation(volume, fg, 0.25, seed=1)
    assert np.all(np.diff(va) == 1) and fg[va].any() and len(va) == 5
    assert split_validation(volume, fg, 0.0, seed=0)[1].size == 0


@pytest.mark.parametrize("seed", range(6))
def test_the_validation_split_needs_structure_on_both_sides(seed):
    # one volume painted on one slice only (a user fine-tuning on one slice): no validation set,
    # since holding it out leaves nothing to learn and any other slab is won by predicting nothing
    volume, fg = np.zeros(20, int), np.zeros(20, bool)
    fg[9] = True
    tr, va = split_validation(volume, fg, 0.2, seed=seed)
    assert va.size == 0 and tr.size == 20
    # painted in two slabs (slices 9 and 12 of the slabs 8-11 and 12-15): either may be held out
    fg[12] = True
    held = {tuple(int(i) for i in split_validation(volume, fg, 0.2, seed=s)[1]) for s in range(20)}
    assert held == {tuple(range(8, 12)), tuple(range(12, 16))}
    # five volumes, only volume 3 labelled: no validation set either
    volume = np.repeat(np.arange(5), 4)
    tr, va = split_validation(volume, volume == 3, 0.2, seed=seed)
    assert va.size == 0 and tr.size == 20
    # volumes 1 and 3 labelled: one of them validates, the other trains, whatever the draw
    fg = np.isin(volume, [1, 3])
    tr, va = split_validation(volume, fg, 0.2, seed=seed)
    assert fg[va].any() and fg[tr].any() and len(np.unique(volume[va])) == 1


def test_subject_checks_give_one_sentence_errors():
    img = np.random.rand(10, 12, 4).astype(np.float32)
    lab = _ball((10, 12, 4), 3)
    with pytest.raises(UserError, match="shape"):
        TrainingSubject(img, [lab[:9]], name="s")
    with pytest.raises(UserError, match="empty"):
        TrainingSubject(img, [np.zeros_like(lab)], name="s")
    with pytest.raises(UserError, match="soft map"):
        TrainingSubject(img, [lab * 3.0], name="s")
    with pytest.raises(UserError, match="NaN"):
        TrainingSubject(img, [np.where(lab > 0.5, np.nan, lab)], name="s")
    with pytest.raises(UserError, match="spacing"):
        TrainingSubject(img, [lab], spacing=(1, 0, 1))
    with pytest.raises(UserError, match="contrasts"):
        TrainingData([TrainingSubject(img, [lab]), TrainingSubject(np.stack([img, img], -1), [lab])])
    with pytest.raises(UserError, match="fusion"):
        TrainingData.from_arrays([img], [[lab, lab]], label_source="label")
    with pytest.raises(UserError, match="same number of raters"):
        TrainingData.from_arrays([img, img], [[lab, lab], [lab, lab, lab]], label_source="random")


def test_integer_class_maps_become_one_hot_classes():
    cls = np.zeros((6, 6, 2), np.uint8)
    cls[1:3] = 1
    cls[4:] = 2
    subj = TrainingSubject(np.random.rand(6, 6, 2), [cls])
    assert subj.n_classes == 2
    np.testing.assert_array_equal(subj.labels[0][..., 0], cls == 1)
    np.testing.assert_array_equal(subj.labels[0][..., 1], cls == 2)


def test_prepare_slices_normalises_resamples_and_crops():
    rng = np.random.default_rng(0)
    img = rng.normal(100, 10, (20, 24, 6)).astype(np.float32)
    lab = _ball((20, 24, 6), 6)
    data = TrainingData.from_arrays([img], [lab], spacings=[(0.5, 0.5, 3.0)])
    prep = prepare_slices(data, spacing=(1.0, 1.0, 3.0), crop_size=(16, 16), multiple=8, val_fraction=0.0)
    assert prep.slice_axis == 2 and prep.spacing == (1.0, 1.0, 3.0)
    assert tuple(prep.images.shape) == (6, 1, 16, 16) and tuple(prep.labels.shape) == (1, 6, 1, 16, 16)
    # z-scored before resampling (mean 0, sd 1 over the volume; averaging 2x2 shrinks the sd);
    # the 10x12 resampled slice sits at rows 3..12, columns 2..13 of the 16x16 crop
    inside = prep.images[:, 0, 3:13, 2:14]
    assert abs(float(inside.mean())) < 0.1 and 0.3 < float(inside.std()) < 1.0
    np.testing.assert_allclose(prep.images[:, 0, 0, 0].numpy(), float(inside.min()), rtol=1e-6)  # padded with the min
    # 20x24 at 0.5 mm -> 10x12 at 1 mm, padded to 16x16; the ball's mass shrinks 4x
    assert prep.geometry[0].resampled_shape == (10, 12)
    np.testing.assert_allclose(float(prep.labels.sum()), lab.sum() / 4, rtol=0.03)
    # the ball's core stays 1 after averaging 2x2 voxels down, the padding and outside are 0
    assert float(prep.labels.min()) == 0.0 and float(prep.labels.max()) == 1.0
    soft = ((prep.labels > 0) & (prep.labels < 1)).float().sum()
    assert soft > 0  # soft mode keeps partial volume
    hard = prepare_slices(data, hard=True, crop_size=(24, 24), val_fraction=0.0)
    assert set(torch.unique(hard.labels).tolist()) <= {0.0, 1.0}


def test_prepare_slices_along_another_axis():
    img = np.random.rand(5, 16, 16).astype(np.float32)
    lab = np.zeros((5, 16, 16), np.float32)
    lab[:, 4:12, 4:12] = 1
    prep = prepare_slices(TrainingData.from_arrays([img], [lab], spacings=[(4.0, 1.0, 1.0)]), val_fraction=0.0)
    assert prep.slice_axis == 0 and tuple(prep.images.shape) == (5, 1, 16, 16)
    np.testing.assert_allclose(prep.truth[2, 0].numpy(), lab[2])


def test_random_source_keeps_every_rater_and_truth_is_their_mean():
    img = np.random.rand(12, 12, 3).astype(np.float32)
    r1 = np.zeros((12, 12, 3), np.float32)
    r2 = np.zeros((12, 12, 3), np.float32)
    r1[2:8, 2:8] = 1
    r2[4:10, 4:10] = 1
    prep = prepare_slices(TrainingData.from_arrays([img], [[r1, r2]], label_source="random"), val_fraction=0.0, multiple=4)
    assert prep.random_raters and prep.n_raters == 2
    np.testing.assert_allclose(prep.truth[:, 0].numpy(), ((r1 + r2) / 2).transpose(2, 0, 1))


def test_fused_sources_use_the_fusion_module():
    from napari_softseg.fusion import methods as fusion
    img = np.random.rand(12, 12, 3).astype(np.float32)
    raters = [np.zeros((12, 12, 3), np.float32) for _ in range(3)]
    raters[0][2:8, 2:8] = 1
    raters[1][3:9, 3:9] = 1
    raters[2][4:10, 2:8] = 1
    for name in ("average", "majority", "staple"):
        prep = prepare_slices(TrainingData.from_arrays([img], [raters], label_source=name), val_fraction=0.0, multiple=4)
        src = LABEL_SOURCES[name]
        res = fusion.fuse(raters, name)
        expected = np.asarray(res.hard if src.use_hard else res.soft, np.float32)
        np.testing.assert_allclose(prep.labels[0, :, 0].numpy(), expected.transpose(2, 0, 1), atol=1e-6)
    avg = prepare_slices(TrainingData.from_arrays([img], [raters], label_source="average"), val_fraction=0.0, multiple=4)
    np.testing.assert_allclose(avg.truth[:, 0].numpy(), np.mean(raters, 0).transpose(2, 0, 1), atol=1e-6)


def test_from_nifti_pairs_files_and_checks_grids(tmp_path):
    aff = np.diag([-1.0, 1.0, 2.0, 1.0])
    img = np.random.rand(10, 10, 4).astype(np.float32)
    lab = _ball((10, 10, 4), 3)
    write_nifti(tmp_path / "a.nii.gz", img, affine=aff)
    write_nifti(tmp_path / "a_lab.nii.gz", lab, affine=aff)
    write_nifti(tmp_path / "a_r2.nii.gz", lab, affine=aff)
    write_nifti(tmp_path / "moved.nii.gz", lab, affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    data = TrainingData.from_nifti([tmp_path / "a.nii.gz"], [tmp_path / "a_lab.nii.gz"])
    assert data.contrasts == ["a"] and data.subjects[0].spacing == (1.0, 1.0, 2.0)
    with pytest.raises(UserError, match="moved"):
        TrainingData.from_nifti([tmp_path / "a.nii.gz"], [tmp_path / "moved.nii.gz"])
    with pytest.raises(UserError, match="shared evenly"):
        TrainingData.from_nifti([tmp_path / "a.nii.gz"] * 2, raters=[tmp_path / "a_lab.nii.gz"] * 3, fusion="average")
    two = TrainingData.from_nifti(
        [tmp_path / "a.nii.gz"], raters=[tmp_path / "a_lab.nii.gz", tmp_path / "a_r2.nii.gz"], fusion="random"
    )
    assert two.subjects[0].n_raters == 2 and two.label_source.random


def test_labels_named_after_another_image_are_refused(tmp_path):
    """Labels pair with images in order; a label whose name belongs to another image of the
    same call is refused (the stem rule of engine.training.pairing, as for folders)."""
    img = np.random.default_rng(0).random((10, 10, 4)).astype(np.float32)
    lab = _ball((10, 10, 4), 3)
    for name in ("a", "b", "a_2"):
        write_nifti(tmp_path / f"{name}.nii.gz", img, affine=np.eye(4))
    for name in ("a_seg", "b_seg", "a_r1", "a_r2", "b_r1", "b_r2", "a_2_seg", "unrelated"):
        write_nifti(tmp_path / f"{name}.nii.gz", lab, affine=np.eye(4))
    f = lambda *names: [tmp_path / f"{n}.nii.gz" for n in names]  # noqa: E731
    assert [s.name for s in TrainingData.from_nifti(f("a", "b"), f("a_seg", "b_seg")).subjects] == ["a", "b"]
    assert TrainingData.from_nifti(f("a", "b"), f("unrelated", "b_seg")).subjects[1].name == "b"  # no claim
    with pytest.raises(UserError, match=r"^b_seg.nii.gz is named after image b.nii.gz but is paired with a.nii.gz; labels pair"):
        TrainingData.from_nifti(f("a", "b"), f("b_seg", "a_seg"))
    # the longest matching stem owns a label: a_2_seg belongs to a_2, not to a
    TrainingData.from_nifti(f("a", "a_2"), f("a_seg", "a_2_seg"))
    with pytest.raises(UserError, match="a_2_seg.nii.gz is named after image a_2.nii.gz but is paired with a.nii.gz"):
        TrainingData.from_nifti(f("a", "a_2"), f("a_2_seg", "a_seg"))
    TrainingData.from_nifti(f("a", "b"), raters=f("a_r1", "a_r2", "b_r1", "b_r2"), fusion="average")
    with pytest.raises(UserError, match="b_r1.nii.gz is named after image b.nii.gz"):
        TrainingData.from_nifti(f("a", "b"), raters=f("b_r1", "b_r2", "a_r1", "a_r2"), fusion="average")


def test_folder_pairing_gives_a_label_to_the_longest_matching_stem(tmp_path):
    from napari_softseg.engine.training.pairing import pair_folder

    images, labels = tmp_path / "img", tmp_path / "lab"
    images.mkdir(), labels.mkdir()
    for name in ("sub01", "sub01_t2"):
        write_nifti(images / f"{name}.nii.gz", np.zeros((4, 4, 2), np.float32), affine=np.eye(4))
    for name in ("sub01_seg", "sub01_rater2", "sub01_t2_seg"):
        write_nifti(labels / f"{name}.nii.gz", np.ones((4, 4, 2), np.float32), affine=np.eye(4))
    pairs = [(i.name, [p.name for p in ls]) for i, ls in pair_folder(images, labels)]
    assert pairs == [("sub01.nii.gz", ["sub01_rater2.nii.gz", "sub01_seg.nii.gz"]), ("sub01_t2.nii.gz", ["sub01_t2_seg.nii.gz"])]
