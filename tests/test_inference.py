"""predict_volume against an independent slice-by-slice loop of the plain network."""

import numpy as np
import pytest
import torch

from napari_softseg.engine.checkpoint import make_config, save_checkpoint
from napari_softseg.engine.devices import cpu_supports_bf16
from napari_softseg.errors import UserError
from napari_softseg.engine.predict import (
    MODELS_DIR,
    SHIPPED_MODELS,
    Prediction,
    PredictionCancelled,
    choose_slice_axis,
    load_model,
    predict_volume,
    prediction_entropy,
    resolve_model_path,
)
from napari_softseg.engine.model import UNet

from _oracles import plain_network_prediction


def _net(seed=0, in_channels=1, out_channels=1, activation="normrelu", depth=2):
    torch.manual_seed(seed)
    model = UNet(in_channels, out_channels, depth=depth, base_features=6, activation=activation)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, in_channels, 16, 16))
        model.eval()
        # centre the logits so that part of each slice is positive (a non-trivial soft map)
        logits = model.forward_logits(torch.randn(8, in_channels, 16, 16))
        model.head.bias -= logits.mean(dim=(0, 2, 3))
    return model


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_matches_plain_network_along_each_axis(axis):
    rng = np.random.default_rng(axis)
    volume = rng.normal(100, 20, size=(13, 11, 6)).astype(np.int16)  # odd sizes -> padding
    model = _net()
    soft = predict_volume(model, volume, slice_axis=axis, mixed_precision=False, batch_size=4)
    assert isinstance(soft, np.ndarray) and soft.dtype == np.float32 and soft.shape == volume.shape
    assert soft.min() >= 0.0 and soft.max() <= 1.0 and soft.max() == 1.0
    np.testing.assert_allclose(soft, plain_network_prediction(model, volume, axis), atol=1e-5)


def test_mixed_precision_within_tolerance():
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(32, 24, 5)).astype(np.float32)
    model = _net(depth=3)
    fp32 = predict_volume(model, volume, mixed_precision=False)
    fast = predict_volume(model, volume, mixed_precision=True)
    assert np.abs(fast - fp32).max() < 0.02
    if cpu_supports_bf16():
        assert not np.array_equal(fast, fp32)  # the bf16 path really ran


def test_slice_independent_of_batch_and_neighbours():
    rng = np.random.default_rng(2)
    volume = rng.normal(size=(16, 16, 7)).astype(np.float32)
    model = _net()
    full = predict_volume(model, volume, mixed_precision=False, batch_size=3)
    one = predict_volume(model, volume, mixed_precision=False, batch_size=1)
    np.testing.assert_allclose(full, one, atol=1e-6)


def test_multichannel_and_multiclass_shapes():
    rng = np.random.default_rng(3)
    volume = rng.normal(size=(16, 8, 3, 2)).astype(np.float32)
    model = _net(in_channels=2, out_channels=3, activation="multiclass_normrelu")
    soft = predict_volume(model, volume, mixed_precision=False)
    assert soft.shape == (16, 8, 3, 2)  # background channel dropped
    assert soft.min() >= 0 and soft.sum(axis=-1).max() <= 1.0 + 1e-5
    with pytest.raises(UserError, match="2 contrast"):
        predict_volume(model, volume[..., 0])


def test_slice_axis_choice():
    assert choose_slice_axis((0.5, 0.5, 3.0)) == 2
    assert choose_slice_axis((4.0, 1.0, 1.0)) == 0
    assert choose_slice_axis((1.0, 1.0, 1.0)) == 2  # ties go to the last axis
    assert choose_slice_axis(None) == 2
    model = _net()
    model.softseg_config = {"slice_axis": 0, "normalisation": "zscore"}
    volume = np.random.default_rng(4).normal(size=(3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(
        predict_volume(model, volume, mixed_precision=False), plain_network_prediction(model, volume, 0), atol=1e-5
    )


def test_mc_dropout_and_tta():
    rng = np.random.default_rng(5)
    volume = rng.normal(size=(16, 16, 4)).astype(np.float32)
    model = _net()
    torch.manual_seed(0)
    pred = predict_volume(model, volume, mixed_precision=False, mc_samples=3)
    assert isinstance(pred, Prediction) and pred.samples.shape == (3, 16, 16, 4)
    assert not np.allclose(pred.samples[0], pred.samples[1])
    np.testing.assert_allclose(pred.soft, pred.samples.mean(axis=0), atol=1e-6)
    p = pred.soft.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.nan_to_num(p * np.log2(p)) + np.nan_to_num((1 - p) * np.log2(1 - p)))
    np.testing.assert_allclose(pred.entropy, h, atol=1e-5)
    assert model.training is False  # the caller's model is untouched

    tta = predict_volume(model, volume, mixed_precision=False, tta=4)
    plain = predict_volume(model, volume, mixed_precision=False)
    np.testing.assert_allclose(tta.samples[0], plain, atol=1e-6)
    flipped = predict_volume(model, volume[::-1].copy(), mixed_precision=False)[::-1]
    np.testing.assert_allclose(tta.samples[1], flipped, atol=1e-5)  # view 1 flips the first in-plane axis
    np.testing.assert_allclose(tta.soft, tta.samples.mean(axis=0), atol=1e-6)


def test_entropy_by_hand():
    np.testing.assert_allclose(prediction_entropy(np.array([0.0, 0.5, 1.0, 0.25])), [0, 1, 0, 0.8112781], atol=1e-6)
    # multi-class: (0.5, 0.5) foreground + 0 background -> 1 bit (it was normalised by log 3:
    # ln 2 / ln 3; the one entropy of the package is in bits)
    mc = prediction_entropy(np.array([[[[0.5, 0.5]]]]), multiclass=True)
    np.testing.assert_allclose(mc.ravel(), [1.0], atol=1e-6)
    # (0.25, 0.25) + background 0.5 -> 1.5 bits; two binary structures are averaged
    np.testing.assert_allclose(prediction_entropy(np.full((1, 1, 1, 2), 0.25), multiclass=True).ravel(), [1.5], atol=1e-6)
    np.testing.assert_allclose(prediction_entropy(np.array([[[[0.5, 0.0]]]])).ravel(), [0.5], atol=1e-6)


def test_progress_and_cancel():
    volume = np.random.default_rng(6).normal(size=(8, 8, 10)).astype(np.float32)
    model = _net()
    calls = []
    predict_volume(model, volume, batch_size=4, mixed_precision=False, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 10), (8, 10), (10, 10)]
    seen = []

    def cancel():
        seen.append(1)
        return len(seen) > 1

    with pytest.raises(PredictionCancelled):
        predict_volume(model, volume, batch_size=4, mixed_precision=False, cancel=cancel)
    assert len(seen) == 2


def test_load_model_and_names(tmp_path):
    model = _net()
    path = save_checkpoint(tmp_path / "m.pt", model, make_config(model, contrasts=["T2s"], threshold=0.3))
    loaded = load_model(path)
    assert isinstance(loaded, UNet) and not loaded.training
    assert next(loaded.parameters()).dtype == torch.float32
    assert loaded.softseg_config["threshold"] == 0.3 and loaded.softseg_config["contrasts"] == ["T2s"]
    with pytest.raises(UserError, match="ms-lesion"):
        resolve_model_path("no-such-model")
    for name in SHIPPED_MODELS:  # both shipped models are part of the package
        path = resolve_model_path(name)
        assert path == MODELS_DIR / f"{name}.pt" and path.is_file()
    with pytest.raises(UserError, match="no such model file"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(UserError):
        predict_volume(loaded, np.zeros((4, 4)))
    with pytest.raises(UserError, match="NaN"):
        predict_volume(loaded, np.full((8, 8, 2), np.nan, dtype=np.float32))


def test_a_missing_shipped_model_is_one_sentence(monkeypatch, tmp_path):
    from napari_softseg.engine import predict

    monkeypatch.setattr(predict, "MODELS_DIR", tmp_path)  # an installation without the models
    with pytest.raises(UserError, match=r"^The shipped model 'ms-lesion' is not installed \(.*ms-lesion.pt is missing\)"):
        load_model("ms-lesion")


def test_resamples_to_training_voxel_size():
    from scipy import ndimage

    from napari_softseg.engine.predict import inplane_zoom

    model = _net()
    model.softseg_config = {"slice_axis": 2, "spacing": [1.0, 1.0, 3.0], "normalisation": "zscore"}
    assert inplane_zoom(model.softseg_config, (1.0, 1.0, 5.0), 2) is None
    assert inplane_zoom(model.softseg_config, (0.5, 0.25, 3.0), 2) == (0.5, 0.25)
    volume = np.random.default_rng(7).normal(size=(32, 64, 3)).astype(np.float32)
    soft = predict_volume(model, volume, spacing=(0.5, 0.25, 3.0), mixed_precision=False)
    assert soft.shape == volume.shape
    # by hand: z-score, spline order 2 down to 16x16, plain network, linear back to 32x64
    z = (volume - volume.mean()) / volume.std()
    expected = np.empty_like(volume)
    for k in range(3):
        small = ndimage.zoom(z[:, :, k], (0.5, 0.25), order=2, grid_mode=True, mode="nearest")
        pred = plain_network_prediction(model, small[:, :, None], 2, normalise=False)[:, :, 0]
        expected[:, :, k] = ndimage.zoom(pred, (2.0, 4.0), order=1, grid_mode=True, mode="nearest")
    np.testing.assert_allclose(soft, expected, atol=1e-4)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 3.0), (0.5, 0.8, 3.0)])
def test_training_and_prediction_feed_the_network_identical_inputs(monkeypatch, spacing):
    """One z-score and one resampling: the slices a model is trained on and those it is
    given at prediction time are the same float32 arrays, bit for bit (here with two
    contrasts far from zero mean, with and without resampling to the training voxel size)."""
    from napari_softseg.engine.model import InferenceUNet
    from napari_softseg.engine.training.data import TrainingData
    from napari_softseg.engine.training.slices import prepare_slices

    rng = np.random.default_rng(11)
    image = np.stack([rng.normal(1000.0, 37.0, (32, 40, 5)), rng.gamma(2.0, 55.0, (32, 40, 5))], axis=-1).astype(np.float32)
    label = np.zeros((32, 40, 5), np.float32)
    label[10:20, 12:30] = 1.0
    data = TrainingData.from_arrays([image], [label], spacings=[spacing])
    # trained at 1 x 1 x 3 mm: the in-plane grid becomes 16 x 32 for the 0.5 x 0.8 mm scan
    crop = (32, 40) if spacing[0] == 1.0 else (16, 32)
    prep = prepare_slices(data, slice_axis=2, spacing=(1.0, 1.0, 3.0), crop_size=crop, multiple=8, val_fraction=0.0)
    trained_on = prep.images.numpy()

    seen = []
    original = InferenceUNet.forward_logits

    def recording(self, x):
        seen.append(x.detach().cpu().numpy().copy())
        return original(self, x)

    monkeypatch.setattr(InferenceUNet, "forward_logits", recording)
    model = _net(in_channels=2, depth=3)
    model.softseg_config = {"slice_axis": 2, "spacing": [1.0, 1.0, 3.0], "normalisation": "zscore"}
    predict_volume(model, image, spacing=spacing, mixed_precision=False, batch_size=2)
    predicted_on = np.concatenate(seen)
    assert trained_on.dtype == predicted_on.dtype == np.float32
    assert trained_on.shape == predicted_on.shape == (5, 2) + crop
    np.testing.assert_array_equal(predicted_on, trained_on)
