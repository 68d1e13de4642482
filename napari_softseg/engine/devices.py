"""Compute devices, precision, memory and host-device transfers, shared by training and inference.

Nothing here changes global torch settings for good; every choice is returned to the caller
(:func:`strict_float32` changes two flags while its context lasts).

* **Which device.** ``"auto"`` picks a CUDA GPU that the installed PyTorch has kernels for
  (:func:`kernels_cover`), then Apple MPS, then the CPU. The environment variable
  ``NAPARI_SOFTSEG_DEVICE`` (e.g. ``cpu``) overrides what ``"auto"`` means and which device
  menus list first; explicit names (``cuda:1``) are always honoured.
* **Which precision** is decided from the *chosen* device: CUDA bfloat16 from compute
  capability 8.0 (Ampere) on, float16 with a gradient scaler below (T4, V100, RTX 20xx: no
  bf16 convolution kernels); CPU bfloat16 only with native bf16 arithmetic; MPS trains in
  float32 (:func:`training_dtype`) and predicts with float16 weights (:func:`autocast_dtype`).
* **Out of memory** on any device is recognised by :func:`is_out_of_memory`;
  :func:`release_memory` hands the freed blocks back to the driver.
* **Transfers**: :func:`gather_to_device` moves only the rows a batch needs, through pinned
  memory with ``non_blocking`` on CUDA (never ``non_blocking`` from pageable memory).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache

import torch

from napari_softseg.errors import UserError

__all__ = [
    "DEVICE_ENV",
    "DeviceInfo",
    "available_devices",
    "resolve_device",
    "autocast_dtype",
    "training_dtype",
    "autocast",
    "strict_float32",
    "cuda_capability",
    "kernels_cover",
    "unsupported_gpu_reason",
    "cpu_supports_bf16",
    "is_out_of_memory",
    "is_fatal_device_error",
    "release_memory",
    "to_device",
    "gather_to_device",
]

#: environment variable that says what ``"auto"`` means (``cpu``, ``cuda:1``, ``mps``)
DEVICE_ENV = "NAPARI_SOFTSEG_DEVICE"
#: compute capability from which CUDA GPUs have bfloat16 convolution kernels (Ampere)
BF16_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class DeviceInfo:
    """A device a user can pick: ``name`` for :func:`resolve_device`, ``label`` for menus."""

    name: str
    label: str


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def cuda_capability(device: torch.device | str | int) -> tuple[int, int]:
    """Compute capability ``(major, minor)`` of that CUDA device (not of the current one)."""
    if not isinstance(device, int):
        device = torch.device(device)
        device = torch.cuda.current_device() if device.index is None else device.index
    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def kernels_cover(capability: tuple[int, int], arch_list) -> bool:
    """Whether a PyTorch build compiled for ``arch_list`` (``torch.cuda.get_arch_list()``,
    e.g. ``["sm_75", "sm_80", "sm_90", "compute_90"]``) runs on a GPU of ``capability``.

    A cubin ``sm_XY`` runs on capabilities ``X.Z`` with ``Z >= Y`` (same major); PTX
    ``compute_XY`` is compiled by the driver for any capability ``>= X.Y``; an
    architecture-specific cubin (``sm_90a``) runs on its own capability only. An empty list
    (nothing known) counts as covered.
    """
    arch_list = list(arch_list or [])
    if not arch_list:
        return True
    major, minor = (int(v) for v in capability)
    for arch in arch_list:
        m = re.fullmatch(r"(sm|compute)_(\d+)(\d)([a-z]?)", str(arch))
        if m is None:
            continue
        kind, amaj, amin, suffix = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        if suffix == "a":
            covered = (amaj, amin) == (major, minor)
        elif kind == "sm":
            covered = amaj == major and amin <= minor
        else:
            covered = (amaj, amin) <= (major, minor)
        if covered:
            return True
    return False


def unsupported_gpu_reason(index: int) -> str | None:
    """One sentence when CUDA GPU ``index`` has no kernels in the installed PyTorch, else None."""
    capability = cuda_capability(index)
    archs = torch.cuda.get_arch_list()
    if kernels_cover(capability, archs):
        return None
    name = torch.cuda.get_device_name(index)
    return (f"GPU {index} ({name}, compute capability {capability[0]}.{capability[1]}) is not supported by "
            f"the installed PyTorch, which has kernels for {', '.join(archs)}; install a PyTorch build "
            "for this GPU or use the CPU.")


def _usable_gpus() -> list[int]:
    """CUDA GPUs the installed PyTorch can run on, the current one first."""
    if not torch.cuda.is_available():
        return []
    current = torch.cuda.current_device()
    order = [current] + [i for i in range(torch.cuda.device_count()) if i != current]
    usable = []
    for index in order:
        reason = unsupported_gpu_reason(index)
        if reason is None:
            usable.append(index)
        else:
            _warn_once(reason)
    return usable


@lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    logging.getLogger(__name__).warning(message)


def _pinned_name() -> str | None:
    name = os.environ.get(DEVICE_ENV, "").strip().lower()
    return name if name and name != "auto" else None


def available_devices() -> list[DeviceInfo]:
    """Usable CUDA GPUs (by name), Apple MPS, then the CPU; the first entry is what ``"auto"``
    picks. GPUs without kernels in the installed PyTorch are left out (and logged)."""
    devices: list[DeviceInfo] = []
    for index in sorted(_usable_gpus()):
        devices.append(DeviceInfo(f"cuda:{index}", f"GPU {index}: {torch.cuda.get_device_name(index)}"))
    if _mps_available():
        devices.append(DeviceInfo("mps", "Apple GPU (MPS)"))
    devices.append(DeviceInfo("cpu", f"CPU ({torch.get_num_threads()} threads)"))
    try:
        first = str(resolve_device("auto"))
    except UserError as err:  # $NAPARI_SOFTSEG_DEVICE names a device that is not here
        _warn_once(str(err))
        return devices
    devices.sort(key=lambda d: d.name != first)  # stable: the rest keep their order
    return devices


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` into a device.

    ``"auto"`` (or None) means ``$NAPARI_SOFTSEG_DEVICE`` when that is set, else the first
    usable CUDA GPU (the current one if usable), then MPS, then the CPU. Raises
    :class:`UserError` when the requested device is not available here or the installed
    PyTorch has no kernels for it.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        pinned = _pinned_name()
        if pinned is not None:
            return resolve_device(pinned)
        usable = _usable_gpus()
        if usable:
            return torch.device("cuda", usable[0])
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"Unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        return _checked_cuda(name, device)
    if device.type == "mps":
        if not _mps_available():
            raise UserError("Device 'mps' was requested but Apple MPS is not available here; use --device cpu or auto.")
        return device
    raise UserError(f"Unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps.")


def _checked_cuda(name: str, device: torch.device) -> torch.device:
    if not torch.cuda.is_available():
        raise UserError(f"Device {name!r} was requested but no CUDA GPU is available here; use --device cpu or auto.")
    index = 0 if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise UserError(f"Device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s).")
    reason = unsupported_gpu_reason(index)
    if reason is not None:
        raise UserError(reason)
    return torch.device("cuda", index)


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


def _cuda_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if cuda_capability(device) >= BF16_CAPABILITY else torch.float16


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The reduced precision worth using for *inference* on ``device``, or None for float32.

    CUDA: bfloat16 from compute capability 8.0 (of that device), else float16. CPU: bfloat16
    when :func:`cpu_supports_bf16`. MPS: float16 (weights stored in float16; no autocast).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_dtype(device)
    if device.type == "cpu":
        return torch.bfloat16 if cpu_supports_bf16() else None
    if device.type == "mps":
        return torch.float16
    return None


def training_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for *training* on ``device``, or None for float32.

    As :func:`autocast_dtype` (float16 is then paired with a gradient scaler), except on
    MPS, which trains in float32: ``torch.autocast("mps")`` needs torch >= 2.5 and float16
    training there a gradient scaler whose MPS kernels arrived later still.
    """
    device = torch.device(device)
    if device.type == "mps":
        return None
    return autocast_dtype(device)


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``; a null context for float32 (``None``):
    ``torch.autocast("mps", enabled=False)`` raises on torch < 2.5."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def strict_float32(device: torch.device | str):
    """On CUDA, convolutions and matrix products in true float32 while inside (cuDNN rounds
    float32 convolutions to TF32 on Ampere and newer by default); restored on exit. A null
    context elsewhere."""
    if torch.device(device).type != "cuda":
        yield
        return
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


_OOM_TEXTS = ("out of memory", "can't allocate memory", "cannot allocate memory", "alloc_failed",
              "not_enough_workspace")
_FATAL_TEXTS = ("cuda error", "device-side assert", "illegal memory access", "launch failure",
                "cublas_status_execution_failed", "cudnn_status_execution_failed", "ecc error")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says a device (CUDA, MPS) or the host ran out of memory."""
    if isinstance(err, MemoryError):
        return True
    oom_types = tuple(t for t in (getattr(torch.cuda, "OutOfMemoryError", None), getattr(torch, "OutOfMemoryError", None)) if t)
    if oom_types and isinstance(err, oom_types):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(s in text for s in _OOM_TEXTS)


def is_fatal_device_error(err: BaseException) -> bool:
    """Whether ``err`` is a sticky CUDA error (illegal address, device-side assert, launch
    failure): the process's CUDA context is unusable afterwards and the process must restart."""
    if is_out_of_memory(err):
        return False
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(s in text for s in _FATAL_TEXTS)


def release_memory(device: torch.device | str | None = None) -> None:
    """Collect garbage and return the allocator's cached blocks of ``device`` (all devices
    when None) to the driver, e.g. after an out-of-memory error or between jobs."""
    gc.collect()
    kind = None if device is None else torch.device(device).type
    if kind in (None, "cuda") and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if kind in (None, "mps") and _mps_available() and hasattr(mps, "empty_cache"):
        mps.empty_cache()


def _pinned_empty(shape, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, pin_memory=True)


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` (on the host) on ``device``. On CUDA the copy goes through pinned memory
    and does not block the host; elsewhere it is a plain copy (or none on the CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    if not tensor.is_pinned():
        staged = _pinned_empty(tensor.shape, tensor.dtype)
        staged.copy_(tensor)
        tensor = staged
    return tensor.to(device, non_blocking=True)


def gather_to_device(source: torch.Tensor, rows: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``source.index_select(0, rows)`` on ``device``; ``source`` stays on the host.

    On CUDA the rows are gathered straight into a pinned buffer and copied without blocking
    the host (the caching host allocator keeps the buffer until its copy has finished).
    """
    device = torch.device(device)
    rows = rows.to("cpu")
    if device.type != "cuda":
        return source.index_select(0, rows).to(device)
    staged = _pinned_empty((rows.numel(), *source.shape[1:]), source.dtype)
    torch.index_select(source, 0, rows, out=staged)
    return staged.to(device, non_blocking=True)
