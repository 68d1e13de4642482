"""Prediction speed, accuracy and memory: ``predict_volume`` vs a plain eager float32 loop.

Network: the default architecture (``UNet()``: depth 3, 16 base features, 0.49 M parameters,
1.9 MB), trained for a few dozen steps on the real brain T1 / gray-matter partial-volume
pair in ``../shared/data/fast_t1`` so that its soft output is non-trivial (a shipped
``brain-gm`` model is used instead when installed). Input: a 256x256x48 volume built from
that T1 (48 axial slices placed in a 256x256 field).

Measured in one process, alternating the contenders and keeping each one's best time:

* **baseline**: the obvious implementation: numpy z-score, then ``model(slice)`` for each
  slice under ``torch.no_grad()``, float32, default memory format;
* **ours**: ``predict_volume`` with its defaults (batch norm folded, fused conv+ReLU,
  bfloat16 on CPUs with native bf16, channels-last, batches of 4);
* **ours fp32**: the same with ``mixed_precision=False``.

Also: achieved GFLOP/s (convolution multiply-adds, 2 FLOPs each, :func:`count_flops`) vs a
2048x2048 bfloat16 and float32 matmul measured in the same run, the largest absolute
difference of the soft maps from the baseline, and the peak resident memory (ru_maxrss of
a fresh subprocess) of ``predict_volume`` on 512x512x200.

    python -m benchmarks.bench_predict [--quick] [--out DIR]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fast_t1"


def _data_dir() -> Path:
    for cand in (DATA, Path("/work/shared/data/fast_t1")):
        if cand.exists():
            return cand.resolve()
    raise FileNotFoundError("fast_t1 not found next to the repository")


def _trained_model(steps: int):
    import torch

    from napari_softseg.engine.predict import MODELS_DIR, load_model
    from napari_softseg.engine.losses import AdaptiveWingLoss
    from napari_softseg.engine.model import UNet
    from napari_softseg.io.nifti import read_nifti

    shipped = MODELS_DIR / "brain-gm.pt"
    if shipped.exists():
        return load_model(shipped), "shipped brain-gm"
    d = _data_dir()
    img = read_nifti(d / "bet.nii.gz").data.astype(np.float32)
    lab = read_nifti(d / "pve_1.nii.gz").data.astype(np.float32)
    img = (img - img.mean()) / img.std()
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[:, None]
    y = torch.from_numpy(np.ascontiguousarray(lab.transpose(2, 0, 1)))[:, None]
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = UNet()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn = AdaptiveWingLoss()
    for _ in range(steps):
        idx = torch.randint(30, 110, (4,), generator=gen)
        i, j = (int(v) for v in torch.randint(0, 142 - 96, (2,), generator=gen))
        pred = model(x[idx, :, i : i + 96, j : j + 96])
        loss = loss_fn(pred, y[idx, :, i : i + 96, j : j + 96])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), f"trained here for {steps} steps on fast_t1 (T1 -> GM)"


def _volume(size: int, n_slices: int) -> np.ndarray:
    from napari_softseg.io.nifti import read_nifti

    bet = read_nifti(_data_dir() / "bet.nii.gz").data
    vol = np.zeros((size, size, n_slices), np.float32)
    first = max(0, bet.shape[2] // 2 - n_slices // 2)
    src = bet[: min(size, bet.shape[0]), : min(size, bet.shape[1]), first : first + n_slices]
    ox, oy = (size - src.shape[0]) // 2, (size - src.shape[1]) // 2
    vol[ox : ox + src.shape[0], oy : oy + src.shape[1], : src.shape[2]] = src
    return vol


def baseline_predict(model, volume: np.ndarray) -> np.ndarray:
    """Plain eager float32 loop, one slice at a time (slices along the last axis)."""
    import torch

    x = (volume - volume.mean()) / volume.std()
    out = np.empty(volume.shape, np.float32)
    with torch.no_grad():
        for z in range(volume.shape[2]):
            sl = torch.from_numpy(np.ascontiguousarray(x[:, :, z], dtype=np.float32))[None, None]
            out[:, :, z] = model(sl)[0, 0].numpy()
    return out


def _matmul_gflops(dtype, n: int = 2048, repeats: int = 5) -> float:
    import torch

    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


_MEMORY_SCRIPT = r"""
import resource, sys, json, time
import numpy as np
from napari_softseg.engine.model import UNet
from napari_softseg.engine.predict import predict_volume
X, Y, Z = (int(v) for v in sys.argv[1:4])
model = UNet().eval()
vol = np.random.default_rng(0).normal(100, 30, size=(X, Y, Z)).astype(np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
soft = predict_volume(model, vol)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rss_before_mib": before / 1024, "rss_peak_mib": peak / 1024, "seconds": seconds,
                  "input_mib": vol.nbytes / 2**20, "output_mib": soft.nbytes / 2**20}))
"""


def _memory(shape) -> dict:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, *map(str, shape)],
        capture_output=True, text=True, cwd=root, timeout=1800,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _time_contenders(contenders: dict, repeats: int, flops: int, matmul_n: int = 2048) -> dict:
    """Alternate the contenders ``repeats`` times (after one warm-up call each); best and
    median seconds, GFLOP/s and matmul references at the current thread count. The bf16
    matmul reference is measured only where the CPU has native bf16 (emulated, a 2048^3
    product takes half a minute and says nothing about predict, which then runs in float32)."""
    import torch

    from napari_softseg.engine.devices import cpu_supports_bf16

    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    best = {name: min(v) for name, v in times.items()}
    median = {name: float(np.median(v)) for name, v in times.items()}
    bf16_peak = _matmul_gflops(torch.bfloat16, matmul_n) if cpu_supports_bf16() else None
    fp32_peak = _matmul_gflops(torch.float32, matmul_n)
    gflops = {name: flops / t / 1e9 for name, t in best.items()}
    return {
        "threads": torch.get_num_threads(),
        "seconds_best": best,
        "seconds_median": median,
        "seconds_all": times,
        "ratio_ours": best["ours"] / best["baseline"],
        "ratio_ours_fp32": best["ours_fp32"] / best["baseline"],
        "ratio_ours_median": median["ours"] / median["baseline"],
        "gflops": gflops,
        "matmul_gflops": {"bfloat16": bf16_peak, "float32": fp32_peak},
        "ours_gflops_vs_bf16_matmul": gflops["ours"] / bf16_peak if bf16_peak else None,
        "baseline_gflops_vs_fp32_matmul": gflops["baseline"] / fp32_peak,
        "ratio_bound_at_bf16_matmul_speed": gflops["baseline"] / bf16_peak if bf16_peak else None,
    }


def run(quick: bool = False, out_dir: Path = Path("benchmarks/results")) -> dict:
    import torch

    from napari_softseg.engine.devices import cpu_supports_bf16
    from napari_softseg.engine.predict import predict_volume
    from napari_softseg.engine.model import count_flops

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size, n_slices, repeats, steps = (128, 8, 2, 5) if quick else (256, 48, 5, 60)
    mem_shape = (256, 256, 20) if quick else (512, 512, 200)

    model, origin = _trained_model(steps)
    volume = _volume(size, n_slices)
    contenders = {
        "baseline": lambda: baseline_predict(model, volume),
        "ours": lambda: predict_volume(model, volume, slice_axis=2),
        "ours_fp32": lambda: predict_volume(model, volume, slice_axis=2, mixed_precision=False),
    }
    flops = count_flops(model, size, size) * n_slices
    outputs = {name: fn() for name, fn in contenders.items()}
    default_threads = torch.get_num_threads()
    runs = {}
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        try:
            runs[str(threads)] = _time_contenders(contenders, repeats, flops, 512 if quick else 2048)
        finally:
            torch.set_num_threads(default_threads)
    memory = _memory(mem_shape)
    main_run = runs[str(default_threads)]
    result = {
        "volume": [size, size, n_slices],
        "model": origin,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "gflop_per_volume": flops / 1e9,
        "cpu_bf16": cpu_supports_bf16(),
        "default_threads": default_threads,
        "runs_by_threads": runs,
        "ratio_ours_vs_baseline": main_run["ratio_ours"],
        "ours_gflops_vs_bf16_matmul": main_run["ours_gflops_vs_bf16_matmul"],
        "max_abs_diff_ours_vs_baseline": float(np.abs(outputs["ours"] - outputs["baseline"]).max()),
        "max_abs_diff_ours_fp32_vs_baseline": float(np.abs(outputs["ours_fp32"] - outputs["baseline"]).max()),
        "memory": {"shape": list(mem_shape), **memory},
    }
    (out_dir / "predict.json").write_text(json.dumps(result, indent=1))
    (out_dir / "predict.md").write_text(_markdown(result))
    return result


def _markdown(r: dict) -> str:
    m = r["memory"]
    lines = [
        "## predict: predict_volume vs a plain eager float32 slice loop",
        "",
        f"Volume {'x'.join(map(str, r['volume']))}, default U-Net ({r['parameters']:,} parameters, "
        f"{r['gflop_per_volume']:.0f} GFLOP per volume), model {r['model']}; native CPU bf16: {r['cpu_bf16']}. "
        "Contenders alternated; best (and median) of the runs. Max abs difference of the soft maps from the "
        f"baseline: ours {r['max_abs_diff_ours_vs_baseline']:.4f}, ours float32 "
        f"{r['max_abs_diff_ours_fp32_vs_baseline']:.1e}.",
        "",
        "| threads | contender | best s | median s | ratio to baseline (best) | ratio (median) | GFLOP/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for threads, run in r["runs_by_threads"].items():
        b, md, g = run["seconds_best"], run["seconds_median"], run["gflops"]
        for name, label in (("baseline", "baseline (eager fp32, 1 slice)"), ("ours", "ours (default)"),
                            ("ours_fp32", "ours, float32")):
            lines.append(
                f"| {threads} | {label} | {b[name]:.3f} | {md[name]:.3f} | {b[name] / b['baseline']:.3f} | "
                f"{md[name] / md['baseline']:.3f} | {g[name]:.0f} |"
            )
    lines.append("")
    for threads, run in r["runs_by_threads"].items():
        mm = run["matmul_gflops"]
        if mm["bfloat16"] is None:
            lines.append(f"- {threads} thread(s): no native bf16 on this CPU (predict runs in float32); matmul fp32 "
                         f"{mm['float32']:.0f} GFLOP/s; the baseline reaches {run['baseline_gflops_vs_fp32_matmul']:.2f} of it.")
            continue
        lines.append(
            f"- {threads} thread(s): matmul bf16 {mm['bfloat16']:.0f} GFLOP/s, fp32 {mm['float32']:.0f} GFLOP/s; "
            f"ours reaches **{run['ours_gflops_vs_bf16_matmul']:.2f}** of the bf16 matmul, the baseline "
            f"{run['baseline_gflops_vs_fp32_matmul']:.2f} of the fp32 matmul; at full bf16 matmul speed the "
            f"time ratio could not go below {run['ratio_bound_at_bf16_matmul_speed']:.2f}."
        )
    lines += [
        "",
        f"Peak memory, predict_volume on {'x'.join(map(str, m['shape']))} float32 in a fresh process: "
        f"**{m['rss_peak_mib'] / 1024:.2f} GiB** RSS high-water (input {m['input_mib']:.0f} MiB, output "
        f"{m['output_mib']:.0f} MiB, {m['rss_before_mib']:.0f} MiB before predicting; {m['seconds']:.1f} s).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    from benchmarks.run_all import bench_cli

    raise SystemExit(bench_cli(__doc__, run, "predict"))
