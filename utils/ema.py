"""Exponential moving average of model weights (used for validation and the best checkpoint)."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from utils.dist import unwrap


class ModelEMA:
    """Keeps ``ema = d * ema + (1 - d) * model`` for every floating-point parameter and buffer.

    The decay ramps up with the number of updates::

        decay_at(updates) = decay * (1 - exp(-updates / tau))

    so early (random) weights are forgotten quickly. It approaches ``decay`` but never
    exceeds it, and ``decay < 1`` is enforced, so the average never freezes. Integer
    buffers (e.g. BatchNorm ``num_batches_tracked``) are copied, not averaged.

    Attributes:
        ema: the averaged copy, in eval mode, with ``requires_grad=False``.
        updates: number of ``update`` calls so far (saved in the checkpoint).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay} (train.ema_decay)")
        if tau <= 0:
            raise ValueError(f"EMA tau must be > 0 updates, got {tau} (train.ema_tau)")
        self.ema = copy.deepcopy(unwrap(model)).eval()
        self.ema.requires_grad_(False)
        self.decay = float(decay)
        self.tau = float(tau)
        self.updates = int(updates)

    def decay_at(self, updates: int) -> float:
        """Decay used at the ``updates``-th update: 0 at 0, ``decay*(1-1/e)`` at ``tau``, -> ``decay``."""
        return self.decay * (1.0 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` (DDP-wrapped or not) into the average."""
        src = unwrap(model).state_dict()
        self._follow_device(src)
        self.updates += 1
        d = self.decay_at(self.updates)
        for name, ema_t in self.ema.state_dict().items():
            model_t = src[name].detach()
            if ema_t.dtype.is_floating_point:
                ema_t.mul_(d).add_(model_t.to(ema_t.dtype), alpha=1.0 - d)
            else:
                ema_t.copy_(model_t)

    def _follow_device(self, src: dict[str, torch.Tensor]) -> None:
        """Move the EMA copy to the model's device (e.g. after model.to('cuda'))."""
        first = next(iter(src.values()), None)
        ema_first = next(iter(self.ema.state_dict().values()), None)
        if first is not None and ema_first is not None and ema_first.device != first.device:
            self.ema.to(first.device)

    def state_dict(self) -> dict:
        """``{"model": state dict of the averaged copy, "updates": int}``."""
        return {"model": self.ema.state_dict(), "updates": int(self.updates)}

    def load_state_dict(self, d: dict) -> None:
        """Restore from :meth:`state_dict` output (weights and update count)."""
        self.ema.load_state_dict(d["model"])
        self.updates = int(d["updates"])
