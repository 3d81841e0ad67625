"""Datasets: parsers -> scanned Records -> DetectionDataset -> DataLoader.

``DATASETS`` maps ``cfg.data.format`` to a parser class constructed with the config, offering
``records(split, class_names) -> (list[Record], ScanReport)`` and ``class_names() -> list[str]``.
"""
from __future__ import annotations

from typing import Any

from loguru import logger

from datasets.dataset import DetectionDataset, build_dataloader, collate_fn
from datasets.records import Record
from datasets.scan import DatasetError, ScanReport
from datasets.voc import VocParser

DATASETS = {"voc": VocParser}

__all__ = ["DATASETS", "DatasetError", "DetectionDataset", "Record", "ScanReport",
           "build_dataloader", "build_records", "collate_fn", "discover_class_names"]


def _parser(cfg: Any) -> Any:
    fmt = cfg.data.format
    if fmt not in DATASETS:
        raise DatasetError(f"unknown data.format {fmt!r}; valid: {sorted(DATASETS)}")
    return DATASETS[fmt](cfg)


def discover_class_names(cfg: Any) -> list[str]:
    """Sorted class names found in the train split's annotations (for empty data.class_names)."""
    return _parser(cfg).class_names()


def build_records(cfg: Any, split: str) -> tuple[list[Record], ScanReport]:
    """Scan ``split`` ("train" or "val") of the configured dataset and log the summary.

    Class names are ``cfg.data.class_names``, or the discovered train names when that is empty
    (the config is not modified: the caller decides where the names go).
    """
    parser = _parser(cfg)
    names = list(cfg.data.class_names) or parser.class_names()
    records, report = parser.records(split, names)
    logger.info(report.summary())
    return records, report
