"""Coders: the one place that turns raw head outputs plus priors into boxes and scores.

``AnchorCoder`` decodes the anchor heads. Raw slot layout: [tx, ty, tw, th, objectness,
class_0 ... class_{nc-1}] (logits). The centre offset mode follows the assignment method,
because a slot must be able to reach every GT centre its assigner may give it:
- "cell"   (single_grid):  centre = (grid + sigmoid(t)) * stride, range: the own cell;
- "nearby" (nearby_grid):  centre = (grid + 3 * sigmoid(t) - 1) * stride, range: the 3x3 block;
- "linear" (all_grid):     centre = cell centre + t * anchor size, unbounded;
- "v7"     (ratio_grid):   centre = (grid + 2 * sigmoid(t) - 0.5) * stride, range: the own cell
  and half of each neighbour; size = (2 * sigmoid(t))^2 * anchor, at most 4x the anchor
  (the YOLOv5 / YOLOv7 decode).
In the other modes sizes are anchor * exp(t), with t clamped so a wild early prediction cannot
overflow.

``DistanceCoder`` decodes the anchor-free DFL heads (YOLOv9 / GELAN): per slot 4 * reg_max
box-bin logits, side-major [l_0..l_{R-1}, t_0.., r_0.., b_0..], then the class logits. Each side
is a softmax over its bins and the distance is its expectation, in stride units, measured from
the cell centre.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from models.priors import Priors
from utils.boxes import cxcywh_to_xyxy

MAX_LOG_WH = math.log(64.0)  # a box may grow to at most 64x its anchor


class AnchorCoder:
    """Decoder of the anchor head. ``mode``: cell | nearby | linear | v7 (see module docstring)."""

    has_objectness = True
    modes = ("cell", "nearby", "linear", "v7")

    def __init__(self, mode: str) -> None:
        if mode not in self.modes:
            raise ValueError(f"unknown coder mode {mode!r}; valid: {list(self.modes)}")
        self.mode = mode

    def decode_boxes(self, raw: Tensor, priors: Priors) -> Tensor:
        """raw: [B, P, D] -> boxes [B, P, 4] xyxy, input pixels."""
        t_xy, t_wh = raw[..., 0:2], raw[..., 2:4]
        stride = priors.stride[:, None]
        if self.mode == "v7":
            cxcy = (priors.grid_xy + 2.0 * t_xy.sigmoid() - 0.5) * stride
            wh = (2.0 * t_wh.sigmoid()) ** 2 * priors.anchor_wh
            return cxcywh_to_xyxy(torch.cat((cxcy, wh), -1))
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


class DistanceCoder:
    """Decoder of the anchor-free DFL head: raw [B, P, 4 * reg_max + nc] (see module docstring)."""

    has_objectness = False

    def __init__(self, reg_max: int = 16) -> None:
        if reg_max < 2:
            raise ValueError(f"DistanceCoder reg_max must be >= 2, got {reg_max}")
        self.reg_max = reg_max

    def bin_logits(self, raw: Tensor) -> Tensor:
        """[B, P, D] -> [B, P, 4, reg_max] box-bin logits, sides in the order l, t, r, b."""
        return raw[..., : 4 * self.reg_max].unflatten(-1, (4, self.reg_max))

    def distances(self, raw: Tensor) -> Tensor:
        """[B, P, D] -> [B, P, 4] ltrb distances from the cell centre, stride units, in [0, reg_max - 1]."""
        bins = torch.arange(self.reg_max, dtype=raw.dtype, device=raw.device)
        # The expectation sum_k k * p_k as a matmul: exports to a plain MatMul (no Conv3D / Gather).
        return self.bin_logits(raw).softmax(-1) @ bins

    def decode_boxes(self, raw: Tensor, priors: Priors) -> Tensor:
        """raw: [B, P, D] -> boxes [B, P, 4] xyxy, input pixels."""
        d = self.distances(raw) * priors.stride[:, None]
        c = priors.centers
        return torch.cat((c - d[..., :2], c + d[..., 2:]), -1)

    def class_logits(self, raw: Tensor) -> Tensor:
        """[B, P, D] -> [B, P, nc] class logits."""
        return raw[..., 4 * self.reg_max:]

    def scores(self, raw: Tensor) -> Tensor:
        """[B, P, D] -> [B, P, nc] class probabilities (there is no objectness term)."""
        return self.class_logits(raw).sigmoid()


CODERS = {"anchor": AnchorCoder, "distance": DistanceCoder}
