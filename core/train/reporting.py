"""What a training run reports, and where: run_info.json and epochs.jsonl (utils/run_info.py),
TensorBoard scalars and hparams (W&B mirrors them when ``train.wandb`` is set), and the log lines
of each epoch. Ranks > 0 write nothing (their writers are no-ops)."""
from __future__ import annotations

from pathlib import Path

from loguru import logger

from core.train.selection import Selection, Verdict
from utils.dist import DistInfo
from utils.logging import TBWriter, WandbWriter, check_wandb, epoch_summary, flatten_scalars, memory_scalars
from utils.run_info import RunRecord, flatten_config, hparam_metrics


class RunReport:
    def __init__(self, cfg, dist: DistInfo, run_dir: Path) -> None:
        self.cfg, self.device = cfg, dist.device
        if cfg.train.wandb:
            check_wandb(cfg)  # a bad mode or a missing package fails now, not after the first epoch
        self.tb = TBWriter(run_dir / "tb" if dist.is_main else None)
        if cfg.train.wandb and dist.is_main:
            self.tb.attach_wandb(WandbWriter(run_dir, cfg))
        self.record = RunRecord(run_dir if dist.is_main else None)

    def step(self, step: int, parts: dict[str, float], lr: float) -> None:
        """The loss terms and learning rate of one iteration (every ``train.log_interval`` steps)."""
        self.tb.add_scalars({f"train/{k}": v for k, v in parts.items()} | {"train/lr": lr}, step)

    def validation(self, epoch: int, metrics: dict) -> None:
        self.tb.add_scalars(flatten_scalars(metrics, "val"), epoch)

    def epoch(self, epoch: int, seconds: float, losses: dict[str, float], lr: float, verdict: Verdict | None,
              selection: Selection, saved: list[str], *, images_total: int, train_seconds: float,
              metrics: dict) -> None:
        """An epoch's line in epochs.jsonl, its TensorBoard scalars and its log lines. ``verdict``:
        what the epoch's validation decided (None: not validated); ``saved``: the files written."""
        t = self.cfg.train
        self.record.epoch(epoch=epoch, losses=losses, lr=lr, seconds=seconds, images_total=images_total,
                          train_seconds_total=train_seconds, metrics=metrics if verdict else None)
        self.tb.add_scalars({f"epoch/{k}": v for k, v in losses.items()} | memory_scalars(self.device), epoch)
        best = (verdict.best_before, verdict.best_epoch_before) if verdict else (selection.best, selection.best_epoch)
        logger.info(epoch_summary(epoch, t.epochs, seconds, losses, verdict.score if verdict else None, best[0],
                                  best[1] or None, bool(verdict and verdict.improved), saved, t.monitor))
        if verdict is not None and (t.monitor != "mAP" or t.patience > 0):
            logger.info(selection.line(verdict, epoch))

    def close(self, selection: Selection, last_metrics: dict, epochs_done: int) -> None:
        """The settings with the results, for TensorBoard's HParams tab; then the writers close."""
        self.tb.add_hparams(flatten_config(self.cfg.to_dict()), hparam_metrics(
            self.cfg.train.monitor, selection.best, selection.best_epoch, last_metrics, epochs_done), epochs_done)
        self.tb.close()
