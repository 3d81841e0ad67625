"""Trained weights into a model: the one place that loads a checkpoint for inference."""
from __future__ import annotations

import torch
from loguru import logger
from torch import nn

from configs.base_config import BaseConfig, ConfigError
from models import build_model
from utils.checkpoint import load_checkpoint, preferred_weights


def load_weights(cfg: BaseConfig, ckpt_path: str | None, device: torch.device | str,
                 prefer_ema: bool = True) -> nn.Module:
    """cfg's model with the checkpoint's EMA weights (``prefer_ema`` and it has them) or its raw
    weights, in eval mode on ``device``. Its class names fill an empty ``data.class_names``."""
    if not ckpt_path:
        raise ConfigError("this task needs trained weights: pass --ckpt runs/<name>/best.pth")
    ckpt = load_checkpoint(ckpt_path, required=("model",))
    if not cfg.data.class_names:
        cfg.data.class_names = list(ckpt.get("class_names", []))
    model = build_model(cfg)
    ema = prefer_ema and bool(ckpt.get("ema"))
    try:
        model.load_state_dict(preferred_weights(ckpt, prefer_ema))
    except RuntimeError as e:
        raise ConfigError(f"{ckpt_path} does not fit the model of this config ({cfg.model.name}, "
                          f"{cfg.num_classes} classes): {str(e).splitlines()[0]}") from None
    logger.info(f"loaded {'EMA ' if ema else ''}weights from {ckpt_path} (epoch {ckpt.get('epoch', '?')})")
    return model.to(device).eval().requires_grad_(False)
