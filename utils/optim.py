"""Optimizer construction: lr scaling (the one place it happens), weight-decay groups, gradient
accumulation to a nominal batch, and layer freezing for transfer learning."""
from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from loguru import logger
from torch import nn

from configs.base_config import ConfigError

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


def accumulation_steps(nominal_batch: int, global_batch: int) -> int:
    """Batches per optimizer step so that about ``nominal_batch`` images make one step
    (``round(nominal_batch / global_batch)``, at least 1); 1 when ``nominal_batch`` is 0 (off)."""
    return max(1, round(nominal_batch / global_batch)) if nominal_batch > 0 else 1


def build_optimizer(optim_cfg, model: nn.Module, global_batch: int) -> torch.optim.Optimizer:
    """Build the optimizer named by ``optim_cfg.name`` with the linearly scaled lr.

    The lr follows the images per optimizer step, ``global_batch * accumulate`` (accumulate from
    ``optim.nominal_batch``). With a nominal batch the weight decay is scaled the YOLO way, by
    ``global_batch * accumulate / nominal_batch``, so it stays right when the batch does not divide it.

    Args:
        optim_cfg: ``configs.base_config.OptimCfg``.
        model: the unwrapped model (DDP shares the same parameters).
        global_batch: images per iteration over all ranks.
    """
    if optim_cfg.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer optim.name={optim_cfg.name!r}; valid: {sorted(OPTIMIZERS)}")
    accumulate = accumulation_steps(optim_cfg.nominal_batch, global_batch)
    per_step = global_batch * accumulate
    lr = scale_lr(optim_cfg.lr, optim_cfg.base_batch, per_step)
    batch = f"{global_batch} x {accumulate} accumulated" if accumulate > 1 else f"{global_batch}"
    logger.info(f"lr = optim.lr * images per optimizer step / optim.base_batch = {optim_cfg.lr:g} * {batch} "
                f"/ {optim_cfg.base_batch} = {lr:g} (linear scaling rule)")
    wd = optim_cfg.weight_decay
    if optim_cfg.nominal_batch > 0:
        wd = optim_cfg.weight_decay * per_step / optim_cfg.nominal_batch
        logger.info(f"weight decay = optim.weight_decay * {per_step} / optim.nominal_batch = "
                    f"{optim_cfg.weight_decay:g} * {per_step} / {optim_cfg.nominal_batch} = {wd:g}")
    groups = param_groups(model, wd)
    sizes = ", ".join(f"{g['name']}={len(g['params'])}" for g in groups)
    logger.info(f"optimizer {optim_cfg.name}: param groups {sizes}, weight_decay={wd:g} on 'decay' only")
    return OPTIMIZERS[optim_cfg.name](groups, lr, optim_cfg)


# -- freezing ----------------------------------------------------------------------------
@dataclass
class FreezePlan:
    """What ``train.freeze`` selects in a model.

    Attributes:
        params: names of the parameters to freeze (no gradient, no update, no weight decay).
        norms: names of the BatchNorm layers whose running statistics freeze too (kept in eval mode).
        summary: per ``train.freeze`` entry, the modules it selected and their parameter count.
    """

    params: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)


def _matches(name: str, entry: str) -> bool:
    """``entry`` is a module prefix ("backbone", "model.3") or an fnmatch pattern ("model.1?.*")."""
    return name == entry or name.startswith(entry + ".") or fnmatch.fnmatchcase(name, entry)


def _roots(names: list[str], limit: int = 12) -> str:
    """Distinct two-level module paths of ``names``, e.g. "backbone.layer1, backbone.layer2"."""
    roots = list(dict.fromkeys(".".join(n.split(".")[:2]) for n in names))
    return ", ".join(roots[:limit]) + (f", ... ({len(roots)} modules)" if len(roots) > limit else "")


def freeze_plan(model: nn.Module, entries: list[str]) -> FreezePlan:
    """Resolve ``train.freeze`` entries against ``model``'s parameter names.

    "backbone" stands for the model's ``backbone_prefixes()`` (``backbone`` for the simple YOLO,
    the rows before the neck for the YOLOv9-family graph networks); any other entry is a module
    prefix or an fnmatch pattern over parameter names. A BatchNorm layer is frozen when its name
    matches or all its parameters are frozen.

    Raises:
        ConfigError: an entry that selects no parameter (a typo would otherwise train everything).
    """
    names = [n for n, _ in model.named_parameters()]
    chosen: dict[str, None] = {}
    plan = FreezePlan()
    numel = {n: p.numel() for n, p in model.named_parameters()}
    expanded: list[str] = []
    for entry in entries:
        if entry == "backbone":
            if not hasattr(model, "backbone_prefixes"):
                raise ConfigError(f"train.freeze: 'backbone' is not defined for {type(model).__name__}; "
                                  "list parameter-name patterns instead")
            prefixes = list(model.backbone_prefixes())
        else:
            prefixes = [entry]
        hit = [n for n in names if any(_matches(n, p) for p in prefixes)]
        if not hit:
            raise ConfigError(f"train.freeze entry {entry!r} matches no parameter of {type(model).__name__} "
                              f"(names look like {names[:3]}); use a module prefix or an fnmatch pattern")
        chosen.update(dict.fromkeys(hit))
        expanded += prefixes
        plan.summary.append(f"{entry!r}: {_roots(hit)} ({len(hit)} tensors, {sum(numel[n] for n in hit):,} "
                            "parameters)")
    plan.params = list(chosen)
    for mname, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        own = [f"{mname}.{p}" for p, _ in module.named_parameters(recurse=False)]
        if any(_matches(mname, p) for p in expanded) or (own and all(n in chosen for n in own)):
            plan.norms.append(mname)
    return plan


def set_frozen(model: nn.Module, plan: FreezePlan, frozen: bool) -> None:
    """Freeze (``requires_grad=False``) or thaw the parameters of ``plan``. The optimizer keeps
    them in its groups: a parameter without a gradient is skipped by every torch optimizer."""
    params = dict(model.named_parameters())
    for name in plan.params:
        params[name].requires_grad_(not frozen)


def freeze_norm_stats(model: nn.Module, plan: FreezePlan) -> None:
    """Put the BatchNorm layers of ``plan`` in eval mode (running statistics no longer update).
    Call after every ``model.train()``."""
    modules = dict(model.named_modules())
    for name in plan.norms:
        modules[name].eval()
