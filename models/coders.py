"""Coders: the one place that turns raw head outputs plus priors into boxes and scores.

Raw anchor-head slot layout: [tx, ty, tw, th, objectness, class_0 ... class_{nc-1}] (logits).
The centre offset mode follows the assignment method, because a slot must be able to
reach every GT centre its assigner may give it:
- "cell"   (single_grid):  centre = (grid + sigmoid(t)) * stride, range: the own cell;
- "nearby" (nearby_grid):  centre = (grid + 3 * sigmoid(t) - 1) * stride, range: the 3x3 block;
- "linear" (all_grid):     centre = cell centre + t * anchor size, unbounded.
Sizes are anchor * exp(t), with t clamped so a wild early prediction cannot overflow.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from models.priors import Priors
from utils.boxes import cxcywh_to_xyxy

MAX_LOG_WH = math.log(64.0)  # a box may grow to at most 64x its anchor


class AnchorCoder:
    """Decoder of the anchor head. ``mode``: cell | nearby | linear (see module docstring)."""

    has_objectness = True
    modes = ("cell", "nearby", "linear")

    def __init__(self, mode: str) -> None:
        if mode not in self.modes:
            raise ValueError(f"unknown coder mode {mode!r}; valid: {list(self.modes)}")
        self.mode = mode

    def decode_boxes(self, raw: Tensor, priors: Priors) -> Tensor:
        """raw: [B, P, D] -> boxes [B, P, 4] xyxy, input pixels."""
        t_xy, t_wh = raw[..., 0:2], raw[..., 2:4]
        stride = priors.stride[:, None]
        if self.mode == "cell":
            cxcy = (priors.grid_xy + t_xy.sigmoid()) * stride
        elif self.mode == "nearby":
            cxcy = (priors.grid_xy + 3.0 * t_xy.sigmoid() - 1.0) * stride
        else:
            cxcy = priors.centers + t_xy * priors.anchor_wh
        wh = priors.anchor_wh * t_wh.clamp(max=MAX_LOG_WH).exp()
        return cxcywh_to_xyxy(torch.cat((cxcy, wh), -1))

    def objectness_logits(self, raw: Tensor) -> Tensor:
        """[B, P, D] -> [B, P] objectness logits."""
        return raw[..., 4]

    def class_logits(self, raw: Tensor) -> Tensor:
        """[B, P, D] -> [B, P, nc] class logits."""
        return raw[..., 5:]

    def scores(self, raw: Tensor) -> Tensor:
        """[B, P, D] -> [B, P, nc] detection scores: P(object) * P(class | object)."""
        return raw[..., 4:5].sigmoid() * raw[..., 5:].sigmoid()


CODERS = {"anchor": AnchorCoder}
