#!/usr/bin/env python
"""GPU smoke check: the device paths of training and prediction on this machine, in minutes.

Usage (from the repository root)::

    .venv/bin/python scripts/gpu_smoke.py --device cuda --out benchmarks/results/gpu.md
    .venv/bin/python scripts/gpu_smoke.py --device mps  --out gpu-mps.md      # Apple silicon
    .venv/bin/python scripts/gpu_smoke.py --device cpu                         # runs in the test suite

On synthetic volumes (bright soft-edged blobs in noise, no data files needed) it

1. reports torch, the CUDA/cuDNN build, the card, its compute capability and whether the
   installed PyTorch has kernels for it;
2. asserts the precision chosen for that device (CUDA: bfloat16 from capability 8.0, float16
   below; CPU: bfloat16 only with native bf16; MPS: float32 training, float16 prediction);
3. trains a small U-Net for 2 epochs in the default precision, in float32 and in float16
   with a gradient scaler;
4. loads the checkpoint on the CPU and compares predictions: the device in float32 against
   the CPU (max |diff| <= 5e-3), mixed precision against float32 (<= 0.03), and counts the
   samples of MC dropout x TTA;
5. provokes real out-of-memory errors (CUDA, MPS: a per-process memory cap) in a training
   step, in validation and in prediction, and checks the one-sentence message and that the
   memory is handed back;
6. with two or more CUDA GPUs, trains with two torchrun processes (NCCL);
7. measures throughput (slices/s) of training and prediction.

Steps that need hardware this machine lacks are reported as skipped, with the reason. The
report is printed and, with ``--out``, written as Markdown. Exit status 1 if a check failed.
Expected time: under a minute on a CPU (tiny sizes), a few minutes on one GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from napari_softseg.engine import devices  # noqa: E402
from napari_softseg.engine.training import trainer as trainer_module  # noqa: E402
from napari_softseg.engine.training.data import TrainingData  # noqa: E402
from napari_softseg.engine.training.train import TrainConfig, train  # noqa: E402
from napari_softseg.errors import UserError  # noqa: E402

#: sizes per kind of device: volume shape, volumes, network depth and width, batch, crop
SIZES = {
    "cpu": dict(shape=(32, 32, 6), volumes=2, depth=2, features=4, batch=4, crop=(32, 32), predict=(32, 32, 12)),
    "gpu": dict(shape=(128, 128, 48), volumes=4, depth=3, features=16, batch=16, crop=(128, 128), predict=(256, 256, 64)),
}
FP32_VS_CPU = 5e-3
MIXED_VS_FP32 = 0.03


class Skip(Exception):
    """A step this machine cannot run (the message says why)."""


@dataclass
class Report:
    device: torch.device
    command: str = "python scripts/gpu_smoke.py"
    facts: list = field(default_factory=list)  # (what, value)
    checks: list = field(default_factory=list)  # (check, result, detail)
    speed: list = field(default_factory=list)  # (what, precision, slices/s)

    def run(self, name: str, step, *args):
        """Run one check; record passed / failed / skipped; return its value (None unless passed)."""
        t0 = time.perf_counter()
        try:
            value, detail = step(*args)
            self.checks.append((name, "passed", f"{detail} ({time.perf_counter() - t0:.1f} s)"))
            return value
        except Skip as why:
            self.checks.append((name, "skipped", str(why)))
        except Exception as err:  # noqa: BLE001 - a failed check is reported, the others still run
            traceback.print_exc()
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            self.checks.append((name, "FAILED", f"{type(err).__name__}: {first[:300]}"))
        return None

    @property
    def failed(self) -> bool:
        return any(result == "FAILED" for _, result, _ in self.checks)

    def markdown(self) -> str:
        lines = ["# GPU smoke check", "", f"`{self.command}` on this machine "
                 f"({time.strftime('%Y-%m-%d %H:%M %Z')}).", "", "| | |", "|---|---|"]
        lines += [f"| {what} | {value} |" for what, value in self.facts]
        lines += ["", "## Checks", "", "| check | result | detail |", "|---|---|---|"]
        lines += [f"| {name} | {result} | {detail} |" for name, result, detail in self.checks]
        if self.speed:
            lines += ["", "## Throughput", "", "| what | precision | slices/s |", "|---|---|---:|"]
            lines += [f"| {what} | {precision} | {rate:.1f} |" for what, precision, rate in self.speed]
        return "\n".join(lines) + "\n"


def _name(dtype) -> str:
    return "float32" if dtype is None else str(dtype).replace("torch.", "")


# ----------------------------------------------------------------------------- data


def synthetic_volume(rng: np.random.Generator, shape: tuple, z_scale: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """An image (blobs brighter than the background, noise) and its soft label: each blob's
    partial-volume fraction, a linear ramp one voxel wide at its edge (voxels 1 x 1 x 2 mm:
    ``z_scale`` 2; 0 gives cylinders through every slice)."""
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    label = np.zeros(shape, dtype=np.float32)
    for _ in range(3):
        centre = rng.uniform(0.3, 0.7, 3) * np.asarray(shape)
        radius = rng.uniform(0.12, 0.22) * min(shape[:2])
        dist = np.sqrt((grid[0] - centre[0]) ** 2 + (grid[1] - centre[1]) ** 2 + (z_scale * (grid[2] - centre[2])) ** 2)
        label = np.maximum(label, np.clip(radius + 0.5 - dist, 0.0, 1.0))
    image = 100.0 + 60.0 * label + rng.normal(0.0, 8.0, shape)
    return image.astype(np.float32), label


def synthetic_data(size: dict, seed: int = 0) -> TrainingData:
    rng = np.random.default_rng(seed)
    pairs = [synthetic_volume(rng, size["shape"]) for _ in range(size["volumes"])]
    return TrainingData.from_arrays([p[0] for p in pairs], [p[1] for p in pairs],
                                    spacings=[(1.0, 1.0, 2.0)] * len(pairs), names=[f"blobs{i}" for i in range(len(pairs))])


# ----------------------------------------------------------------------------- steps


def environment(report: Report) -> None:
    dev = report.device
    report.facts += [("python", platform.python_version()), ("platform", platform.platform()),
                     ("torch", torch.__version__), ("device", str(dev))]
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        cap = devices.cuda_capability(dev)
        report.facts += [
            ("CUDA (torch build)", torch.version.cuda), ("cuDNN", torch.backends.cudnn.version()),
            ("card", f"{props.name}, {props.total_memory / 2**30:.1f} GiB"), ("compute capability", f"{cap[0]}.{cap[1]}"),
            ("kernels in this torch", ", ".join(torch.cuda.get_arch_list())), ("CUDA GPUs", torch.cuda.device_count()),
        ]
    elif dev.type == "cpu":
        report.facts += [("CPU threads", torch.get_num_threads()), ("native bf16", devices.cpu_supports_bf16())]
    report.facts += [("training precision", _name(devices.training_dtype(dev))),
                     ("inference precision", _name(devices.autocast_dtype(dev)))]


def check_architecture(dev: torch.device):
    if dev.type != "cuda":
        raise Skip(f"no CUDA kernels to check on {dev.type}")
    cap = devices.cuda_capability(dev)
    assert devices.kernels_cover(cap, torch.cuda.get_arch_list()), devices.unsupported_gpu_reason(dev.index)
    assert devices.resolve_device(str(dev)) == dev
    return None, f"capability {cap[0]}.{cap[1]} covered by {', '.join(torch.cuda.get_arch_list())}"


def expected_precision(dev: torch.device) -> tuple:
    """(training, inference) dtypes this device should get, from the rules of the README."""
    if dev.type == "cuda":
        wanted = torch.bfloat16 if devices.cuda_capability(dev) >= (8, 0) else torch.float16
        return wanted, wanted
    if dev.type == "mps":
        return None, torch.float16
    wanted = torch.bfloat16 if devices.cpu_supports_bf16() else None
    return wanted, wanted


def check_precision(dev: torch.device):
    training, inference = expected_precision(dev)
    assert devices.training_dtype(dev) == training, f"training precision {devices.training_dtype(dev)}, expected {training}"
    assert devices.autocast_dtype(dev) == inference, f"inference precision {devices.autocast_dtype(dev)}, expected {inference}"
    return None, f"training {_name(training)}, prediction {_name(inference)}"


@contextlib.contextmanager
def forced_training_dtype(dtype):
    """Train in ``dtype`` whatever the device would choose (float16 + scaler on a bf16 card)."""
    original = trainer_module.training_dtype
    trainer_module.training_dtype = lambda device: dtype
    try:
        yield
    finally:
        trainer_module.training_dtype = original


def _config(dev: torch.device, size: dict, **extra) -> TrainConfig:
    options = dict(epochs=2, depth=size["depth"], base_features=size["features"], batch_size=size["batch"],
                   crop_size=size["crop"], lr=3e-3, seed=0, device=str(dev), val_fraction=0.34,
                   preview_slice=(0, size["shape"][2] // 2))
    options.update(extra)
    return TrainConfig(**options)


def check_training(dev, data, size, out_dir: Path, label: str, mixed: bool, forced=None):
    """Two epochs; returns (checkpoint, training slices/s of epoch 2)."""
    path = out_dir / f"{label}.pt"
    context = forced_training_dtype(forced) if forced is not None else contextlib.nullcontext()
    stamps = {}
    with context:
        events = []
        for event in train(_config(dev, size, mixed_precision=mixed), data, checkpoint_path=path):
            events.append(event)
            if event.kind == "epoch" and event.epoch == 1:
                stamps["from"] = time.perf_counter()
            if event.kind == "step" and event.phase == "train" and event.epoch == 2:
                stamps["to"] = time.perf_counter()  # the last step of an epoch waits for the device
    done = events[-1]
    assert done.status == "completed", f"{done.status}: {done.message}"
    epochs = [e for e in events if e.kind == "epoch"]
    assert len(epochs) == 2 and all(np.isfinite(e.train_loss) and np.isfinite(e.val_loss) for e in epochs)
    wanted = forced if forced is not None else (devices.training_dtype(dev) if mixed else None)
    assert done.summary["mixed_precision"] == _name(wanted), done.summary["mixed_precision"]
    assert done.summary["device"] == str(dev)
    rate = done.summary["n_train_slices"] / (stamps["to"] - stamps["from"])
    losses = ", ".join(f"{e.train_loss:.4f}" for e in epochs)
    return (path, rate, f"{_name(wanted)} ({label} run)"), f"{_name(wanted)}: training losses {losses}, val Dice {epochs[-1].val_dice:.3f}"


def check_checkpoint_on_cpu(path: Path):
    from napari_softseg.engine.predict import load_model

    model = load_model(path)
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
    return model, f"{path.name} loads on the CPU ({sum(p.numel() for p in model.parameters())} weights)"


def check_fp32_against_cpu(model, volume, dev):
    from napari_softseg.engine.predict import predict_volume

    cpu = predict_volume(model, volume, device="cpu", mixed_precision=False)
    ours = predict_volume(model, volume, device=dev, mixed_precision=False)
    diff = float(np.abs(ours - cpu).max())
    assert diff <= FP32_VS_CPU, f"max |{dev} - cpu| = {diff:.2e}"
    same = " (the same device)" if dev.type == "cpu" else ""
    return ours, f"max |{dev} float32 - cpu float32| = {diff:.2e} <= {FP32_VS_CPU}{same}"


def check_mixed_against_fp32(model, volume, fp32, dev):
    from napari_softseg.engine.predict import predict_volume

    mixed = predict_volume(model, volume, device=dev, mixed_precision=True)
    diff = float(np.abs(mixed - fp32).max())
    assert diff <= MIXED_VS_FP32, f"max |mixed - float32| = {diff:.3f}"
    return None, f"{_name(devices.autocast_dtype(dev))}: max |mixed - float32| = {diff:.2e} <= {MIXED_VS_FP32}"


def check_mc_tta(model, volume, dev):
    """MC dropout x TTA on the device. A NormReLU network is trained without dropout (it has no
    MC draws and predict refuses them): its weights are run with dropout 0.3 switched on."""
    from napari_softseg.engine.model import UNet
    from napari_softseg.engine.predict import predict_volume

    if not model.has_dropout:
        try:
            predict_volume(model, volume, device=dev, mc_samples=2)
            raise AssertionError("MC dropout on a network without dropout was not refused")
        except UserError:
            pass
        with_dropout = UNet(**{**model.config(), "dropout": 0.3})
        with_dropout.load_state_dict(model.state_dict())
        model = with_dropout.eval()
    seen = []
    pred = predict_volume(model, volume, device=dev, mc_samples=3, tta=2, progress=lambda done, total: seen.append((done, total)))
    n_slices = volume.shape[2]
    assert pred.samples.shape == (6,) + volume.shape, pred.samples.shape
    assert seen[-1] == (6 * n_slices, 6 * n_slices), seen[-1]
    assert np.allclose(pred.soft, pred.samples.mean(axis=0), atol=1e-6)
    differ = not np.allclose(pred.samples[0], pred.samples[1])
    assert differ or pred.soft.max() == 0, "two dropout draws gave the same map"
    draws = "draws differ" if differ else "the map is empty, draws not compared"
    return None, f"3 MC draws x 2 TTA views = {pred.samples.shape[0]} samples ({draws}), progress to {seen[-1][1]} slices"


# ----------------------------------------------------------------------------- out of memory


def _allocated(dev: torch.device) -> int:
    if dev.type == "cuda":
        return torch.cuda.memory_allocated(dev)
    return torch.mps.current_allocated_memory()


@contextlib.contextmanager
def memory_cap(dev: torch.device, headroom: int = 64 * 2**20):
    """Let this process allocate only ``headroom`` bytes more on ``dev`` (a real allocator
    out-of-memory error beyond that)."""
    devices.release_memory(dev)
    if dev.type == "cuda":
        total = torch.cuda.get_device_properties(dev).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved(dev) + headroom) / total), dev)
        try:
            yield
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, dev)
    elif dev.type == "mps":
        if not all(hasattr(torch.mps, f) for f in ("recommended_max_memory", "set_per_process_memory_fraction")):
            raise Skip(f"torch {torch.__version__} cannot cap MPS memory (needs torch >= 2.5)")
        limit = torch.mps.recommended_max_memory()
        torch.mps.set_per_process_memory_fraction(min(1.0, (torch.mps.driver_allocated_memory() + headroom) / limit))
        try:
            yield
        finally:
            torch.mps.set_per_process_memory_fraction(0.0)  # 0: no limit
    else:
        raise Skip("needs a CUDA or MPS device (the CPU has no per-process memory cap)")


def oom_data():
    """Small volumes padded to a large crop: the batch is small, the activations are not."""
    rng = np.random.default_rng(3)
    pairs = [synthetic_volume(rng, (64, 64, 8)) for _ in range(2)]
    return TrainingData.from_arrays([p[0] for p in pairs], [p[1] for p in pairs], spacings=[(1.0, 1.0, 2.0)] * 2)


def check_training_oom(dev: torch.device, stage: str):
    if dev.type not in ("cuda", "mps"):
        raise Skip("needs a CUDA or MPS device (the CPU has no per-process memory cap)")
    data = oom_data()
    cfg = TrainConfig(epochs=1, depth=2, base_features=32, batch_size=16, crop_size=(512, 512), device=str(dev),
                      val_fraction=0.5 if stage == "validation" else 0.0, seed=0)
    before = _allocated(dev)
    with memory_cap(dev):
        run = train(cfg, data)
        events = list(run)
        held = _allocated(dev) - before  # the trainer still exists here: network and optimiser only
    del run, events[:-1]
    done = events[-1]
    devices.release_memory(dev)
    after = _allocated(dev) - before
    assert done.status == "failed", done.status
    where = {"training": "in a training step", "validation": "in validation"}[stage]
    assert "ran out of memory with batch size 16 and crop 512x512" in done.message and where in done.message, done.message
    assert "try a smaller batch size or crop size" in done.message, done.message
    assert held < 32 * 2**20, f"{held / 2**20:.1f} MiB still held by the failed run"
    assert after <= 4 * 2**20, f"{after / 2**20:.1f} MiB not handed back"
    return None, f"\"{done.message}\"; held after the failure {held / 2**20:.1f} MiB, after the run {after / 2**20:.2f} MiB"


def check_prediction_oom(model, dev: torch.device):
    from napari_softseg.engine.predict import predict_volume

    if dev.type not in ("cuda", "mps"):
        raise Skip("needs a CUDA or MPS device (the CPU has no per-process memory cap)")
    volume = np.random.default_rng(4).normal(size=(1024, 1024, 32)).astype(np.float32)
    before = _allocated(dev)
    with memory_cap(dev, headroom=16 * 2**20):
        try:
            predict_volume(model, volume, device=dev, batch_size=32, mixed_precision=False)
        except UserError as err:
            message = str(err)
        else:
            raise AssertionError("prediction did not run out of memory")
    devices.release_memory(dev)
    after = _allocated(dev) - before
    assert message.startswith("Prediction ran out of memory") and "smaller batch size" in message, message
    assert after <= 4 * 2**20, f"{after / 2**20:.1f} MiB not handed back"
    return None, f"\"{message}\"; after: {after / 2**20:.2f} MiB"


# ----------------------------------------------------------------------------- torchrun, speed


def check_torchrun(dev: torch.device, out_dir: Path):
    if dev.type != "cuda" or torch.cuda.device_count() < 2:
        raise Skip("needs two CUDA GPUs")
    from napari_softseg.engine.checkpoint import load_checkpoint
    from napari_softseg.io.nifti import write_nifti

    image, label = synthetic_volume(np.random.default_rng(5), (96, 96, 24))
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    write_nifti(out_dir / "img.nii.gz", image, affine=affine)
    write_nifti(out_dir / "lab.nii.gz", label, affine=affine)
    out = out_dir / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "napari_softseg",
           "train", "--image", str(out_dir / "img.nii.gz"), "--label", str(out_dir / "lab.nii.gz"), "--epochs", "2",
           "--depth", "2", "--features", "8", "--batch-size", "4", "--device", "cuda", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-1500:]
    _, cfg = load_checkpoint(out)
    info = cfg["training"]["distributed"]
    assert info["world_size"] == 2 and info["shards_disjoint"], info
    assert cfg["training"]["device"] == "cuda:0", cfg["training"]["device"]
    return None, f"2 processes (NCCL): {info['samples_per_rank']} samples per process, {cfg['training']['epochs_run']} epochs"


def prediction_speed(model, dev: torch.device, size: dict) -> list:
    from napari_softseg.engine.predict import predict_volume

    volume = np.random.default_rng(6).normal(size=size["predict"]).astype(np.float32)
    rates = []
    for mixed in (True, False):
        batch = 4 if dev.type == "cpu" else 32
        predict_volume(model, volume, device=dev, mixed_precision=mixed, batch_size=batch)  # warm-up
        best = min(_timed(predict_volume, model, volume, device=dev, mixed_precision=mixed, batch_size=batch) for _ in range(3))
        dtype = devices.autocast_dtype(dev) if mixed else None
        rates.append((f"prediction {size['predict'][0]}x{size['predict'][1]}, batch {batch}", _name(dtype), volume.shape[2] / best))
    return rates


def _timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- main


def run_checks(dev: torch.device, out_dir: Path, command: str = "python scripts/gpu_smoke.py") -> Report:
    report = Report(dev, command)
    environment(report)
    size = SIZES["cpu" if dev.type == "cpu" else "gpu"]
    report.run("kernels for this GPU", check_architecture, dev)
    report.run("precision chosen for the device", check_precision, dev)
    data = synthetic_data(size)
    runs = [report.run("train 2 epochs, default precision", check_training, dev, data, size, out_dir, "default", True),
            report.run("train 2 epochs, float32", check_training, dev, data, size, out_dir, "fp32", False),
            report.run("train 2 epochs, float16 + gradient scaler", check_training, dev, data, size, out_dir, "fp16",
                       True, torch.float16)]
    for run in runs:
        if run is not None:
            report.speed.append((f"training, batch {size['batch']}, crop {size['crop'][0]}x{size['crop'][1]}", run[2], run[1]))
    model = report.run("checkpoint loads on the CPU", check_checkpoint_on_cpu, runs[0][0]) if runs[0] else None
    if model is not None:
        # a blob in every slice (the checks compare devices and precisions, not detection)
        volume, _ = synthetic_volume(np.random.default_rng(9), size["shape"], z_scale=0.0)
        fp32 = report.run("prediction float32: device vs CPU", check_fp32_against_cpu, model, volume, dev)
        if fp32 is not None:
            report.run("prediction mixed vs float32", check_mixed_against_fp32, model, volume, fp32, dev)
        report.run("MC dropout x TTA samples", check_mc_tta, model, volume, dev)
    report.run("out of memory in a training step", check_training_oom, dev, "training")
    report.run("out of memory in validation", check_training_oom, dev, "validation")
    if model is not None:
        report.run("out of memory in prediction", check_prediction_oom, model, dev)
        speed = report.run("prediction throughput", lambda: (prediction_speed(model, dev, size), "measured"))
        report.speed += speed or []
    report.run("torchrun, 2 processes", check_torchrun, dev, out_dir)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--out", help="write the report here as Markdown (e.g. benchmarks/results/gpu.md)")
    args = parser.parse_args(argv)
    dev = devices.resolve_device(args.device)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="softseg-smoke-") as tmp:
        report = run_checks(dev, Path(tmp), " ".join(["python scripts/gpu_smoke.py", *(argv if argv is not None else sys.argv[1:])]))
    report.facts.append(("smoke check time", f"{time.perf_counter() - t0:.0f} s"))
    text = report.markdown()
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    gc.collect()
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
