"""Paths that only Apple GPUs or several CUDA GPUs take, checked on the CPU: the MPS fallbacks
of the augmentation, float64 kept off the device, the dock's precision box on MPS, the
process group bound to its GPU, and a torchrun run whose second process runs out of memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from napari_softseg.engine.training import augment
from napari_softseg.engine.training.threshold import DiceAccumulator

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- augmentation on MPS


@pytest.mark.parametrize("device, release, mode, native", [
    ("mps", (2, 5), "bilinear", False), ("mps", (2, 10), "bicubic", False), ("mps", (2, 11), "bicubic", True),
    ("mps", (3, 0), "bilinear", True), ("cuda", (2, 3), "bicubic", True), ("cpu", (2, 3), "bilinear", True),
])
def test_which_devices_sample_with_border_padding_natively(device, release, mode, native):
    assert augment.native_grid_sample(device, mode, release) is native


def _grid(n=3, h=13, w=17):
    params = augment.RandomAffine(rotation=40, translation=0.2, scale=0.3).sample(n, generator=torch.Generator().manual_seed(0))
    return F.affine_grid(augment.RandomAffine.theta(params, h, w), [n, 1, h, w], align_corners=False)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_the_mps_fallbacks_equal_border_padding(monkeypatch, mode):
    x = torch.randn(3, 2, 13, 17)
    grid = _grid()
    assert (grid.abs() > 1).any()  # part of the samples fall outside the slice
    reference = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
    calls = []
    original = F.grid_sample

    def spy(*args, **kwargs):
        calls.append(kwargs["padding_mode"])
        return original(*args, **kwargs)

    monkeypatch.setattr(augment, "native_grid_sample", lambda device_type, mode: False)
    monkeypatch.setattr(augment.F, "grid_sample", spy)
    out = augment.border_grid_sample(x, grid, mode)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)
    # bilinear: zero padding of the clamped grid, on the device; bicubic: border padding on the CPU
    assert calls == (["zeros"] if mode == "bilinear" else ["border"])


def test_random_affine_runs_through_the_fallback(monkeypatch):
    images, labels = torch.randn(4, 1, 16, 16), torch.rand(4, 1, 16, 16)
    params = augment.RandomAffine().sample(4, generator=torch.Generator().manual_seed(1))
    native = augment.RandomAffine().apply(images, labels, params)
    monkeypatch.setattr(augment, "native_grid_sample", lambda device_type, mode: False)
    emulated = augment.RandomAffine().apply(images, labels, params)
    for a, b in zip(native, emulated):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- no float64 on the device


def test_threshold_sums_live_on_the_host_in_float64_and_stay_exact_past_float32():
    acc = DiceAccumulator(1, 1, device="meta")  # whatever the device of the predictions
    assert all(t.device.type == "cpu" and t.dtype == torch.float64 for t in acc.tensors())
    acc = DiceAccumulator(1, 1, thresholds=[0.5])
    pred = torch.ones(301, 1, 256, 256)
    pred[..., 0, 0] = 0.0  # 65535 voxels per slice: odd counts
    acc.update(pred, pred, torch.zeros(301, dtype=torch.int64))  # 301 slices of one volume
    total = 301 * 65535  # 19_726_035 > 2**24: float32 sums would round it
    assert float(acc.pred[0, 0, 0]) == float(acc.inter[0, 0, 0]) == float(acc.truth[0, 0, 0]) == total
    assert int(np.float32(total)) != total


# ----------------------------------------------------------------------------- the dock on MPS


@pytest.mark.gui
def test_mixed_precision_is_unticked_and_disabled_on_mps(qtbot, monkeypatch):
    from napari_softseg.engine import devices
    from napari_softseg.engine.training.config import TrainConfig
    from napari_softseg.widgets.training.form import HyperParameters

    monkeypatch.setattr(devices, "available_devices",
                        lambda: [devices.DeviceInfo("mps", "Apple GPU (MPS)"), devices.DeviceInfo("cpu", "CPU")])
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)
    form = HyperParameters(TrainConfig())
    qtbot.addWidget(form)
    assert form.device_combo.currentData() == "mps"
    assert not form.mixed_precision.isChecked() and not form.mixed_precision.isEnabled()  # MPS trains in float32
    form.device_combo.setCurrentIndex(1)
    assert form.mixed_precision.isChecked() and form.mixed_precision.isEnabled()  # a CPU with native bf16
    form.device_combo.setCurrentIndex(0)
    assert not form.mixed_precision.isChecked()


# ----------------------------------------------------------------------------- torchrun


def test_the_process_group_is_bound_to_the_local_gpu(monkeypatch):
    import torch.distributed as dist

    from napari_softseg.engine.training import distributed

    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.setdefault("set_device", device))
    monkeypatch.setattr(dist, "init_process_group", lambda backend=None, device_id=None: calls.update(
        backend=backend, device_id=device_id))
    distributed.init_from_env(torch.device("cuda", 0))
    assert calls == {"set_device": torch.device("cuda", 1), "backend": "nccl", "device_id": torch.device("cuda", 1)}
    calls.clear()
    distributed.init_from_env(torch.device("cpu"))
    assert calls == {"backend": "gloo", "device_id": None}


def test_average_gradients_is_the_mean_over_processes(monkeypatch):
    from napari_softseg.engine.training import distributed

    ctx = distributed.DistContext(rank=0, world_size=2)
    monkeypatch.setattr(distributed, "all_reduce_sum", lambda ctx, t: t.add_(torch.arange(t.numel(), dtype=t.dtype)))
    layer = torch.nn.Conv2d(1, 2, 3).to(memory_format=torch.channels_last)
    layer(torch.randn(1, 1, 5, 5)).sum().backward()
    mine = [p.grad.clone() for p in layer.parameters()]
    distributed.average_gradients(ctx, layer.parameters())
    other = torch.arange(sum(g.numel() for g in mine), dtype=torch.float32)  # the peer's gradients, flattened
    expected = (torch.cat([g.reshape(-1) for g in mine]) + other) / 2
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in layer.parameters()]), expected)


@pytest.mark.slow
def test_torchrun_stops_every_process_when_one_runs_out_of_memory(shared_data, tmp_path):
    """Rank 1 runs out of memory in its second training step; rank 0 must not wait for it in
    a collective: both stop at once and rank 0 reports the sentence."""
    from napari_softseg.io.nifti import read_nifti, write_nifti

    bet = read_nifti(shared_data / "fast_t1" / "bet.nii.gz")
    gm = read_nifti(shared_data / "fast_t1" / "pve_1.nii.gz")
    box = (slice(40, 104), slice(50, 114), slice(60, 70))
    write_nifti(tmp_path / "img.nii.gz", bet.data[box], affine=bet.affine)
    write_nifti(tmp_path / "gm.nii.gz", gm.data[box].astype(np.float32), affine=bet.affine)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(HERE / "_oom_rank.py"),
           "train", "--image", str(tmp_path / "img.nii.gz"), "--label", str(tmp_path / "gm.nii.gz"), "--epochs", "3",
           "--depth", "2", "--features", "4", "--batch-size", "2", "--device", "cpu", "--out", str(tmp_path / "m.pt")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("ran out of memory with batch size 2 and crop 64x64 on cpu in a training step") == 1, proc.stderr[-3000:]
    assert "Timeout" not in proc.stderr and time.perf_counter() - t0 < 300
    # the best weights of no finished epoch: nothing written
    assert not (tmp_path / "m.pt").exists()
