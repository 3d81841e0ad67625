"""Trainer: fit -> train_one_epoch -> train_step, validate, save, resume. Read it top to bottom.

Control: per-iteration schedules of lr, bias lr, momentum and gradient accumulation
(utils/scheduler.py), layer freezing until an epoch (utils/optim.py), best/top-K checkpoints and
early stopping on a monitored metric, transfer from any checkpoint of this repo.

Survival: a stop request (SIGTERM/SIGINT, wired in core/tasks.py) ends the run at the next
optimizer-step boundary with last.pth holding the mid-epoch position and the RNG state of every
rank, and a resume continues exactly there. Every ``train.save_interval_min`` minutes last.pth is
also written inside the epoch, so a SIGKILL or a lost node costs at most that much training. A non-finite loss or gradient skips the step (the
BatchNorm statistics its forward moved are restored); last/best never receive non-finite weights.
Every rank takes the same branch (two tiny all-reduces per step), so DDP never waits forever.
"""
from __future__ import annotations

import io
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from configs.base_config import ConfigError
from core.builders import build_eval_loader, build_train_loader, resolve_class_names
from core.evaluator import Evaluator
from datasets.dataset import to_input
from models import build_assigner_for, build_model
from models.losses import LOSSES
from utils.checkpoint import (
    CheckpointError,
    TopKCheckpoints,
    load_checkpoint,
    load_matching,
    non_finite_tensors,
    remove_stale_tmp,
    rng_state,
    save_checkpoint,
    set_rng_state,
    sibling_checkpoints,
)
from utils.dist import DistInfo, all_gather_object, any_rank, seed_everything, unwrap
from utils.ema import ModelEMA
from utils.logging import (
    TBWriter,
    WandbWriter,
    check_wandb,
    epoch_summary,
    flatten_scalars,
    memory_scalars,
    release_free_memory,
)
from utils.model_info import model_summary
from utils.optim import (
    accumulation_steps,
    build_optimizer,
    freeze_norm_stats,
    freeze_plan,
    set_frozen,
)
from utils.scheduler import build_scheduler


class NonFiniteLossError(FloatingPointError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class NonFiniteWeightsError(FloatingPointError):
    """The weights hold NaN/Inf; nothing is saved over the last finite checkpoints."""


@dataclass
class EarlyStopping:
    """Best value of the monitored metric and when to give up on it.

    An epoch improves when its value is finite, measurable (>= 0; -1 means "not measurable")
    and beats the best by more than ``min_delta``: a NaN is never best. With ``patience`` > 0
    the run stops once ``patience`` epochs have passed since the best one.
    """

    patience: int = 0
    min_delta: float = 0.0
    best: float = -1.0  # -1: no measurable value yet
    best_epoch: int = 0  # epoch (1-based) of the best value; 0 = none yet

    def update(self, score: float, epoch: int) -> bool:
        """Record ``score`` of ``epoch``; True when it is the new best."""
        if not math.isfinite(score) or score < 0 or (self.best >= 0 and score <= self.best + self.min_delta):
            return False
        self.best, self.best_epoch = float(score), int(epoch)
        return True

    def should_stop(self, epoch: int) -> bool:
        return self.patience > 0 and epoch - self.best_epoch >= self.patience

    def reason(self, epoch: int, monitor: str) -> str:
        best = f"best {self.best:.4f} at epoch {self.best_epoch}" if self.best >= 0 else "never measurable"
        return (f"{monitor} has not improved by more than min_delta={self.min_delta:g} for "
                f"{epoch - self.best_epoch} epochs (train.patience={self.patience}); {best}")


def config_diff(old: dict, new: dict) -> dict[str, tuple]:
    """``{"section.key": (old value, new value)}`` for the keys both configs have and that differ."""
    return {f"{sec}.{k}": (v, new[sec][k]) for sec, values in old.items()
            if isinstance(values, dict) and isinstance(new.get(sec), dict)
            for k, v in values.items() if k in new[sec] and new[sec][k] != v}


class Trainer:
    """Trains cfg's model on its train split and validates on its val split.

    run_dir: where checkpoints, logs and metrics go. resume: a checkpoint to continue from (its
    whole training state is restored, mid-epoch included; cfg.train.epochs may extend the run).
    Call :meth:`request_stop` (e.g. from a signal handler) to end :meth:`fit` early with last.pth
    written; ``interrupted`` then says so.
    """

    def __init__(self, cfg, dist: DistInfo, run_dir: Path, resume: str | None = None) -> None:
        self.cfg, self.dist, self.run_dir = cfg, dist, Path(run_dir)
        self.device = dist.device
        if cfg.train.wandb:
            check_wandb(cfg)  # a bad mode or a missing package fails now, not after the first epoch
        seed_everything(cfg.train.seed, dist.rank, cfg.train.deterministic)
        resolve_class_names(cfg)  # before the model: the class count comes from the data
        cfg.validate()
        self.train_loader, self.train_sampler = build_train_loader(cfg, dist)
        self.val_loader, self.val_records = build_eval_loader(cfg, dist, "val")
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.model = build_model(cfg)
        if cfg.train.init_weights and not resume:
            self._init_weights(cfg.train.init_weights)
        self.model.to(self.device, memory_format=self.memory_format)
        if dist.is_main:
            logger.info(model_summary(self.model, cfg.data.img_size))
        self.criterion = LOSSES[self.model.family](cfg.loss, build_assigner_for(cfg), self.model.coder,
                                                   cfg.num_classes)
        self.optimizer = build_optimizer(cfg.optim, self.model, cfg.train.batch_size)
        self.iters_per_epoch = len(self.train_loader)
        self.scheduler = build_scheduler(cfg.sched, self.optimizer, self.iters_per_epoch, cfg.train.epochs,
                                         accumulation_steps(cfg.optim.nominal_batch, cfg.train.batch_size))
        self.use_amp = cfg.train.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.ema = ModelEMA(self.model, cfg.train.ema_decay, cfg.train.ema_tau) if cfg.train.ema else None
        self.freeze = freeze_plan(self.model, cfg.train.freeze)
        self.early_stopping = EarlyStopping(cfg.train.patience, cfg.train.min_delta)
        self.top_k = TopKCheckpoints(self.run_dir, cfg.train.save_top_k, cfg.train.monitor)
        self.evaluator = Evaluator(cfg, self.val_records, dist)
        self.tb = TBWriter(self.run_dir / "tb" if dist.is_main else None)
        if cfg.train.wandb and dist.is_main:
            self.tb.attach_wandb(WandbWriter(self.run_dir, cfg))
        # BatchNorm running statistics, copied before each forward: a skipped step puts them back.
        norms = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        self._norm_buffers = [b for m in norms for b in m.buffers(recurse=False)]
        self._norm_snapshot = [b.clone() for b in self._norm_buffers]
        # The training position: epochs done, iterations done, batches of the current epoch done.
        self.epoch, self.step, self.epoch_iter, self.last_opt_step = 0, 0, 0, 0
        self.bad_steps = 0
        self.stop_reason = ""  # why early stopping ended the run ("" = it did not)
        self.stop_signal: int | None = None  # set by request_stop
        self._stop_announced = False  # the stop request was logged (a signal handler must not log)
        self._saved_at = time.monotonic()  # when last.pth was last written (for train.save_interval_min)
        self.interrupted = False  # fit ended on a stop request, last.pth holds the position
        self._stop_agreed = False  # a stop was requested on some rank (all ranks agree on it after each step)
        self._epoch_sums: dict[str, float] = {}  # loss sums of the current epoch so far
        self._pending_rng: dict | None = None  # RNG state to restore when the next epoch's batches start
        self.last_metrics: dict = {}
        self.train_seconds, self.train_images = 0.0, 0  # this process's training throughput
        if dist.is_main:
            remove_stale_tmp(self.run_dir)
        if resume:
            self.resume(resume)
        self.ddp_model: torch.nn.Module = self.model
        self._frozen: bool | None = None
        self._set_freeze(self.epoch)

    # -- the loop -------------------------------------------------------------------
    def fit(self, stop_after_epoch: int | None = None) -> dict:
        """Train until cfg.train.epochs, early stopping or a stop request (or stop_after_epoch, for tests)."""
        cfg = self.cfg
        if self.epoch >= cfg.train.epochs:
            logger.warning(f"this run already trained {self.epoch} of {cfg.train.epochs} epochs; "
                           f"pass train.epochs=N (N > {self.epoch}) to extend it")
            return self.last_metrics
        if self.stop_reason and self.early_stopping.should_stop(self.epoch):
            logger.warning(f"this run stopped early after epoch {self.epoch}: {self.stop_reason}; pass a "
                           f"larger train.patience (or 0) to continue it")
            return self.last_metrics
        self.stop_reason = ""
        where = f", from iteration {self.epoch_iter} of epoch {self.epoch + 1}" if self.epoch_iter else ""
        logger.info(f"training {cfg.name}: epochs {self.epoch + 1}..{cfg.train.epochs}{where}, "
                    f"{self.iters_per_epoch} iterations/epoch, global batch {cfg.train.batch_size}, "
                    f"world size {self.dist.world_size}, device {self.device}, run dir {self.run_dir}")
        while self.epoch < cfg.train.epochs:
            self._set_freeze(self.epoch)
            t0 = time.time()
            losses = self.train_one_epoch(self.epoch)
            if self._stop_agreed:
                self._stop_mid_epoch()
                break
            self.epoch += 1
            self.epoch_iter, self._epoch_sums = 0, {}
            last = self.epoch == cfg.train.epochs
            evaluated = last or self.epoch % cfg.train.eval_interval == 0
            if evaluated:
                self.last_metrics = self.validate()
            score = self.last_metrics.get(cfg.train.monitor, float("nan")) if evaluated else None
            best_map = self._best_map_before()
            improved = score is not None and self.early_stopping.update(score, self.epoch)
            if score is not None and not last and self.early_stopping.should_stop(self.epoch):
                self.stop_reason = self.early_stopping.reason(self.epoch, cfg.train.monitor)
            saved = self.save(improved, score)
            release_free_memory()  # cycles left by validation; freed heap back to the OS
            self.tb.add_scalars({f"epoch/{k}": v for k, v in losses.items()} | memory_scalars(self.device),
                                self.epoch)
            map_now = self.last_metrics["mAP"] if evaluated else None
            map_best = improved if cfg.train.monitor == "mAP" else map_now is not None and map_now > best_map
            logger.info(epoch_summary(self.epoch, cfg.train.epochs, time.time() - t0, losses, map_now,
                                      best_map, self.evaluator.best_epoch(), map_best, saved))
            if score is not None and (cfg.train.monitor != "mAP" or cfg.train.patience > 0):
                logger.info(self._monitor_line(score, improved))
            if self.stop_reason:
                logger.warning(f"early stopping after epoch {self.epoch}: {self.stop_reason}")
                break
            if not last and any_rank(self.stop_signal is not None, device=self.device)[0]:  # during val/save
                self._announce_stop()
                self.interrupted = True
                logger.warning(f"stopped on request after epoch {self.epoch}; last.pth holds it. Resume with "
                               f"--task train --ckpt {self.run_dir / 'last.pth'}")
                break
            if stop_after_epoch is not None and self.epoch >= stop_after_epoch:
                break
        self.tb.close()
        return self.last_metrics

    def train_one_epoch(self, epoch: int) -> dict:
        """Train the (remaining) batches of ``epoch``; returns the epoch's mean loss terms."""
        self.model.train()
        if self._frozen:
            freeze_norm_stats(self.model, self.freeze)
        batches = self._batches(epoch)
        sums = self._epoch_sums
        t0 = time.perf_counter()
        bar = tqdm(total=self.iters_per_epoch, initial=self.epoch_iter,
                   desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}", disable=not self.dist.is_main,
                   dynamic_ncols=True, leave=False)
        for images, targets, _ in batches:
            parts = self.train_step(images, targets, flush=self.epoch_iter == self.iters_per_epoch - 1)
            self.epoch_iter += 1
            self.train_images += images.shape[0]
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update()
            bar.set_postfix({**{k: f"{v / self.epoch_iter:.3f}" for k, v in sums.items()},
                             "lr": f"{self.optimizer.param_groups[0]['lr']:.2e}"})
            if self.step % self.cfg.train.log_interval == 0:
                self.tb.add_scalars({f"train/{k}": v for k, v in parts.items()}
                                    | {"train/lr": self.optimizer.param_groups[0]["lr"]}, self.step)
            # One all-reduce: every rank learns whether any rank was asked to stop and whether rank 0's
            # save interval has passed, so all take the same branch at the same step.
            stop, save_due = any_rank(self.stop_signal is not None, self._interval_save_due(), device=self.device)
            self._announce_stop()
            at_boundary = self.step == self.last_opt_step  # no accumulated gradient pending
            self._stop_agreed = stop
            if stop and at_boundary:
                break
            if save_due and at_boundary and self.epoch_iter < self.iters_per_epoch:
                self.save()
                logger.info(f"in-epoch save: last.pth holds epoch {epoch + 1}, iteration {self.epoch_iter}/"
                            f"{self.iters_per_epoch} (train.save_interval_min={self.cfg.train.save_interval_min:g})")
        bar.close()
        self.train_seconds += time.perf_counter() - t0
        return {k: round(v / max(self.iters_per_epoch, 1), 4) for k, v in sums.items()}

    def _batches(self, epoch: int):
        """The train loader's iterator for ``epoch``, past the batches a resumed epoch already trained.

        The RNG state saved with the position is restored where the uninterrupted run had it: before
        the iterator at an epoch boundary, after it (and the skipped batches) mid-epoch.
        """
        sampler, start = self.train_sampler, self.epoch_iter
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        self.train_loader.dataset.set_epoch(epoch)
        if start == 0:
            self._restore_rng()
            return iter(self.train_loader)
        if hasattr(sampler, "set_start"):  # skips the trained batches without loading them
            sampler.set_start(start * self.train_loader.batch_size)
            batches = iter(self.train_loader)
        else:
            logger.info(f"epoch {epoch + 1}: loading and skipping the {start} batches trained before the "
                        f"resume ({type(sampler).__name__} cannot start mid-epoch)")
            batches = iter(self.train_loader)
            for _ in range(start):
                next(batches)
        self._restore_rng()
        return batches

    def _restore_rng(self) -> None:
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None

    def train_step(self, images: torch.Tensor, targets: torch.Tensor,
                   flush: bool = False) -> dict[str, float]:
        """One iteration: forward, loss and backward; an optimizer step (and an EMA update) once
        ``accumulate`` batches are in, or at ``flush`` (the epoch's last batch). Returns the loss
        terms, or {} for a skipped step."""
        accumulate = self.scheduler.schedule.accumulate_at(self.step)
        steps_now = flush or self.step + 1 - self.last_opt_step >= accumulate
        images = to_input(images, self.device, self.memory_format)
        targets = targets.to(self.device, non_blocking=True)
        for saved, buf in zip(self._norm_snapshot, self._norm_buffers):
            saved.copy_(buf)
        amp = torch.autocast("cuda", dtype=torch.float16) if self.use_amp else nullcontext()
        # Accumulated micro-batches skip DDP's gradient all-reduce; the last one syncs them all.
        accumulating = isinstance(self.ddp_model, DDP) and not steps_now
        sync = self.ddp_model.no_sync() if accumulating else nullcontext()
        with sync:
            with amp:  # autocast around the forward only; assignment and loss run in fp32
                raw = self.ddp_model(images)
            priors = self.model.priors(tuple(images.shape[2:]), self.device)
            loss, parts = self.criterion(raw, targets, priors)  # raw: [B, P, D] or (main, aux)
            self.step += 1
            local_bad = not bool(torch.isfinite(loss))
            bad, = any_rank(local_bad, device=self.device)
            if bad:  # every rank skips together, or DDP's gradient all-reduce would wait forever
                why = (f"non-finite loss {float(loss.detach())}" if local_bad
                       else "non-finite loss on another rank")
                return self._skip_step(why, parts)
            self.scaler.scale(loss / accumulate).backward()
        out = {k: float(v) for k, v in parts.items()} | {"total": float(loss.detach())}
        if steps_now and not self._optimizer_step():
            return self._skip_step("non-finite gradient norm", parts)
        self.bad_steps = 0
        self.scheduler.step()
        return out

    def _optimizer_step(self) -> bool:
        """Unscale, check and clip the gradients, step, update the EMA. False (nothing changed) when
        the gradient norm is not finite in fp32; with fp16 the GradScaler skips such steps itself."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        finite = bool(torch.isfinite(norm))
        if not finite and not self.scaler.is_enabled():
            return False
        if self.cfg.optim.grad_clip > 0 and finite:
            torch.nn.utils.clip_grads_with_norm_(params, self.cfg.optim.grad_clip, norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_opt_step = self.step
        if self.ema is not None and finite:
            self.ema.update(self.model)
        return True

    def _skip_step(self, why: str, parts: dict) -> dict[str, float]:
        """A bad step never reaches the weights: the gradients accumulated since the last optimizer
        step are dropped and the BatchNorm statistics of its forward are put back. Too many in a row
        stop the run."""
        for saved, buf in zip(self._norm_snapshot, self._norm_buffers):
            buf.copy_(saved)
        self.optimizer.zero_grad(set_to_none=True)
        self.last_opt_step = self.step
        self.scheduler.step()
        self.bad_steps += 1
        terms = {k: float(v) for k, v in parts.items()}
        logger.warning(f"{why} at step {self.step} ({terms}); step skipped ({self.bad_steps} in a row)")
        if self.bad_steps >= self.cfg.train.max_bad_steps:
            raise NonFiniteLossError(f"loss became non-finite at step {self.step} for {self.bad_steps} "
                                     f"consecutive steps (last: {why}); loss terms: {terms}")
        return {}

    def request_stop(self, signum: int) -> None:
        """Ask :meth:`fit` to stop at the next optimizer-step boundary and write last.pth (signal-safe:
        it only sets a flag; the trainer logs the request at the step's end)."""
        self.stop_signal = signum

    def _announce_stop(self) -> None:
        if self.stop_signal is not None and not self._stop_announced:
            self._stop_announced = True
            again = " (Ctrl-C again stops at once)" if self.stop_signal == signal.SIGINT else ""
            logger.warning(f"{signal.Signals(self.stop_signal).name} received: finishing the current step, "
                           f"then writing last.pth and exiting{again}")

    def _interval_save_due(self) -> bool:
        """On rank 0 (the others say False; the all-reduce spreads it): True when last.pth is older
        than ``train.save_interval_min``."""
        minutes = self.cfg.train.save_interval_min
        return self.dist.is_main and minutes > 0 and time.monotonic() - self._saved_at >= 60 * minutes

    def _stop_mid_epoch(self) -> None:
        self.save()
        self.interrupted = True
        logger.warning(f"stopped on request at epoch {self.epoch + 1}, iteration {self.epoch_iter}/"
                       f"{self.iters_per_epoch} (step {self.step}); last.pth holds this position. Resume "
                       f"with --task train --ckpt {self.run_dir / 'last.pth'}")

    # -- freezing ---------------------------------------------------------------------
    def _set_freeze(self, epoch: int) -> None:
        """Apply train.freeze for ``epoch`` (0-based), and wrap the model in DDP whenever the set of
        trainable parameters changes (DDP registers them when it wraps)."""
        t = self.cfg.train
        frozen = bool(self.freeze.params) and (t.freeze_epochs == 0 or epoch < t.freeze_epochs)
        if frozen == self._frozen:
            return
        if frozen:
            until = (f"until epoch {t.freeze_epochs} (thawing at the start of epoch {t.freeze_epochs + 1})"
                     if t.freeze_epochs else "for the whole run")
            logger.info(f"train.freeze: frozen {until}: {'; '.join(self.freeze.summary)}; BatchNorm "
                        f"statistics of {len(self.freeze.norms)} layers frozen too")
        elif self.freeze.params:
            logger.info(f"epoch {epoch + 1}: train.freeze thawed {len(self.freeze.params)} tensors "
                        f"({', '.join(map(repr, t.freeze))}); they train from now on")
        set_frozen(self.model, self.freeze, frozen)
        self._frozen = frozen
        if self.dist.world_size > 1:
            self.ddp_model = self.model  # drop the old wrapper (and its gradient hooks) first
            devices = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DDP(self.model, device_ids=devices)

    # -- validation and checkpoints ---------------------------------------------------
    def eval_model(self) -> torch.nn.Module:
        return self.ema.ema if self.ema is not None else self.model

    def validate(self) -> dict:
        """Score the EMA (or raw) model on the val split; rank 0 shows the dashboard, writes run_dir/val."""
        out = self.run_dir / "val" if self.dist.is_main else None
        metrics = self.evaluator.run(self.eval_model(), self.val_loader, out, epoch=self.epoch)
        self.tb.add_scalars(flatten_scalars(metrics, "val"), self.epoch)
        if self.dist.is_main:
            self.evaluator.show(metrics, out, epoch=self.epoch, total_epochs=self.cfg.train.epochs,
                                best_before=self._best_map_before())
        return metrics

    def _best_map_before(self) -> float:
        """Best mAP of the epochs before the current one (-1 = none), for the dashboard and summary."""
        return max((h["mAP"] for h in self.evaluator.history or [] if h["epoch"] < self.epoch), default=-1.0)

    def _monitor_line(self, score: float, improved: bool) -> str:
        es, monitor = self.early_stopping, self.cfg.train.monitor
        line = f"{monitor} {score:.4f}: " + ("new best" if improved else
                                            f"best {es.best:.4f} at epoch {es.best_epoch}" if es.best >= 0
                                            else "not measurable yet")
        if self.cfg.train.patience > 0:
            line += (f"; early stopping: {self.epoch - es.best_epoch} of {self.cfg.train.patience} epochs "
                     "without improvement")
        return line

    def state_dict(self, rngs: list[dict] | None = None) -> dict:
        """The whole training state; ``rngs``: the RNG state of every rank (default: this process's)."""
        return {
            "model": unwrap(self.model).state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step": self.step, "epoch_iter": self.epoch_iter,
            "last_opt_step": self.last_opt_step, "epoch_sums": dict(self._epoch_sums),
            "bad_steps": self.bad_steps,
            "best_score": float(self.early_stopping.best), "best_epoch": int(self.early_stopping.best_epoch),
            "stop_reason": self.stop_reason, "top_k": self.top_k.state_dict(),
            "metrics": {k: v for k, v in self.last_metrics.items() if isinstance(v, (int, float))},
            "rng": rngs if rngs is not None else [rng_state()],
            "config": self.cfg.to_dict(),
            "class_names": list(self.cfg.data.class_names),
        }

    def save(self, is_best: bool = False, score: float | None = None) -> list[str]:
        """Write best.pth (``is_best``), a top-K file (when ``score`` ranks) and last.pth, in that order;
        returns the file names written. Every rank calls it (the RNG states of all ranks are gathered),
        rank 0 writes.

        Raises:
            NonFiniteWeightsError: the model or EMA holds NaN/Inf; the files on disk are left as they are.
        """
        bad = non_finite_tensors(unwrap(self.model).state_dict(), "model.")
        if self.ema is not None:
            bad += non_finite_tensors(self.ema.ema.state_dict(), "ema.")
        if bad:
            raise NonFiniteWeightsError(f"the weights became non-finite by step {self.step} ({len(bad)} "
                                        f"tensors, e.g. {bad[:3]}); nothing saved, so last.pth and best.pth "
                                        "keep the last finite weights")
        rngs = self._rng_states()
        if not self.dist.is_main:
            return []
        state = self.state_dict(rngs)
        written = []
        if is_best:
            save_checkpoint(state, self.run_dir / "best.pth")
            written.append("best.pth")
        if score is not None:
            name = self.top_k.add(state, self.epoch, score)
            if name:
                written.append(name)
                state["top_k"] = self.top_k.state_dict()
        save_checkpoint(state, self.run_dir / "last.pth")
        self._saved_at = time.monotonic()
        return written + ["last.pth"]

    def _rng_states(self) -> list[dict]:
        """The RNG state of every rank (a collective under DDP). Tensors travel as torch.save bytes:
        all_gather_object cannot rebuild them."""
        if self.dist.world_size == 1:
            return [rng_state()]
        buf = io.BytesIO()
        torch.save(rng_state(), buf)
        return [torch.load(io.BytesIO(b), weights_only=True) for b in all_gather_object(buf.getvalue())]

    def resume(self, path: str) -> None:
        """Restore the whole training state of ``path``: weights, EMA and its update count, optimizer,
        schedule, scaler, position (epoch, step, batches of the epoch), best score, early-stopping
        state, top-K ranking and this rank's RNG state."""
        try:
            ckpt = load_checkpoint(path, required=("model", "optimizer", "scheduler", "epoch", "config"))
        except CheckpointError as e:
            others = sibling_checkpoints(path)
            offer = (f"; other checkpoints of this run: {', '.join(others)} (pass one with --ckpt)"
                     if others else "")
            raise CheckpointError(f"{e}{offer}") from None
        self._check_config(path, ckpt["config"])
        try:
            self.model.load_state_dict(ckpt["model"])
            if self.ema is not None and ckpt.get("ema"):
                self.ema.load_state_dict(ckpt["ema"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: its state does not fit this run's model or optimizer "
                                  f"({str(e).splitlines()[0]})") from None
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt.get("step", 0))
        self.epoch_iter = int(ckpt.get("epoch_iter", 0))
        self.last_opt_step = int(ckpt.get("last_opt_step", self.step))
        self._epoch_sums = dict(ckpt.get("epoch_sums", {}))
        self.bad_steps = int(ckpt.get("bad_steps", 0))
        self.early_stopping.best = float(ckpt.get("best_score", -1.0))
        self.early_stopping.best_epoch = int(ckpt.get("best_epoch", 0))
        self.stop_reason = str(ckpt.get("stop_reason", ""))
        self.top_k.load_state_dict(ckpt.get("top_k", []))
        self.last_metrics = dict(ckpt.get("metrics", {}))
        self._pending_rng = self._rank_rng(ckpt.get("rng"))
        where = f", iteration {self.epoch_iter} of epoch {self.epoch + 1}" if self.epoch_iter else ""
        logger.info(f"resumed from {path}: epoch {self.epoch}{where}, step {self.step}, best "
                    f"{self.cfg.train.monitor} {self.early_stopping.best:.4f}")

    def _rank_rng(self, rngs) -> dict | None:
        """This rank's RNG state from a checkpoint's list of per-rank states (older files: one dict)."""
        if isinstance(rngs, dict):
            rngs = [rngs]
        if not rngs:
            return None
        if len(rngs) != self.dist.world_size:
            logger.warning(f"the checkpoint holds the RNG states of {len(rngs)} ranks, this run has "
                           f"{self.dist.world_size}; ranks without one continue from their seed")
        return rngs[self.dist.rank] if self.dist.rank < len(rngs) else None

    def _check_config(self, path: str, saved: dict) -> None:
        """A resume continues the same experiment: the model and class list must be the checkpoint's.
        Other changes (e.g. more epochs, to extend the run) are allowed and listed."""
        diff = config_diff(saved, self.cfg.to_dict())
        fatal = {k: v for k, v in diff.items()
                 if k == "data.class_names" or (k.startswith("model.") and k != "model.pretrained")}
        if fatal:
            listing = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in fatal.items())
            raise CheckpointError(f"{path}: cannot resume with another model or class list ({listing}); to "
                                  f"fine-tune from it, start a new run with train.init_weights='{path}'")
        if diff:
            logger.warning("resuming with config changes (checkpoint -> now): "
                           + "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()))

    def _init_weights(self, path: str) -> None:
        """Transfer learning: the (EMA) weights of a checkpoint of this repo, of any model family, copied
        where name and shape fit; the others (e.g. the class layers of another class count) are listed
        in one warning by load_matching."""
        try:
            ckpt = load_checkpoint(path, required=("model",))
        except CheckpointError as e:
            raise ConfigError(f"train.init_weights: {e}") from None
        state = ckpt["ema"]["model"] if ckpt.get("ema") else ckpt["model"]
        loaded, skipped = load_matching(self.model, state)
        if not loaded:
            raise ConfigError(f"train.init_weights={path!r}: no tensor of it fits model.name="
                              f"{self.cfg.model.name!r}")
        logger.info(f"train.init_weights {path}: {len(loaded)} tensors loaded, {len(skipped)} skipped")
