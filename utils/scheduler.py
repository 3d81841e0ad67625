"""Per-iteration training schedules: learning-rate decay, warm-up of lr, bias lr and momentum,
and the gradient-accumulation ramp.

Every value is a pure function of the iteration (:class:`Schedule`), so a resumed run needs only
the step count, and the curves can be computed (and plotted) without an optimizer.

Decay curves f(p) of the fraction of training done, p = step / total_steps in [0, 1], with
r = min_lr_ratio:

- ``cosine``: r + (1 - r) * (1 + cos(pi * p)) / 2
- ``linear``: (1 - p) * (1 - r) + r  (the YOLOv5/v7/v9 ``lf(e) = (1 - e/E)(1 - lrf) + lrf``)
- ``step``: gamma ** (number of milestones reached)
- ``one_cycle``: a cosine rise from 1/div to 1 over the first ``one_cycle_pct`` of training, then
  a cosine fall to r (Smith's one-cycle policy)

The decay curve spans the whole run. During the warm-up (the first ``warmup_steps``
iterations) each value moves linearly from its start to the decay curve, as in YOLO: the lr of
the weight groups from ``warmup_start_factor * base lr``, the lr of the bias group from
``warmup_bias_lr`` (when set), and the momentum from ``warmup_momentum`` (when set) to the
optimizer's momentum. Gradient accumulation ramps from 1 to its final value over the same span.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from loguru import logger

DECAYS = ("cosine", "linear", "step", "one_cycle")


@dataclass(frozen=True)
class Schedule:
    """All per-iteration hyper-parameter curves of a run.

    Attributes:
        total_steps: iterations of the whole run.
        warmup_steps: iterations of the warm-up (0 = none).
        name: decay curve, one of ``DECAYS``.
        min_lr_ratio: final lr of cosine / linear / one_cycle, fraction of the base lr.
        warmup_start_factor: lr of the weight groups at step 0, fraction of their base lr.
        warmup_bias_lr: lr of the bias group at step 0, absolute (0 = warms up like the others).
        momentum: the optimizer's momentum (SGD) / beta1 (Adam), reached at the warm-up end.
        warmup_momentum: momentum at step 0 (0 = no momentum warm-up).
        milestones: ``step``: iterations at which the lr is multiplied by ``gamma``.
        gamma: ``step``: factor per milestone.
        one_cycle_pct: ``one_cycle``: fraction of training spent rising to the peak.
        one_cycle_div: ``one_cycle``: the lr starts at base lr / one_cycle_div.
        accumulate: batches per optimizer step after the warm-up (1 = no accumulation).
    """

    total_steps: int
    warmup_steps: int = 0
    name: str = "cosine"
    min_lr_ratio: float = 0.05
    warmup_start_factor: float = 0.01
    warmup_bias_lr: float = 0.0
    momentum: float = 0.937
    warmup_momentum: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    one_cycle_pct: float = 0.3
    one_cycle_div: float = 25.0
    accumulate: int = 1

    def __post_init__(self) -> None:
        if self.name not in DECAYS:
            raise ValueError(f"unknown schedule sched.name={self.name!r}; valid: {list(DECAYS)}")
        if self.total_steps <= 0 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"schedule: need total_steps > 0 and 0 <= warmup_steps <= total_steps, got "
                             f"{self.total_steps} and {self.warmup_steps}")
        if self.name == "step" and not self.milestones:
            raise ValueError("schedule 'step' needs milestones (sched.step_epochs)")
        if self.accumulate < 1:
            raise ValueError(f"schedule: accumulate must be >= 1, got {self.accumulate}")

    # -- the curves -----------------------------------------------------------------
    def decay(self, step: int) -> float:
        """The decay curve f at ``step`` (1 = base lr), without warm-up."""
        p = min(1.0, max(0.0, step / self.total_steps))
        r = self.min_lr_ratio
        if self.name == "cosine":
            return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * p))
        if self.name == "linear":
            return (1.0 - p) * (1.0 - r) + r
        if self.name == "step":
            return self.gamma ** sum(step >= m for m in self.milestones)
        start = 1.0 / self.one_cycle_div  # one_cycle
        if p < self.one_cycle_pct:
            return start + (1.0 - start) * 0.5 * (1.0 - math.cos(math.pi * p / self.one_cycle_pct))
        q = (p - self.one_cycle_pct) / (1.0 - self.one_cycle_pct)
        return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * q))

    def _warm(self, step: int, start: float, end: float) -> float:
        """Linear from ``start`` (step 0) to ``end`` (warm-up end); ``end`` afterwards."""
        if step >= self.warmup_steps:
            return end
        return start + (end - start) * step / self.warmup_steps

    def lr(self, step: int, base_lr: float, bias: bool = False) -> float:
        """lr of a param group with base lr ``base_lr`` at ``step``; ``bias`` selects the bias rule."""
        target = base_lr * self.decay(step)
        if bias and self.warmup_bias_lr > 0:
            start = self.warmup_bias_lr
        else:
            start = self.warmup_start_factor * base_lr
        return self._warm(step, start, target)

    def lr_factor(self, step: int) -> float:
        """lr of the weight groups at ``step`` as a fraction of their base lr."""
        return self.lr(step, 1.0)

    def momentum_at(self, step: int) -> float:
        """Momentum (SGD) / beta1 (Adam) at ``step``."""
        if self.warmup_momentum <= 0:
            return self.momentum
        return self._warm(step, self.warmup_momentum, self.momentum)

    def accumulate_at(self, step: int) -> int:
        """Batches per optimizer step at ``step``: 1 at step 0, rounded linear ramp to ``accumulate``
        at the warm-up end (YOLO's ``max(1, round(interp(step, [0, W], [1, nbs / bs])))``)."""
        return max(1, round(self._warm(step, 1.0, float(self.accumulate))))

    def curves(self, base_lr: float, steps: range | None = None) -> dict[str, list[float]]:
        """Values at each of ``steps`` (default: every iteration), e.g. to plot the schedule:
        ``{"step", "lr", "bias_lr", "momentum", "accumulate"}``."""
        steps = range(self.total_steps + 1) if steps is None else steps
        return {"step": list(steps), "lr": [self.lr(s, base_lr) for s in steps],
                "bias_lr": [self.lr(s, base_lr, bias=True) for s in steps],
                "momentum": [self.momentum_at(s) for s in steps],
                "accumulate": [float(self.accumulate_at(s)) for s in steps]}


class IterScheduler:
    """Applies a :class:`Schedule` to an optimizer: each group's lr (the group named "bias" by the
    bias rule) and momentum (SGD ``momentum`` / Adam ``betas[0]``).

    Call :meth:`step` once per iteration (batch). Right after construction the values are
    already those of step 0. Each group's base lr is kept in ``initial_lr`` (saved with the
    optimizer state, so a restored optimizer keeps its recorded base lr).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule) -> None:
        self.optimizer, self.schedule = optimizer, schedule
        self.last_step = 0
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self._apply()

    def _apply(self) -> None:
        s, step = self.schedule, self.last_step
        m = s.momentum_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = s.lr(step, group["initial_lr"], bias=group.get("name") == "bias")
            if "betas" in group:
                group["betas"] = (m, group["betas"][1])
            elif group.get("momentum", 0) > 0:
                group["momentum"] = m

    def step(self) -> None:
        """Advance one iteration and set the values for it."""
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """Current lr of each param group."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """Plain ints: the step count and the schedule length it was used with."""
        return {"last_step": self.last_step, "total_steps": self.schedule.total_steps,
                "warmup_steps": self.schedule.warmup_steps}

    def load_state_dict(self, d: dict) -> None:
        """Continue from ``d["last_step"]``. A different length (e.g. more epochs, to extend a run)
        keeps the schedule given to the constructor, with a warning."""
        changed = {k: (d[k], getattr(self.schedule, k)) for k in ("total_steps", "warmup_steps")
                   if k in d and d[k] != getattr(self.schedule, k)}
        if changed:
            logger.warning(f"lr schedule differs from the checkpoint's (checkpoint, now): {changed}; "
                           f"continuing at step {d['last_step']} with the new schedule")
        self.last_step = int(d["last_step"])
        self._apply()


def build_scheduler(sched_cfg, optimizer: torch.optim.Optimizer, iters_per_epoch: int, epochs: int,
                    accumulate: int = 1) -> IterScheduler:
    """The schedule of ``configs.base_config.SchedCfg`` in iterations, applied to ``optimizer``.

    Warm-up: ``max(round(warmup_epochs * iters_per_epoch), warmup_min_iters)`` iterations, capped
    at the total. ``step_epochs`` become iterations. The momentum target is the optimizer's own
    (``momentum`` or ``betas[0]`` of its defaults). ``accumulate``: final batches per optimizer step.
    """
    total = int(iters_per_epoch) * int(epochs)
    warmup = min(total, max(round(sched_cfg.warmup_epochs * iters_per_epoch), sched_cfg.warmup_min_iters))
    d = optimizer.defaults
    momentum = d["betas"][0] if "betas" in d else d.get("momentum", 0.0)
    schedule = Schedule(
        total_steps=total, warmup_steps=warmup, name=sched_cfg.name, min_lr_ratio=sched_cfg.min_lr_ratio,
        warmup_start_factor=sched_cfg.warmup_start_factor, warmup_bias_lr=sched_cfg.warmup_bias_lr,
        momentum=momentum, warmup_momentum=sched_cfg.warmup_momentum,
        milestones=tuple(round(e * iters_per_epoch) for e in sched_cfg.step_epochs),
        gamma=sched_cfg.step_gamma, one_cycle_pct=sched_cfg.one_cycle_pct,
        one_cycle_div=sched_cfg.one_cycle_div, accumulate=accumulate)
    shape = {"cosine": f"to x{schedule.min_lr_ratio:g}", "linear": f"to x{schedule.min_lr_ratio:g}",
             "step": f"x{schedule.gamma:g} at iterations {list(schedule.milestones)}",
             "one_cycle": f"from x{1 / schedule.one_cycle_div:g} up to x1 over {schedule.one_cycle_pct:.0%}, "
                          f"then to x{schedule.min_lr_ratio:g}"}[schedule.name]
    warm = (f"warm-up {warmup} iterations from x{schedule.warmup_start_factor:g}"
            + (f", bias lr from {schedule.warmup_bias_lr:g}" if schedule.warmup_bias_lr > 0 else "")
            + (f", momentum {schedule.warmup_momentum:g} -> {momentum:g}"
               if schedule.warmup_momentum > 0 else "")
            + (f", accumulation 1 -> {accumulate} batches" if accumulate > 1 else ""))
    logger.info(f"schedule {schedule.name} over {total} iterations {shape}; {warm}")
    return IterScheduler(optimizer, schedule)
