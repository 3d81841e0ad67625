"""Datasets: parsers -> scanned records (a RecordTable) -> DetectionDataset (``datasets.build``);
core.loaders wires the DataLoaders to the process group."""
from __future__ import annotations

from datasets.build import DATASETS, build_dataset, build_parser, build_records, check_config, resolve_class_names
from datasets.dataset import DetectionDataset, build_dataloader, collate_fn, to_input
from datasets.label_cache import split_cache_dir
from datasets.records import Record, RecordTable
from datasets.scan import DatasetError, ScanReport

__all__ = [
    "DATASETS",
    "DatasetError",
    "DetectionDataset",
    "Record",
    "RecordTable",
    "ScanReport",
    "build_dataloader",
    "build_dataset",
    "build_parser",
    "build_records",
    "check_config",
    "collate_fn",
    "resolve_class_names",
    "split_cache_dir",
    "to_input",
]
