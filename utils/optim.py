"""Optimizer construction: lr scaling (the one place it happens) and weight-decay groups."""
from __future__ import annotations

from typing import Callable

import torch
from loguru import logger
from torch import nn

# Normalisation layers whose affine weight must not be decayed (decay would pull the
# scale towards 0 and fight the normalisation).
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
               nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)


def scale_lr(base_lr: float, base_batch: int, global_batch: int) -> float:
    """Linear scaling rule: ``lr = base_lr * global_batch / base_batch``.

    Args:
        base_lr: lr tuned for ``base_batch`` images per optimizer step.
        base_batch: reference global batch, images.
        global_batch: actual global batch (all ranks together), images.
    """
    if base_batch <= 0 or global_batch <= 0:
        raise ValueError(f"scale_lr: batches must be > 0 (optim.base_batch={base_batch}, "
                         f"global batch={global_batch})")
    return base_lr * global_batch / base_batch


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into three groups, each parameter exactly once.

    Returns:
        ``[{"name": "decay", ...}, {"name": "no_decay", ...}, {"name": "bias", ...}]``, each
        with ``params`` (list) and ``weight_decay``. ``decay``: conv/linear (and other
        multi-dimensional) weights, decayed. ``no_decay``: norm-layer weights and other
        1-d parameters. ``bias``: every bias. Only ``decay`` gets ``weight_decay``.
    """
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "bias": []}
    seen: set[int] = set()  # shared (tied) parameters appear under several modules
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if pname == "bias":
                groups["bias"].append(p)
            elif isinstance(module, _NORM_TYPES) or p.ndim <= 1:
                groups["no_decay"].append(p)
            else:
                groups["decay"].append(p)
    return [
        {"name": "decay", "params": groups["decay"], "weight_decay": weight_decay},
        {"name": "no_decay", "params": groups["no_decay"], "weight_decay": 0.0},
        {"name": "bias", "params": groups["bias"], "weight_decay": 0.0},
    ]


def _sgd(groups: list[dict], lr: float, cfg) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


def _adam(groups: list[dict], lr: float, cfg) -> torch.optim.Optimizer:
    # Adam's weight_decay is L2 added to the gradient (coupled); AdamW decouples it.
    return torch.optim.Adam(groups, lr=lr, betas=(cfg.momentum, 0.999))


def _adamw(groups: list[dict], lr: float, cfg) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.momentum, 0.999))


OPTIMIZERS: dict[str, Callable[[list[dict], float, object], torch.optim.Optimizer]] = {
    "sgd": _sgd, "adam": _adam, "adamw": _adamw,
}


def build_optimizer(optim_cfg, model: nn.Module, global_batch: int) -> torch.optim.Optimizer:
    """Build the optimizer named by ``optim_cfg.name`` with the linearly scaled lr.

    Args:
        optim_cfg: ``configs.base_config.OptimCfg``.
        model: the unwrapped model (DDP shares the same parameters).
        global_batch: images per optimizer step over all ranks.
    """
    if optim_cfg.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer optim.name={optim_cfg.name!r}; valid: {sorted(OPTIMIZERS)}")
    lr = scale_lr(optim_cfg.lr, optim_cfg.base_batch, global_batch)
    logger.info(f"lr = optim.lr * global_batch / optim.base_batch = {optim_cfg.lr:g} * {global_batch} / "
                f"{optim_cfg.base_batch} = {lr:g} (linear scaling rule)")
    groups = param_groups(model, optim_cfg.weight_decay)
    sizes = ", ".join(f"{g['name']}={len(g['params'])}" for g in groups)
    logger.info(f"optimizer {optim_cfg.name}: param groups {sizes}, weight_decay={optim_cfg.weight_decay:g} "
                f"on 'decay' only")
    return OPTIMIZERS[optim_cfg.name](groups, lr, optim_cfg)
