"""One training step, shared by the Trainer and QAT fine-tuning.

forward (under the autocast of ``train.amp`` / ``train.amp_dtype``, utils/amp.py) -> loss (fp32) ->
backward, with gradient accumulation to the schedule's images per optimizer step; then the
optimizer step: unscale, clip, step, EMA update. With ``train.multi_scale`` each batch is resized to
a side drawn from (seed, step): every rank draws the same side at the same step, without talking.
A non-finite loss or gradient skips the step on every rank at once (two tiny all-reduces per step,
so DDP never waits forever): the gradients gathered since the last optimizer step are dropped and
the model buffers its forward moved (BatchNorm statistics, fake-quant observers) are put back.
``max_bad_steps`` skips in a row raise NonFiniteLossError.
"""
from __future__ import annotations

import math
import random
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from loguru import logger
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from datasets.dataset import to_input
from utils.amp import autocast_for, fp32, needs_grad_scaler
from utils.dist import any_rank


class NonFiniteLossError(FloatingPointError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class TrainStep:
    """``step(images, targets, flush=False) -> {loss term: float}`` ({} for a skipped step).

    ``ddp_model`` is what runs the forward (the DDP wrapper under torchrun, set by the caller);
    ``model`` the plain model whose parameters, buffers and EMA it updates. ``flush`` forces the
    optimizer step (the epoch's last batch). ``step`` counts iterations, ``last_opt_step`` the
    iteration of the last optimizer step (equal: no accumulated gradient is pending).
    """

    def __init__(self, model: nn.Module, criterion, optimizer: torch.optim.Optimizer, scheduler, ema=None, *,
                 device: torch.device, memory_format: torch.memory_format = torch.contiguous_format,
                 amp: bool = False, amp_dtype: str = "fp16", grad_clip: float = 0.0, max_bad_steps: int = 10,
                 multi_scale: list | tuple = (), seed: int = 0) -> None:
        self.model = self.ddp_model = model
        self.criterion, self.optimizer, self.scheduler, self.ema = criterion, optimizer, scheduler, ema
        self.device, self.memory_format = device, memory_format
        self.grad_clip, self.max_bad_steps = grad_clip, max_bad_steps
        self.amp, self.amp_dtype = amp, amp_dtype
        self.scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(device, amp, amp_dtype))
        stride = max(model.strides)
        # multi_scale [lo, hi] pixels -> the range of sides in strides
        self.sides = (math.ceil(multi_scale[0] / stride), multi_scale[1] // stride, stride) if multi_scale else None
        self.seed = seed
        self.step = self.last_opt_step = self.bad_steps = 0
        self._buffers = list(model.buffers())  # restored after a skipped step
        self._snapshot = [b.clone() for b in self._buffers]

    def __call__(self, images: Tensor, targets: Tensor, flush: bool = False) -> dict[str, float]:
        accumulate = self.scheduler.schedule.accumulate_at(self.step)
        steps_now = flush or self.step + 1 - self.last_opt_step >= accumulate
        images = to_input(images, self.device, self.memory_format)
        targets = targets.to(self.device, non_blocking=True)
        if self.sides is not None:
            images, targets = self.rescale(images, targets, self.side_at(self.step))
        for saved, buf in zip(self._snapshot, self._buffers):
            saved.copy_(buf)
        amp = autocast_for(self.device, self.amp, self.amp_dtype)
        # Accumulated micro-batches skip DDP's gradient all-reduce; the last one syncs them all.
        accumulating = isinstance(self.ddp_model, DDP) and not steps_now
        with self.ddp_model.no_sync() if accumulating else nullcontext():
            with amp:  # autocast around the forward only; assignment and loss run in fp32
                raw = self.ddp_model(images)
            priors = self.model.priors(tuple(images.shape[2:]), self.device)
            loss, parts = self.criterion(fp32(raw), targets, priors)  # raw: [B, P, D] or (main, aux)
            self.step += 1
            local_bad = not bool(torch.isfinite(loss))
            bad, = any_rank(local_bad, device=self.device)
            if bad:  # every rank skips together, or DDP's gradient all-reduce would wait forever
                why = f"non-finite loss {float(loss.detach())}" if local_bad else "non-finite loss on another rank"
                return self._skip(why, parts)
            self.scaler.scale(loss / accumulate).backward()
        out = {k: float(v) for k, v in parts.items()} | {"total": float(loss.detach())}
        if steps_now and not self._optimizer_step():
            return self._skip("non-finite gradient norm", parts)
        self.bad_steps = 0
        self.scheduler.step()
        return out

    def side_at(self, step: int) -> int:
        """The input side of ``step`` under multi-scale: a multiple of the largest stride drawn from
        (seed, step) alone, so every rank (and a resumed run) draws the same."""
        lo, hi, stride = self.sides
        return stride * random.Random(self.seed * 1_000_003 + step).randint(lo, hi)

    def rescale(self, images: Tensor, targets: Tensor, side: int) -> tuple[Tensor, Tensor]:
        """images [B, 3, H, W] -> [B, 3, side, side] (bilinear), targets [N, 6] boxes scaled with them."""
        h, w = images.shape[2:]
        if (h, w) == (side, side):
            return images, targets
        images = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)
        targets = targets.clone()
        targets[:, 2:6] *= targets.new_tensor([side / w, side / h, side / w, side / h])
        return images.contiguous(memory_format=self.memory_format), targets

    def _optimizer_step(self) -> bool:
        """Unscale, check and clip the gradients, step, update the EMA. False (nothing changed) when
        the gradient norm is not finite; with fp16 the GradScaler skips such steps itself."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        finite = bool(torch.isfinite(norm))  # the same on every rank: DDP averaged the gradients
        if not finite and not self.scaler.is_enabled():
            return False
        if self.grad_clip > 0 and finite:
            torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_opt_step = self.step
        if self.ema is not None and finite:
            self.ema.update(self.model)
        return True

    def _skip(self, why: str, parts: dict) -> dict[str, float]:
        """A bad step never reaches the weights (see the module doc)."""
        for saved, buf in zip(self._snapshot, self._buffers):
            buf.copy_(saved)
        self.optimizer.zero_grad(set_to_none=True)
        self.last_opt_step = self.step
        self.scheduler.step()
        self.bad_steps += 1
        terms = {k: float(v) for k, v in parts.items()}
        logger.warning(f"{why} at step {self.step} ({terms}); step skipped ({self.bad_steps} in a row)")
        if self.bad_steps >= self.max_bad_steps:
            raise NonFiniteLossError(f"loss became non-finite at step {self.step} for {self.bad_steps} "
                                     f"consecutive steps (last: {why}); loss terms: {terms}")
        return {}

    def state_dict(self) -> dict:
        return {"step": self.step, "last_opt_step": self.last_opt_step, "bad_steps": self.bad_steps,
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.step = int(d.get("step", 0))
        self.last_opt_step = int(d.get("last_opt_step", self.step))
        self.bad_steps = int(d.get("bad_steps", 0))
        if d.get("scaler"):
            self.scaler.load_state_dict(d["scaler"])
