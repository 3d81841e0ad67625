"""Trainer: fit -> train_one_epoch -> train_step, validate, save, resume. Read it top to bottom."""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from loguru import logger
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from core.builders import build_eval_loader, build_train_loader, resolve_class_names
from core.evaluator import Evaluator
from models import build_assigner, build_model
from models.losses import LOSSES
from utils.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from utils.dist import DistInfo, seed_everything, unwrap
from utils.ema import ModelEMA
from utils.logging import TBWriter
from utils.optim import build_optimizer
from utils.scheduler import build_scheduler


class NonFiniteLossError(FloatingPointError):
    """Too many consecutive non-finite losses."""


class Trainer:
    """Trains cfg's model on its train split and validates on its val split.

    run_dir: where checkpoints, logs and metrics go. resume: a checkpoint to continue from
    (its whole training state is restored; cfg.train.epochs may extend the run).
    """

    def __init__(self, cfg, dist: DistInfo, run_dir: Path, resume: str | None = None) -> None:
        self.cfg, self.dist, self.run_dir = cfg, dist, Path(run_dir)
        self.device = dist.device
        seed_everything(cfg.train.seed, dist.rank, cfg.train.deterministic)
        resolve_class_names(cfg)  # before the model: the class count comes from the data
        cfg.validate()
        self.train_loader, self.train_sampler = build_train_loader(cfg, dist)
        self.val_loader, self.val_records = build_eval_loader(cfg, dist, "val")
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.model = build_model(cfg).to(self.device, memory_format=self.memory_format)
        self.ddp_model = (DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                          if dist.world_size > 1 else self.model)
        self.criterion = LOSSES[cfg.model.name](cfg.loss, build_assigner(cfg.assign), self.model.coder,
                                                cfg.num_classes)
        self.optimizer = build_optimizer(cfg.optim, self.model, cfg.train.batch_size)
        self.iters_per_epoch = len(self.train_loader)
        self.scheduler = build_scheduler(cfg.sched, self.optimizer, self.iters_per_epoch, cfg.train.epochs)
        self.use_amp = cfg.train.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.ema = ModelEMA(self.model, cfg.train.ema_decay, cfg.train.ema_tau) if cfg.train.ema else None
        self.evaluator = Evaluator(cfg, self.val_records, dist)
        self.tb = TBWriter(self.run_dir / "tb" if dist.is_main else None)
        self.epoch, self.step, self.best_score, self.bad_steps = 0, 0, -1.0, 0
        self.last_metrics: dict = {}
        self.train_seconds, self.train_images = 0.0, 0  # this process's training throughput
        if resume:
            self.resume(resume)

    # -- the loop -------------------------------------------------------------------
    def fit(self, stop_after_epoch: int | None = None) -> dict:
        """Train until cfg.train.epochs (or stop_after_epoch, for tests of resume)."""
        cfg = self.cfg
        if self.epoch >= cfg.train.epochs:
            logger.warning(f"this run already trained {self.epoch} of {cfg.train.epochs} epochs; "
                           f"pass train.epochs=N (N > {self.epoch}) to extend it")
            return self.last_metrics
        logger.info(f"training {cfg.name}: epochs {self.epoch + 1}..{cfg.train.epochs}, "
                    f"{self.iters_per_epoch} iterations/epoch, global batch {cfg.train.batch_size}, "
                    f"world size {self.dist.world_size}, device {self.device}, run dir {self.run_dir}")
        while self.epoch < cfg.train.epochs:
            t0 = time.time()
            losses = self.train_one_epoch(self.epoch)
            self.epoch += 1
            last = self.epoch == cfg.train.epochs
            evaluated = last or self.epoch % cfg.train.eval_interval == 0
            if evaluated:
                self.last_metrics = self.validate()
            improved = evaluated and self._update_best()
            self.save(improved)
            score = f"mAP {self.last_metrics['mAP']:.4f}" if evaluated else "not evaluated"
            logger.info(f"epoch {self.epoch}/{cfg.train.epochs} done in {time.time() - t0:.0f}s: "
                        f"loss {losses} | {score} (best {max(self.best_score, 0.0):.4f})"
                        f"{' | new best, best.pth saved' if improved else ''}")
            if stop_after_epoch is not None and self.epoch >= stop_after_epoch:
                break
        self.tb.close()
        return self.last_metrics

    def train_one_epoch(self, epoch: int) -> dict:
        self.model.train()
        if self.train_sampler is not None and hasattr(self.train_sampler, "set_epoch"):
            self.train_sampler.set_epoch(epoch)
        self.train_loader.dataset.set_epoch(epoch)
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
                   disable=not self.dist.is_main, dynamic_ncols=True, leave=False)
        for i, (images, targets, _) in enumerate(bar):
            parts = self.train_step(images, targets)
            self.train_images += images.shape[0]
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            avg = {k: v / (i + 1) for k, v in sums.items()}
            bar.set_postfix({**{k: f"{v:.3f}" for k, v in avg.items()},
                             "lr": f"{self.optimizer.param_groups[0]['lr']:.2e}"})
            if self.step % self.cfg.train.log_interval == 0:
                self.tb.add_scalars({f"train/{k}": v for k, v in parts.items()}
                                    | {"train/lr": self.optimizer.param_groups[0]["lr"]}, self.step)
        bar.close()
        self.train_seconds += time.perf_counter() - t0
        return {k: round(v / max(len(self.train_loader), 1), 4) for k, v in sums.items()}

    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        targets = targets.to(self.device, non_blocking=True)
        amp = torch.autocast("cuda", dtype=torch.float16) if self.use_amp else nullcontext()
        with amp:  # autocast around the forward only; assignment and loss run in fp32
            raw = self.ddp_model(images)
        priors = self.model.priors(tuple(images.shape[2:]), self.device)
        loss, parts = self.criterion(raw.float(), targets, priors)
        self.step += 1
        if not torch.isfinite(loss):
            return self._skip_step(loss, parts)
        self.bad_steps = 0
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return {k: float(v) for k, v in parts.items()} | {"total": float(loss.detach())}

    def _skip_step(self, loss: torch.Tensor, parts: dict) -> dict[str, float]:
        """A non-finite loss never reaches the weights; too many in a row stop the run."""
        self.bad_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        terms = {k: float(v) for k, v in parts.items()}
        logger.warning(f"non-finite loss {float(loss.detach())} at step {self.step} ({terms}); step skipped "
                       f"({self.bad_steps} in a row)")
        if self.bad_steps >= self.cfg.train.max_bad_steps:
            raise NonFiniteLossError(f"loss became non-finite at step {self.step} for "
                                     f"{self.bad_steps} consecutive steps; loss terms: {terms}")
        return {}

    # -- validation and checkpoints ---------------------------------------------------
    def eval_model(self) -> torch.nn.Module:
        return self.ema.ema if self.ema is not None else self.model

    def validate(self) -> dict:
        metrics = self.evaluator.run(self.eval_model(), self.val_loader,
                                     self.run_dir / "val" if self.dist.is_main else None)
        self.tb.add_scalars({f"val/{k}": v for k, v in metrics.items() if isinstance(v, float)}, self.epoch)
        return metrics

    def _update_best(self) -> bool:
        score = self.last_metrics.get("mAP", float("nan"))
        if not self.last_metrics or not math.isfinite(score) or score <= self.best_score:
            return False
        self.best_score = score
        return True

    def state_dict(self) -> dict:
        return {
            "model": unwrap(self.model).state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step": self.step, "best_score": float(self.best_score),
            "metrics": {k: v for k, v in self.last_metrics.items() if isinstance(v, (int, float))},
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "class_names": list(self.cfg.data.class_names),
        }

    def save(self, is_best: bool) -> None:
        if not self.dist.is_main:
            return
        state = self.state_dict()
        save_checkpoint(state, self.run_dir / "last.pth")
        if is_best:
            save_checkpoint(state, self.run_dir / "best.pth")

    def resume(self, path: str) -> None:
        ckpt = load_checkpoint(path, required=("model", "optimizer", "scheduler", "epoch", "config"))
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.best_score = float(ckpt.get("best_score", -1.0))
        self.last_metrics = dict(ckpt.get("metrics", {}))
        if ckpt.get("rng"):
            set_rng_state(ckpt["rng"])
        logger.info(f"resumed from {path}: epoch {self.epoch}, step {self.step}, best mAP {self.best_score:.4f}")
