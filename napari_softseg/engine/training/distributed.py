"""Data-parallel training under ``torchrun``: one shard of the data per process, gradients averaged.

``torchrun --nproc_per_node=N -m napari_softseg train ...`` starts N copies of the command
with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set. :func:`init_from_env` joins them in one
process group (``gloo`` on the CPU, ``nccl`` on CUDA GPUs, bound to GPU ``LOCAL_RANK``);
rank 0's weights are copied to every process (:func:`broadcast`), each process then trains
on its own shard of every epoch's shuffled samples and :func:`average_gradients` averages
the gradients before each optimiser step, so the processes keep identical weights. Only
rank 0 prints and writes files.

Everything that decides the course of training (losses, validation sums, the cancel and
NaN flags, and whether a process failed) is summed over the processes with
:func:`all_reduce_sum`, so every process takes the same decisions (early stopping, best
epoch, threshold, stopping after one process ran out of memory) and all of them issue the
same collectives in the same order: a process that fails never leaves the others waiting.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch

__all__ = ["DistContext", "init_from_env", "current", "all_reduce_sum", "broadcast", "average_gradients",
           "gather_objects", "shard", "shutdown"]


@dataclass(frozen=True)
class DistContext:
    """This process's place in the group (``world_size == 1``: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(device: torch.device) -> DistContext:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1`` (idempotent).

    Returns the context; a single process returns ``DistContext()`` without initialising
    anything. On CUDA each process uses GPU ``LOCAL_RANK``, also given to the process group
    as ``device_id`` where torch accepts it (NCCL then binds its communicator to that GPU
    at once instead of guessing it at the first collective).
    """
    import torch.distributed as dist

    if env_world_size() <= 1 or not dist.is_available():
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        options = {}
        if device.type == "cuda":
            gpu = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(gpu)
            if "device_id" in inspect.signature(dist.init_process_group).parameters:
                options["device_id"] = gpu
        dist.init_process_group(backend=backend, **options)
    return current()


def current() -> DistContext:
    """The context of an already initialised process group (else a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return DistContext()
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=str(dist.get_backend()),
    )


def all_reduce_sum(ctx: DistContext, *tensors: torch.Tensor) -> None:
    """Sum ``tensors`` in place over all processes (no-op for one process)."""
    if not ctx.enabled:
        return
    import torch.distributed as dist

    for t in tensors:
        if ctx.backend == "nccl" and t.device.type != "cuda":  # NCCL reduces GPU tensors only
            tmp = t.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(tmp, op=dist.ReduceOp.SUM)
            t.copy_(tmp.to(t.device))
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def broadcast(ctx: DistContext, tensors, src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (no-op for one process)."""
    if not ctx.enabled:
        return
    import torch.distributed as dist

    for t in tensors:
        dist.broadcast(t.data, src=src)


def average_gradients(ctx: DistContext, parameters) -> None:
    """Replace every parameter's gradient by its mean over the processes, in one collective
    (no-op for one process)."""
    if not ctx.enabled:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    all_reduce_sum(ctx, flat)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view(g.shape))
        offset += g.numel()


def gather_objects(ctx: DistContext, obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process."""
    if not ctx.enabled:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def shard(order: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This process's share of ``order`` (a permutation of sample indices).

    The last ``len(order) % world_size`` entries are dropped so that every process gets the
    same number of samples (hence of steps) and shards never overlap; the permutation
    changes each epoch, so no sample is left out for good.
    """
    if not ctx.enabled:
        return order
    usable = (order.numel() // ctx.world_size) * ctx.world_size
    return order[:usable][ctx.rank :: ctx.world_size]


def shutdown() -> None:
    """Leave the process group if one was joined."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # every process waits for the others (rank 0 may still be writing the checkpoint):
        # tearing a gloo group down while a peer is busy aborts that peer
        dist.barrier()
        dist.destroy_process_group()
