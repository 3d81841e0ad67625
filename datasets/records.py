"""Scanned, cleaned annotations: a ``Record`` per image, a split's records in one ``RecordTable``.

A split lives in a few contiguous numpy arrays (boxes, labels and ignore regions with per-image
offsets, (h, w) and image ids, all file names in one byte buffer), never one Python object per
image. DataLoader workers are forked from the training process: reading a Python object writes
its reference count and the cyclic GC walks every tracked object, so a list of per-image objects
gets copied page by page into every worker and memory grows with the dataset. A handful of
numpy buffers is never written, so the workers keep sharing it.

``table[i]`` builds a small temporary ``Record`` whose arrays are read-only views of the table.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


@dataclass(eq=False)
class Record:
    """A checked image and its boxes, in the original (upright, EXIF-applied) image frame.

    Attributes:
        image_id: 1-based position in the split's list (stable, deterministic).
        file: absolute image path.
        img_hw: real decoded (h, w) in pixels.
        boxes: [n, 4] float32 xyxy, absolute pixels, 0-based pixel edges (0..w, 0..h).
        labels: [n] int64 class indices in 0..nc-1.
        ignore: [m, 4] float32 xyxy ignore regions (e.g. VOC difficult objects), pixels.
        source_id: the dataset's own id of the image (a COCO json's integer ``id``), -1 = none.
            Exported files (predictions.json, ground_truth.json) carry it; everything inside the
            repo uses ``image_id``.
    """

    image_id: int
    file: str
    img_hw: tuple[int, int]
    boxes: np.ndarray = field(default_factory=_empty_boxes)
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    ignore: np.ndarray = field(default_factory=_empty_boxes)
    source_id: int = -1

    def __eq__(self, other: object) -> bool:
        """Equal values (arrays compared element-wise, not by identity)."""
        if not isinstance(other, Record):
            return NotImplemented
        return (int(self.image_id) == int(other.image_id) and str(self.file) == str(other.file)
                and int(self.source_id) == int(other.source_id)
                and tuple(self.img_hw) == tuple(other.img_hw)
                and np.array_equal(np.reshape(self.boxes, (-1, 4)), np.reshape(other.boxes, (-1, 4)))
                and np.array_equal(np.reshape(self.labels, -1), np.reshape(other.labels, -1))
                and np.array_equal(np.reshape(self.ignore, (-1, 4)), np.reshape(other.ignore, (-1, 4))))


def _offsets(counts: np.ndarray) -> np.ndarray:
    """[n] counts -> [n + 1] int64 start offsets (the last one is the total)."""
    out = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _gather(offsets: np.ndarray, values: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``idx`` of a ragged array (values split by offsets [n + 1]) -> (new offsets, new values)."""
    starts, counts = offsets[idx], offsets[idx + 1] - offsets[idx]
    new = _offsets(counts)
    pos = np.repeat(starts - new[:-1], counts) + np.arange(new[-1], dtype=np.int64)
    return new, values[pos]


@dataclass(eq=False)
class RecordTable(Sequence):
    """All records of a split in flat arrays; n images, B boxes, M ignore regions, F name bytes.

    Attributes:
        image_ids: [n] int64.
        img_hw: [n, 2] int64 decoded (h, w), pixels.
        box_offsets: [n + 1] int64; image i owns boxes[box_offsets[i]:box_offsets[i + 1]].
        boxes: [B, 4] float32 xyxy pixels. labels: [B] int64 class indices.
        ignore_offsets: [n + 1] int64. ignore: [M, 4] float32 xyxy pixels.
        file_offsets: [n + 1] int64. file_bytes: [F] uint8, the file names ``os.fsencode``d back
            to back (any name the file system allows survives the round trip).
        source_ids: [n] int64, the dataset's own image ids (``Record.source_id``; -1 = none;
            default all -1).
    Arrays are read-only: every view handed out shares them.
    """

    image_ids: np.ndarray
    img_hw: np.ndarray
    box_offsets: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    ignore_offsets: np.ndarray
    ignore: np.ndarray
    file_offsets: np.ndarray
    file_bytes: np.ndarray
    source_ids: np.ndarray | None = None

    _DTYPES = {"image_ids": np.int64, "img_hw": np.int64, "box_offsets": np.int64, "boxes": np.float32,
               "labels": np.int64, "ignore_offsets": np.int64, "ignore": np.float32,
               "file_offsets": np.int64, "file_bytes": np.uint8, "source_ids": np.int64}

    def __post_init__(self) -> None:
        if self.source_ids is None:
            self.source_ids = np.full(len(self.image_ids), -1, np.int64)
        for name, dtype in self._DTYPES.items():
            a = np.ascontiguousarray(getattr(self, name), dtype=dtype)
            a.flags.writeable = False
            object.__setattr__(self, name, a)
        self.img_hw = self.img_hw.reshape(-1, 2)
        self.boxes, self.ignore = self.boxes.reshape(-1, 4), self.ignore.reshape(-1, 4)
        n = len(self.image_ids)
        for off, rows, what in ((self.box_offsets, len(self.boxes), "boxes"),
                                (self.ignore_offsets, len(self.ignore), "ignore"),
                                (self.file_offsets, len(self.file_bytes), "file_bytes")):
            if len(off) != n + 1 or off[0] != 0 or off[-1] != rows or np.any(np.diff(off) < 0):
                raise ValueError(f"RecordTable: offsets of {what} do not split {rows} rows over {n} images")
        if len(self.img_hw) != n or len(self.source_ids) != n or len(self.labels) != len(self.boxes):
            raise ValueError(f"RecordTable: {n} images but {len(self.img_hw)} img_hw rows; "
                             f"{len(self.boxes)} boxes but {len(self.labels)} labels; "
                             f"{len(self.source_ids)} source ids")

    # -- building ---------------------------------------------------------------------
    @classmethod
    def from_records(cls, records: Iterable[Record]) -> RecordTable:
        """The table of ``records`` (e.g. a scan's), in their order."""
        records = list(records)
        names = [os.fsencode(str(r.file)) for r in records]
        boxes = [np.asarray(r.boxes, np.float32).reshape(-1, 4) for r in records]
        ignore = [np.asarray(r.ignore, np.float32).reshape(-1, 4) for r in records]
        return cls(image_ids=np.array([int(r.image_id) for r in records], np.int64),
                   img_hw=np.array([tuple(r.img_hw) for r in records], np.int64).reshape(-1, 2),
                   box_offsets=_offsets(np.array([len(b) for b in boxes], np.int64)),
                   boxes=np.concatenate([_empty_boxes(), *boxes]),
                   labels=np.concatenate([np.zeros(0, np.int64),
                                          *(np.asarray(r.labels, np.int64).reshape(-1) for r in records)]),
                   ignore_offsets=_offsets(np.array([len(b) for b in ignore], np.int64)),
                   ignore=np.concatenate([_empty_boxes(), *ignore]),
                   file_offsets=_offsets(np.array([len(b) for b in names], np.int64)),
                   file_bytes=np.frombuffer(b"".join(names), np.uint8),
                   source_ids=np.array([int(r.source_id) for r in records], np.int64))

    @classmethod
    def coerce(cls, records: RecordTable | Iterable[Record]) -> RecordTable:
        """``records`` as a table (a table itself, or a list of Records converted)."""
        return records if isinstance(records, RecordTable) else cls.from_records(records)

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The arrays by name (``prefix`` + field), for ``np.savez``."""
        return {prefix + f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "") -> RecordTable:
        """Inverse of ``to_arrays`` (e.g. on an ``np.load(..., allow_pickle=False)`` archive)."""
        return cls(**{f.name: arrays[prefix + f.name] for f in fields(cls) if prefix + f.name in arrays})

    # -- reading ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.image_ids)

    def file(self, i: int) -> str:
        """The file name of image ``i``."""
        a, b = self.file_offsets[i], self.file_offsets[i + 1]
        return os.fsdecode(self.file_bytes[a:b].tobytes())

    def files(self) -> list[str]:
        """Every file name (a temporary list: call it for a pass over the names, do not keep it)."""
        return [self.file(i) for i in range(len(self))]

    def num_boxes(self) -> np.ndarray:
        """[n] boxes per image."""
        return np.diff(self.box_offsets)

    def __getitem__(self, index):
        """``table[i]`` -> Record (views of the table); a slice or index array -> RecordTable."""
        if isinstance(index, slice):
            return self.subset(np.arange(len(self))[index])
        if isinstance(index, (int, np.integer)):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"record index {index} out of range for {n} images")
            i = int(index) % n
            b0, b1 = self.box_offsets[i], self.box_offsets[i + 1]
            g0, g1 = self.ignore_offsets[i], self.ignore_offsets[i + 1]
            return Record(image_id=int(self.image_ids[i]), file=self.file(i),
                          img_hw=(int(self.img_hw[i, 0]), int(self.img_hw[i, 1])), boxes=self.boxes[b0:b1],
                          labels=self.labels[b0:b1], ignore=self.ignore[g0:g1],
                          source_id=int(self.source_ids[i]))
        return self.subset(index)

    def __iter__(self) -> Iterator[Record]:
        for i in range(len(self)):
            yield self[i]

    def subset(self, indices: Sequence[int] | np.ndarray) -> RecordTable:
        """The images ``indices`` (in that order) as a new table; image ids are kept."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"record indices outside 0..{len(self) - 1}")
        idx = idx % max(len(self), 1)
        box_off, boxes = _gather(self.box_offsets, self.boxes, idx)
        _, labels = _gather(self.box_offsets, self.labels, idx)
        ign_off, ignore = _gather(self.ignore_offsets, self.ignore, idx)
        file_off, file_bytes = _gather(self.file_offsets, self.file_bytes, idx)
        return RecordTable(self.image_ids[idx], self.img_hw[idx], box_off, boxes, labels, ign_off, ignore,
                           file_off, file_bytes, self.source_ids[idx])

    @property
    def nbytes(self) -> int:
        """Bytes held by the table's arrays (everything it stores)."""
        return sum(getattr(self, f.name).nbytes for f in fields(self))

    def __eq__(self, other: object) -> bool:
        """Same records: another table with equal arrays, or a sequence of equal Records."""
        if isinstance(other, RecordTable):
            return all(np.array_equal(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return (f"RecordTable({len(self)} images, {len(self.boxes)} boxes, {len(self.ignore)} ignore "
                f"regions, {self.nbytes} bytes)")
