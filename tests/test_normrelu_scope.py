"""NormReLU's normalisation scope: the batch-wide maximum in training, the stored normaliser
at inference, and every checkpoint written before the scope existed predicting as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_softseg.engine.checkpoint import build_model, load_checkpoint, make_config, save_checkpoint
from napari_softseg.engine.losses import AdaptiveWingLoss
from napari_softseg.engine.model import InferenceUNet, NormReLU, UNet
from napari_softseg.engine.predict import MODELS_DIR, SHIPPED_MODELS, Prediction, load_model, predict_volume
from napari_softseg.engine.preprocess import apply_zscore, zscore_stats
from napari_softseg.engine.training.data import TrainingData
from napari_softseg.engine.training.train import TrainConfig, run_training, train
from napari_softseg.errors import UserError

from _oracles import plain_network_prediction

# ----------------------------------------------------------------------------- training mode, by hand


def _spike_batch():
    """Slice 0 holds the structure (one voxel, logit 2, y = 1); slice 1 holds none but has a
    spike (logit 1) and a weak score (logit 0.5)."""
    x = torch.zeros(2, 1, 4, 4)
    x[0, 0, 1, 1] = 2.0
    x[1, 0, 2, 2] = 1.0
    x[1, 0, 0, 3] = 0.5
    y = torch.zeros_like(x)
    y[0, 0, 1, 1] = 1.0
    return x.requires_grad_(True), y


def test_batch_scope_pushes_an_empty_slice_spike_down():
    x, y = _spike_batch()
    p = NormReLU("batch").train()(x)
    # divided by the batch's maximum (2): the spike is p = 0.5, not a p = 1 lesion
    assert p[1, 0, 2, 2] == 0.5 and p[1, 0, 0, 3] == 0.25 and p[0, 0, 1, 1] == 1.0
    AdaptiveWingLoss(foreground_weight=0.0)(p, y).backward()
    assert x.grad[1, 0, 2, 2] > 0 and x.grad[1, 0, 0, 3] > 0  # gradient descent lowers both


def test_slice_scope_grows_an_empty_slice_spike():
    x, y = _spike_batch()
    p = NormReLU("slice").train()(x)
    assert p[1, 0, 2, 2] == 1.0  # the empty slice's own maximum: a p = 1 lesion
    AdaptiveWingLoss(foreground_weight=0.0)(p, y).backward()
    # at p = 1 the output cannot move (it is its own maximum) and the only gradient on the
    # spike, through the weak score's p = 0.5 * 1 / spike, raises it
    assert x.grad[1, 0, 2, 2] < 0


def test_batch_scope_tracks_the_running_batch_maximum_in_training_only():
    act = NormReLU("batch")
    act.train()(torch.full((2, 1, 2, 2), 4.0))
    assert float(act.running_max[0]) == 4.0  # the first batch sets it
    act(torch.full((2, 1, 2, 2), 2.0))
    assert float(act.running_max[0]) == pytest.approx(0.9 * 4.0 + 0.1 * 2.0)
    assert "running_max" not in act.state_dict() and "norm_max" in act.state_dict()
    with pytest.raises(RuntimeError, match="no stored normaliser"):
        act.eval()(torch.ones(1, 1, 2, 2))  # never fitted: no defined output


def test_stored_normaliser_clips_and_is_independent_of_the_batch():
    act = NormReLU("batch").eval()
    act.norm_max.fill_(2.0)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    whole = act(x)
    assert torch.equal(whole, torch.cat([act(x[i : i + 1]) for i in range(16)]))
    assert torch.equal(whole, torch.clamp(torch.relu(x) / 2.0, max=1.0))
    weak = torch.full((1, 1, 4, 4), -0.3)
    weak[0, 0, 0, 0] = 0.05
    assert float(act(weak).max()) == pytest.approx(0.025)  # a weak score stays weak, never lifted to 1


# ----------------------------------------------------------------------------- a briefly trained model


def _disks(seed: int, n_slices: int = 12, size: int = 32, with_structure: bool = True):
    """A square of "tissue" (0.5) on a dark background with noise (sd 0.05) and a bright
    soft-edged disk (1.0, radius 3-5) in every other slice; the label is the disk's soft mask.
    The disks are small, so the scan's z-score hardly depends on them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    tissue = np.zeros((size, size), np.float32)
    tissue[4:-4, 4:-4] = 0.5
    image = (tissue[..., None] + rng.normal(0.0, 0.05, size=(size, size, n_slices))).astype(np.float32)
    label = np.zeros_like(image)
    for z in range(0, n_slices, 2) if with_structure else ():
        cy, cx, r = rng.uniform(10, size - 10, 2).tolist() + [rng.uniform(3, 5)]
        disk = np.clip(r + 0.5 - np.hypot(yy - cy, xx - cx), 0.0, 1.0).astype(np.float32)
        label[:, :, z] = disk
        image[:, :, z] += 0.5 * disk
    return image, label


def _disk_data(n: int = 4) -> TrainingData:
    vols = [_disks(seed) for seed in range(n)]
    return TrainingData.from_arrays([v[0] for v in vols], [v[1] for v in vols], spacings=[(1.0, 1.0, 3.0)] * n)


#: a tiny network trained for a few seconds on 3 volumes of disks, validated on 1
TINY = dict(batch_size=4, depth=2, base_features=8, lr=1e-2, device="cpu", augment=False, mixed_precision=False,
            val_fraction=0.25, seed=0, patience=50, num_threads=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The softseg preset's defaults, 12 epochs."""
    done = run_training(TrainConfig(epochs=12, **TINY), _disk_data(), checkpoint_path=tmp_path_factory.mktemp("scope") / "disks.pt")
    assert done.status == "completed", done.message
    return done, load_model(done.checkpoint)


def test_a_trained_softseg_checkpoint_stores_its_scope_and_normaliser(trained):
    done, model = trained
    state, config = load_checkpoint(done.checkpoint)
    arch = config["architecture"]
    assert arch["norm_scope"] == "batch" and arch["dropout"] == 0.0  # NormReLU presets train without dropout
    m = state["activation.norm_max"]
    assert m.shape == (1,) and torch.isfinite(m).all() and float(m[0]) > 0
    assert model.activation.scope == "batch" and torch.equal(model.activation.norm_max, m)
    # the structure sampler: 3 training volumes x 6 disk slices, 2 per batch of 4
    assert done.summary["history"] and config["training"]["n_train_slices"] == 36


def test_the_stored_normaliser_minimises_the_training_loss_over_training_and_validation_slices(trained):
    from napari_softseg.engine.training.trainer import Trainer

    _, model = trained
    d = Trainer(TrainConfig(epochs=1, **TINY), _disk_data()).data  # the same prepared slices
    with torch.no_grad():
        logits = model.forward_logits(d.images)
    m = float(model.activation.norm_max[0])
    aw = AdaptiveWingLoss(foreground_weight=0.0)

    def loss_at(value):
        return float(aw.elementwise(torch.clamp(torch.relu(logits) / value, max=1.0), d.truth).sum())

    # a minimum within the fit's grid step (3.9 %): lower than 10 % either side
    assert loss_at(m) < loss_at(m * 1.1) and loss_at(m) < loss_at(m / 1.1)


def test_every_training_batch_holds_the_structure(monkeypatch, tmp_path):
    from napari_softseg.engine.training import trainer as trainer_mod

    seen, original = [], trainer_mod.Trainer._batch

    def spy(self, idx, raters):
        seen.append(self.data.has_structure[idx].tolist())
        return original(self, idx, raters)

    monkeypatch.setattr(trainer_mod.Trainer, "_batch", spy)
    done = run_training(TrainConfig(epochs=2, **TINY), _disk_data(), checkpoint_path=tmp_path / "m.pt")
    assert done.status == "completed"
    assert len(seen) == 2 * 9  # 18 disk slices, 2 per batch
    assert all(batch.count(True) == 2 and len(batch) == 4 for batch in seen)  # empty_fraction 0.5


def test_fine_tuning_an_older_checkpoint_keeps_its_recipe(tmp_path):
    """A checkpoint without a scope is fine-tuned as it was trained: per-slice maximum, W = 10,
    shuffled batches, no score margin; a batch checkpoint keeps the batch recipe."""
    from napari_softseg.engine.training.trainer import Trainer

    torch.manual_seed(0)
    old = UNet(1, 1, depth=2, base_features=8)
    config = make_config(old)
    del config["architecture"]["norm_scope"]
    path = save_checkpoint(tmp_path / "old.pt", old, config)
    t = Trainer(TrainConfig(epochs=1, **TINY), _disk_data(), init=path)
    assert t.model.activation.scope == "slice" and t.sampler is None and t.margin_fn is None
    assert t.loss_fn.foreground_weight == 10.0 and t.model.dropout == 0.3
    new = Trainer(TrainConfig(epochs=1, **TINY), _disk_data(), init=save_checkpoint(tmp_path / "new.pt", _batch_net(0.5, 0.0),
                                                                                     make_config(_batch_net(0.5, 0.0))))
    assert new.sampler is not None and new.margin_fn is not None and new.loss_fn.foreground_weight == 0.0


def test_a_dice_normrelu_network_keeps_the_expected_batch_maximum(tmp_path):
    """Soft Dice has no voxel-wise loss to fit: no normaliser pass, the stored value is the
    last validation's estimate."""
    events = list(train(TrainConfig(epochs=2, preset="soft-relu-dice", **TINY), _disk_data(), checkpoint_path=tmp_path / "d.pt"))
    assert events[-1].status == "completed" and not any(e.phase == "normaliser" for e in events)
    state, config = load_checkpoint(events[-1].checkpoint)
    assert config["architecture"]["norm_scope"] == "batch" and float(state["activation.norm_max"][0]) > 0


def test_inference_is_independent_of_the_batch_size(trained):
    _, model = trained
    image, _ = _disks(10)
    one = predict_volume(model, image, batch_size=1, device="cpu", mixed_precision=False)
    sixteen = predict_volume(model, image, batch_size=16, device="cpu", mixed_precision=False)
    assert np.abs(one - sixteen).max() <= 1e-4
    assert sixteen.max() > 0.5  # not a trivially empty prediction


def test_the_trained_model_finds_the_disks_and_a_structure_free_scan_comes_out_near_zero(trained):
    _, model = trained
    image, label = _disks(11)
    soft = predict_volume(model, image, device="cpu", mixed_precision=False)
    assert soft[label >= 0.99].mean() > 0.8  # it learnt the disks (0.99 when written)
    assert 0.85 < soft.sum() / label.sum() < 1.2  # and their volume (1.04)
    assert soft[:, :, 1::2].max() < 0.2  # the slices without a disk stay near zero (0.0)
    free, _ = _disks(12, with_structure=False)
    assert predict_volume(model, free, device="cpu", mixed_precision=False).max() < 0.2  # (0.0)


def test_monte_carlo_dropout_on_a_model_without_dropout_says_so(trained):
    from napari_softseg.review.segment import SegmentRequest, segment

    done, model = trained
    image, _ = _disks(13)
    with pytest.raises(UserError, match="trained without dropout, so its Monte-Carlo dropout samples would all be"):
        predict_volume(model, image, mc_samples=3, device="cpu")
    # what the Segment dock runs (its errors are shown as they are)
    with pytest.raises(UserError, match="use test-time augmentation for samples instead"):
        segment(SegmentRequest(done.checkpoint, image, (1.0, 1.0, 3.0), mc_samples=5))
    tta = predict_volume(model, image, tta=2, device="cpu", mixed_precision=False)
    assert isinstance(tta, Prediction) and tta.samples.shape[0] == 2 and not np.array_equal(tta.samples[0], tta.samples[1])


# ----------------------------------------------------------------------------- MC dropout and TTA


def _batch_net(m: float, dropout: float = 0.3) -> UNet:
    torch.manual_seed(0)
    net = UNet(1, 1, depth=2, base_features=6, dropout=dropout, norm_scope="batch").eval()
    with torch.no_grad():  # centre the logits so that part of each slice is positive
        net.head.bias -= net.forward_logits(torch.randn(8, 1, 16, 16)).mean()
    net.activation.norm_max.fill_(m)
    return net


def test_mc_dropout_and_tta_samples_share_the_stored_normaliser():
    volume = np.random.default_rng(3).normal(size=(16, 16, 4)).astype(np.float32)
    runs = {}
    for m in (0.005, 0.01):
        torch.manual_seed(7)  # the same dropout masks for both normalisers
        runs[m] = predict_volume(_batch_net(m), volume, mc_samples=3, tta=2, device="cpu", mixed_precision=False)
    a, b = runs[0.005].samples, runs[0.01].samples
    assert a.shape == (6, 16, 16, 4) and not np.allclose(a[0], a[1])  # dropout really draws
    # each sample is min(ReLU(x) / m, 1) with the one stored m: doubling m halves every
    # sample wherever it is not clipped -- a per-sample maximum would give the same samples
    unclipped = a < 1.0
    np.testing.assert_allclose(a[unclipped], 2.0 * b[unclipped], rtol=1e-5, atol=1e-7)
    assert np.any(a == 1.0) and np.any((a > 0) & unclipped)
    # the plain prediction alike
    plain = {m: predict_volume(_batch_net(m), volume, device="cpu", mixed_precision=False) for m in (0.005, 0.01)}
    unclipped = plain[0.005] < 1.0
    np.testing.assert_allclose(plain[0.005][unclipped], 2.0 * plain[0.01][unclipped], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- checkpoints


def _logits(model, volume: np.ndarray) -> np.ndarray:
    """The network's logits of ``volume``'s axial slices, z-scored as prediction does: (S, H, W)."""
    mean, std = zscore_stats(volume)
    x = torch.from_numpy(apply_zscore(np.moveaxis(volume, 2, 0)[..., None], mean, std)).permute(0, 3, 1, 2)
    net = InferenceUNet(model)
    with torch.inference_mode():
        return torch.cat([net.forward_logits(x[i : i + 4]) for i in range(0, x.shape[0], 4)])[:, 0].numpy()


def test_a_checkpoint_written_before_the_scope_predicts_exactly_with_its_per_slice_maximum(tmp_path, phantom):
    """A NormReLU checkpoint as written before the scope existed (no ``norm_scope``, no stored
    normaliser: the earlier shipped models and users' models) loads as "slice" and predicts
    exactly what an independent per-slice maximum of its logits gives."""
    torch.manual_seed(1)
    net = UNet(1, 1, depth=2, base_features=6, dropout=0.0, norm_scope="slice").eval()
    volume = phantom.image[40:104, 60:132, 20:26]  # lesions in a 64 x 72 x 6 box: no padding
    with torch.no_grad():  # centre the logits so that part of each slice is positive
        net.head.bias -= float(np.median(_logits(net, volume)))
    config = make_config(net)
    del config["architecture"]["norm_scope"]
    path = save_checkpoint(tmp_path / "legacy.pt", net, config)
    state, config = load_checkpoint(path)
    assert "norm_scope" not in config["architecture"] and "activation.norm_max" not in state
    model = load_model(path)
    assert model.activation.scope == "slice"
    soft = predict_volume(model, volume, slice_axis=2, batch_size=4, device="cpu", mixed_precision=False)
    r = np.maximum(_logits(model, volume), np.float32(0))
    peak = r.max(axis=(1, 2), keepdims=True)
    expected = np.where(peak > 0, r / np.where(peak > 0, peak, 1), np.float32(0))
    assert np.array_equal(soft, np.moveaxis(expected, 0, 2))  # bit for bit, given the same logits
    assert np.all(soft.max(axis=(0, 1)) == 1.0)
    # and within float32 rounding of a plain slice-by-slice forward pass of the network
    np.testing.assert_allclose(soft, plain_network_prediction(model, volume, 2), atol=1e-4)


@pytest.mark.parametrize("name", sorted(SHIPPED_MODELS))
def test_shipped_models_predict_with_their_stored_normaliser_whatever_the_batch(name, phantom):
    """The shipped models are trained with the batch-wide maximum: they predict
    min(ReLU(x) / m, 1) with their stored m, the same with batch sizes 1 and 16."""
    path = MODELS_DIR / f"{name}.pt"
    if not path.is_file():
        pytest.skip(f"{name} is not installed")
    state, config = load_checkpoint(path)
    assert config["architecture"]["norm_scope"] == "batch"
    m = float(state["activation.norm_max"][0])
    assert np.isfinite(m) and m > 0
    model = load_model(path)
    volume = phantom.image[40:104, 60:132, 20:26]
    one, many = (predict_volume(model, volume, slice_axis=2, batch_size=b, device="cpu", mixed_precision=False)
                 for b in (1, 16))
    assert np.max(np.abs(one - many)) <= 1e-4
    expected = np.minimum(np.maximum(_logits(model, volume), np.float32(0)) / np.float32(m), np.float32(1))
    np.testing.assert_allclose(one, np.moveaxis(expected, 0, 2), atol=1e-6)


def test_a_checkpoint_without_a_scope_is_a_slice_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = UNet(1, 1, depth=2, base_features=4)
    config = make_config(model)
    del config["architecture"]["norm_scope"]  # as written before the scope existed
    path = save_checkpoint(tmp_path / "old.pt", model, config)
    loaded = build_model(*reversed(load_checkpoint(path)))
    assert loaded.norm_scope == "slice" and loaded.config()["norm_scope"] == "slice"


@pytest.mark.parametrize("value", [None, 0.0, -1.0, float("nan"), float("inf")])
def test_a_batch_checkpoint_without_a_finite_positive_normaliser_is_refused(tmp_path, value):
    model = _batch_net(0.5)
    path = save_checkpoint(tmp_path / "m.pt", model, make_config(model))
    state, config = load_checkpoint(path)
    assert float(build_model(config, state).activation.norm_max[0]) == 0.5
    if value is None:
        del state["activation.norm_max"]
    else:
        state["activation.norm_max"] = torch.tensor([value])
    torch.save({"format": "napari-softseg-checkpoint", "config": __import__("json").dumps(config),
                "state_dict": state}, tmp_path / "bad.pt")
    with pytest.raises(UserError) as err:
        load_model(tmp_path / "bad.pt")
    text = str(err.value)
    assert text.count(". ") == 0 and text.endswith(".")  # one sentence
    if value is not None and not np.isfinite(value):
        assert "NaN or infinite weight" in text  # the finite-weights check sees the buffer
    else:
        assert "lacks (no finite positive activation.norm_max)" in text and "train it again" in text


@pytest.mark.parametrize("arch, what", [
    ({"norm_scope": "volume"}, "unknown output normalisation scope 'volume'"),
    ({"norm_scope": "batch", "activation": "sigmoid"}, "unknown output normalisation scope 'batch' for its sigmoid"),
])
def test_a_bad_scope_is_refused(tmp_path, arch, what):
    model = UNet(1, 1, depth=2, base_features=4)
    config = make_config(model)
    config["architecture"].update(arch)
    with pytest.raises(UserError, match=what):
        build_model(config, model.state_dict())


def test_a_cancel_while_fitting_the_normaliser_keeps_the_validation_estimate(tmp_path):
    import threading

    cancel = threading.Event()
    events = []
    for ev in train(TrainConfig(epochs=1, **TINY), _disk_data(), cancel=cancel, checkpoint_path=tmp_path / "c.pt"):
        events.append(ev)
        if ev.phase == "normaliser":
            cancel.set()
    done = events[-1]
    assert done.status == "cancelled" and done.message.endswith("The output normaliser was not fitted.")
    assert sum(e.phase == "normaliser" for e in events[:-1]) == 1 and not any(e.phase == "threshold" for e in events)
    model = load_model(done.checkpoint)  # the estimate of the last validation: a usable checkpoint
    assert model.activation.calibrated
