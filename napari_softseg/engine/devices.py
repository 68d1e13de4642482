"""Compute devices and mixed precision, shared by training and inference.

Nothing here changes global torch settings; every choice is returned to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from napari_softseg.errors import UserError

__all__ = [
    "DeviceInfo",
    "available_devices",
    "resolve_device",
    "autocast_dtype",
    "cpu_supports_bf16",
]


@dataclass(frozen=True)
class DeviceInfo:
    """A device a user can pick: ``name`` for :func:`resolve_device`, ``label`` for menus."""

    name: str
    label: str


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[DeviceInfo]:
    """CUDA GPUs (by name), Apple MPS, then the CPU; the first entry is what ``"auto"`` picks."""
    devices: list[DeviceInfo] = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            devices.append(DeviceInfo(f"cuda:{index}", f"GPU {index}: {torch.cuda.get_device_name(index)}"))
    if _mps_available():
        devices.append(DeviceInfo("mps", "Apple GPU (MPS)"))
    devices.append(DeviceInfo("cpu", f"CPU ({torch.get_num_threads()} threads)"))
    return devices


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` into a device.

    ``"auto"`` (or None) picks CUDA, then MPS, then the CPU. Raises :class:`UserError` when
    the requested device is not available here.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"Unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"Device {name!r} was requested but no CUDA GPU is available here; use --device cpu or auto.")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise UserError(f"Device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s).")
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise UserError("Device 'mps' was requested but Apple MPS is not available here; use --device cpu or auto.")
        return device
    raise UserError(f"Unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps.")


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX).

    Without it bf16 convolutions are emulated and slower than float32.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            flags = fh.read()
    except OSError:
        flags = ""
    if flags:
        return " avx512_bf16" in flags or " amx_bf16" in flags
    # no /proc/cpuinfo (macOS, Windows): ask oneDNN
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover - depends on the torch build
        return False


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The reduced precision worth using on ``device``, or None for plain float32.

    CUDA: bfloat16 where the GPU supports it (Ampere and newer), else float16. CPU: bfloat16
    when :func:`cpu_supports_bf16`. MPS: float16.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_supports_bf16() else None
    if device.type == "mps":
        return torch.float16
    return None
