"""Coders: the one place that turns raw head outputs plus priors into boxes and scores.

``AnchorCoder`` subclasses decode the anchor heads. Raw slot layout: [tx, ty, tw, th, objectness,
class_0 ... class_{nc-1}] (logits). The centre decoding follows the assignment method, because a
slot must be able to reach every GT centre its assigner may give it: ``CellCoder`` (the own
cell), ``NearbyCoder`` (the 3x3 block), ``LinearCoder`` (unbounded offsets scaled by the anchor),
``V7Coder`` (the YOLOv5 / YOLOv7 decode). Sizes are anchor * exp(t), t clamped so a wild early
prediction cannot overflow (V7Coder: up to 4x the anchor).

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
    """Base of the anchor-head coders; a subclass says how a slot's centre (and size) decode."""

    has_objectness = True

    def centres(self, t_xy: Tensor, priors: Priors) -> Tensor:
        """t_xy [B, P, 2] -> box centres [B, P, 2], input pixels."""
        raise NotImplementedError

    def sizes(self, t_wh: Tensor, priors: Priors) -> Tensor:
        """t_wh [B, P, 2] -> box sizes [B, P, 2]: anchor * exp(t), t clamped against overflow."""
        return priors.anchor_wh * t_wh.clamp(max=MAX_LOG_WH).exp()

    def decode_boxes(self, raw: Tensor, priors: Priors) -> Tensor:
        """raw: [B, P, D] -> boxes [B, P, 4] xyxy, input pixels."""
        cxcy = self.centres(raw[..., 0:2], priors)
        return cxcywh_to_xyxy(torch.cat((cxcy, self.sizes(raw[..., 2:4], priors)), -1))

    def objectness_logits(self, raw: Tensor) -> Tensor:
        """[B, P, D] -> [B, P] objectness logits."""
        return raw[..., 4]

    def class_logits(self, raw: Tensor) -> Tensor:
        """[B, P, D] -> [B, P, nc] class logits."""
        return raw[..., 5:]

    def scores(self, raw: Tensor) -> Tensor:
        """[B, P, D] -> [B, P, nc] detection scores: P(object) * P(class | object)."""
        return raw[..., 4:5].sigmoid() * raw[..., 5:].sigmoid()


class CellCoder(AnchorCoder):
    """Centre inside the slot's own cell: (grid + sigmoid(t)) * stride (single_grid)."""

    def centres(self, t_xy: Tensor, priors: Priors) -> Tensor:
        return (priors.grid_xy + t_xy.sigmoid()) * priors.stride[:, None]


class NearbyCoder(AnchorCoder):
    """Centre inside the 3x3 block around the cell: (grid + 3 * sigmoid(t) - 1) * stride (nearby_grid)."""

    def centres(self, t_xy: Tensor, priors: Priors) -> Tensor:
        return (priors.grid_xy + 3.0 * t_xy.sigmoid() - 1.0) * priors.stride[:, None]


class LinearCoder(AnchorCoder):
    """Unbounded centre: cell centre + t * anchor size (all_grid, and the methods whose positives
    may lie several cells from the GT centre)."""

    def centres(self, t_xy: Tensor, priors: Priors) -> Tensor:
        return priors.centers + t_xy * priors.anchor_wh


class V7Coder(AnchorCoder):
    """The YOLOv5 / YOLOv7 decode (ratio_grid): centre (grid + 2 * sigmoid(t) - 0.5) * stride, the own
    cell and half of each neighbour; size (2 * sigmoid(t))^2 * anchor, at most 4x the anchor."""

    def centres(self, t_xy: Tensor, priors: Priors) -> Tensor:
        return (priors.grid_xy + 2.0 * t_xy.sigmoid() - 0.5) * priors.stride[:, None]

    def sizes(self, t_wh: Tensor, priors: Priors) -> Tensor:
        return (2.0 * t_wh.sigmoid()) ** 2 * priors.anchor_wh


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


# Assigners name the coder their slots need (``Assigner.coders``); the model builder makes it from here.
CODERS = {"cell": CellCoder, "nearby": NearbyCoder, "linear": LinearCoder, "v7": V7Coder,
          "distance": DistanceCoder}
