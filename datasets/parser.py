"""What every dataset parser shares: root, image loader, sets of a split, and the scan.

A parser (``VocParser``, ``CocoParser``, ``YoloParser``) only turns its files into ``RawItem``s
(``items``) and names the index files a split is read from (``index_files``: set lists, json
files, image folders). ``scan`` runs the format-independent checks of ``datasets.scan`` and also
returns every file the result depends on, which is what the label cache watches.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from datasets.loaders import build_loader
from datasets.paths import checked_root, contained
from datasets.records import RecordTable
from datasets.scan import DatasetError, RawItem, ScanReport, scan_items


class Parser(ABC):
    """Base class; subclasses set ``name`` and ``offset`` and implement the format hooks."""

    name = ""
    offset = 0.0  # subtracted from (xmin, ymin) to get 0-based pixel edges
    version = 1  # bump when parsing changes the records: invalidates label caches

    def __init__(self, cfg: Any) -> None:
        self.data = cfg.data
        self.root = checked_root(cfg.data.root)
        self.loader = build_loader(cfg.data)

    # -- format hooks -------------------------------------------------------------------
    @abstractmethod
    def items(self, split: str, class_names: list[str]) -> list[RawItem]:
        """Parsed (not yet checked) items of ``split`` in a stable order (``class_names`` maps
        the class ids of formats that store ids, not names)."""

    @abstractmethod
    def index_files(self, split: str) -> list[Path]:
        """Files and folders listing the split (their changes must invalidate a cache)."""

    @abstractmethod
    def class_names(self) -> list[str]:
        """Class names when ``data.class_names`` is empty."""

    def example_annotation(self, split: str, items: list[RawItem]) -> str:
        """Where annotations were expected: shown when a split has no label at all."""
        files = [str(it.ann_file) for it in items[:3] if it.ann_file is not None]
        return ", ".join(files) or str(self.root)

    # -- shared -------------------------------------------------------------------------
    def sets(self, split: str) -> list[str]:
        """``data.train_sets`` for "train", ``data.val_sets`` otherwise (never empty)."""
        sets = self.data.train_sets if split == "train" else self.data.val_sets
        if not sets:
            raise DatasetError(f"no sets configured for split {split!r} (data.train_sets / data.val_sets)")
        return list(sets)

    def contained(self, path: Path, what: str) -> Path:
        return contained(path, self.root, self.data.allow_outside_root, what)

    def settings(self) -> dict:
        """Config values that change how files become records (part of the label-cache key)."""
        d = self.data
        return {"format": self.name, "parser_version": self.version, "root": str(self.root),
                "strict": d.strict, "difficult_as_ignore": d.difficult_as_ignore,
                "allow_outside_root": d.allow_outside_root, "image_loader": d.image_loader}

    def scan(self, split: str, class_names: list[str]) -> tuple[RecordTable, ScanReport, list[Path]]:
        """Records and report of ``split`` plus every file they were read from."""
        items = self.items(split, class_names)
        records, report = scan_items(
            items, class_names, split, strict=self.data.strict,
            difficult_as_ignore=self.data.difficult_as_ignore, offset=self.offset,
            source=f"{self.name} {self.root} {self.sets(split)}",
            example_annotation=self.example_annotation(split, items), image_hw=self.loader.hw)
        files = list(self.index_files(split))
        for it in items:
            files.append(it.file)
            if it.ann_file is not None:
                files.append(it.ann_file)
        return records, report, files

    def records(self, split: str, class_names: list[str]) -> tuple[RecordTable, ScanReport]:
        """Scan ``split``: decode-check, clean and validate (policy in ``datasets.scan``)."""
        records, report, _ = self.scan(split, class_names)
        return records, report
