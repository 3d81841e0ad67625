"""Everything distributed lives here: torchrun set-up, collectives, seeding, unwrapping.

World size 1 (a plain ``python main.py``) creates no process group and every collective
below degrades to the single-process answer, so callers never branch on DDP.
Backends: NCCL when CUDA is available, gloo on CPU.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from loguru import logger
from torch import nn


@dataclass
class DistInfo:
    """Runtime facts of this process; never written into the config."""

    rank: int  # global rank, 0..world_size-1
    local_rank: int  # rank on this machine (selects the GPU)
    world_size: int  # number of processes in the job
    device: torch.device  # device this process computes on

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and logs at INFO."""
        return self.rank == 0

    @classmethod
    def single(cls, device: torch.device | str = "cpu") -> DistInfo:
        """One process on ``device``: no process group (benchmarks, tests, debug plots, QAT's scoring)."""
        return cls(rank=0, local_rank=0, world_size=1, device=torch.device(device))


def _env_int(name: str, default: int | None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise RuntimeError(f"environment variable {name} is not set; launch multi-process "
                               f"runs with torchrun (e.g. torchrun --nproc_per_node=2 main.py ...)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={raw!r} is not an integer") from None


def is_dist() -> bool:
    """True when a process group is initialised (world size > 1)."""
    return dist.is_available() and dist.is_initialized()


def init_distributed(timeout_s: float = 1800) -> DistInfo:
    """Read the torchrun environment (RANK, LOCAL_RANK, WORLD_SIZE) and join the group.

    Args:
        timeout_s: seconds a collective may wait before the job fails (so a crashed rank
            makes the others exit instead of hanging forever).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    cuda = torch.cuda.is_available()
    if world_size == 1:
        local_rank = _env_int("LOCAL_RANK", 0)
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        return DistInfo(rank=0, local_rank=local_rank, world_size=1, device=device)
    rank, local_rank = _env_int("RANK", None), _env_int("LOCAL_RANK", None)
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not is_dist():
        # device_id binds the NCCL communicator to this rank's GPU at once (no guess from the
        # current device, no lazy creation inside the first collective)
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s), device_id=device if cuda else None)
    logger.debug(f"rank {rank}/{world_size} joined ({backend}, {device})")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup() -> None:
    """Destroy the process group if there is one."""
    if is_dist():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_dist():
        dist.barrier()


def world_size() -> int:
    """Number of processes in the group (1 without one)."""
    return dist.get_world_size() if is_dist() else 1


def all_gather_object(obj: Any) -> list:
    """Picklable ``obj`` from every rank, as a list indexed by rank (``[obj]`` alone)."""
    if not is_dist():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself without a process group)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers of ``module`` (e.g. BatchNorm running statistics) into every
    rank's, in one broadcast (nothing without a process group)."""
    if not is_dist():
        return
    buffers = [b for b in module.buffers() if b.numel()]
    if buffers:
        flat = torch.cat([b.detach().reshape(-1).to(torch.float64) for b in buffers])
        dist.broadcast(flat, src=src)
        for b, v in zip(buffers, flat.split([b.numel() for b in buffers])):
            b.copy_(v.view_as(b))


def any_rank(*flags: bool, device: torch.device | None = None) -> tuple[bool, ...]:
    """Each flag OR-ed over all ranks (the flags themselves without a process group).

    One small all-reduce, so every rank takes the same branch afterwards (skip a step, stop the
    run): a rank branching alone would leave the others waiting in a collective forever.
    """
    if not is_dist():
        return tuple(bool(f) for f in flags)
    t = torch.tensor([float(bool(f)) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def seed_everything(seed: int, rank: int = 0, deterministic: bool = False) -> None:
    """Seed Python, NumPy, torch and CUDA with ``seed + rank``.

    Each rank gets its own stream (``seed + rank``) so augmentations differ across ranks
    while the run stays reproducible. ``deterministic`` asks torch for deterministic
    kernels (warning, not failing, where none exists) and turns off cuDNN autotuning;
    it is slower.
    """
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS needs this workspace setting for reproducible matmuls (CUDA >= 10.2).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if deterministic or torch.are_deterministic_algorithms_enabled():
        # Only when it changes something: the call imports torch._inductor (seconds at start-up).
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False if deterministic else torch.backends.cudnn.benchmark


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel / DataParallel / torch.compile."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """``model`` in DistributedDataParallel under torchrun (the one DDP wrap of a run; wrap again
    when the set of trainable parameters changes), the model itself in a single process.

    ``broadcast_buffers=False``: DDP would otherwise broadcast rank 0's buffers (BatchNorm statistics)
    before every forward, a collective per iteration that changes nothing saved: the checkpoints
    hold rank 0's buffers, and validation scores rank 0's (``broadcast_buffers`` below, once per
    validation). ``gradient_as_bucket_view``: the gradients are views of DDP's all-reduce buckets,
    one copy fewer per step and one gradient-sized buffer less memory.
    """
    if info.world_size == 1:
        return model
    devices = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(unwrap(model), device_ids=devices, broadcast_buffers=False,
                                               gradient_as_bucket_view=True)


def set_cpu_threads(num_threads: int = 0) -> int:
    """torch intra-op threads for this process: the given number, or the cores shared evenly
    among the processes of this machine (torchrun's LOCAL_WORLD_SIZE), so ranks do not
    oversubscribe the CPU. Returns the number set."""
    n = num_threads or max(1, (os.cpu_count() or 1) // _env_int("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(n)
    return n


def gather_object(obj: Any, dst: int = 0) -> list | None:
    """Picklable ``obj`` from every rank, as a list indexed by rank on rank ``dst`` and None on the
    others (``[obj]`` without a process group). Unlike ``all_gather_object`` only ``dst`` receives
    and holds everyone's data: what one rank alone goes on to use (e.g. predictions to score)."""
    if not is_dist():
        return [obj]
    out: list | None = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out
