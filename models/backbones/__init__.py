"""Backbone registry, builder and local pretrained-weight loader.

Every backbone maps ``[B, 3, H, W]`` to ``[C3, C4, C5]`` at strides 8, 16, 32 and has
``out_channels: list[int]`` giving their channel counts.
"""
from __future__ import annotations

import os

import torch
from loguru import logger
from torch import nn

from models.backbones.darknet import darknet53, darknet_tiny
from models.backbones.resnet import resnet18, resnet34, resnet50

BACKBONES = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "darknet53": darknet53,
    "darknet_tiny": darknet_tiny,
}

_PREFIXES = ("module.", "backbone.")  # added by DDP/DataParallel and by a detector wrapper
_IGNORED_PREFIXES = ("fc.",)  # ImageNet classifier: not part of a detection backbone


def build_backbone(name: str, width: float = 1.0, activation: str = "relu",
                   pretrained: str = "") -> nn.Module:
    """Build backbone ``name`` (config ``model.backbone``) at channel ``width``.

    ``pretrained`` is a local state-dict path (config ``model.pretrained``); "" = from scratch.
    Nothing is ever downloaded.
    """
    if name not in BACKBONES:
        raise ValueError(f"model.backbone: unknown backbone {name!r}; valid: {sorted(BACKBONES)}")
    model = BACKBONES[name](width=width, activation=activation)
    if pretrained:
        load_pretrained(model, pretrained)
    return model


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load a state dict from ``path`` and normalise its keys.

    Accepts a raw state dict or a dict holding one under "state_dict" or "model". Strips
    leading "module." / "backbone." prefixes; when any key carried "backbone." (a whole
    detector checkpoint), only those keys are kept, since neck/head weights are not ours.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"model.pretrained: no such file {path!r}; set model.pretrained to a local state dict "
            "saved with torch.save(model.state_dict()), or to '' to train from scratch")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"model.pretrained: {path!r} is not a state dict (name -> tensor), "
                         "nor a dict holding one under 'state_dict' or 'model'")
    keys = {key: _strip_prefixes(key) for key in obj}
    had_backbone = any(was_backbone for _, was_backbone in keys.values())
    return {stripped: obj[key] for key, (stripped, was_backbone) in keys.items()
            if was_backbone or not had_backbone}


def _strip_prefixes(key: str) -> tuple[str, bool]:
    """Remove any leading "module."/"backbone." prefixes; also say whether "backbone." was one."""
    was_backbone = False
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
                was_backbone |= prefix == "backbone."
    return key, was_backbone


def load_pretrained(model: nn.Module, path: str) -> dict[str, int]:
    """Copy tensors from the state dict at ``path`` into ``model`` in place.

    Equal shapes copy exactly. A source tensor larger in some dimensions (a width < 1 model
    fed full-width weights) has its leading slice ``src[:d0, :d1, ...]`` copied: a common
    warm-start for pruned widths, since leading channels still carry trained filters.
    Classifier keys (``fc.*``) are ignored. Anything else is skipped with one warning.
    Returns the counts ``{"exact", "sliced", "skipped", "missing", "ignored"}``.
    """
    src = read_state_dict(path)
    own = model.state_dict()
    counts = dict.fromkeys(("exact", "sliced", "skipped", "missing", "ignored"), 0)
    skipped, new_state = [], {}
    for key, tensor in src.items():
        if key.startswith(_IGNORED_PREFIXES):
            counts["ignored"] += 1
            continue
        kind, value = _match(own.get(key), tensor)
        counts[kind] += 1
        if value is None:
            skipped.append(key)
        else:
            new_state[key] = value
    missing = sorted(set(own) - set(new_state) - set(skipped))
    counts["missing"] = len(missing)
    if not new_state:
        raise ValueError(f"model.pretrained: no tensor of {path!r} matches a key of "
                         f"{type(model).__name__} (e.g. {sorted(own)[:3]}); "
                         "wrong file, or model.backbone does not match it?")
    model.load_state_dict(new_state, strict=False)
    _report(path, type(model).__name__, counts, skipped, missing)
    return counts


def _match(dst: torch.Tensor | None, src: torch.Tensor) -> tuple[str, torch.Tensor | None]:
    """Classify one source tensor against the model's: exact, sliced (leading slice), skipped."""
    if dst is None or dst.dim() != src.dim():
        return "skipped", None
    if dst.shape == src.shape:
        return "exact", src.to(dst.dtype)
    if all(s >= d for s, d in zip(src.shape, dst.shape)):
        return "sliced", src[tuple(slice(0, d) for d in dst.shape)].to(dst.dtype)
    return "skipped", None


def _report(path: str, model_name: str, counts: dict[str, int],
            skipped: list[str], missing: list[str]) -> None:
    logger.info(f"pretrained {path}: {counts['exact']} tensors loaded exactly, "
                f"{counts['sliced']} as leading slices, {counts['skipped']} skipped, "
                f"{counts['ignored']} classifier tensors ignored, "
                f"{counts['missing']} model tensors not in the file ({model_name})")
    if skipped:
        logger.warning(f"pretrained {path}: skipped {len(skipped)} tensors (unknown name or "
                       f"incompatible shape): {', '.join(skipped)}")
    if missing:
        logger.warning(f"pretrained {path}: {len(missing)} model tensors keep their "
                       f"initialisation: {', '.join(missing)}")
