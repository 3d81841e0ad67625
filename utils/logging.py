"""Logging set-up (loguru console + file sinks) and a rank-aware TensorBoard writer.

Rank 0 logs INFO to the console and to ``<run_dir>/<name>.log``; other ranks log only
WARNING and above, to the console and to ``<run_dir>/<name>_rank<r>.log``, so a failing
rank's traceback is kept. Console lines go through ``tqdm.write`` so they do not break
progress bars.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from loguru import logger
from tqdm import tqdm

_handler_ids: list[int] = []  # sinks added by setup_logging, removed on the next call
_tb_warned = False  # "tensorboard missing" is said once per process


def _console_sink(message: Any) -> None:
    # Look sys.stderr up at call time so redirections (pytest, notebooks) are honoured.
    tqdm.write(str(message).rstrip("\n"), file=sys.stderr)


def _world_size() -> int:
    try:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def setup_logging(run_dir: Path | None, rank: int = 0, name: str = "train") -> None:
    """Configure loguru for this process; calling it again replaces the earlier sinks.

    Args:
        run_dir: directory of the log files (created if missing); None = console only.
        rank: global rank; 0 logs INFO, others WARNING.
        name: log file stem, e.g. ``train`` -> ``train.log`` / ``train_rank1.log``.
    """
    try:
        logger.remove(0)  # loguru's default stderr handler (would print every line twice)
    except ValueError:
        pass  # already removed
    while _handler_ids:
        try:
            logger.remove(_handler_ids.pop())
        except ValueError:
            pass  # someone else removed it (e.g. logger.remove())
    level = "INFO" if rank == 0 else "WARNING"
    where = f" | rank {rank}" if _world_size() > 1 else ""
    fmt = "{time:YYYY-MM-DD HH:mm:ss} | {level: <7}" + where + " | {message}"
    # diagnose=False: never print local variable values in tracebacks (they may hold secrets).
    _handler_ids.append(logger.add(_console_sink, level=level, format=fmt, colorize=False,
                                   backtrace=False, diagnose=False))
    if run_dir is None:
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_file = run_dir / (f"{name}.log" if rank == 0 else f"{name}_rank{rank}.log")
    _handler_ids.append(logger.add(log_file, level=level, format=fmt, encoding="utf-8",
                                   backtrace=False, diagnose=False))


class TBWriter:
    """TensorBoard scalars from rank 0 only; a silent no-op elsewhere.

    Also a no-op (with one warning per process) when ``torch.utils.tensorboard`` cannot be
    imported, so training never depends on tensorboard being installed.
    """

    def __init__(self, log_dir: Path | None, rank: int = 0) -> None:
        self._writer = None
        if log_dir is None or rank != 0:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            global _tb_warned
            if not _tb_warned:
                logger.warning(f"TensorBoard logging disabled: cannot import torch.utils.tensorboard ({e}); "
                               f"pip install tensorboard to enable it")
                _tb_warned = True
            return
        self._writer = SummaryWriter(log_dir=str(log_dir))

    @property
    def enabled(self) -> bool:
        """True when scalars are actually written."""
        return self._writer is not None

    def add_scalars(self, scalars: dict[str, Any], step: int) -> None:
        """Write each ``tag: value`` (float or 0-d tensor) at global ``step`` (iterations)."""
        if self._writer is None:
            return
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, float(value), step)

    def flush(self) -> None:
        """Write pending events to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (safe to call twice)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
