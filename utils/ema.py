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
        self._cache: tuple | None = None  # (model key, tensor pairs) of _pairs
        self._mixed = False  # some model tensor has another dtype than its EMA copy

    def decay_at(self, updates: int) -> float:
        """Decay used at the ``updates``-th update: 0 at 0, ``decay*(1-1/e)`` at ``tau``, -> ``decay``."""
        return self.decay * (1.0 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` (DDP-wrapped or not) into the average: two foreach
        kernels over the floating-point tensors (``ema = d * ema + (1 - d) * model``) and one copy of
        the others, instead of one kernel per tensor."""
        ema_f, src_f, ema_i, src_i = self._pairs(unwrap(model))
        self.updates += 1
        d = self.decay_at(self.updates)
        if ema_f:
            torch._foreach_mul_(ema_f, d)
            torch._foreach_add_(ema_f, [t if t.dtype == e.dtype else t.to(e.dtype) for e, t in zip(ema_f, src_f)]
                                if self._mixed else src_f, alpha=1.0 - d)
        if ema_i:
            torch._foreach_copy_(ema_i, src_i)

    def _pairs(self, src: nn.Module) -> tuple[list, list, list, list]:
        """(EMA floats, model floats, EMA others, model others), paired by state-dict name. Built once and
        kept while the model is the same object with the same first tensor (``model.to`` replaces the
        tensors' data: the pairs are built again, and the EMA copy follows the model's device)."""
        first = next(iter(src.parameters()), None)
        key = (id(src), None if first is None else (first.device, first.data_ptr()))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        model_sd = src.state_dict(keep_vars=True)
        self._follow_device(model_sd)
        pairs: tuple[list, list, list, list] = ([], [], [], [])
        for name, ema_t in self.ema.state_dict(keep_vars=True).items():
            floating = ema_t.dtype.is_floating_point
            pairs[0 if floating else 2].append(ema_t.detach())
            pairs[1 if floating else 3].append(model_sd[name].detach())
        self._mixed = any(e.dtype != t.dtype for e, t in zip(pairs[0], pairs[1]))
        self._cache = (key, pairs)
        return pairs

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
