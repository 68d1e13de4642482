"""Out of memory at every stage of training and prediction (provoked with the error CUDA raises),
the agreement of torchrun processes on a failure, data residency, the float16 overflow guard
and the training process's recovery from a sticky device error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_softseg.engine.training import trainer as trainer_module
from napari_softseg.engine.training.data import TrainingData
from napari_softseg.engine.training.train import TrainConfig, train
from napari_softseg.errors import UserError

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)"
SMALLER = "try a smaller batch size or crop size."


def _blobs(seed: int, shape=(24, 24, 6)):
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    label = np.zeros(shape, np.float32)
    for z in range(shape[2]):
        cx, cy = rng.uniform(8, 16, 2)
        label[:, :, z] = np.clip(6.5 - np.hypot(x - cx, y - cy), 0, 1)
    image = (100 + 50 * label + rng.normal(0, 5, shape)).astype(np.float32)
    return image, label


@pytest.fixture(scope="module")
def data():
    pairs = [_blobs(0), _blobs(1)]
    return TrainingData.from_arrays([p[0] for p in pairs], [p[1] for p in pairs])


def _config(**extra):
    options = dict(epochs=2, depth=1, base_features=4, batch_size=2, crop_size=(24, 24), val_fraction=0.5,
                   seed=0, device="cpu")
    options.update(extra)
    return TrainConfig(**options)


def _raise_oom(*args, **kwargs):
    raise torch.cuda.OutOfMemoryError(OOM)


@pytest.fixture
def released(monkeypatch):
    """Count the hand-backs of device memory by the trainer."""
    calls = []
    monkeypatch.setattr(trainer_module, "release_memory", lambda device=None: calls.append(str(device)))
    return calls


# ----------------------------------------------------------------------------- training, stage by stage


def test_out_of_memory_in_the_first_validation_at_twice_the_batch(data, tmp_path, monkeypatch, released):
    monkeypatch.setattr(trainer_module.Trainer, "_predict", _raise_oom)
    done = list(train(_config(), data, checkpoint_path=tmp_path / "m.pt"))[-1]
    assert done.status == "failed" and done.epoch == 0
    assert done.message == ("Training ran out of memory with batch size 2 and crop 24x24 on cpu in validation, which "
                            f"uses batches of 4; {SMALLER} No checkpoint was written: no epoch had finished.")
    assert released == ["cpu"] and not (tmp_path / "m.pt").exists()


def test_out_of_memory_moving_a_training_batch_to_the_device(data, tmp_path, monkeypatch, released):
    calls = {"n": 0}
    original = trainer_module.gather_to_device

    def gather(source, rows, device):
        calls["n"] += 1
        if calls["n"] == 3:  # the first batch's images and labels went; the next images do not
            _raise_oom()
        return original(source, rows, device)

    monkeypatch.setattr(trainer_module, "gather_to_device", gather)
    events = list(train(_config(val_fraction=0.0), data, checkpoint_path=tmp_path / "m.pt"))
    done = events[-1]
    assert [e.step for e in events if e.kind == "step"] == [1]  # one step done, the second failed
    assert done.status == "failed"
    assert done.message.startswith(f"Training ran out of memory with batch size 2 and crop 24x24 on cpu in a training step; {SMALLER}")
    assert released == ["cpu"]


def test_out_of_memory_in_a_training_step_frees_the_gradients(data, tmp_path, monkeypatch, released):
    from napari_softseg.engine.model import UNet

    original, seen = UNet.forward_logits, {}

    def forward(self, x):
        if torch.is_grad_enabled() and self.head.weight.grad is not None:  # the second step
            seen["grad_before"] = True
            _raise_oom()
        return original(self, x)

    monkeypatch.setattr(UNet, "forward_logits", forward)
    runs = []
    monkeypatch.setattr(trainer_module.Trainer, "run", _keep(trainer_module.Trainer.run, runs))
    done = list(train(_config(), data, checkpoint_path=tmp_path / "m.pt"))[-1]
    assert seen["grad_before"] and done.status == "failed" and "in a training step" in done.message
    assert all(p.grad is None for p in runs[0].model.parameters())  # handed back with the batch
    assert released == ["cpu"]


def _keep(run, store):
    def wrapped(self, cancel):
        store.append(self)
        return run(self, cancel)

    return wrapped


def test_out_of_memory_in_the_optimiser_step(data, tmp_path, monkeypatch, released):
    monkeypatch.setattr(trainer_module.Trainer, "_apply_gradients", _raise_oom)
    done = list(train(_config(), data, checkpoint_path=tmp_path / "m.pt"))[-1]
    assert done.status == "failed" and "in a training step" in done.message


def test_out_of_memory_while_choosing_the_threshold_keeps_the_weights(data, tmp_path, monkeypatch, released):
    from napari_softseg.engine.training.threshold import DiceAccumulator

    monkeypatch.setattr(DiceAccumulator, "update", _raise_oom)
    done = list(train(_config(), data, checkpoint_path=tmp_path / "m.pt"))[-1]
    assert done.status == "failed"
    assert done.message == ("Training ran out of memory with batch size 2 and crop 24x24 on cpu while choosing the "
                            f"threshold, which uses batches of 4; {SMALLER} The threshold was not optimised.")
    assert done.checkpoint.exists() and done.threshold == 0.5 and released == ["cpu"]


def test_out_of_memory_in_the_preview_stops_with_its_own_advice(data, tmp_path, monkeypatch, released):
    monkeypatch.setattr(trainer_module.Trainer, "_preview", _raise_oom)
    done = list(train(_config(preview_slice=(0, 2)), data, checkpoint_path=tmp_path / "m.pt"))[-1]
    assert done.status == "failed" and done.epoch == 1
    assert "while predicting the preview slice; turn the live preview off or try a smaller" in done.message
    assert done.checkpoint.exists()  # epoch 1 had finished before its preview


def test_out_of_memory_placing_the_network_is_a_user_error(data, monkeypatch, released):
    monkeypatch.setattr(trainer_module, "training_dtype", _raise_oom)
    with pytest.raises(UserError, match="^Training ran out of memory on cpu while moving the network there; "):
        next(train(_config(), data))


def test_other_errors_of_a_single_process_still_propagate(data, monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("shapes cannot be multiplied")

    monkeypatch.setattr(trainer_module.Trainer, "_predict", bug)
    with pytest.raises(RuntimeError, match="shapes"):
        list(train(_config(), data))


# ----------------------------------------------------------------------------- torchrun agreement


class _Peer:
    """Stands in for the other torchrun process: adds its contributions to every all-reduce
    and records the sequence of collectives."""

    def __init__(self, fail_at: tuple | None = None) -> None:
        self.fail_at, self.calls, self.reductions = fail_at, [], 0  # fail_at: (n-th all-reduce, stage)

    def all_reduce_sum(self, ctx, *tensors):
        self.calls.append(("all_reduce", tuple(tuple(t.shape) for t in tensors)))
        self.reductions += 1
        slots = tensors[-1]
        if self.fail_at is not None and self.reductions == self.fail_at[0]:
            slots[trainer_module.STAGES.index(self.fail_at[1])] += 1.0


def _distributed(monkeypatch, peer: _Peer, rank: int = 0):
    from napari_softseg.engine.training import distributed

    ctx = distributed.DistContext(rank=rank, world_size=2, local_rank=rank, backend="gloo")
    monkeypatch.setattr(distributed, "current", lambda: ctx)
    monkeypatch.setattr(distributed, "all_reduce_sum", peer.all_reduce_sum)
    monkeypatch.setattr(distributed, "broadcast", lambda ctx, tensors, src=0: peer.calls.append(("broadcast",)))
    monkeypatch.setattr(distributed, "average_gradients", lambda ctx, params: peer.calls.append(("average",)))
    monkeypatch.setattr(distributed, "gather_objects", lambda ctx, obj: peer.calls.append(("gather",)) or [obj, obj])


def test_a_peers_failure_stops_this_process_with_the_same_sentence(data, tmp_path, monkeypatch):
    peer = _Peer(fail_at=(3, "validation"))  # 1: preparing, 2: before validation, 3: validation sums
    _distributed(monkeypatch, peer)
    done = list(train(_config(), data, checkpoint_path=tmp_path / "m.pt"))[-1]
    assert done.status == "failed"
    assert done.message.startswith("Training ran out of memory with batch size 2 and crop 24x24 on cpu in validation")


def test_other_errors_under_torchrun_stop_every_process_too(data, tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("shapes cannot be multiplied")

    _distributed(monkeypatch, _Peer(), rank=1)
    monkeypatch.setattr(trainer_module.Trainer, "_predict", bug)
    done = list(train(_config(), data, checkpoint_path=tmp_path / "m.pt"))[-1]
    assert done.status == "failed" and done.message.startswith("Training failed (validation): shapes cannot be multiplied.")

    class Broken(_Peer):  # the other process hit that error
        def all_reduce_sum(self, ctx, *tensors):
            super().all_reduce_sum(ctx, *tensors)
            if self.reductions == 3:
                tensors[-1][-1] += 1.0

    monkeypatch.undo()
    _distributed(monkeypatch, Broken(), rank=0)
    done = list(train(_config(), data, checkpoint_path=tmp_path / "n.pt"))[-1]
    assert done.message.startswith("Training failed in another torchrun process; see its error output.")


def test_a_failed_process_makes_the_same_collectives_as_its_peer(data, tmp_path, monkeypatch):
    """The process that runs out of memory and the one that does not issue the same sequence
    of collectives, so neither waits for the other."""
    sequences = {}
    original = trainer_module.Trainer._forward_backward
    for role in ("fails", "peer"):
        # all-reduces: preparing, before validation, validation sums, step 1, step 2
        peer = _Peer(fail_at=None if role == "fails" else (5, "training"))
        _distributed(monkeypatch, peer, rank=1)

        def forward_backward(self, idx, raters, role=role, calls={"n": 0}):  # noqa: B006 - one count per role
            calls["n"] += 1
            if role == "fails" and calls["n"] == 2:
                _raise_oom()
            return original(self, idx, raters)

        monkeypatch.setattr(trainer_module.Trainer, "_forward_backward", forward_backward)
        done = list(train(_config(), data, checkpoint_path=tmp_path / f"{role}.pt"))[-1]
        assert done.status == "failed" and "in a training step" in done.message, done.message
        sequences[role] = peer.calls
    assert sequences["fails"] == sequences["peer"], "\n".join(map(str, sequences.values()))
    assert ("average",) in sequences["fails"] and sequences["fails"][-1] == ("gather",)


def test_a_preview_failure_of_rank_0_reaches_the_others_at_the_next_agreement(data, tmp_path, monkeypatch):
    peer = _Peer()
    _distributed(monkeypatch, peer, rank=0)
    monkeypatch.setattr(trainer_module.Trainer, "_preview", _raise_oom)
    events = list(train(_config(preview_slice=(0, 2)), data, checkpoint_path=tmp_path / "m.pt"))
    done = events[-1]
    assert done.status == "failed" and "preview slice" in done.message
    assert [e.epoch for e in events if e.kind == "epoch"] == [1]  # epoch 2's first agreement stopped it


# ----------------------------------------------------------------------------- data residency


def test_the_training_set_stays_on_the_host_and_only_batches_move(data, tmp_path, monkeypatch):
    moved = []
    original = trainer_module.gather_to_device

    def gather(source, rows, device):
        moved.append(rows.numel())
        return original(source, rows, device)

    monkeypatch.setattr(trainer_module, "gather_to_device", gather)
    cfg = _config()
    trainer = trainer_module.Trainer(cfg, data, checkpoint_path=tmp_path / "m.pt")
    assert trainer.images is trainer.data.images  # the prepared host tensors, not device copies
    assert trainer.truth.data_ptr() == trainer.labels[0].data_ptr()  # one rater: no duplicate truth
    list(trainer.run(None))
    assert moved and max(moved) <= 2 * cfg.batch_size  # validation batches are the largest


def test_random_raters_gather_the_drawn_raters_rows(monkeypatch, tmp_path):
    image, label = _blobs(2)
    data = TrainingData.from_arrays([image], [[label, np.zeros_like(label) + (label > 0.5) * 0.25]], label_source="random")
    trainer = trainer_module.Trainer(_config(augment=False, val_fraction=0.0), data, checkpoint_path=tmp_path / "m.pt")
    idx = torch.tensor([0, 3, 5])
    raters = torch.tensor([0, 1, 0, 1, 1, 0])
    _, y = trainer._batch(idx, raters)
    expected = torch.stack([trainer.labels[r, i] for r, i in zip(raters[idx].tolist(), idx.tolist())])
    assert torch.equal(y, expected)


# ----------------------------------------------------------------------------- prediction


def _model(depth=2):
    from napari_softseg.engine.model import UNet

    torch.manual_seed(0)
    model = UNet(1, 1, depth=depth, base_features=4).eval()
    with torch.no_grad():
        model.head.bias.fill_(0.5)
    return model


def test_out_of_memory_in_prediction_is_one_sentence(monkeypatch):
    from napari_softseg.engine import predict
    from napari_softseg.engine.model import InferenceUNet

    released = []
    monkeypatch.setattr(predict, "release_memory", lambda device=None: released.append(str(device)))
    monkeypatch.setattr(InferenceUNet, "forward_logits", _raise_oom)
    volume = np.random.default_rng(0).normal(size=(20, 12, 5)).astype(np.float32)
    with pytest.raises(UserError) as err:
        predict.predict_volume(_model(), volume, batch_size=3, device="cpu")
    assert str(err.value) == "Prediction ran out of memory on cpu with batch size 3 (slices of 20x12); try a smaller batch size."
    assert released == ["cpu"]


def test_float16_logits_that_overflow_are_computed_again_in_float32(monkeypatch):
    from napari_softseg.engine import model as model_module
    from napari_softseg.engine import predict

    model = _model()
    with torch.no_grad():
        model.encoders[0][0].weight.mul_(1e6)  # first features far beyond float16's 65504
    volume = np.random.default_rng(1).normal(size=(16, 16, 4)).astype(np.float32)
    fp32 = predict.predict_volume(model, volume, device="cpu", mixed_precision=False)
    monkeypatch.setattr(predict, "autocast_dtype", lambda device: torch.float16)
    monkeypatch.setattr(model_module, "_fused_conv_relu_op", lambda: None)  # no float16 oneDNN kernels here
    plain = model_module.InferenceUNet(model, dtype=torch.float16)
    assert not torch.isfinite(plain.forward_logits(torch.randn(1, 1, 16, 16))).all()  # it does overflow
    guarded = predict.predict_volume(model, volume, device="cpu", mixed_precision=True)
    assert np.isfinite(guarded).all() and fp32.max() > 0
    np.testing.assert_allclose(guarded, fp32, atol=1e-6)


# ----------------------------------------------------------------------------- the training process


def test_a_sticky_cuda_error_ends_the_training_process_after_reporting(monkeypatch):
    from napari_softseg.engine.training import child

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
        yield  # a generator, like train()

    monkeypatch.setattr("napari_softseg.engine.training.sources.build_training_data", lambda *a: None)
    monkeypatch.setattr("napari_softseg.engine.training.train.train", broken)
    job = {"snapshots": [], "folders": [], "label_source": "label", "config": None, "init": None, "checkpoint_path": None}
    outcome = {}
    (event,) = list(child.run_job(job, lambda: False, None, outcome))
    assert event.status == "failed" and outcome == {"device_error": True}
    assert event.message.startswith("Training failed: CUDA error: an illegal memory access was encountered. ")
    assert "restarts for the next run" in event.message


class _Inbox:
    def __init__(self, jobs):
        self.jobs, self.sizes = list(jobs), {}

    def next_job(self):
        return self.jobs.pop(0) if self.jobs else None

    def is_cancelled(self, job_id):
        return False


def test_the_training_process_hands_memory_back_between_jobs_and_exits_after_a_device_error(monkeypatch):
    import io

    from napari_softseg.engine import devices
    from napari_softseg.engine.training import child

    released, ran = [], []

    def run_job(job, cancel, plot_size, outcome):
        ran.append(job["id"])
        if job.get("break"):
            outcome["device_error"] = True
        yield ("event", job["id"])

    monkeypatch.setattr(child, "run_job", run_job)
    monkeypatch.setattr(devices, "release_memory", lambda device=None: released.append(device))
    out = io.BytesIO()
    assert child.serve(_Inbox([{"id": 1}, {"id": 2}]), out) == 0
    assert ran == [1, 2] and released == [None, None]
    ran.clear()
    assert child.serve(_Inbox([{"id": 3, "break": True}, {"id": 4}]), io.BytesIO()) == child.EXIT_DEVICE_ERROR
    assert ran == [3]  # the next job goes to a fresh process
