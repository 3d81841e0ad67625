"""Logging set-up (loguru console + file sinks), a rank-aware TensorBoard writer with an
optional Weights & Biases mirror, and the scalars they log (flattened metrics, memory).

Rank 0 logs INFO to the console and to ``<run_dir>/<name>.log``; other ranks log only
WARNING and above, to the console and to ``<run_dir>/<name>_rank<r>.log``, so a failing
rank's traceback is kept. Console lines go through ``tqdm.write`` so they do not break
progress bars. A log file holds one run only: ``close_run_log`` detaches it (``core.tasks``
calls it when a run starts and when it ends), and ``setup_logging`` replaces the sinks of the
previous run.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from loguru import logger
from tqdm import tqdm

_handler_ids: list[int] = []  # sinks added by setup_logging (console, file), removed on the next call
_file_sink: int | None = None  # the log file sink of the current run (also in _handler_ids)
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


def close_run_log() -> None:
    """Detach (flush and close) the current run's log file; the console sink stays. Safe to repeat."""
    global _file_sink
    sink, _file_sink = _file_sink, None
    if sink is None:
        return
    if sink in _handler_ids:
        _handler_ids.remove(sink)
    try:
        logger.remove(sink)
    except ValueError:
        pass  # someone else removed it (e.g. logger.remove())


def setup_logging(run_dir: Path | None, rank: int = 0, name: str = "train") -> None:
    """Configure loguru for this process; calling it again replaces the earlier sinks, so the
    previous run's log file gets nothing of this run.

    Args:
        run_dir: directory of the log files (created if missing); None = console only.
        rank: global rank; 0 logs INFO, others WARNING.
        name: log file stem, e.g. ``train`` -> ``train.log`` / ``train_rank1.log``.
    """
    global _file_sink
    try:
        logger.remove(0)  # loguru's default stderr handler (would print every line twice)
    except ValueError:
        pass  # already removed
    close_run_log()
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
    _file_sink = logger.add(log_file, level=level, format=fmt, encoding="utf-8", backtrace=False,
                            diagnose=False)
    _handler_ids.append(_file_sink)


class TBWriter:
    """TensorBoard scalars from rank 0 only; a silent no-op elsewhere.

    Also a no-op (with one warning per process) when ``torch.utils.tensorboard`` cannot be
    imported, so training never depends on tensorboard being installed. A ``WandbWriter``
    attached with ``attach_wandb`` receives every scalar too.
    """

    def __init__(self, log_dir: Path | None, rank: int = 0) -> None:
        self._writer = None
        self._wandb: WandbWriter | None = None
        if log_dir is None or rank != 0:
            return
        try:
            _tensorboard_without_tensorflow()
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

    def attach_wandb(self, writer: WandbWriter | None) -> None:
        """Mirror every later scalar to ``writer`` (closed with this writer); None detaches."""
        self._wandb = writer

    def add_scalars(self, scalars: dict[str, Any], step: int) -> None:
        """Write each ``tag: value`` (float or 0-d tensor) at ``step`` (iterations or epochs, per tag)."""
        if self._wandb is not None:
            self._wandb.log({tag: float(v) for tag, v in scalars.items()}, step)
        if self._writer is None:
            return
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, float(value), step)

    def add_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int = 0) -> None:
        """The run's settings with its results, for TensorBoard's HParams tab, in this writer's own
        directory (``SummaryWriter.add_hparams`` would open a sub-run named by the time instead).

        hparams: flat ``name: value``; values other than bool, int, float and str are written as
        json text. metrics: ``tag: value`` results, written as scalars (tags of their own, e.g.
        ``hparams/best_mAP``, so they do not mix with the curves). Only the session records are
        written, no experiment record: TensorBoard then builds the experiment from every run under
        its --logdir and marks which settings differ between them.
        """
        if self._writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary
        plain = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in hparams.items()}
        _experiment, start, end = hparams_summary(plain, metrics)
        self._writer.file_writer.add_summary(start, step)
        self._writer.file_writer.add_summary(end, step)
        self.add_scalars(metrics, step)

    def flush(self) -> None:
        """Write pending events to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file and the W&B run (safe to call twice)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb is not None:
            self._wandb.close()
            self._wandb = None


WANDB_MODES = ("offline", "online")


def check_wandb(cfg: Any) -> Any:
    """The ``wandb`` module for cfg.train, or a ConfigError naming the bad key or the missing package."""
    from configs.base_config import ConfigError
    if cfg.train.wandb_mode not in WANDB_MODES:
        raise ConfigError(f"train.wandb_mode={cfg.train.wandb_mode!r} is not one of {list(WANDB_MODES)}")
    try:
        import wandb
    except ImportError:
        raise ConfigError("train.wandb=True needs the Weights & Biases package 'wandb', which is not "
                          "installed: pip install wandb (or set train.wandb=False)") from None
    return wandb


class WandbWriter:
    """One W&B run for a training run, rank 0 only.

    Files go under ``<run_dir>/wandb`` (W&B's cache, config and data dirs too, unless the user
    set WANDB_*_DIR): nothing is written outside the run directory. Offline mode needs no
    account and no network; upload later with ``wandb sync <run_dir>/wandb/offline-run-*``.
    W&B's console capture is off, so progress bars and the dashboard print unchanged.
    A step must not decrease within a run, so callers log per-epoch values at the global
    iteration they happened at.
    """

    def __init__(self, run_dir: Path, cfg: Any) -> None:
        t = cfg.train
        wandb = check_wandb(cfg)
        base = Path(run_dir) / "wandb"
        for var, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                         ("WANDB_DATA_DIR", "data")):
            os.environ.setdefault(var, str(base / sub))
        base.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(project=t.wandb_project, name=Path(run_dir).name, dir=str(run_dir),
                               mode=t.wandb_mode, config=cfg.to_dict(),
                               settings=wandb.Settings(console="off"))
        self._last_step = -1

    def log(self, scalars: dict[str, float], step: int) -> None:
        """Log at ``step``; a smaller step than the last one is logged at the last one (W&B's rule)."""
        self._last_step = max(self._last_step, int(step))
        self._run.log(scalars, step=self._last_step)

    def close(self) -> None:
        self._run.finish()


def flatten_scalars(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """Every number of a (nested) metrics dict as ``prefix/key`` tags, for TensorBoard and W&B.

    Per-class lists (dicts with a "name") become ``prefix/<metric>/<class name>``; other lists
    (sweeps, confusion matrices) are skipped. -1.0 ("not measurable") is skipped so curves do
    not dip to -1; booleans are skipped.
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            if value != -1.0:
                out[f"{prefix}/{key}"] = float(value)
        elif isinstance(value, dict):
            out.update(flatten_scalars(value, f"{prefix}/{key}"))
        elif key == "per_class" and isinstance(value, list):
            for row in value:
                values = {k: v for k, v in row.items() if k not in ("name", "category_id")}
                row_tags = flatten_scalars(values, "")
                out.update({f"{prefix}{tag}/{row['name']}": v for tag, v in row_tags.items()})
    return out


def memory_scalars(device: Any) -> dict[str, float]:
    """Resident memory of this process and, on CUDA, allocated / peak-allocated memory, in MB."""
    out: dict[str, float] = {}
    rss = _rss_mb()
    if rss is not None:
        out["memory/rss_mb"] = rss
    import torch
    if getattr(device, "type", "") == "cuda" and torch.cuda.is_available():
        out["memory/cuda_allocated_mb"] = torch.cuda.memory_allocated(device) / 2**20
        out["memory/cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _tensorboard_without_tensorflow() -> None:
    """Make TensorBoard use its own TF stub even where TensorFlow is installed (the export extra).

    torch.utils.tensorboard asks tensorboard.compat for a TF API, which imports the whole of
    TensorFlow when it can (~500 MB of resident memory, seconds of start-up and its log lines in
    every training run) unless the module ``tensorboard.compat.notf`` exists: TensorBoard's own
    switch for "do not use TensorFlow". Writing event files needs only the stub.
    """
    import types
    if "tensorflow" not in sys.modules:  # a process that already uses TF keeps it
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def _rss_mb() -> float | None:
    """Current resident set size from /proc (Linux); None where it is not available."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def epoch_summary(epoch: int, epochs: int, seconds: float, losses: dict[str, float], score: float | None,
                  best_before: float, best_epoch: int | None, improved: bool, saved: list[str],
                  monitor: str = "mAP") -> str:
    """The end-of-epoch line: losses, the monitored metric against its best, and which checkpoints
    were written.

    score: this epoch's value of ``monitor`` (None = not evaluated); best_before: the best before
    this epoch (< 0 = none yet); best_epoch: its epoch; improved: the trainer's verdict.
    """
    loss = ", ".join(f"{k} {v:.4f}" for k, v in losses.items()) or "no finite step"
    best = f"best {best_before:.4f}" + (f" (epoch {best_epoch})" if best_epoch is not None else "")
    if score is None:
        text = f"not evaluated, {best}" if best_before >= 0 else "not evaluated"
    elif improved:
        gain = f" (+{score - best_before:.4f})" if best_before >= 0 else ""
        text = f"{monitor} {score:.4f} NEW BEST{gain}"
    else:
        text = f"{monitor} {score:.4f}, {best}, {score - best_before:+.4f}"
    ckpt = f"saved {', '.join(saved)}" if saved else "no checkpoint written"
    return f"epoch {epoch}/{epochs} done in {seconds:.0f}s | loss {loss} | {text} | {ckpt}"
