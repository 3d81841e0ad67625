"""Trainer: fit -> train_one_epoch -> train_step, validate, save, resume. Read it top to bottom.

The pieces it wires live in their own units: the step with accumulation, clipping, EMA and the
non-finite guard (core/train/step.py), best / top-K / early stopping (selection.py), freezing
(freezing.py), stop requests and in-epoch saves agreed by all ranks (control.py), RNG states,
resume checks and weight transfer (state.py), logs, TensorBoard and run_info.json (reporting.py).

Survival: a stop request (SIGTERM/SIGINT, wired in core/tasks.py) ends the run at the next
optimizer-step boundary with last.pth holding the mid-epoch position and the RNG state of every
rank; a resume continues exactly there. Every ``train.save_interval_min`` minutes last.pth is
also written inside the epoch, so a SIGKILL or a lost node costs at most that much training.
All ranks take every decision together (one all-reduce per optimizer step, core/train/step.py), so
DDP never waits forever.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from loguru import logger
from tqdm import tqdm

from core.checks import check_device_options, validate
from core.evaluation.evaluator import Evaluator
from core.loaders import build_eval_loader, build_train_loader
from core.train.anchors import resolve_anchors
from core.train.control import RunControl
from core.train.freezing import FreezeSchedule
from core.train.reporting import RunReport
from core.train.selection import Selection
from core.train.state import (
    check_finite_weights,
    check_resume_config,
    epoch_batches,
    gather_rng_states,
    load_for_resume,
    load_states,
    rank_rng,
    transfer_weights,
)
from core.train.step import TrainStep, read_floats
from datasets import resolve_class_names
from models import build_loss, build_model
from utils.checkpoint import remove_stale_tmp, save_checkpoint
from utils.dist import DistInfo, broadcast_buffers, broadcast_object, seed_everything, unwrap, wrap_ddp
from utils.ema import ModelEMA
from utils.files import write_json_atomic
from utils.memory import release_free_memory
from utils.model_info import count_params, gflops, model_summary
from utils.optim import accumulation_steps, build_optimizer
from utils.run_info import end_status, failure_status
from utils.scheduler import build_scheduler


class Trainer:
    """Trains cfg's model on its train split and validates on its val split.

    run_dir: where checkpoints, logs and metrics go. resume: a checkpoint to continue from (its
    whole training state is restored, mid-epoch included; cfg.train.epochs may extend the run).
    :meth:`request_stop` (from a signal handler) ends :meth:`fit` early with last.pth written;
    ``interrupted`` then says so.
    """

    def __init__(self, cfg, dist: DistInfo, run_dir: Path, resume: str | None = None) -> None:
        self.cfg, self.dist, self.run_dir, self.device = cfg, dist, Path(run_dir), dist.device
        t = cfg.train
        if dist.is_main:  # the settings as given ("auto" anchors unresolved): what --task compare reads
            write_json_atomic(self.run_dir / "config.json", cfg.to_dict())
        self.report = RunReport(cfg, dist, self.run_dir)  # logs, TensorBoard (W&B), run_info.json
        seed_everything(t.seed, dist.rank, t.deterministic)
        check_device_options(cfg, self.device)
        torch.backends.cudnn.benchmark = bool(t.cudnn_benchmark)  # validated: never with train.deterministic
        resolve_class_names(cfg)  # before the model: the class count comes from the data
        validate(cfg)  # again: the class names found in the data are part of the config now
        self.train_loader, self.train_sampler = build_train_loader(cfg, dist)
        self.val_loader = build_eval_loader(cfg, dist, "val")
        if dist.is_main and cfg.model.anchors == "auto":  # fitted once; every rank builds with rank 0's
            resolve_anchors(cfg, self.train_loader.dataset.records)  # (deterministic: a resume refits the same)
        cfg.model.anchors = broadcast_object(cfg.model.anchors)
        self.model = build_model(cfg)
        if t.init_weights and not resume:
            transfer_weights(self.model, t.init_weights, cfg.model.name)
        memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        self.model.to(self.device, memory_format=memory_format)
        if t.sync_bn and dist.world_size > 1:  # before the optimizer, EMA and DDP see the modules
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if dist.is_main:
            self.model_size = {"parameters": count_params(self.model), "gflops": gflops(self.model, cfg.data.img_size)}
            logger.info(model_summary(self.model, cfg.data.img_size, self.model_size["gflops"]))
        optimizer = build_optimizer(cfg.optim, self.model, t.batch_size)
        self.iters_per_epoch = len(self.train_loader)
        scheduler = build_scheduler(cfg.sched, optimizer, self.iters_per_epoch, t.epochs,
                                    accumulation_steps(cfg.optim.nominal_batch, t.batch_size))
        self.ema = ModelEMA(self.model, t.ema_decay, t.ema_tau) if t.ema else None
        self.stepper = TrainStep(self.model, build_loss(cfg, self.model), optimizer, scheduler, self.ema,
                                 device=self.device, memory_format=memory_format, amp=t.amp,
                                 amp_dtype=t.amp_dtype, grad_clip=cfg.optim.grad_clip,
                                 max_bad_steps=t.max_bad_steps, multi_scale=t.multi_scale, seed=t.seed)
        self.freeze = FreezeSchedule(self.model, t.freeze, t.freeze_epochs)
        self.selection = Selection(self.run_dir, t.monitor, t.patience, t.min_delta, t.save_top_k)
        self.evaluator = Evaluator(cfg, self.val_loader.dataset.records, dist)
        # The position: epochs done and batches of the current epoch done (iterations: stepper.step).
        self.epoch, self.epoch_iter, self._epoch_sums = 0, 0, {}
        self.control = RunControl(dist, t.save_interval_min)  # stop requests and in-epoch saves
        self.stepper.host_flags = self.control.local  # agreed in the step's one all-reduce
        self.interrupted = False  # fit ended on a stop request; last.pth holds the position
        self._wrapped = False  # the step's forward module was made (DDP, compile) for this training
        self._pending_rng: dict | None = None  # RNG state to restore when the next batches start
        self.last_metrics: dict = {}
        self.train_seconds, self.train_images = 0.0, 0  # this process's training throughput
        if dist.is_main:
            remove_stale_tmp(self.run_dir)
        if resume:
            self.resume(resume)
        if dist.is_main:
            self.report.record.start(epochs_planned=t.epochs, epochs_done=self.epoch, world_size=dist.world_size,
                              resumed_from=resume, **self.model_size)

    # The step's state, under the names the loop and its tests read.
    optimizer = property(lambda self: self.stepper.optimizer)
    scheduler = property(lambda self: self.stepper.scheduler)
    step = property(lambda self: self.stepper.step)
    last_opt_step = property(lambda self: self.stepper.last_opt_step)
    bad_steps = property(lambda self: self.stepper.bad_steps)
    criterion = property(lambda self: self.stepper.criterion,
                         lambda self, fn: setattr(self.stepper, "criterion", fn))

    # -- the loop -------------------------------------------------------------------
    def fit(self, stop_after_epoch: int | None = None) -> dict:
        """Train until cfg.train.epochs, early stopping or a stop request (or stop_after_epoch, for tests).
        run_info.json then says how the run ended (utils/run_info.py)."""
        try:
            metrics = self._fit(stop_after_epoch)
        except BaseException as e:
            self.report.record.finish(*failure_status(e))
            raise
        self.report.record.finish(*end_status(self.epoch, self.cfg.train.epochs, self.stop_signal, self.interrupted,
                                       self.selection.stop_reason))
        return metrics

    def _fit(self, stop_after_epoch: int | None) -> dict:
        cfg, sel = self.cfg, self.selection
        if done := sel.finished(self.epoch, cfg.train.epochs):
            logger.warning(done)
            return self.last_metrics
        sel.stop_reason = ""
        where = f", from iteration {self.epoch_iter} of epoch {self.epoch + 1}" if self.epoch_iter else ""
        logger.info(f"training {cfg.name}: epochs {self.epoch + 1}..{cfg.train.epochs}{where}, "
                    f"{self.iters_per_epoch} iterations/epoch, global batch {cfg.train.batch_size}, "
                    f"world size {self.dist.world_size}, device {self.device}, run dir {self.run_dir}")
        while self.epoch < cfg.train.epochs:
            t0 = time.time()
            if self.freeze.set_epoch(self.epoch) or not self._wrapped:
                self.stepper.ddp_model = self._wrap()  # DDP registers the trainable tensors
            losses = self.train_one_epoch(self.epoch)
            if self.interrupted:
                break
            self.epoch += 1
            self.epoch_iter, self._epoch_sums = 0, {}
            last = self.epoch == cfg.train.epochs
            verdict = None
            if last or self.epoch % cfg.train.eval_interval == 0:
                self.last_metrics = self.validate()
                verdict = sel.update(self.epoch, self.last_metrics.get(cfg.train.monitor, float("nan")), last)
            saved = self.save(verdict)
            release_free_memory()  # cycles left by validation; freed heap back to the OS
            self.report.epoch(self.epoch, time.time() - t0, losses, self.optimizer.param_groups[0]["lr"], verdict,
                              sel, saved, images_total=self.train_images * self.dist.world_size,
                              train_seconds=self.train_seconds, metrics=self.last_metrics)
            if sel.stop_reason:
                logger.warning(f"early stopping after epoch {self.epoch}: {sel.stop_reason}")
                break
            if not last and self.control.stop_agreed():  # asked during validation or the save
                self._stop(f"after epoch {self.epoch}")
                break
            if stop_after_epoch is not None and self.epoch >= stop_after_epoch:
                break
        self.report.close(sel, self.last_metrics, self.epoch)
        return self.last_metrics

    def _wrap(self) -> torch.nn.Module:
        """The module the step's forward calls: the model in DDP under torchrun, compiled with
        ``train.compile`` (each new wrap compiles again: freezing changes what trains)."""
        self._wrapped = True
        model = wrap_ddp(self.model, self.dist)
        return torch.compile(model) if self.cfg.train.compile else model

    def train_one_epoch(self, epoch: int) -> dict:
        """Train the (remaining) batches of ``epoch``; returns the epoch's mean loss terms."""
        self.freeze.train_mode()
        batches = epoch_batches(self.train_loader, self.train_sampler, epoch, self.epoch_iter, self._pending_rng)
        sums, self._pending_rng = self._epoch_sums, None
        t0 = time.perf_counter()
        bar = tqdm(total=self.iters_per_epoch, initial=self.epoch_iter,
                   desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
                   disable=not self.dist.is_main, dynamic_ncols=True, leave=False)
        for images, targets, _ in batches:
            parts = self.train_step(images, targets, flush=self.epoch_iter == self.iters_per_epoch - 1)
            self.epoch_iter += 1
            self.train_images += images.shape[0]
            for k, v in parts.items():  # device tensors: the host reads them once per log interval
                sums[k] = sums.get(k, 0.0) + v.double()
            bar.update()
            if self.step % self.cfg.train.log_interval == 0:
                lr = self.optimizer.param_groups[0]["lr"]
                values = read_floats(parts | {f"mean_{k}": v / self.epoch_iter for k, v in sums.items()})
                bar.set_postfix({**{k: f"{values[f'mean_{k}']:.3f}" for k in sums}, "lr": f"{lr:.2e}"})
                self.report.step(self.step, {k: values[k] for k in parts}, lr)
            if self.step != self.last_opt_step:  # an accumulated gradient is pending: not a boundary
                continue
            stop, save_due = self.stepper.flags  # agreed at this optimizer step
            if stop:
                self.control.announce()
                self.save()
                self._stop(f"at epoch {epoch + 1}, iteration {self.epoch_iter}/{self.iters_per_epoch} "
                           f"(step {self.step})")
                break
            if save_due and self.epoch_iter < self.iters_per_epoch:
                self.save()
                logger.info(f"in-epoch save: last.pth holds epoch {epoch + 1}, iteration {self.epoch_iter}/"
                            f"{self.iters_per_epoch} (train.save_interval_min={self.cfg.train.save_interval_min:g})")
        bar.close()
        self.train_seconds += time.perf_counter() - t0
        return {k: round(v / max(self.iters_per_epoch, 1), 4) for k, v in read_floats(sums).items()}

    def train_step(self, images: torch.Tensor, targets: torch.Tensor, flush: bool = False) -> dict[str, torch.Tensor]:
        """One iteration (core/train/step.py): the loss terms as device tensors, or {} for a skipped
        step. At an optimizer step the ranks agree on the stop and save requests (``stepper.flags``)."""
        return self.stepper(images, targets, flush)

    # -- stopping -----------------------------------------------------------------------
    def request_stop(self, signum: int) -> None:
        """Ask :meth:`fit` to stop at the next optimizer-step boundary and write last.pth (signal-safe)."""
        self.control.request(signum)

    @property
    def stop_signal(self) -> int | None:
        return self.control.signal

    def _stop(self, where: str) -> None:
        self.interrupted = True
        logger.warning(f"stopped on request {where}; last.pth holds this position. Resume with --task train "
                       f"--ckpt {self.run_dir / 'last.pth'}")

    # -- validation and checkpoints ---------------------------------------------------
    def eval_model(self) -> torch.nn.Module:
        return self.ema.ema if self.ema is not None else self.model

    def validate(self) -> dict:
        """Score the EMA (or raw) model on the val split; rank 0 shows the dashboard, writes run_dir/val."""
        out = self.run_dir / "val" if self.dist.is_main else None
        # Each rank's BatchNorm statistics followed its own batches: every rank scores rank 0's, which
        # the checkpoints store, so the in-training numbers are those of best.pth and last.pth.
        broadcast_buffers(unwrap(self.eval_model()))
        metrics = self.evaluator.run(self.eval_model(), self.val_loader, out, epoch=self.epoch)
        self.report.validation(self.epoch, metrics)
        if self.dist.is_main:
            best_before = max((h["mAP"] for h in self.evaluator.history or [] if h["epoch"] < self.epoch), default=-1.0)
            self.evaluator.show(metrics, out, epoch=self.epoch, total_epochs=self.cfg.train.epochs,
                                best_before=best_before)
        return metrics

    def state_dict(self, rngs: list[dict] | None = None) -> dict:
        """The whole training state; ``rngs``: the RNG state of every rank (default: this process's)."""
        return {
            "model": unwrap(self.model).state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            **self.stepper.state_dict(), "epoch": self.epoch, "epoch_iter": self.epoch_iter,
            "epoch_sums": read_floats(self._epoch_sums), **self.selection.state_dict(),
            "metrics": {k: v for k, v in self.last_metrics.items() if isinstance(v, (int, float))},
            "rng": rngs if rngs is not None else gather_rng_states(self.dist),
            "config": self.cfg.to_dict(), "class_names": list(self.cfg.data.class_names),
        }

    def save(self, verdict=None) -> list[str]:
        """Write best.pth (``verdict`` improved), a top-K file (when its score ranks) and last.pth;
        returns the file names written. Every rank calls it (the RNG states of all ranks are
        gathered), rank 0 writes.

        Raises:
            NonFiniteWeightsError: the model or EMA holds NaN/Inf; the files on disk are left as they are.
        """
        check_finite_weights(unwrap(self.model), self.ema.ema if self.ema is not None else None, self.step)
        rngs = gather_rng_states(self.dist)
        if not self.dist.is_main:
            return []
        state, written = self.state_dict(rngs), []
        if verdict is not None and verdict.improved:
            save_checkpoint(state, self.run_dir / "best.pth")
            written.append("best.pth")
        if verdict is not None and (name := self.selection.top_k.add(state, self.epoch, verdict.score)):
            written.append(name)
            state["top_k"] = self.selection.top_k.state_dict()
        save_checkpoint(state, self.run_dir / "last.pth")
        self.control.saved()
        return written + ["last.pth"]

    def resume(self, path: str) -> None:
        """Restore the whole training state of ``path``: weights, EMA and its update count, optimizer,
        schedule, scaler, position (epoch, step, batches of the epoch), best score, early-stopping
        state, top-K ranking and this rank's RNG state."""
        ckpt = load_for_resume(path)
        check_resume_config(path, ckpt["config"], self.cfg.to_dict())
        load_states(path, ckpt, self.model, self.ema, self.optimizer)
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.stepper.load_state_dict(ckpt)
        self.selection.load_state_dict(ckpt)
        self.epoch, self.epoch_iter = int(ckpt["epoch"]), int(ckpt.get("epoch_iter", 0))
        self._epoch_sums = dict(ckpt.get("epoch_sums", {}))
        self.last_metrics = dict(ckpt.get("metrics", {}))
        self._pending_rng = rank_rng(ckpt.get("rng"), self.dist)
        where = f", iteration {self.epoch_iter} of epoch {self.epoch + 1}" if self.epoch_iter else ""
        logger.info(f"resumed from {path}: epoch {self.epoch}{where}, step {self.step}, best "
                    f"{self.cfg.train.monitor} {self.selection.best:.4f}")
