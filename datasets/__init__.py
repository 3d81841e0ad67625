"""Datasets: parsers -> scanned records (a RecordTable) -> DetectionDataset -> DataLoader.

``DATASETS`` maps ``cfg.data.format`` to a parser class (``datasets.parser.Parser``) built
with the config: ``"voc"`` (Pascal VOC xml), ``"coco"`` (COCO json), ``"yolo"`` (YOLO txt).
All three give identical records for the same data.
"""
from __future__ import annotations

from typing import Any

from loguru import logger

from datasets.coco import CocoParser
from datasets.dataset import DetectionDataset, build_dataloader, collate_fn, to_input
from datasets.label_cache import cached_scan, split_cache_dir
from datasets.parser import Parser
from datasets.records import Record, RecordTable
from datasets.scan import DatasetError, ScanReport
from datasets.voc import VocParser
from datasets.yolo import YoloParser

DATASETS: dict[str, type[Parser]] = {"voc": VocParser, "coco": CocoParser, "yolo": YoloParser}

__all__ = [
    "DATASETS",
    "DatasetError",
    "DetectionDataset",
    "Record",
    "RecordTable",
    "ScanReport",
    "build_dataloader",
    "build_parser",
    "build_records",
    "category_ids",
    "collate_fn",
    "discover_class_names",
    "split_cache_dir",
    "to_input",
]


def build_parser(cfg: Any) -> Parser:
    fmt = cfg.data.format
    if fmt not in DATASETS:
        raise DatasetError(f"unknown data.format {fmt!r}; valid: {sorted(DATASETS)}")
    return DATASETS[fmt](cfg)


def discover_class_names(cfg: Any) -> list[str]:
    """Class names from the data, for an empty data.class_names (see ``DataCfg.class_names``)."""
    return build_parser(cfg).class_names()


def category_ids(cfg: Any) -> list[int]:
    """COCO category id of each class: from the json for COCO data, else 1..nc."""
    names = list(cfg.data.class_names)
    if cfg.data.format == "coco":
        return build_parser(cfg).category_ids(names)
    return list(range(1, len(names) + 1))


def build_records(cfg: Any, split: str) -> tuple[RecordTable, ScanReport]:
    """Scan ``split`` ("train" or "val") of the configured dataset and log the summary.

    Goes through the label cache when ``data.cache_labels`` is set. Class names are
    ``cfg.data.class_names``, or the names found in the data when that is empty (the config is
    not modified: the caller decides where the names go).
    """
    parser = build_parser(cfg)
    names = list(cfg.data.class_names) or parser.class_names()
    if cfg.data.cache_labels:
        records, report = cached_scan(parser, split, names, cfg)
    else:
        records, report = parser.records(split, names)
    logger.info(report.summary())
    return records, report
