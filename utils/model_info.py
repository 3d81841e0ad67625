"""Model size and cost: parameter count, GFLOPs of one forward pass, a short summary text."""
from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def model_device(model) -> torch.device:
    """Device of a module's first parameter (or buffer); CPU for runtime models (exported files run
    by core.deploy.runtime) and empty modules."""
    if isinstance(model, nn.Module):
        for t in itertools.chain(model.parameters(), model.buffers()):
            return t.device
    return torch.device(getattr(model, "device", "cpu"))


def is_runtime_model(model) -> bool:
    """True for a model run by onnxruntime or LiteRT (a ``runtime`` attribute other than PyTorch)."""
    return getattr(model, "runtime", "pytorch") != "pytorch"


def count_params(model: nn.Module) -> int:
    """All parameters, frozen ones included (e.g. the DFL projection bins, as ORIG counts them)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def gflops(model: nn.Module, img_size: int) -> float:
    """GFLOPs (FlopCounterMode total / 1e9; a multiply-add counts 2) of one eval-mode forward pass
    of a 1x3xSxS input. The model's train/eval mode is restored afterwards."""
    was_training = model.training
    p = next(model.parameters())
    x = torch.zeros(1, 3, img_size, img_size, device=p.device, dtype=p.dtype)
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def model_summary(model: nn.Module, img_size: int, flops: float | None = None) -> str:
    """A few lines: class (and network name), layers, parameters, GFLOPs at img_size (``flops``: the
    caller's ``gflops`` result, so the forward pass is not counted twice)."""
    name = type(model).__name__
    if getattr(model, "name", None):
        name = f"{name} ({model.name})"
    rows = getattr(model, "model", None)
    leaves = sum(1 for m in model.modules() if not list(m.children()))
    layers = f"{len(rows)} rows, {leaves} leaf modules" if isinstance(rows, nn.ModuleDict) else f"{leaves} leaf modules"
    total = count_params(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return "\n".join([
        f"model       {name}",
        f"layers      {layers}",
        f"parameters  {total:,} ({trainable:,} trainable)",
        f"GFLOPs      {gflops(model, img_size) if flops is None else flops:.1f} at {img_size}x{img_size} (eval forward)",
    ])
