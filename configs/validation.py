"""Cross-field checks of a config. Each error names the key and what to do."""
from __future__ import annotations

from configs.base_config import BaseConfig, ConfigError

CHOICES = {
    "model.activation": ("relu", "leaky_relu", "silu", "mish", "hardswish"),
    "loss.box": ("iou", "giou", "diou", "ciou"),
    "loss.obj_target": ("iou", "constant"),
    "optim.name": ("sgd", "adam", "adamw"),
    "sched.name": ("cosine",),
    "eval.backend": ("faster_coco_eval", "pycocotools"),
    "debug.split": ("train", "val"),
}


def registry_choices() -> dict[str, tuple]:
    """Valid names of the registry-backed fields (imported here: configs stay light to load)."""
    from datasets import DATASETS
    from models import MODELS
    from models.assigners import ASSIGNERS
    from models.backbones import BACKBONES
    from models.necks import NECKS
    return {"model.name": tuple(MODELS), "model.backbone": tuple(BACKBONES), "model.neck": tuple(NECKS),
            "assign.method": tuple(ASSIGNERS), "data.format": tuple(DATASETS)}


def validate_config(cfg: BaseConfig) -> None:
    for key, choices in {**CHOICES, **registry_choices()}.items():
        if cfg.get(key) not in choices:
            raise ConfigError(f"{key}={cfg.get(key)!r} is not one of {list(choices)}")
    names = cfg.data.class_names
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"data.class_names has duplicates: {dup}")
    if cfg.data.img_size % max(cfg.model.strides) or cfg.data.img_size <= 0:
        raise ConfigError(f"data.img_size={cfg.data.img_size} must be a positive multiple of "
                          f"the largest stride {max(cfg.model.strides)}")
    n_lv = len(cfg.model.strides)
    if len(cfg.model.anchors) != n_lv or len(cfg.loss.level_weights) != n_lv:
        raise ConfigError(f"model.anchors ({len(cfg.model.anchors)} levels) and loss.level_weights "
                          f"({len(cfg.loss.level_weights)}) must have one entry per stride ({n_lv})")
    if len({len(lv) for lv in cfg.model.anchors}) != 1 or any(
            len(a) != 2 or min(a) <= 0 for lv in cfg.model.anchors for a in lv):
        raise ConfigError("model.anchors must list the same number of positive [w, h] pairs per level")
    if not 0.0 < cfg.model.channel_sparsity <= 4.0:
        raise ConfigError(f"model.channel_sparsity={cfg.model.channel_sparsity} must be in (0, 4]")
    _range(cfg, "assign.match_iou_thres", 0.0, 1.0)
    for key in ("aug.mosaic_prob", "aug.hflip_prob", "aug.vflip_prob", "aug.color_prob",
                "aug.min_visibility"):
        _range(cfg, key, 0.0, 1.0)
    lo, hi = cfg.aug.scale
    if not 0 < lo <= hi:
        raise ConfigError(f"aug.scale={cfg.aug.scale} must be (low, high) with 0 < low <= high")
    for key in ("train.epochs", "train.batch_size", "eval.batch_size", "eval.max_det", "predict.max_det"):
        if cfg.get(key) <= 0:
            raise ConfigError(f"{key}={cfg.get(key)} must be positive")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr={cfg.optim.lr} must be positive")


def _range(cfg: BaseConfig, key: str, lo: float, hi: float) -> None:
    v = cfg.get(key)
    if not lo <= v <= hi:
        raise ConfigError(f"{key}={v} must be in [{lo}, {hi}]")
