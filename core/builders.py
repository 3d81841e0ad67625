"""Builders of the pieces each task needs: class names, data loaders, models from checkpoints."""
from __future__ import annotations

from loguru import logger

from configs.base_config import BaseConfig, ConfigError
from datasets import (
    DetectionDataset,
    build_dataloader,
    build_parser,
    build_records,
    category_ids,
    discover_class_names,
    split_cache_dir,
)
from datasets.image_cache import open_image_cache
from datasets.loaders import build_loader
from datasets.subset import stratified_subset
from utils.dist import DistInfo


def resolve_class_names(cfg: BaseConfig) -> list[str]:
    """Fill cfg.data.class_names (and, for COCO data, cfg.data.category_ids) from the training
    annotations when the config leaves them empty.

    This is a resolution of the config, not a runtime fact: the names define the model and the
    category ids the exported results, so both are saved with the config in every checkpoint.
    """
    if not cfg.data.class_names:
        cfg.data.class_names = discover_class_names(cfg)
        logger.info(f"data.class_names not set; found {cfg.data.class_names} in the training annotations")
    if not cfg.data.category_ids and cfg.data.format == "coco":
        cfg.data.category_ids = category_ids(cfg)
        logger.info(f"data.category_ids from the COCO json: {cfg.data.category_ids}")
    return cfg.data.class_names


def per_rank_batch(global_batch: int, dist: DistInfo, key: str) -> int:
    """The global batch split over processes (not over GPUs: a CPU run has one process)."""
    if global_batch % dist.world_size:
        raise ConfigError(f"{key}={global_batch} must be divisible by the number of processes "
                          f"({dist.world_size})")
    return global_batch // dist.world_size


def dataset_for(cfg: BaseConfig, split: str, records: list, train: bool = False, augment: bool = False,
                epochs: int = 0, tag: str = "") -> DetectionDataset:
    """A DetectionDataset over ``records`` of ``split`` with the configured image loader and image
    cache (``tag`` names the cache of a subset, so it does not replace the whole split's)."""
    parser = build_parser(cfg)
    loader = build_loader(cfg.data)
    directory = split_cache_dir(cfg, parser.name, parser.root, parser.sets(split), split)
    cache = open_image_cache(cfg, records, directory, loader, tag)
    return DetectionDataset(records, cfg.data.class_names, cfg.data.img_size, cfg.aug if augment else None,
                            train=train, seed=cfg.train.seed, loader=loader, image_cache=cache, epochs=epochs)


def _dataset(cfg: BaseConfig, split: str, train: bool, augment: bool, epochs: int = 0) -> DetectionDataset:
    """Scanned (cached) records of ``split``, ``data.data_fraction`` of them for training."""
    records, _ = build_records(cfg, split)
    tag = ""
    if split == "train" and cfg.data.data_fraction < 1.0:
        n = len(records)
        records = stratified_subset(records, cfg.data.data_fraction, cfg.train.seed)
        tag = f"_f{cfg.data.data_fraction:g}"
        logger.info(f"data.data_fraction={cfg.data.data_fraction}: training on {len(records)} of {n} "
                    "images (stratified by main class)")
    return dataset_for(cfg, split, records, train, augment, epochs, tag)


def loader_kwargs(cfg: BaseConfig, dist: DistInfo) -> dict:
    """``build_dataloader`` settings of the config (workers, pinning, prefetch, persistence)."""
    d = cfg.data
    return {"num_workers": d.num_workers, "rank": dist.rank, "world_size": dist.world_size,
            "seed": cfg.train.seed, "pin_memory": d.pin_memory and dist.device.type == "cuda",
            "prefetch_factor": d.prefetch_factor, "persistent_workers": d.persistent_workers,
            "timeout_s": d.loader_timeout_s}


def build_train_loader(cfg: BaseConfig, dist: DistInfo):
    """Augmented training loader and its sampler; the dataset knows the epoch count, so
    ``aug.close_mosaic_epochs`` follows ``set_epoch`` (also after a resume)."""
    ds = _dataset(cfg, "train", train=True, augment=True, epochs=cfg.train.epochs)
    bs = per_rank_batch(cfg.train.batch_size, dist, "train.batch_size")
    return build_dataloader(ds, bs, train=True, **loader_kwargs(cfg, dist))


def build_eval_loader(cfg: BaseConfig, dist: DistInfo, split: str = "val", augment: bool = False):
    """Loader over a split, letterboxed (or augmented, for debug plots); returns (loader, records)."""
    ds = _dataset(cfg, split, train=augment, augment=augment)
    loader, _ = build_dataloader(ds, cfg.eval.batch_size, train=False, **loader_kwargs(cfg, dist))
    return loader, ds.records


def load_weights(cfg: BaseConfig, ckpt_path: str | None, device, prefer_ema: bool = True):
    """Model of cfg with the checkpoint's EMA weights (``prefer_ema`` and it has them) or its raw
    weights, in eval mode.

    An exported .onnx / .tflite file gives its runtime model (core.runtime, CPU only); its class
    names fill an empty cfg.data.class_names, and it must fit cfg's class count and input size.
    """
    from core.runtime import is_runtime_path
    from models import build_model
    from utils.checkpoint import load_checkpoint, preferred_weights
    if not ckpt_path:
        raise ConfigError("this task needs trained weights: pass --ckpt runs/<name>/best.pth")
    if is_runtime_path(ckpt_path):
        return _load_runtime(cfg, ckpt_path, device)
    ckpt = load_checkpoint(ckpt_path, required=("model",))
    if not cfg.data.class_names:
        cfg.data.class_names = list(ckpt.get("class_names", []))
    model = build_model(cfg)
    ema = prefer_ema and bool(ckpt.get("ema"))
    state = preferred_weights(ckpt, prefer_ema)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(f"{ckpt_path} does not fit the model of this config ({cfg.model.backbone}, "
                          f"{cfg.num_classes} classes): {str(e).splitlines()[0]}") from None
    logger.info(f"loaded {'EMA ' if ema else ''}weights from {ckpt_path} (epoch {ckpt.get('epoch', '?')})")
    return model.to(device).eval().requires_grad_(False)


def _load_runtime(cfg: BaseConfig, path: str, device):
    from core.runtime import load_runtime_model
    model = load_runtime_model(path)
    names = list(model.metadata["class_names"])
    if not cfg.data.class_names:
        cfg.data.class_names = names
    if len(cfg.data.class_names) != len(names):
        raise ConfigError(f"{path} predicts {len(names)} classes {names}; data.class_names has "
                          f"{len(cfg.data.class_names)}: {list(cfg.data.class_names)}")
    if (cfg.data.img_size, cfg.data.img_size) != tuple(model.img_hw):
        raise ConfigError(f"{path} was exported for {model.img_hw[0]}x{model.img_hw[1]} inputs; "
                          f"data.img_size={cfg.data.img_size} does not fit it (drop the override)")
    if getattr(device, "type", "cpu") != "cpu":
        logger.info(f"{path} runs on the CPU ({model.runtime}), not on {device}")
    logger.info(f"loaded exported model {path} ({model.runtime})")
    return model
