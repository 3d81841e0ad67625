"""Atomic file writes: the one way this repo writes a file that a reader (or a resume) may meet.

The data goes to ``<name>.tmp-<pid>`` beside the file, is flushed and fsynced, then renamed over
the file with ``os.replace`` (atomic on POSIX) and the directory is fsynced: a crash, a kill or a
full disk leaves the old file or the new one, never half of one. A leftover ``*.tmp-<pid>`` of a
killed writer is never read as the file (utils.checkpoint.remove_stale_tmp removes them).
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


def temp_path(path: Path) -> Path:
    """The temp file a write of ``path`` by this process goes through."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """A file opened with ``mode`` ("wb" or "w") that replaces ``path`` when the block ends without
    error; on an error the temp file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as json, atomically. Numpy scalars and arrays are converted to plain Python values."""
    text = json.dumps(obj, default=_json_default)  # dumps, not dump: dump streams through slow Python
    with atomic_write(path, "w") as f:
        f.write(text)


def fsync_dir(directory: Path) -> None:
    """Make a rename durable: the directory entry must reach the disk too."""
    with contextlib.suppress(OSError):  # some filesystems cannot open or fsync directories
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"write_json_atomic: cannot serialise {type(x).__name__}")
