"""Random training patches: windows of the slices, centred near the structure when there is
some, anywhere otherwise; the trainer uses them for its steps only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_softseg.engine.training.patches import random_patches
from napari_softseg.engine.training.train import TrainConfig
from napari_softseg.errors import UserError


def _slices(n: int = 1, h: int = 16, w: int = 20) -> torch.Tensor:
    """Images whose every pixel value is unique (its flat index), so a patch tells where it was cut."""
    return torch.arange(n * h * w, dtype=torch.float32).reshape(n, 1, h, w)


def _where(patch: torch.Tensor, x: torch.Tensor, i: int = 0) -> tuple[int, int]:
    """Top-left corner of ``patch`` (C, ph, pw) in ``x[i]``, from its first pixel's value."""
    h, w = x.shape[-2:]
    flat = int(patch[0, 0, 0]) - i * h * w
    return flat // w, flat % w


def test_a_structure_pixel_is_always_inside_its_slices_patch():
    x = _slices()
    y = torch.zeros_like(x)
    y[0, 0, 13, 2] = 1.0  # one pixel near a corner: windows get clamped
    gen = torch.Generator().manual_seed(0)
    corners = set()
    for _ in range(200):
        px, py = random_patches(x, y, (8, 8), gen)
        top, left = _where(px[0], x)
        assert px.shape == py.shape == (1, 1, 8, 8)
        torch.testing.assert_close(px[0], x[0, :, top : top + 8, left : left + 8])  # one window for both
        torch.testing.assert_close(py[0], y[0, :, top : top + 8, left : left + 8])
        assert float(py.sum()) == 1.0  # the structure pixel is in it
        corners.add((top, left))
    # centred on it (row 13 -> top 9), shifted by up to a quarter (2), clamped to the slice (top <= 8)
    assert {t for t, _ in corners} == {7, 8} and {c for _, c in corners} == {0}


def test_the_window_centre_is_drawn_among_the_structure_pixels():
    x = _slices(h=32, w=32)
    y = torch.zeros_like(x)
    y[0, 0, 4, 4] = y[0, 0, 27, 27] = 0.3  # two far-apart soft pixels
    gen = torch.Generator().manual_seed(1)
    hits = {(4, 4): 0, (27, 27): 0}
    for _ in range(100):
        px, _ = random_patches(x, y, (8, 8), gen)
        top, left = _where(px[0], x)
        inside = [p for p in hits if top <= p[0] < top + 8 and left <= p[1] < left + 8]
        assert len(inside) == 1
        hits[inside[0]] += 1
    assert min(hits.values()) >= 30  # both drawn, about equally (binomial 100, 0.5)


def test_structure_free_slices_get_windows_anywhere_and_samples_their_own():
    x = _slices(n=3)
    y = torch.zeros_like(x)
    y[1, 0, 5, 10] = 1.0  # only the middle sample holds structure
    gen = torch.Generator().manual_seed(2)
    tops, lefts = set(), set()
    for _ in range(300):
        px, py = random_patches(x, y, (8, 8), gen)
        for i in (0, 2):
            top, left = _where(px[i], x, i)
            tops.add(top)
            lefts.add(left)
            assert float(py[i].sum()) == 0.0
        assert float(py[1].sum()) == 1.0
    assert tops == set(range(0, 16 - 8 + 1)) and lefts == set(range(0, 20 - 8 + 1))  # every corner reached


def test_a_patch_the_size_of_the_slice_is_the_slice_and_a_larger_one_is_refused():
    x, y = _slices(), torch.zeros(1, 1, 16, 20)
    gen = torch.Generator().manual_seed(0)
    px, py = random_patches(x, y, (16, 20), gen)
    assert px is x and py is y
    with pytest.raises(ValueError, match="does not fit"):
        random_patches(x, y, (24, 8), gen)


def _disk_data(n: int = 2):
    from napari_softseg.engine.training.data import TrainingData

    rng = np.random.default_rng(0)
    images, labels = [], []
    for _ in range(n):
        image = rng.normal(0.0, 0.1, size=(48, 48, 6)).astype(np.float32)
        label = np.zeros_like(image)
        label[30:36, 8:14, ::2] = 1.0
        images.append(image + label)
        labels.append(label)
    return TrainingData.from_arrays(images, labels, spacings=[(1.0, 1.0, 3.0)] * n)


TINY = dict(batch_size=4, depth=2, base_features=4, device="cpu", augment=False, mixed_precision=False,
            val_fraction=0.5, seed=0, num_threads=1)


def test_the_trainer_steps_on_patches_and_validates_on_whole_slices():
    from napari_softseg.engine.training.trainer import Trainer

    trainer = Trainer(TrainConfig(epochs=1, patch_size=(16, 16), **TINY), _disk_data())
    assert trainer.data.crop_size == (48, 48)
    idx = torch.as_tensor(trainer.sampler.epoch()[0])
    x, y = trainer._batch(idx, None)
    assert x.shape == y.shape == (4, 1, 16, 16)
    structure = trainer.data.has_structure[idx].numpy()
    assert structure.any() and (~structure).any()  # the sampler's mix
    # every structure slice's patch holds structure: the 6 x 6 square fits in any 16 x 16
    # window centred on one of its pixels, shifted by up to 4
    assert all(float(y[k].sum()) == 36.0 for k in np.flatnonzero(structure))
    # a 1-epoch run: the summary's validation covers the whole validation slices
    from napari_softseg.engine.training.train import run_training

    done = run_training(TrainConfig(epochs=1, patch_size=(16, 16), **TINY), _disk_data())
    assert done.status == "completed", done.message
    assert done.summary["n_val_slices"] == 6 and done.summary["history"][0]["val_loss"] is not None


@pytest.mark.parametrize("patch, message", [
    ((10, 16), "The training patch must be two positive multiples of 4, got (10, 16)."),
    ((64, 16), "The training patch 64x16 is larger than the training slices (48x48); choose a smaller patch."),
])
def test_a_patch_that_cannot_be_used_is_one_sentence(patch, message):
    from napari_softseg.engine.training.trainer import Trainer

    with pytest.raises(UserError) as err:
        Trainer(TrainConfig(epochs=1, patch_size=patch, **TINY), _disk_data())
    assert str(err.value) == message
