"""Format-independent scan: decode-check every image once, clean boxes, apply the skip/raise policy.

A parser (e.g. ``datasets.voc``) turns its files into ``RawItem``s; ``scan_items`` turns those
into a ``RecordTable`` plus a ``ScanReport``. Policy (USERS.md 4a):

- bad item (undecodable image, unreadable annotation, box outside the image by more than
  ``CLIP_TOLERANCE`` of the side, non-finite coordinate): split "train" skips the image with a
  warning naming the file and object, and counts it; any other split (or ``strict``) raises
  ``DatasetError`` naming every bad file and reason, since skipping would change the score;
- fixed and counted, in every split: inverted boxes swapped, boxes within tolerance clipped,
  degenerate boxes (zero width or height, e.g. point clicks) dropped, exact duplicates removed;
- unknown class names and a split without any box raise ``DatasetError`` in every split.

``run_scan`` runs a scan in a child process, so the Python objects of parsing never reach the
heap that the DataLoader workers inherit (its doc has the figures).
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from datasets.image_io import ImageError, image_hw
from datasets.records import Record, RecordTable
from utils.memory import call_in_child, can_fork_child, trim_heap

IN_PROCESS_ENV = "SCAN_IN_PROCESS"  # "1": run_scan scans in this process (see run_scan)
CLIP_TOLERANCE = 0.01  # boxes may exceed the image by this fraction of its side and get clipped
_MAX_LISTED = 10  # bad items listed in an error or summary
_CLIP_NOISE = 1e-3  # px; smaller overshoots (float noise of normalised coordinates) are not counted


class DatasetError(ValueError):
    """Bad dataset content; the message names the file (and object) and what to do."""


@dataclass
class RawObject:
    """One annotated object as written in the annotation file.

    xyxy_raw: (xmin, ymin, xmax, ymax) in the file's own convention (see ``scan_items`` offset),
        or fractions of the image width and height when ``normalized`` (YOLO txt).
    where: human-readable position, e.g. "object 3" or "line 4".
    difficult: VOC difficult, an ignore region when ``difficult_as_ignore``.
    crowd: COCO iscrowd, always an ignore region.
    """

    name: str
    xyxy_raw: tuple[float, float, float, float]
    difficult: bool = False
    where: str = ""
    normalized: bool = False
    crowd: bool = False


@dataclass
class RawItem:
    """One image of a split before checking; ``error`` set when its annotation is unreadable."""

    file: Path
    ann_file: Path | None = None
    declared_hw: tuple[int, int] | None = None
    objects: list[RawObject] = field(default_factory=list)
    missing_annotation: bool = False
    error: str | None = None
    source_id: int | None = None  # the dataset's own integer image id (COCO json), if it has one


@dataclass
class ScanReport:
    """Counts of what a scan found, fixed and skipped, and (file, reason) for every skipped item."""

    images_found: int = 0
    images_ok: int = 0
    images_skipped: int = 0
    corrupt_images: int = 0
    missing_annotations: int = 0
    background_images: int = 0
    boxes: int = 0
    boxes_clipped: int = 0
    boxes_degenerate_dropped: int = 0
    boxes_inverted_fixed: int = 0
    boxes_duplicate_removed: int = 0
    ignore_regions: int = 0
    size_mismatch: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    split: str = ""
    source: str = ""

    def add(self, counts: Counter) -> None:
        for k, v in counts.items():
            setattr(self, k, getattr(self, k) + v)

    def counts(self) -> dict[str, int]:
        """All integer counts by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.type in ("int", int)}

    def summary(self) -> str:
        """A readable multi-line summary: found / fixed / dropped / skipped and why."""
        lines = [
            (f"scan {self.source} [{self.split}]: {self.images_found} images found, "
            f"{self.images_ok} ok, {self.images_skipped} skipped ({self.corrupt_images} corrupt)"),
            (f"  boxes: {self.boxes} kept, {self.ignore_regions} ignore regions; "
            f"background images: {self.background_images} "
            f"({self.missing_annotations} without annotation file)"),
            (f"  fixed: {self.boxes_clipped} clipped to the image, {self.boxes_inverted_fixed} "
            f"inverted swapped, {self.boxes_duplicate_removed} duplicates removed; dropped: "
            f"{self.boxes_degenerate_dropped} degenerate (zero width/height); "
            f"size mismatches (decoded size used): {self.size_mismatch}"),
        ]
        for file, reason in self.skipped[:_MAX_LISTED]:
            lines.append(f"  skipped {file}: {reason}")
        if len(self.skipped) > _MAX_LISTED:
            lines.append(f"  ... and {len(self.skipped) - _MAX_LISTED} more skipped")
        return "\n".join(lines)


class _BadItem(Exception):
    """Internal: this image must be skipped (train) or reported (val)."""


def _decode_all(files: list[Path],
                hw: Callable[[Path], tuple[int, int]]) -> list[tuple[int, int] | ImageError]:
    """Decode-check every image in a thread pool (PIL releases the GIL while decoding)."""
    def check(p: Path) -> tuple[int, int] | ImageError:
        try:
            return hw(p)
        except ImageError as e:
            return e

    workers = min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(check, files))


def check_class_names(items: list[RawItem], class_names: list[str]) -> None:
    """Raise DatasetError listing unknown names (with counts and a file) and the valid names."""
    valid = set(class_names)
    unknown: Counter = Counter()
    first_file: dict[str, Path] = {}
    for it in items:
        for o in it.objects:
            if o.name not in valid:
                unknown[o.name] += 1
                first_file.setdefault(o.name, it.ann_file or it.file)
    if unknown:
        listed = ", ".join(f"{n!r} x{c} (e.g. {first_file[n]})" for n, c in unknown.most_common())
        raise DatasetError(
            f"unknown class names: {listed}; valid names: {class_names}. Fix the annotations "
            "or set data.class_names (empty = names found in the train split)")


def _clean_object(o: RawObject, img_hw: tuple[int, int], offset: float,
                  counts: Counter) -> np.ndarray | None:
    """Raw box -> [4] float32 xyxy pixel edges, or None when degenerate; _BadItem when invalid."""
    b = np.asarray(o.xyxy_raw, dtype=np.float64)
    if not np.all(np.isfinite(b)):
        raise _BadItem(f"{o.where}: non-finite coordinate {tuple(o.xyxy_raw)}")
    if o.normalized:
        b = b * [img_hw[1], img_hw[0], img_hw[1], img_hw[0]]
    if b[0] > b[2] or b[1] > b[3]:
        b = np.array([min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])])
        counts["boxes_inverted_fixed"] += 1
    # Judged on the raw values: with VOC's inclusive 1-based pixels xmin == xmax would become a
    # 1 px box after the offset, but such an annotation is a point click, not an object.
    if b[2] - b[0] <= 0 or b[3] - b[1] <= 0:
        counts["boxes_degenerate_dropped"] += 1
        return None
    b[:2] -= offset
    h, w = img_hw
    tx, ty = CLIP_TOLERANCE * w, CLIP_TOLERANCE * h
    if b[0] < -tx or b[1] < -ty or b[2] > w + tx or b[3] > h + ty:
        raise _BadItem(f"{o.where}: box {tuple(o.xyxy_raw)} lies outside the {w}x{h} image "
                       f"by more than {CLIP_TOLERANCE:.0%} of its side")
    c = np.clip(b, 0, [w, h, w, h])
    if np.any(np.abs(c - b) > _CLIP_NOISE):
        counts["boxes_clipped"] += 1
    if c[2] - c[0] <= 0 or c[3] - c[1] <= 0:
        counts["boxes_degenerate_dropped"] += 1
        return None
    return c.astype(np.float32)


def _dedupe(boxes: list[np.ndarray], labels: list[int], counts: Counter) -> tuple[np.ndarray, np.ndarray]:
    """Remove exact (label, box) duplicates keeping the first; returns [n,4] f32 and [n] i64."""
    seen: set = set()
    keep_b, keep_l = [], []
    for b, lab in zip(boxes, labels):
        key = (lab, *b.tolist())
        if key in seen:
            counts["boxes_duplicate_removed"] += 1
            continue
        seen.add(key)
        keep_b.append(b)
        keep_l.append(lab)
    arr = np.stack(keep_b).astype(np.float32) if keep_b else np.zeros((0, 4), np.float32)
    return arr, np.asarray(keep_l, dtype=np.int64)


def _build_record(it: RawItem, img_hw: tuple[int, int], name_to_id: dict[str, int], offset: float,
                  difficult_as_ignore: bool, counts: Counter) -> Record:
    """Clean one item's objects into a Record (image_id filled later). Raises _BadItem."""
    boxes, labels, ignores = [], [], []
    for o in it.objects:
        b = _clean_object(o, img_hw, offset, counts)
        if b is None:
            continue
        if o.crowd or (o.difficult and difficult_as_ignore):
            ignores.append(b)
        else:
            boxes.append(b)
            labels.append(name_to_id[o.name])
    box_arr, lab_arr = _dedupe(boxes, labels, counts)
    ign_arr, _ = _dedupe(ignores, [-1] * len(ignores), counts)
    counts["boxes"] += len(box_arr)
    counts["ignore_regions"] += len(ign_arr)
    return Record(image_id=0, file=str(it.file), img_hw=img_hw, boxes=box_arr, labels=lab_arr, ignore=ign_arr,
                  source_id=-1 if it.source_id is None else int(it.source_id))


def _check_size(it: RawItem, img_hw: tuple[int, int], counts: Counter) -> None:
    if it.declared_hw and min(it.declared_hw) > 0 and tuple(it.declared_hw) != tuple(img_hw):
        counts["size_mismatch"] += 1
        logger.warning(f"{it.ann_file}: <size> says (h, w) = {tuple(it.declared_hw)} but {it.file} "
                       f"decodes to {tuple(img_hw)}; using the decoded size")


def scan_items(items: list[RawItem], class_names: list[str], split: str, *, strict: bool = False,
               difficult_as_ignore: bool = True, offset: float = 0.0, source: str = "",
               example_annotation: str = "",
               image_hw: Callable[[Path], tuple[int, int]] = image_hw) -> tuple[RecordTable, ScanReport]:
    """Check and clean a split's items.

    Args:
        items: parsed items in split order (image_id = 1-based position among kept items).
        class_names: valid names; index = label.
        split: "train" skips bad items with a warning; anything else raises DatasetError.
        offset: subtracted from (xmin, ymin) to get 0-based pixel edges (VOC: 1.0).
        example_annotation: shown in the "no labels found" error.
        image_hw: decode check returning the upright (h, w) (the configured loader's ``hw``).
    Returns:
        (records as a RecordTable, report).
    """
    report = ScanReport(images_found=len(items), split=split, source=source)
    check_class_names([it for it in items if it.error is None], class_names)
    name_to_id = {n: i for i, n in enumerate(class_names)}
    records: list[Record] = []
    decoded = _decode_all([it.file for it in items], image_hw)
    for it, hw in zip(items, decoded):
        counts: Counter = Counter()
        try:
            if isinstance(hw, ImageError):
                counts["corrupt_images"] += 1
                raise _BadItem(str(hw).removeprefix(f"{it.file}: "))
            if it.error is not None:
                raise _BadItem(it.error)
            _check_size(it, hw, counts)
            rec = _build_record(it, hw, name_to_id, offset, difficult_as_ignore, counts)
        except _BadItem as e:
            bad_file = it.file if counts["corrupt_images"] else (it.ann_file or it.file)
            report.skipped.append((str(bad_file), str(e)))
            report.images_skipped += 1
            report.corrupt_images += counts["corrupt_images"]
            continue
        counts["missing_annotations"] += int(it.missing_annotation)
        counts["background_images"] += int(len(rec.boxes) == 0)
        report.add(counts)
        records.append(rec)
    _apply_policy(report, split, strict)
    for i, rec in enumerate(records):
        rec.image_id = i + 1
    report.images_ok = len(records)
    if items and report.boxes == 0:
        raise DatasetError(f"no labels found in split {split!r} of {source} "
                           f"({len(items)} images); expected annotations at e.g. {example_annotation}")
    return RecordTable.from_records(records), report


def _apply_policy(report: ScanReport, split: str, strict: bool) -> None:
    """Warn about skipped items (train) or raise DatasetError naming them (val, strict)."""
    if not report.skipped:
        return
    if split != "train" or strict:
        listed = "\n  ".join(f"{f}: {r}" for f, r in report.skipped[:_MAX_LISTED])
        more = len(report.skipped) - _MAX_LISTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        why = "data.strict=True" if split == "train" else "skipping would change the score"
        raise DatasetError(f"{len(report.skipped)} bad item(s) in split {split!r} of "
                           f"{report.source} ({why}); fix or remove them:\n  {listed}{tail}")
    for f, r in report.skipped:
        logger.warning(f"{f}: {r}; skipped (train split, counted in the scan summary)")


def run_scan(scan: Callable[..., tuple[RecordTable, ScanReport]], *args: Any) -> tuple[RecordTable, ScanReport]:
    """``scan(*args)`` (a scan returning records and report, e.g. ``Parser.records``) run in a
    child process: only the RecordTable's arrays and the ScanReport come back.

    Why: parsing a split makes Python objects per image, box and file (RawItems, RawObjects,
    Records, the label cache's file list and stats). Freed, they leave a heap that stays with the
    process, fragmented, and the DataLoader workers forked from it later inherit it and copy it
    page by page. Measured on the synthetic 118,287-image YOLO set of benchmarks/scale.py with no
    label cache, scanning in-process: 484 MB PSS in the main process after the scan; after 90 s of
    iteration with 2 workers, main 206 + workers 149 + 149 = 504 MB against 117 + 94 + 97 = 308 MB
    on BCCD (1.63x), when a run loading the label cache stays near 1.07x. In a child (forked, see
    ``utils.memory.call_in_child``: its logs, e.g. the skip warnings, reach this process's sinks;
    its errors are raised here with the same type and message) that heap goes back to the OS: with
    the mosaic buffer of the later data pipeline and 180 s of iteration, a first run's total is
    112 + 151 + 152 = 415 MB, as a run from the label cache (419 MB), against 154 + 198 + 194 =
    546 MB scanning in-process.

    In this process instead when ``SCAN_IN_PROCESS=1`` is set (a debugger's breakpoint in a
    parser; the tests that compare both), or when this process may not have children (a daemonic
    process such as a DataLoader worker) or cannot fork.
    """
    if os.environ.get(IN_PROCESS_ENV, "") == "1" or not can_fork_child():
        return scan(*args)
    arrays, report = call_in_child(_scan_as_arrays, scan, *args, what="dataset scan")
    records = RecordTable.from_arrays(arrays)
    trim_heap()  # the pipe's buffers of the arrays just unpickled
    return records, report


def _scan_as_arrays(scan: Callable[..., tuple[RecordTable, ScanReport]],
                    *args: Any) -> tuple[dict[str, np.ndarray], ScanReport]:
    """In the child: the scan, its table as arrays (read-only flags do not survive a pickle;
    ``RecordTable.from_arrays`` checks and sets them again)."""
    records, report = scan(*args)
    return records.to_arrays(), report
