"""Builders of the pieces each task needs: class names, data loaders, models from checkpoints."""
from __future__ import annotations

from loguru import logger

from configs.base_config import BaseConfig, ConfigError
from datasets import DetectionDataset, build_dataloader, build_records, discover_class_names
from utils.dist import DistInfo


def resolve_class_names(cfg: BaseConfig) -> list[str]:
    """Fill cfg.data.class_names from the training annotations when the config leaves it empty.

    This is a resolution of the config, not a runtime fact: the names define the model, so they
    are saved with the config in every checkpoint.
    """
    if not cfg.data.class_names:
        cfg.data.class_names = discover_class_names(cfg)
        logger.info(f"data.class_names not set; found {cfg.data.class_names} in the training annotations")
    return cfg.data.class_names


def per_rank_batch(global_batch: int, dist: DistInfo, key: str) -> int:
    """The global batch split over processes (not over GPUs: a CPU run has one process)."""
    if global_batch % dist.world_size:
        raise ConfigError(f"{key}={global_batch} must be divisible by the number of processes "
                          f"({dist.world_size})")
    return global_batch // dist.world_size


def build_train_loader(cfg: BaseConfig, dist: DistInfo):
    records, _ = build_records(cfg, "train")
    ds = DetectionDataset(records, cfg.data.class_names, cfg.data.img_size, cfg.aug, train=True,
                          seed=cfg.train.seed)
    bs = per_rank_batch(cfg.train.batch_size, dist, "train.batch_size")
    return build_dataloader(ds, bs, train=True, num_workers=cfg.data.num_workers, rank=dist.rank,
                            world_size=dist.world_size, seed=cfg.train.seed,
                            pin_memory=cfg.data.pin_memory and dist.device.type == "cuda")


def build_eval_loader(cfg: BaseConfig, dist: DistInfo, split: str = "val", augment: bool = False):
    """Loader over a split, letterboxed (or augmented, for debug plots); returns (loader, records)."""
    records, _ = build_records(cfg, split)
    ds = DetectionDataset(records, cfg.data.class_names, cfg.data.img_size, cfg.aug if augment else None,
                          train=augment, seed=cfg.train.seed)
    loader, _ = build_dataloader(ds, cfg.eval.batch_size, train=False, num_workers=cfg.data.num_workers,
                                 rank=dist.rank, world_size=dist.world_size, seed=cfg.train.seed,
                                 pin_memory=cfg.data.pin_memory and dist.device.type == "cuda")
    return loader, records


def load_weights(cfg: BaseConfig, ckpt_path: str | None, device):
    """Model of cfg with the checkpoint's EMA weights (or raw weights when it has no EMA), in eval mode."""
    from models import build_model
    from utils.checkpoint import load_checkpoint
    if not ckpt_path:
        raise ConfigError("this task needs trained weights: pass --ckpt runs/<name>/best.pth")
    ckpt = load_checkpoint(ckpt_path, required=("model",))
    if not cfg.data.class_names:
        cfg.data.class_names = list(ckpt.get("class_names", []))
    model = build_model(cfg)
    ema = ckpt.get("ema")
    state = ema["model"] if ema else ckpt["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(f"{ckpt_path} does not fit the model of this config ({cfg.model.backbone}, "
                          f"{cfg.num_classes} classes): {str(e).splitlines()[0]}") from None
    logger.info(f"loaded {'EMA ' if ema else ''}weights from {ckpt_path} (epoch {ckpt.get('epoch', '?')})")
    return model.to(device).eval().requires_grad_(False)
