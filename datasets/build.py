"""From a config to a Dataset, each piece built once: the parser (with the image loader), the class
names, the scan or the label cache, the subset, the image cache and the DetectionDataset.

``DATASETS`` maps ``cfg.data.format`` to a parser class (``datasets.parser.Parser``): ``"voc"``
(Pascal VOC xml), ``"coco"`` (COCO json), ``"yolo"`` (YOLO txt); all three give identical records
for the same data. DataLoaders (per-rank batches, samplers, workers) are wired by core.loaders.
"""
from __future__ import annotations

from typing import Any

from loguru import logger

from configs.base_config import ConfigError
from datasets.coco import CocoParser
from datasets.dataset import DetectionDataset
from datasets.image_cache import open_image_cache
from datasets.label_cache import cached_scan, split_cache_dir
from datasets.loaders import DEFAULT_LOADER, LOADERS
from datasets.parser import Parser
from datasets.records import RecordTable
from datasets.scan import DatasetError, ScanReport, run_scan
from datasets.subset import stratified_subset
from datasets.voc import VocParser
from datasets.yolo import YoloParser

DATASETS: dict[str, type[Parser]] = {"voc": VocParser, "coco": CocoParser, "yolo": YoloParser}


def check_config(cfg: Any) -> None:
    """The data part of the config gate (configs.BaseConfig.validate): the registry names."""
    if cfg.data.format not in DATASETS:
        raise ConfigError(f"data.format={cfg.data.format!r} is not one of {sorted(DATASETS)}")
    spec = cfg.data.image_loader
    if spec not in LOADERS and "." not in spec and ":" not in spec:
        raise ConfigError(f"data.image_loader={spec!r} is neither a built-in loader ({', '.join(LOADERS)}) nor "
                          f"an import path like {DEFAULT_LOADER!r}")


def build_parser(cfg: Any) -> Parser:
    fmt = cfg.data.format
    if fmt not in DATASETS:
        raise DatasetError(f"unknown data.format {fmt!r}; valid: {sorted(DATASETS)}")
    return DATASETS[fmt](cfg)


def resolve_class_names(cfg: Any, parser: Parser | None = None) -> list[str]:
    """Fill cfg.data.class_names (and, for COCO data, cfg.data.category_ids) from the training
    annotations when the config leaves them empty.

    This is a resolution of the config, not a runtime fact: the names define the model and the
    category ids the exported results, so both are saved with the config in every checkpoint.
    """
    d = cfg.data
    if d.class_names and (d.category_ids or d.format != "coco"):
        return d.class_names
    parser = parser or build_parser(cfg)
    if not d.class_names:
        d.class_names = parser.class_names()
        logger.info(f"data.class_names not set; found {d.class_names} in the training annotations")
    if not d.category_ids and d.format == "coco":
        d.category_ids = parser.category_ids(list(d.class_names))
        logger.info(f"data.category_ids from the COCO json: {d.category_ids}")
    return d.class_names


def _scan(parser: Parser, split: str, cfg: Any) -> tuple[RecordTable, ScanReport]:
    names = list(cfg.data.class_names) or parser.class_names()
    if cfg.data.cache_labels:
        records, report = cached_scan(parser, split, names, cfg)
    else:
        records, report = run_scan(parser.records, split, names)  # in a child process (its doc says why)
    logger.info(report.summary())
    return records, report


def build_records(cfg: Any, split: str) -> tuple[RecordTable, ScanReport]:
    """Scan ``split`` ("train" or "val") of the configured dataset (through the label cache when
    ``data.cache_labels`` is set) and log the summary. Class names are ``cfg.data.class_names``, or
    the names found in the data when that is empty (the config is not modified)."""
    return _scan(build_parser(cfg), split, cfg)


def build_dataset(cfg: Any, split: str, *, train: bool = False, augment: bool = False,
                  max_images: int = 0) -> DetectionDataset:
    """The DetectionDataset of ``split``: augmented training samples (``train`` and ``augment``),
    training order without augmentation (``train`` only), or letterboxed images.

    The train split keeps a stratified ``data.data_fraction`` of its images; ``max_images`` > 0
    keeps the first N (val's ``eval.max_images``). A subset gets its own image cache (tag), so it
    neither decodes nor replaces the whole split's. ``dataset.split_size`` is the size of the
    whole split.
    """
    parser = build_parser(cfg)
    records, _ = _scan(parser, split, cfg)
    split_size, tag = len(records), ""
    if split == "train" and cfg.data.data_fraction < 1.0:
        records = stratified_subset(records, cfg.data.data_fraction, cfg.train.seed)
        tag = f"_f{cfg.data.data_fraction:g}"
        logger.info(f"data.data_fraction={cfg.data.data_fraction}: training on {len(records)} of {split_size} "
                    "images (stratified by main class)")
    if 0 < max_images < len(records):
        records, tag = records[:max_images], f"_n{max_images}"
    directory = split_cache_dir(cfg, parser.name, parser.root, parser.sets(split), split)
    cache = open_image_cache(cfg, records, directory, parser.loader, tag)
    names = list(cfg.data.class_names) or parser.class_names()
    dataset = DetectionDataset(records, names, cfg.data.img_size, cfg.aug if augment else None, train=train,
                               seed=cfg.train.seed, loader=parser.loader, image_cache=cache,
                               epochs=cfg.train.epochs if train else 0)
    dataset.split_size = split_size
    return dataset
