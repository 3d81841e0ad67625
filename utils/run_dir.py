"""Run directories: every task writes only under one, and an earlier run is never overwritten."""
from __future__ import annotations

from pathlib import Path

from loguru import logger


def _is_empty_dir(p: Path) -> bool:
    return p.is_dir() and not any(p.iterdir())


def make_run_dir(save_dir: str, name: str, out: str | None = None, exist_ok: bool = False) -> Path:
    """Create and return the run directory.

    Args:
        save_dir: parent of auto-named runs (``train.save_dir``), e.g. ``runs``.
        name: experiment name, e.g. ``bccd_yolo_r18``.
        out: explicit directory (``--out``); used as given. An existing, non-empty ``out``
            is returned as is (that is how a run is resumed in place), with a log line.
        exist_ok: for the auto-named path, reuse ``save_dir/name`` even if it holds files.

    Without ``out`` the first of ``save_dir/name``, ``name2``, ``name3``, ... that does not
    exist or is empty is created. Call it on rank 0 only and broadcast the path.
    """
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"--out {path} is a file, not a directory; choose another path")
        if path.is_dir() and not _is_empty_dir(path) and not exist_ok:
            logger.info(f"run directory {path} already holds files; reusing it (resume)")
        path.mkdir(parents=True, exist_ok=True)
        return path
    base = Path(save_dir) / name
    if exist_ok and base.is_dir():
        return base
    i = 1
    while True:
        path = base if i == 1 else base.with_name(f"{name}{i}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            if _is_empty_dir(path):
                return path
        i += 1
