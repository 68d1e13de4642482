"""Device choice, precision per device, kernel check, out-of-memory recognition and transfers,
with the CUDA/MPS queries mocked (the rules must hold on hardware this machine lacks)."""

from __future__ import annotations

import pytest
import torch

from napari_softseg.engine import devices
from napari_softseg.errors import UserError

# name, compute capability of well-known cards
T4, A100, H100, GTX680, RTX4090, RTX5090 = (7, 5), (8, 0), (9, 0), (3, 0), (8, 9), (12, 0)
CU126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


@pytest.fixture
def gpus(monkeypatch):
    """Pretend CUDA GPUs: ``gpus(capabilities, arch_list=CU126, current=0)``; the pin of the
    test suite to the CPU is lifted."""
    monkeypatch.delenv(devices.DEVICE_ENV, raising=False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)

    def install(capabilities, arch_list=CU126, current=0):
        def capability(index=None):
            return capabilities[current if index is None else int(index)]

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
        monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: f"card{index}")
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))

        def refuse():
            raise AssertionError("asked the current GPU instead of the chosen one")

        monkeypatch.setattr(torch.cuda, "is_bf16_supported", refuse)

    return install


# ----------------------------------------------------------------------------- precision


@pytest.mark.parametrize("card, expected", [(T4, torch.float16), (A100, torch.bfloat16), (H100, torch.bfloat16),
                                            ((7, 0), torch.float16), (RTX4090, torch.bfloat16)])
def test_cuda_precision_follows_the_compute_capability(gpus, card, expected):
    gpus([card])
    assert devices.training_dtype("cuda:0") == expected
    assert devices.autocast_dtype("cuda:0") == expected
    assert devices.training_dtype("cuda") == expected  # no index: the current GPU


def test_precision_of_the_chosen_gpu_not_the_current_one(gpus):
    gpus([T4, A100, H100], current=0)  # the current GPU is a T4
    assert devices.training_dtype("cuda:1") == torch.bfloat16
    assert devices.training_dtype("cuda:2") == torch.bfloat16
    assert devices.training_dtype("cuda:0") == torch.float16
    gpus([A100, T4], current=0)  # and the other way round
    assert devices.training_dtype("cuda:1") == torch.float16


def test_cpu_bf16_only_with_native_bf16_and_mps_trains_in_float32(monkeypatch):
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)
    assert devices.training_dtype("cpu") == devices.autocast_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)
    assert devices.training_dtype("cpu") is None and devices.autocast_dtype("cpu") is None
    assert devices.training_dtype("mps") is None  # float32 training on Apple GPUs
    assert devices.autocast_dtype("mps") == torch.float16  # float16 weights for prediction


def test_float32_autocast_never_calls_torch_autocast(monkeypatch):
    """``torch.autocast("mps", enabled=False)`` raises on torch < 2.5: float32 uses no autocast."""
    def refuse(*args, **kwargs):
        raise RuntimeError("User specified an unsupported autocast device_type 'mps'")

    monkeypatch.setattr(torch, "autocast", refuse)
    with devices.autocast("mps", None):
        pass
    with pytest.raises(RuntimeError):
        devices.autocast("mps", torch.float16)


# ----------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("capability, archs, covered", [
    (T4, CU126, True),
    (A100, CU126, True),
    (RTX4090, CU126, True),  # sm_86 cubins run on 8.9 (same major, lower minor)
    (H100, CU126, True),
    (GTX680, CU126, False),  # too old for the wheel
    (RTX5090, CU126, False),  # too new: no sm_120 and no PTX to compile
    (RTX5090, CU126 + ["compute_90"], True),  # PTX is compiled by the driver for newer GPUs
    ((8, 6), ["sm_80"], True),
    ((8, 0), ["sm_86"], False),  # a cubin never runs on a lower minor
    ((9, 0), ["sm_90a"], True),
    ((9, 1), ["sm_90a"], False),  # architecture-specific: that capability only
    ((10, 0), ["sm_90", "sm_100"], True),
    ((10, 0), [], True),  # nothing known: not refused
])
def test_kernels_cover(capability, archs, covered):
    assert devices.kernels_cover(capability, archs) is covered


def test_auto_skips_a_gpu_without_kernels_and_naming_it_says_why(gpus):
    gpus([GTX680, T4], current=0)
    assert devices.resolve_device("auto") == torch.device("cuda", 1)
    names = [d.name for d in devices.available_devices()]
    assert names == ["cuda:1", "cpu"]
    with pytest.raises(UserError) as err:
        devices.resolve_device("cuda:0")
    text = str(err.value)
    assert text.count(".") >= 1 and text.endswith("use the CPU.")
    assert "GPU 0 (card0, compute capability 3.0) is not supported by the installed PyTorch" in text
    assert "sm_50" in text
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)


def test_auto_falls_back_to_the_cpu_when_no_gpu_has_kernels(gpus):
    gpus([RTX5090])
    assert devices.resolve_device("auto") == torch.device("cpu")
    assert [d.name for d in devices.available_devices()] == ["cpu"]


def test_auto_prefers_the_current_gpu(gpus):
    gpus([T4, A100], current=1)
    assert devices.resolve_device("auto") == torch.device("cuda", 1)
    assert [d.name for d in devices.available_devices()] == ["cuda:1", "cuda:0", "cpu"]


def test_environment_variable_says_what_auto_means(gpus, monkeypatch):
    gpus([A100, A100])
    monkeypatch.setenv(devices.DEVICE_ENV, "cpu")
    assert devices.resolve_device("auto") == torch.device("cpu")
    assert devices.resolve_device(None) == torch.device("cpu")
    assert [d.name for d in devices.available_devices()] == ["cpu", "cuda:0", "cuda:1"]
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)  # explicit names still win
    monkeypatch.setenv(devices.DEVICE_ENV, "cuda:1")
    assert devices.resolve_device("auto") == torch.device("cuda", 1)


def test_the_suite_is_pinned_to_the_cpu():
    import os

    assert os.environ[devices.DEVICE_ENV] == "cpu"
    assert devices.resolve_device("auto") == torch.device("cpu")


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize("err, oom, fatal", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True, False),
    (RuntimeError("MPS backend out of memory (MPS allocated: 1.00 GB)"), True, False),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), True, False),
    (MemoryError(), True, False),
    (RuntimeError("CUDA error: out of memory"), True, False),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True, False),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), False, True),
    (RuntimeError("CUDA error: device-side assert triggered"), False, True),
    (RuntimeError("CUDA error: unspecified launch failure"), False, True),
    (RuntimeError("shapes cannot be multiplied"), False, False),
    (ValueError("out of memory"), False, False),
])
def test_out_of_memory_and_sticky_device_errors_are_recognised(err, oom, fatal):
    assert devices.is_out_of_memory(err) is oom
    assert devices.is_fatal_device_error(err) is fatal


# ----------------------------------------------------------------------------- transfers


@pytest.fixture
def fake_cuda_copies(monkeypatch):
    """Record pinned staging buffers and host-to-device copies as if the device were CUDA."""
    log = {"pinned": [], "to": []}

    def pinned_empty(shape, dtype):
        buf = torch.empty(shape, dtype=dtype)
        log["pinned"].append(tuple(buf.shape))
        return buf

    original = torch.Tensor.to

    def to(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, torch.device) and target.type == "cuda":
            log["to"].append((tuple(self.shape), kwargs.get("non_blocking", False), self.data_ptr()))
            return self.clone()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(devices, "_pinned_empty", pinned_empty)
    monkeypatch.setattr(torch.Tensor, "to", to)
    return log


def test_a_batch_goes_to_cuda_alone_through_pinned_memory_without_blocking(fake_cuda_copies):
    source = torch.arange(10 * 3 * 4 * 5, dtype=torch.float32).reshape(10, 3, 4, 5)
    rows = torch.tensor([7, 2, 9])
    out = devices.gather_to_device(source, rows, torch.device("cuda", 0))
    assert torch.equal(out, source[[7, 2, 9]])
    assert fake_cuda_copies["pinned"] == [(3, 3, 4, 5)]  # only the batch's rows are staged
    ((shape, non_blocking, ptr),) = fake_cuda_copies["to"]
    assert shape == (3, 3, 4, 5) and non_blocking and ptr != source.data_ptr()


def test_unpinned_tensors_are_staged_before_a_non_blocking_copy(fake_cuda_copies):
    x = torch.randn(2, 1, 8, 8)
    out = devices.to_device(x, "cuda:0")
    assert torch.equal(out, x)
    assert fake_cuda_copies["pinned"] == [(2, 1, 8, 8)]
    ((_, non_blocking, ptr),) = fake_cuda_copies["to"]
    assert non_blocking and ptr != x.data_ptr()  # the copy reads the pinned stage, not x


def test_on_the_cpu_transfers_are_plain(fake_cuda_copies):
    source = torch.randn(6, 2, 3, 3)
    assert torch.equal(devices.gather_to_device(source, torch.tensor([4, 0]), "cpu"), source[[4, 0]])
    assert devices.to_device(source, "cpu") is source
    assert fake_cuda_copies == {"pinned": [], "to": []}


def test_release_memory_empties_the_cuda_cache_only_where_cuda_runs(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("cuda"))
    devices.release_memory("cuda:0")
    devices.release_memory("cpu")
    assert calls == ["cuda"]


def test_strict_float32_turns_tf32_off_on_cuda_only_while_inside():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.allow_tf32, matmul.allow_tf32)
    try:
        cudnn.allow_tf32 = matmul.allow_tf32 = True  # cuDNN's default
        with devices.strict_float32("cuda:0"):
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
        with devices.strict_float32("cpu"):
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before
