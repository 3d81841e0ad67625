"""Sizes and mtimes of many files in flat arrays: the change check of the label and image caches.

A COCO-sized split depends on a quarter of a million files (images, label files, folders). Their
names sit in one NUL-separated byte buffer and their sizes and mtimes in two int64 arrays, so a
cache stores them as plain arrays, and a check creates no per-file Python objects beyond what
``os.stat`` itself needs (the encoded names, passed as they are).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

_LISTED = 3  # changed files named in a reason
_CHUNK = 4096  # paths per thread-pool task
_THREADS = 8  # os.stat releases the GIL: threads hide the latency of network file systems


def _stat_all(paths: list[bytes]) -> np.ndarray:
    """[n, 2] int64 (size bytes, mtime ns) of ``paths``; (-1, -1) for a missing path."""
    out = np.full((len(paths), 2), -1, np.int64)

    def stat_chunk(start: int) -> None:
        for i in range(start, min(start + _CHUNK, len(paths))):
            try:
                st = os.stat(paths[i])
            except OSError:
                continue
            out[i] = st.st_size, st.st_mtime_ns

    starts = range(0, len(paths), _CHUNK)
    if len(starts) <= 1:
        for s in starts:
            stat_chunk(s)
    else:
        with ThreadPoolExecutor(max_workers=_THREADS) as pool:
            list(pool.map(stat_chunk, starts))
    return out


@dataclass(eq=False)
class FileStats:
    """Paths with their size and mtime at one moment.

    Attributes:
        names: [F] uint8, the ``os.fsencode``d paths joined by NUL (no path can hold a NUL).
        stats: [n, 2] int64 (size in bytes, mtime in ns); (-1, -1) = the path did not exist.
    """

    names: np.ndarray
    stats: np.ndarray

    @classmethod
    def of(cls, paths: Iterable[str | os.PathLike]) -> FileStats:
        """Stat ``paths`` now (in the given order)."""
        encoded = [os.fsencode(p) for p in paths]
        return cls(np.frombuffer(b"\0".join(encoded), np.uint8), _stat_all(encoded))

    @classmethod
    def unstated(cls, paths: Iterable[str | os.PathLike]) -> FileStats:
        """``paths`` with no stats yet (all -1): ``now()`` stats them when a check needs it."""
        encoded = [os.fsencode(p) for p in paths]
        return cls(np.frombuffer(b"\0".join(encoded), np.uint8), np.full((len(encoded), 2), -1, np.int64))

    def __len__(self) -> int:
        return len(self.stats)

    def _encoded(self) -> list[bytes]:
        return self.names.tobytes().split(b"\0") if len(self) else []

    def now(self) -> FileStats:
        """The same paths stat-ed again."""
        return FileStats(self.names, _stat_all(self._encoded()))

    def same_paths(self, other: FileStats) -> bool:
        return len(self) == len(other) and np.array_equal(self.names, other.names)

    def change(self, new: FileStats) -> str | None:
        """Why ``new`` (the same paths stat-ed later) differs: counts of added (a missing path now
        exists), removed and modified files with a few names; None when nothing changed."""
        if not self.same_paths(new):
            raise ValueError("FileStats.change compares the stats of one list of paths")
        differ = (self.stats != new.stats).any(1)
        if not differ.any():
            return None
        old_ok, new_ok = self.stats[:, 0] >= 0, new.stats[:, 0] >= 0
        kinds = {"added": ~old_ok & new_ok, "removed": old_ok & ~new_ok, "modified": old_ok & new_ok & differ}
        names = self._encoded()
        parts = []
        for kind, mask in kinds.items():
            idx = np.flatnonzero(mask)
            if len(idx):
                listed = sorted(os.fsdecode(names[i]) for i in idx)[:_LISTED]
                parts.append(f"{len(idx)} {kind} (e.g. {', '.join(listed)})")
        return "files changed: " + "; ".join(parts)

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {f"{prefix}names": self.names, f"{prefix}stats": self.stats}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "") -> FileStats:
        stats = np.asarray(arrays[f"{prefix}stats"], np.int64).reshape(-1, 2)
        return cls(np.asarray(arrays[f"{prefix}names"], np.uint8).reshape(-1), stats)
