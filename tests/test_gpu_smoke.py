"""``scripts/gpu_smoke.py`` runs here on the CPU (``$NAPARI_SOFTSEG_TEST_DEVICE=cuda`` runs it on a
GPU instead): every device-independent check passes, and the GPU-only ones say why they were
skipped."""

from __future__ import annotations

import sys

import pytest

from _paths import REPO

CHECKS = [
    "precision chosen for the device", "train 2 epochs, default precision", "train 2 epochs, float32",
    "train 2 epochs, float16 + gradient scaler", "checkpoint loads on the CPU", "prediction float32: device vs CPU",
    "prediction mixed vs float32", "MC dropout x TTA samples", "out of memory in a training step",
    "out of memory in validation", "out of memory in prediction", "prediction throughput", "torchrun, 2 processes",
    "kernels for this GPU",
]


@pytest.fixture(scope="module")
def smoke():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gpu_smoke
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return gpu_smoke


def test_smoke_check_passes_and_reports(smoke, requested_device, tmp_path):
    out = tmp_path / "gpu.md"
    assert smoke.main(["--device", requested_device, "--out", str(out)]) == 0
    text = out.read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in text.splitlines()
            if line.startswith("| ") and line.count(" | ") >= 2}
    for check in CHECKS:
        assert rows.get(check) in ("passed", "skipped"), (check, rows.get(check))
    assert "FAILED" not in text and "## Throughput" in text and "| torch |" in text
    if requested_device == "cpu":
        for check in CHECKS[:8]:
            assert rows[check] == "passed", check
        assert "needs a CUDA or MPS device" in text and "needs two CUDA GPUs" in text
        assert "| train 2 epochs, float16 + gradient scaler | passed | float16:" in text


def test_the_float16_run_really_trains_with_a_gradient_scaler(smoke, monkeypatch):
    import torch

    from napari_softseg.engine.training import trainer

    scalers = []
    original = trainer.Trainer._optimisation

    def optimisation(self):
        original(self)
        scalers.append((self.amp_dtype, self.scaler.is_enabled()))

    monkeypatch.setattr(trainer.Trainer, "_optimisation", optimisation)
    with smoke.forced_training_dtype(torch.float16):
        trainer.Trainer(smoke._config("cpu", smoke.SIZES["cpu"]), smoke.synthetic_data(smoke.SIZES["cpu"]))
    trainer.Trainer(smoke._config("cpu", smoke.SIZES["cpu"], mixed_precision=False), smoke.synthetic_data(smoke.SIZES["cpu"]))
    assert scalers == [(torch.float16, True), (None, False)]
