"""DataLoaders wired to the process group: per-rank batches, samplers, workers (the datasets come
from datasets.build_dataset)."""
from __future__ import annotations

from loguru import logger
from torch.utils.data import DataLoader, Sampler

from configs.base_config import BaseConfig, ConfigError
from datasets import build_dataloader, build_dataset
from datasets.samplers import mosaic_buffer_size
from utils.dist import DistInfo


def per_rank_batch(global_batch: int, dist: DistInfo, key: str) -> int:
    """The global batch split over processes (not over GPUs: a CPU run has one process)."""
    if global_batch % dist.world_size:
        raise ConfigError(f"{key}={global_batch} must be divisible by the number of processes "
                          f"({dist.world_size})")
    return global_batch // dist.world_size


def loader_kwargs(cfg: BaseConfig, dist: DistInfo) -> dict:
    """``build_dataloader`` settings of the config (workers, pinning, prefetch, persistence, timeout)."""
    d = cfg.data
    return {"num_workers": d.num_workers, "rank": dist.rank, "world_size": dist.world_size,
            "seed": cfg.train.seed, "pin_memory": d.pin_memory and dist.device.type == "cuda",
            "prefetch_factor": d.prefetch_factor, "persistent_workers": d.persistent_workers,
            "timeout_s": d.loader_timeout_s}


def build_train_loader(cfg: BaseConfig, dist: DistInfo) -> tuple[DataLoader, Sampler]:
    """Augmented training loader and its sampler; the dataset knows the epoch count, so
    ``aug.close_mosaic_epochs`` follows ``set_epoch`` (also after a resume)."""
    ds = build_dataset(cfg, "train", train=True, augment=True)
    batch = per_rank_batch(cfg.train.batch_size, dist, "train.batch_size")
    return build_dataloader(ds, batch, train=True, **loader_kwargs(cfg, dist),
                            mosaic_buffer=mosaic_buffer_size(cfg.data.mosaic_buffer, batch, cfg.data.img_size))


def build_eval_loader(cfg: BaseConfig, dist: DistInfo, split: str = "val", augment: bool = False,
                      max_images: int = 0, rect: bool | None = None) -> DataLoader:
    """Loader over a split in order, letterboxed (or augmented, for debug plots), each rank its
    share; ``max_images`` > 0 keeps the first N images. ``loader.dataset.records`` are the images
    it covers, ``loader.dataset.split_size`` the size of the split.

    rect: batches of similar aspect ratio, each padded only to the next multiple of the largest
    stride (``datasets.samplers.rect_batches``), each rank taking whole batches; None = eval.rect
    for the val split without augmentation (the loaders that score), square otherwise.
    """
    if rect is None:
        rect = cfg.eval.rect and split == "val" and not augment
    if rect and augment:
        raise ConfigError("rectangular batches (eval.rect) take letterboxed images, not augmented ones")
    ds = build_dataset(cfg, split, train=augment, augment=augment, max_images=max_images)
    loader = build_dataloader(ds, cfg.eval.batch_size, train=False, rect_stride=max(cfg.model.strides) if rect else 0,
                              rect_pad=cfg.eval.rect_pad, **loader_kwargs(cfg, dist))[0]
    if rect:
        shapes = sorted({f"{h}x{w}" for h, w in ds.canvas_hw.tolist()})
        logger.info(f"{split} in rectangular batches (eval.rect): {len(loader)} of {-(-len(ds) // cfg.eval.batch_size)} "
                    f"batches on rank {dist.rank}, canvases (h x w) {', '.join(shapes)}")
    return loader
