"""Per-iteration learning-rate schedule: linear warm-up, then cosine decay.

The schedule is a pure function of the iteration (:func:`lr_factor`), so resuming needs
only the step count.
"""
from __future__ import annotations

import math

import torch
from loguru import logger


def lr_factor(step: int, total_steps: int, warmup_steps: int, warmup_start_factor: float,
              min_lr_ratio: float) -> float:
    """Multiplier of the base lr at iteration ``step`` (0-based).

    - ``step < warmup_steps``: linear from ``warmup_start_factor`` (step 0) towards 1.
    - then cosine from 1 (at ``warmup_steps``) to ``min_lr_ratio`` (at ``total_steps``).
    - ``step >= total_steps``: ``min_lr_ratio`` (clamped).
    """
    if step < warmup_steps:
        return warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR:
    """Sets every param group's lr to ``initial_lr * lr_factor(last_step, ...)``.

    Call :meth:`step` once per optimizer step (iteration, not epoch). Right after
    construction the lrs are already the step-0 values.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                 warmup_start_factor: float = 0.01, min_lr_ratio: float = 0.05) -> None:
        if total_steps <= 0 or warmup_steps < 0:
            raise ValueError(f"WarmupCosineLR: need total_steps > 0 and warmup_steps >= 0, got "
                             f"{total_steps} and {warmup_steps}")
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_factor = float(warmup_start_factor)
        self.min_lr_ratio = float(min_lr_ratio)
        self.last_step = 0
        for group in optimizer.param_groups:
            # setdefault: an optimizer restored from a checkpoint keeps its recorded base lr.
            group.setdefault("initial_lr", group["lr"])
        self._apply()

    def factor(self) -> float:
        """Current multiplier of the base lr."""
        return lr_factor(self.last_step, self.total_steps, self.warmup_steps,
                         self.warmup_start_factor, self.min_lr_ratio)

    def _apply(self) -> None:
        f = self.factor()
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f

    def step(self) -> None:
        """Advance one iteration and set the lrs for it."""
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """Current lr of each param group."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """Plain ints/floats: the step count and the schedule shape it was used with."""
        return {"last_step": self.last_step, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "warmup_start_factor": self.warmup_start_factor,
                "min_lr_ratio": self.min_lr_ratio}

    def load_state_dict(self, d: dict) -> None:
        """Continue from ``d["last_step"]``. A changed schedule shape (e.g. more epochs to
        extend a run) keeps the shape given to the constructor, with a warning."""
        shape = ("total_steps", "warmup_steps", "warmup_start_factor", "min_lr_ratio")
        changed = {k: (d[k], getattr(self, k)) for k in shape if k in d and d[k] != getattr(self, k)}
        if changed:
            logger.warning(f"lr schedule differs from the checkpoint's (checkpoint, now): {changed}; "
                           f"continuing at step {d['last_step']} with the new schedule")
        self.last_step = int(d["last_step"])
        self._apply()


SCHEDULERS = {"cosine": WarmupCosineLR}


def build_scheduler(sched_cfg, optimizer: torch.optim.Optimizer, iters_per_epoch: int,
                    epochs: int) -> WarmupCosineLR:
    """Build the schedule of ``configs.base_config.SchedCfg`` in iterations.

    ``warmup_epochs`` (float) becomes ``round(warmup_epochs * iters_per_epoch)`` iterations,
    capped at the total.
    """
    if sched_cfg.name not in SCHEDULERS:
        raise ValueError(f"unknown schedule sched.name={sched_cfg.name!r}; valid: {sorted(SCHEDULERS)}")
    total = int(iters_per_epoch) * int(epochs)
    warmup = min(total, int(round(sched_cfg.warmup_epochs * iters_per_epoch)))
    logger.info(f"lr schedule {sched_cfg.name}: {total} iterations, warm-up {warmup} "
                f"(from x{sched_cfg.warmup_start_factor:g}), final x{sched_cfg.min_lr_ratio:g}")
    return SCHEDULERS[sched_cfg.name](optimizer, total_steps=total, warmup_steps=warmup,
                                      warmup_start_factor=sched_cfg.warmup_start_factor,
                                      min_lr_ratio=sched_cfg.min_lr_ratio)
