"""One training step, shared by the Trainer and QAT fine-tuning.

forward (under the autocast of ``train.amp`` / ``train.amp_dtype``, utils/amp.py) -> loss (fp32) ->
backward, with gradient accumulation to the schedule's images per optimizer step; then the
optimizer step: unscale, check, clip, step, EMA update. With ``train.multi_scale`` each batch is
resized to a side drawn from (seed, step): every rank draws the same side at the same step, without
talking.

Written for a device the host must not wait on (utils/syncs.py counts what would make it):

- an iteration that does not step the optimizer (an accumulated micro-batch) reads nothing from the
  device and talks to no other rank: its loss terms stay device tensors (the caller reads them once
  per log interval), and a non-finite loss is only noted, on the device;
- the optimizer step decides everything at once: the non-finite flags (loss of any micro-batch since
  the last optimizer step, gradient norm) and the caller's host flags (stop request, timed save) travel
  in one 4-value all-reduce under DDP, and are read by the host once (``flags``). That is one
  collective and one sync per optimizer step; every rank takes the same branch.

A non-finite loss or gradient skips the optimizer step on every rank at once: the gradients gathered
since the last optimizer step are dropped and the model buffers the forwards moved since then
(BatchNorm statistics, fake-quant observers) are put back from a snapshot taken, with one foreach
copy, at the first micro-batch of each optimizer step. ``max_bad_steps`` skips in a row raise
NonFiniteLossError. With fp16 a non-finite gradient is the GradScaler's business (it skips and
lowers the scale), as in torch.amp.
"""
from __future__ import annotations

import math
import random
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from loguru import logger
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from datasets.dataset import to_input
from utils.amp import autocast_for, fp32, needs_grad_scaler


class NonFiniteLossError(FloatingPointError):
    """Too many consecutive steps with a non-finite loss or gradient."""


def max_targets_per_image(targets: Tensor) -> int | None:
    """The largest number of target rows of one image (ignore rows included), read on the host from
    the loader's CPU tensor before it moves (no device sync); None for a tensor already elsewhere."""
    if targets.device.type != "cpu" or not len(targets):
        return 0 if targets.device.type == "cpu" else None
    return int(np.bincount(targets[:, 0].numpy().astype(np.int64)).max())


def read_floats(values: dict) -> dict[str, float]:
    """``{name: 0-dim tensor or number}`` -> ``{name: float}`` with one device-to-host copy for all
    the tensors (the logs' one read per interval)."""
    names = [k for k, v in values.items() if isinstance(v, Tensor)]
    read = torch.stack([values[k].detach().double() for k in names]).cpu().tolist() if names else []
    return {k: float(v) for k, v in values.items()} | dict(zip(names, read))


class TrainStep:
    """``step(images, targets, flush=False) -> {loss term: 0-dim tensor}`` ({} for a skipped optimizer
    step).

    ``ddp_model`` is what runs the forward (the DDP wrapper under torchrun, set by the caller, and
    compiled with ``train.compile``);
    ``model`` the plain model whose parameters, buffers and EMA it updates. ``flush`` forces the
    optimizer step (the epoch's last batch). ``host_flags()`` -> (stop, save due): this rank's host
    flags (the trainer's ``RunControl.local``), read at each optimizer step just before the ranks
    agree on them, into ``flags`` = (stop, save due), which hold until the next optimizer step.
    ``step`` counts iterations, ``last_opt_step`` the iteration of the last optimizer step (equal:
    no accumulated gradient is pending).
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
        self.host_flags = lambda: (False, False)  # this rank's (stop, save due), set by the caller
        self.flags = (False, False)  # (stop, save due) agreed at the last optimizer step
        self._buffers = [b for b in model.buffers()]  # put back after a skipped step
        self._snapshot = [b.clone() for b in self._buffers]
        self._bad_loss: Tensor | None = None  # device bool: a non-finite loss since the last optimizer step
        self._last_bad_loss = False  # the last optimizer step was skipped for a non-finite loss
        self._local_bad = None  # this rank's non-finite-loss flag of the last optimizer step

    def __call__(self, images: Tensor, targets: Tensor, flush: bool = False) -> dict[str, Tensor]:
        accumulate = self.scheduler.schedule.accumulate_at(self.step)
        steps_now = flush or self.step + 1 - self.last_opt_step >= accumulate
        max_gt = max_targets_per_image(targets)
        images = to_input(images, self.device, self.memory_format)
        targets = targets.to(self.device, non_blocking=True)
        if self.sides is not None:
            images, targets = self.rescale(images, targets, self.side_at(self.step))
        if self.step == self.last_opt_step and self._buffers:  # the first micro-batch of an optimizer step
            torch._foreach_copy_(self._snapshot, self._buffers)
        amp = autocast_for(self.device, self.amp, self.amp_dtype)
        # Accumulated micro-batches skip DDP's gradient all-reduce; the last one syncs them all.
        ddp = getattr(self.ddp_model, "_orig_mod", self.ddp_model)  # under torch.compile: the module it compiled
        accumulating = isinstance(ddp, DDP) and not steps_now
        with ddp.no_sync() if accumulating else nullcontext():
            with amp:  # autocast around the forward only; assignment and loss run in fp32
                raw = self.ddp_model(images)
            priors = self.model.priors(tuple(images.shape[2:]), self.device)
            # raw: [B, P, D] or (main, aux)
            loss, parts = self.criterion(fp32(raw), targets, priors, max_gt=max_gt)
            self.step += 1
            bad = ~torch.isfinite(loss.detach())
            self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad
            self.scaler.scale(loss / accumulate).backward()
        out = {k: v.detach() for k, v in parts.items()} | {"total": loss.detach()}
        if steps_now:
            if not self._optimizer_step():
                return self._skip(self._why(loss), parts)
            self.bad_steps = 0
        self.scheduler.step()  # per iteration
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
        targets[:, 2:6:2] *= side / w  # x1, x2 (Python scalars: nothing copied to the device)
        targets[:, 3:6:2] *= side / h  # y1, y2
        return images.contiguous(memory_format=self.memory_format), targets

    def _agree(self, bad_loss: Tensor, bad_grad: Tensor, stop: bool, save_due: bool) -> tuple[bool, bool, bool, bool]:
        """(any rank's loss non-finite, gradient non-finite, stop, save due): one all-reduce of 4 values
        under DDP, one read by the host."""
        flags = torch.zeros(4, device=self.device)
        flags[0], flags[1] = bad_loss, bad_grad
        if stop:
            flags[2] = 1.0  # a Python scalar written by a kernel: no host-to-device copy
        if save_due:
            flags[3] = 1.0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        code = int(flags[0] + 2 * flags[1] + 4 * flags[2] + 8 * flags[3])  # the one read by the host (0/1 each)
        return bool(code & 1), bool(code & 2), bool(code & 4), bool(code & 8)

    def _optimizer_step(self) -> bool:
        """Unscale, check and clip the gradients, step, update the EMA. False (nothing changed) when a
        loss since the last optimizer step, or the gradient norm, is not finite; with fp16 the
        GradScaler skips a non-finite gradient itself."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros((), device=self.device)
        bad_loss = self._bad_loss if self._bad_loss is not None else torch.zeros((), dtype=torch.bool, device=self.device)
        self._bad_loss, self._local_bad = None, bad_loss
        self._last_bad_loss, bad_grad, *agreed = self._agree(bad_loss, ~torch.isfinite(norm), *self.host_flags())
        self.flags = tuple(agreed)
        if self._last_bad_loss or (bad_grad and not self.scaler.is_enabled()):
            return False
        if self.grad_clip > 0 and not bad_grad:
            torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_opt_step = self.step
        if self.ema is not None and not bad_grad:
            self.ema.update(self.model)
        return True

    def _why(self, loss: Tensor) -> str:
        """Why the optimizer step was skipped (a rare path: it may read the device)."""
        if not self._last_bad_loss:
            return "non-finite gradient norm"
        if not bool(self._local_bad):
            return "non-finite loss on another rank"
        value = float(loss.detach())
        return f"non-finite loss {value}" if not math.isfinite(value) else \
            "non-finite loss in an earlier micro-batch of this optimizer step"

    def _skip(self, why: str, parts: dict) -> dict[str, Tensor]:
        """A bad step never reaches the weights (see the module doc)."""
        if self._buffers:
            torch._foreach_copy_(self._buffers, self._snapshot)
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
