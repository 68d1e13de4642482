"""The training generator: real-data training, threshold search, cancel, failures, fine-tuning."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_softseg.engine.checkpoint import build_model, load_checkpoint
from napari_softseg.engine.training.data import TrainingData
from napari_softseg.io.nifti import read_nifti
from napari_softseg.engine.training.threshold import THRESHOLDS, DiceAccumulator, best_threshold, search_threshold
from napari_softseg.engine.training.train import TrainConfig, run_training, train

# Axial slices 60..83 of fast_t1: the two artificial spheres of bet (z 112..132) lie outside.
SLAB = slice(60, 84)
TINY = dict(depth=2, base_features=8, batch_size=4, crop_size=(96, 96), lr=3e-3, seed=0)


@pytest.fixture(scope="module")
def brain(shared_data):
    bet = read_nifti(shared_data / "fast_t1" / "bet.nii.gz")
    gm = read_nifti(shared_data / "fast_t1" / "pve_1.nii.gz")
    wm = read_nifti(shared_data / "fast_t1" / "pve_2.nii.gz")
    return {
        "image": bet.data[:, :, SLAB].astype(np.float32),
        "gm": gm.data[:, :, SLAB].astype(np.float32),
        "wm": wm.data[:, :, SLAB].astype(np.float32),
        "spacing": bet.spacing,
    }


@pytest.fixture(scope="module")
def gm_data(brain):
    return TrainingData.from_arrays([brain["image"]], [brain["gm"]], spacings=[brain["spacing"]], names=["bet"])


@pytest.fixture(scope="module")
def trained(gm_data, tmp_path_factory):
    """Two epochs of SoftSeg on real grey-matter partial-volume maps."""
    path = tmp_path_factory.mktemp("train") / "gm.pt"
    events = list(train(TrainConfig(epochs=2, preview_slice=(0, 10), **TINY), gm_data, checkpoint_path=path))
    return events, path


# ----------------------------------------------------------------------------- threshold search


def test_threshold_search_takes_the_best_mean_per_volume_dice_ties_to_the_larger():
    # volume A: 1000 foreground voxels at 0.9, 1000 background voxels at 0.4;
    # volume B: 10 foreground voxels at 0.32, 990 background voxels at 0.1.
    a_pred = np.r_[np.full(1000, 0.9), np.full(1000, 0.4)]
    a_true = np.r_[np.ones(1000), np.zeros(1000)]
    b_pred = np.r_[np.full(10, 0.32), np.full(990, 0.1)]
    b_true = np.r_[np.ones(10), np.zeros(990)]
    # t in [0.15, 0.30]: A = 2*1000/3000 = 2/3, B = 1 -> mean 5/6 (the best; ties -> 0.30).
    # t in (0.40, 0.90]: A = 1, B = 0 -> 1/2 (a pooled Dice would prefer these).
    t, d = search_threshold([a_pred, b_pred], [a_true, b_true])
    assert t == pytest.approx(0.30) and d == pytest.approx(5 / 6)
    # truth is binarised at 0.5: a soft truth of 0.6 counts as foreground, 0.45 as background
    t, d = search_threshold([np.array([0.7, 0.2])], [np.array([0.6, 0.45])])
    assert t == pytest.approx(0.70) and d == pytest.approx(1.0)


def test_dice_accumulator_over_batches_equals_whole_volumes():
    rng = np.random.default_rng(0)
    pred = rng.random((6, 1, 5, 5)).astype(np.float32)
    truth = (rng.random((6, 1, 5, 5)) > 0.6).astype(np.float32)
    volume = np.array([0, 0, 1, 1, 1, 0])
    acc = DiceAccumulator(2)
    for sl in (slice(0, 4), slice(4, 6)):
        acc.update(torch.from_numpy(pred[sl]), torch.from_numpy(truth[sl]), torch.from_numpy(volume[sl]))
    for v in (0, 1):
        p, g = pred[volume == v].ravel(), truth[volume == v].ravel()
        for j, t in enumerate(THRESHOLDS):
            b = p >= np.float32(t)
            expected = 2 * np.sum(b * g) / (b.sum() + g.sum())
            assert acc.dice()[v, j] == pytest.approx(expected)
    # both empty scores 1
    empty = DiceAccumulator(1)
    empty.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.tensor([0]))
    assert np.all(empty.dice() == 1.0)
    assert best_threshold(empty.dice()) == (0.95, 1.0)


def test_threshold_search_counts_a_value_equal_to_the_threshold_as_foreground():
    """The one binarisation rule (value >= threshold) at every candidate threshold, ties included."""
    at = THRESHOLDS.astype(np.float32)  # predictions exactly on the thresholds
    pred = np.r_[at, at - np.float32(0.01)].reshape(1, 1, -1, 1)
    truth = np.ones_like(pred)
    acc = DiceAccumulator(1)
    acc.update(torch.from_numpy(pred), torch.from_numpy(truth), torch.tensor([0]))
    n = at.size
    # at threshold t_j pass t_j .. t_{n-1} (n - j values, the tie t_j included) and
    # t_{j+1} - 0.01 .. t_{n-1} - 0.01 (n - j - 1 values); a strict ">" would drop the tie
    for j in range(n):
        assert acc.pred[0, j, 0] == acc.inter[0, j, 0] == 2 * (n - j) - 1


# ----------------------------------------------------------------------------- training on real data


@pytest.mark.slow
def test_two_epochs_on_real_brain_data_lower_the_loss(trained, brain):
    events, path = trained
    kinds = [e.kind for e in events]
    assert kinds[-1] == "done" and kinds.count("epoch") == 2 and "start" in kinds
    start = next(e for e in events if e.kind == "start")
    epochs = [e for e in events if e.kind == "epoch"]
    done = events[-1]
    steps = [e for e in events if e.kind == "step" and e.phase == "train"]
    assert len(steps) == 2 * start.steps_per_epoch and all(e.eta_seconds is not None for e in steps)
    assert epochs[1].train_loss < epochs[0].train_loss
    assert done.best_val_loss < start.val_loss  # validation loss fell below the untrained network's
    assert done.status == "completed" and done.checkpoint == path
    # preview: the requested slice, on the original in-plane grid, in [0, 1]
    prev = epochs[-1].preview
    assert prev.shape == brain["image"].shape[:2] and 0 <= prev.min() and prev.max() <= 1
    # checkpoint: loads, threshold chosen from the grid, geometry recorded
    state, cfg = load_checkpoint(path)
    model = build_model(cfg, state)
    assert cfg["preset"] == "softseg" and cfg["architecture"]["depth"] == 2
    assert cfg["threshold"] in np.round(THRESHOLDS, 2) and cfg["threshold"] == done.threshold
    assert cfg["slice_axis"] == 2 and cfg["crop_size"] == [96, 96] and cfg["normalisation"] == "zscore"
    assert cfg["training"]["epochs_run"] == 2 and cfg["training"]["best_epoch"] in (1, 2)
    assert len(cfg["training"]["history"]) == 2
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 96, 96))
    assert out.shape == (1, 1, 96, 96)


@pytest.mark.slow
def test_same_seed_same_run(gm_data, trained, tmp_path):
    events, _ = trained
    again = list(train(TrainConfig(epochs=1, **TINY), gm_data, checkpoint_path=tmp_path / "b.pt"))
    first = [e.train_loss for e in events if e.kind == "step" and e.phase == "train" and e.epoch == 1]
    second = [e.train_loss for e in again if e.kind == "step" and e.phase == "train"]
    np.testing.assert_allclose(second, first, rtol=1e-5)


@pytest.mark.slow
def test_fine_tuning_continues_from_the_checkpoint(gm_data, trained, tmp_path):
    events, path = trained
    done = events[-1]
    tuned = list(train(TrainConfig(epochs=1, batch_size=4, lr=1e-3), gm_data, init=path,
                       checkpoint_path=tmp_path / "tuned.pt"))
    start = next(e for e in tuned if e.kind == "start")
    assert start.start_epoch == done.summary["epochs_total"] == done.best_epoch
    # same data, same split: the loaded model starts from its own best validation loss
    assert start.start_loss == pytest.approx(done.best_val_loss, rel=1e-4)
    _, cfg = load_checkpoint(tmp_path / "tuned.pt")
    assert cfg["architecture"]["base_features"] == 8  # the checkpoint's architecture, not the default 16
    assert cfg["training"]["init"] == "gm.pt" and cfg["training"]["start_epoch"] == start.start_epoch
    assert tuned[-1].best_val_loss <= start.start_loss


# ----------------------------------------------------------------------------- stopping


def _small(brain, **extra):
    data = TrainingData.from_arrays([brain["image"][:, :, :8]], [brain["gm"][:, :, :8]], spacings=[brain["spacing"]])
    cfg = dict(TINY, depth=1, base_features=4, batch_size=2, crop_size=(32, 32), val_fraction=0.25)
    cfg.update(extra)
    return data, TrainConfig(**cfg)


@pytest.mark.parametrize("kind", ["event", "callable"])
def test_cancel_stops_within_one_step_and_keeps_a_checkpoint(brain, tmp_path, kind):
    data, cfg = _small(brain, epochs=50)
    flag = threading.Event()
    cancel = flag if kind == "event" else flag.is_set
    steps_after = 0
    done = None
    for ev in train(cfg, data, cancel=cancel, checkpoint_path=tmp_path / "c.pt"):
        if ev.kind == "step" and ev.phase == "train":
            if flag.is_set():
                steps_after += 1
            elif ev.epoch == 2 and ev.step == 2:
                flag.set()
        done = ev
    assert steps_after == 0
    assert done.kind == "done" and done.status == "cancelled" and done.epoch == 2
    assert done.best_epoch == 1 and done.checkpoint.exists()
    _, ckpt = load_checkpoint(done.checkpoint)
    assert ckpt["training"]["status"] == "cancelled" and ckpt["threshold"] == 0.5


def test_nan_loss_stops_with_a_message_and_keeps_the_best_checkpoint(brain, tmp_path, monkeypatch):
    from napari_softseg.engine import presets

    calls = {"n": 0}
    original = presets.Preset.make_loss

    def make_loss(self, **kw):
        loss = original(self, **kw)

        class Poisoned(torch.nn.Module):
            def forward(self, p, t):
                calls["n"] += 1 if torch.is_grad_enabled() else 0
                value = loss(p, t)
                return value * float("nan") if calls["n"] > 6 else value

        return Poisoned()

    monkeypatch.setattr(presets.Preset, "make_loss", make_loss)
    data, cfg = _small(brain, epochs=5)
    events = list(train(cfg, data, checkpoint_path=tmp_path / "n.pt"))
    done = events[-1]
    assert done.status == "failed" and "NaN" in done.message
    assert done.best_epoch >= 1 and done.checkpoint.exists()
    with pytest.raises(Exception, match="NaN"):
        run_training(cfg, data, checkpoint_path=tmp_path / "n2.pt")


def test_out_of_memory_becomes_a_hint(brain, tmp_path, monkeypatch):
    from napari_softseg.engine.model import UNet

    def boom(self, x):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(UNet, "forward_logits", boom)
    data, cfg = _small(brain, epochs=2, val_fraction=0.0)
    done = list(train(cfg, data, checkpoint_path=tmp_path / "o.pt"))[-1]
    assert done.status == "failed" and "smaller batch size or crop size" in done.message
    assert done.checkpoint is None and "No checkpoint" in done.message


def test_early_stopping_after_patience(brain, tmp_path):
    data, cfg = _small(brain, epochs=30, patience=2, early_stop_eps=10.0)  # nothing counts as better
    done = list(train(cfg, data, checkpoint_path=tmp_path / "e.pt"))[-1]
    assert done.status == "early_stopped" and done.best_epoch == 1 and done.summary["epochs_run"] == 3


# ----------------------------------------------------------------------------- label sources


def test_random_sampling_draws_raters_per_sample_and_epoch(brain, tmp_path, monkeypatch):
    """Two raters that differ everywhere: every batch target tells which rater it came from."""
    from napari_softseg.engine.training import trainer as trainer_mod

    img = brain["image"][:, :, :8]
    r0 = (brain["gm"][:, :, :8] > 0.5).astype(np.float32)
    r1 = np.where(r0 > 0, 0.0, 0.5).astype(np.float32)  # complementary, distinguishable
    data = TrainingData.from_arrays([img], [[r0, r1]], spacings=[brain["spacing"]], label_source="random")
    seen = []
    original = trainer_mod.Trainer._batch

    def spy(self, idx, raters):
        x, y = original(self, idx, raters)
        full = self.labels[:, idx]  # (R, B, K, H, W)
        for b in range(len(idx)):
            match = [bool(torch.equal(y[b], full[r, b])) for r in range(full.shape[0])]
            seen.append((len(seen) // 8, int(idx[b]), match.index(True)))
        return x, y

    monkeypatch.setattr(trainer_mod.Trainer, "_batch", spy)
    cfg = TrainConfig(**dict(TINY, depth=1, base_features=4, crop_size=(32, 32), epochs=3, val_fraction=0.0, augment=False))
    list(train(cfg, data, checkpoint_path=tmp_path / "r.pt"))
    assert len(seen) == 3 * 8  # 8 training slices per epoch, 3 epochs
    assert all({r for e, _, r in seen if e == epoch} == {0, 1} for epoch in range(3))  # per sample, not per epoch
    per_sample = {}
    for epoch, sample, r in seen:
        per_sample.setdefault(sample, set()).add(r)
    assert any(len(v) == 2 for v in per_sample.values())  # drawn anew at each epoch


@pytest.mark.slow
def test_multiclass_softseg_on_grey_and_white_matter(brain, tmp_path):
    stacked = np.stack([brain["gm"][:, :, :8], brain["wm"][:, :, :8]], axis=-1)
    data = TrainingData.from_arrays([brain["image"][:, :, :8]], [stacked], spacings=[brain["spacing"]],
                                    classes=["gm", "wm"])
    cfg = TrainConfig(preset="multiclass-softseg", epochs=1, **dict(TINY, depth=1, base_features=4, crop_size=(32, 32)))
    done = list(train(cfg, data, checkpoint_path=tmp_path / "mc.pt"))[-1]
    _, ckpt = load_checkpoint(done.checkpoint)
    assert ckpt["architecture"]["out_channels"] == 3 and ckpt["classes"] == ["gm", "wm"]
    assert ckpt["architecture"]["activation"] == "multiclass_normrelu"
    with pytest.raises(Exception, match="multi-class preset"):
        list(train(TrainConfig(epochs=1, **TINY), data))


def test_cancel_while_choosing_the_threshold_keeps_the_trained_weights(brain, tmp_path):
    data, cfg = _small(brain, epochs=1)
    flag = threading.Event()
    events = []
    for ev in train(cfg, data, cancel=flag, checkpoint_path=tmp_path / "t.pt"):
        events.append(ev)
        if ev.phase == "threshold":
            flag.set()
    done = events[-1]
    assert sum(e.phase == "threshold" for e in events[:-1]) == 1
    assert done.status == "cancelled" and done.threshold == 0.5 and "not optimised" in done.message
    assert done.best_epoch == 1 and load_checkpoint(done.checkpoint)[1]["threshold"] == 0.5


def test_conventional_preset_trains_on_binary_targets(brain, tmp_path, monkeypatch):
    from napari_softseg.engine.training import trainer as trainer_mod

    targets = []
    original = trainer_mod.Trainer._batch

    def spy(self, idx, raters):
        x, y = original(self, idx, raters)
        targets.append(y)
        return x, y

    monkeypatch.setattr(trainer_mod.Trainer, "_batch", spy)
    data, cfg = _small(brain, epochs=1, preset="conventional")
    done = list(train(cfg, data, checkpoint_path=tmp_path / "h.pt"))[-1]
    assert targets and all(set(torch.unique(y).tolist()) <= {0.0, 1.0} for y in targets)
    _, ckpt = load_checkpoint(done.checkpoint)
    assert ckpt["preset"] == "conventional" and ckpt["architecture"]["activation"] == "sigmoid"


def test_weighted_adaptive_wing_keeps_softseg_alive_on_a_sparse_target(shared_data, tmp_path):
    """Spinal-cord grey matter is ~3 % of a 48x48 crop around the cord. With the Adaptive Wing
    loss's weighted map (the default, W = 10) SoftSeg learns it in 60 short epochs; the loss
    the trainer built carries the configured weight (0: the unweighted loss)."""
    from scipy import ndimage

    from napari_softseg.engine.predict import predict_volume
    from napari_softseg.metrics.segmentation import dice
    from napari_softseg.engine.training.trainer import Trainer

    img = read_nifti(shared_data / "sct_t2s" / "t2s_uncropped.nii.gz")
    gm = read_nifti(shared_data / "sct_t2s" / "t2s_uncropped_gmseg_manual.nii.gz").data > 0
    c = np.round(ndimage.center_of_mass(gm)).astype(int)
    box = (slice(c[0] - 24, c[0] + 24), slice(c[1] - 24, c[1] + 24))
    image, truth = img.data[box].astype(np.float32), gm[box].astype(np.float32)
    assert 0.01 < truth.mean() < 0.05
    data = TrainingData.from_arrays([image], [truth], spacings=[img.spacing])
    cfg = TrainConfig(preset="softseg", epochs=60, batch_size=4, crop_size=(48, 48), val_fraction=0, seed=0,
                      device="cpu", slice_axis=2, search_threshold=False)
    default = Trainer(cfg, data)
    assert default.loss_fn.foreground_weight == 0 and default.margin_fn is not None  # uniform loss + hinges
    assert Trainer(TrainConfig(**{**cfg.__dict__, "foreground_weight": 10.0}), data).loss_fn.foreground_weight == 10
    assert Trainer(TrainConfig(**{**cfg.__dict__, "preset": "soft-sig-wing"}), data).loss_fn.foreground_weight == 10
    assert not hasattr(Trainer(TrainConfig(**{**cfg.__dict__, "preset": "conventional"}), data).loss_fn, "foreground_weight")
    done = run_training(cfg, data, checkpoint_path=tmp_path / "cord.pt")
    from napari_softseg.engine.predict import load_model

    soft = predict_volume(load_model(done.checkpoint), image, slice_axis=2, device="cpu")
    assert soft.max() > 0.5  # not the all-zero map of a collapsed normalised ReLU
    assert dice(soft, truth) > 60.0
    with pytest.raises(Exception, match="Foreground weight must be a number >= 0"):
        TrainConfig(foreground_weight=-1.0).validate()
