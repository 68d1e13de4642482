"""The Python API refuses at its boundary what it cannot handle, with the command line's sentences."""

from __future__ import annotations

import numpy as np
import pytest

import napari_softseg as ns
from bad_inputs.harness import AFFINE, digest
from napari_softseg.errors import UserError
from napari_softseg.metrics import segmentation as M

CUBE = (4, 4, 4)
ONES = np.ones(CUBE, np.float32)
MASK = np.zeros(CUBE, np.uint8)
MASK[1:3, 1:3, 1:3] = 1


def _refused(call, sentence):
    with pytest.raises(UserError) as info:
        call()
    assert str(info.value) == sentence


WRITES = [
    ("wrap_negative", np.full(CUBE, -5), np.uint8,
     "Cannot write x.nii.gz as uint8: its values from -5 to -5 do not fit in uint8 (0 to 255) and would wrap around."),
    ("wrap_300", np.full(CUBE, 300), np.uint8,
     "Cannot write x.nii.gz as uint8: its values from 300 to 300 do not fit in uint8 (0 to 255) and would wrap around."),
    ("fractions", np.full(CUBE, 0.3), np.uint8,
     "Cannot write x.nii.gz as uint8: values such as 0.3 are not whole numbers, so storing them would change them."),
    ("overflow", np.full(CUBE, 1e300), np.float32,
     "Cannot write x.nii.gz as float32: values up to 1e+300 exceed its range and would become infinite."),
    ("complex", np.ones(CUBE, complex), None,
     "Cannot write x.nii.gz: its data type is complex128; only numbers (integers, floats or booleans) can be stored."),
    ("object", np.ones(CUBE, object), None,
     "Cannot write x.nii.gz: its data type is object; only numbers (integers, floats or booleans) can be stored."),
    ("strings", np.full(CUBE, "a"), None,
     "Cannot write x.nii.gz: its data type is <U1; only numbers (integers, floats or booleans) can be stored."),
    ("zero_d", np.float32(1.0), None,
     "Cannot write x.nii.gz: expected a 3-D or 4-D array with no empty axis, got shape ()."),
    ("nan", np.full(CUBE, np.nan, np.float32), None, "Cannot write x.nii.gz: the data contain NaN or infinite values."),
]


@pytest.mark.parametrize("data, dtype, sentence", [w[1:] for w in WRITES], ids=[w[0] for w in WRITES])
def test_write_nifti_refuses_what_would_change_or_cannot_be_stored(tmp_path, data, dtype, sentence):
    _refused(lambda: ns.write_nifti(tmp_path / "x.nii.gz", data, affine=AFFINE, dtype=dtype), sentence)
    assert digest(tmp_path) == {}  # nothing written, no temporary file left


METRICS = [
    ("empty", lambda: M.evaluate(np.zeros((0, 0, 0)), np.zeros((0, 0, 0))),
     "The prediction is empty (shape (0, 0, 0)), so it holds no voxels to work on."),
    ("dice_empty", lambda: M.dice(np.zeros((0,)), np.zeros((0,))),
     "The prediction is empty (shape (0,)), so it holds no voxels to work on."),
    ("nan_prediction", lambda: M.evaluate(np.full(CUBE, np.nan), MASK), "The prediction contains 64 NaN or infinite values."),
    ("zero_d", lambda: M.evaluate(np.float32(1), np.float32(1)),
     "The prediction is a single number (a 0-d array); expected an image with voxels."),
    ("complex", lambda: M.evaluate(np.ones(CUBE, complex), MASK),
     "The prediction has data type complex128; expected numbers (integers, floats or booleans)."),
    ("strings", lambda: M.evaluate(np.full(CUBE, "a"), MASK),
     "The prediction has data type <U1; expected numbers (integers, floats or booleans)."),
    ("object_truth", lambda: M.evaluate(ONES, np.ones(CUBE, object)),
     "The truth has data type object; expected numbers (integers, floats or booleans)."),
    ("label_map", lambda: M.evaluate(np.full(CUBE, 300), MASK),
     "The prediction has values from 300 to 300; expected a mask or probabilities in [0, 1]."),
    ("shapes", lambda: M.dice(ONES, np.ones((4, 4, 5))),
     "The prediction has shape (4, 4, 4) but the truth has shape (4, 4, 5); they must lie on one voxel grid."),
    ("zero_spacing", lambda: M.evaluate(ONES, MASK, spacing=(0, 1, 1)),
     "Spacing (0, 1, 1) must hold three finite voxel sizes greater than 0 mm."),
    ("nan_spacing", lambda: M.evaluate(ONES, MASK, spacing=(np.nan, 1, 1)),
     "Spacing (nan, 1, 1) must hold three finite voxel sizes greater than 0 mm."),
    ("two_spacings", lambda: M.volume(MASK, spacing=(1, 1)), "Spacing must be three voxel sizes in mm, got 2 value(s)."),
    ("threshold", lambda: M.evaluate(ONES, MASK, threshold=1.5), "threshold must lie strictly between 0 and 1, got 1.5."),
    ("nan_rater", lambda: M.evaluate(ONES, MASK, raters=[np.full(CUBE, np.nan)]), "Rater 1 contains 64 NaN or infinite values."),
]


@pytest.mark.parametrize("call, sentence", [m[1:] for m in METRICS], ids=[m[0] for m in METRICS])
def test_metrics_refuse_what_would_give_a_wrong_number(call, sentence):
    _refused(call, sentence)


FUSION = [
    ("non_integer_labels", lambda: ns.fuse([np.full(CUBE, 1.5), MASK], "majority", n_classes=3),
     "Rater 1 holds non-integer values; multi-class fusion needs integer label maps."),
    ("300_labels", lambda: ns.fuse([np.full(CUBE, 300), MASK.astype(int)], "majority", multiclass=True),
     "Multi-class fusion takes at most 256 labels (0-255), but 301 were asked for; rater 1 is not a label map "
     "of a few structures."),
    ("float_as_soft", lambda: ns.fuse([np.full(CUBE, 2.0), MASK], "average"),
     "Rater 1 has values in [2, 2], not a mask or probability map in [0, 1]; for integer label maps ask for "
     "multi-class fusion (n_classes)."),
    ("strings", lambda: ns.fuse([np.full(CUBE, "a"), np.full(CUBE, "b")], "average"),
     "Rater 1 has data type <U1; expected numbers (integers, floats or booleans)."),
    ("zero_d", lambda: ns.fuse([np.float32(1), np.float32(1)], "average"),
     "Rater 1 is a single number (a 0-d array); expected an image with voxels."),
    ("empty", lambda: ns.staple([np.zeros((0,)), np.zeros((0,))]),
     "Rater 1 is empty (shape (0,)), so it holds no voxels to work on."),
    ("threshold", lambda: ns.fuse([ONES, MASK], "average", threshold=1.5),
     "threshold must lie strictly between 0 and 1, got 1.5."),
    ("tolerance", lambda: ns.staple([ONES, MASK], tol=-1.0), "tol must be a number greater than 0, got -1."),
    ("prior", lambda: ns.staple([ONES, MASK], prior=1.5), "prior must lie strictly between 0 and 1, got 1.5."),
]


@pytest.mark.parametrize("call, sentence", [f[1:] for f in FUSION], ids=[f[0] for f in FUSION])
def test_fusion_refuses_what_it_cannot_handle(call, sentence):
    _refused(call, sentence)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from bad_inputs.harness import tiny_model

    return ns.load_model(tiny_model(tmp_path_factory.mktemp("api-model") / "m.pt"))


PREDICT = [
    ("complex", dict(array=np.ones((8, 8, 4), complex)),
     "The image has data type complex128; expected numbers (integers, floats or booleans)."),
    ("zero_d", dict(array=np.float32(1)), "The image is a single number (a 0-d array); expected an image with voxels."),
    ("zero_spacing", dict(array=np.ones((8, 8, 4), np.float32), spacing=(0, 1, 1)),
     "Spacing (0, 1, 1) must hold three finite voxel sizes greater than 0 mm."),
    ("nan_spacing", dict(array=np.ones((8, 8, 4), np.float32), spacing=(1, np.nan, 1)),
     "Spacing (1, nan, 1) must hold three finite voxel sizes greater than 0 mm."),
    ("nan_image", dict(array=np.full((8, 8, 4), np.nan, np.float32)),
     "The image contains NaN or infinite values; replace them before predicting."),
]


@pytest.mark.parametrize("kwargs, sentence", [p[1:] for p in PREDICT], ids=[p[0] for p in PREDICT])
def test_predict_volume_refuses_what_it_cannot_handle(model, kwargs, sentence):
    kwargs = dict(kwargs)
    array = kwargs.pop("array")
    _refused(lambda: ns.predict_volume(model, array, device="cpu", **kwargs), sentence)


def test_mask_import_refuses_arrays_that_are_not_masks():
    from napari_softseg.labels.levels import mask_to_levels

    _refused(lambda: mask_to_levels(np.ones(CUBE, object), name="m.nii.gz"),
             "m.nii.gz has data type object; expected numbers (integers, floats or booleans).")
    _refused(lambda: mask_to_levels(np.float32(0.5), name="m.nii.gz"),
             "m.nii.gz is a single number (a 0-d array); expected an image with voxels.")
