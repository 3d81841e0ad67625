"""Run directories: every task writes only under one, and an earlier run is never overwritten."""
from __future__ import annotations

from pathlib import Path

from loguru import logger

_LISTED = 3  # files named in the refusal message


class RunDirError(FileExistsError):
    """``--out`` names a directory holding another run's files (or a file)."""


def _is_empty_dir(p: Path) -> bool:
    return p.is_dir() and not any(p.iterdir())


def make_run_dir(save_dir: str, name: str, out: str | None = None, exist_ok: bool = False,
                 resume: str | None = None) -> Path:
    """Create and return the run directory.

    Args:
        save_dir: parent of auto-named runs (``train.save_dir``), e.g. ``runs``.
        name: experiment name, e.g. ``bccd_yolo_r18``.
        out: explicit directory (``--out``). It may be new or empty; a directory holding files is
            refused (RunDirError), except for ``resume``.
        exist_ok: for the auto-named path, reuse ``save_dir/name`` even if it holds files.
        resume: the checkpoint a training resumes from; when it lies in ``out``, the run continues
            in its own directory (the only way into a non-empty ``out``).

    Without ``out`` the first of ``save_dir/name``, ``name2``, ``name3``, ... that does not
    exist or is empty is created. Call it on global rank 0 only and broadcast the path.
    """
    if out is not None:
        return _explicit_dir(Path(out), resume)
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


def _explicit_dir(path: Path, resume: str | None) -> Path:
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} is a file, not a directory; choose another path")
    if path.is_dir() and not _is_empty_dir(path):
        if resume is not None and Path(resume).resolve().parent == path.resolve():
            logger.info(f"run directory {path} holds the checkpoint {Path(resume).name}; continuing in it")
            return path
        held = sorted(p.name for p in path.iterdir())
        listed = ", ".join(held[:_LISTED]) + (f" and {len(held) - _LISTED} more" if len(held) > _LISTED else "")
        raise RunDirError(f"--out {path} already holds files of another run ({listed}); choose another "
                          f"directory, or resume a training with --task train --ckpt {path / 'last.pth'}")
    path.mkdir(parents=True, exist_ok=True)
    return path
