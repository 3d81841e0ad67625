"""The YOLOv9 / GELAN anchor-free detection head (MIT "Detection", ORIG "DDetect"; spec section 3.1).

Per level a box branch (``anchor_conv``) predicting 4 x 16 distance-bin logits and a class branch
(``class_conv``) predicting class logits. The head does not decode: the DFL expectation and the
box arithmetic belong to the coder (models.coders.DistanceCoder).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.blocks import Conv

REG_MAX = 16  # distance bins per box side
BOX_GROUPS = 4  # the box branch runs one group per side


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class DFLLevelHead(nn.Module):
    """One level: [B, ci, h, w] -> [B, 4 * REG_MAX + nc, h, w], channels = box bins then classes.

    first_ch: channels of the first (P3) input of the head group; it sets both branch widths, so
    every level of a group has the same widths (Cb and Cc of spec section 3.1).
    """

    def __init__(self, first_ch: int, ci: int, num_classes: int) -> None:
        super().__init__()
        cb = max(_round_up(first_ch // 4, BOX_GROUPS), 4 * REG_MAX, REG_MAX)
        cc = max(first_ch, min(2 * num_classes, 128))
        self.anchor_conv = nn.Sequential(
            Conv(ci, cb, 3), Conv(cb, cb, 3, g=BOX_GROUPS), nn.Conv2d(cb, 4 * REG_MAX, 1, groups=BOX_GROUPS))
        self.class_conv = nn.Sequential(Conv(ci, cc, 3), Conv(cc, cc, 3), nn.Conv2d(cc, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.anchor_conv(x), self.class_conv(x)), 1)


class DFLHead(nn.Module):
    """forward(feats: per-level [B, ci, h, w], P3 first) -> raw [B, P, 4 * REG_MAX + nc].

    Slots: levels in order, then row, then column. Channels per slot: side-major box-bin logits
    [l_0..l_15, t_0..t_15, r_0..r_15, b_0..b_15] (a side's distance is the softmax expectation
    over its bins, in stride units), then the class logits.

    ``anc2vec_bins`` holds the DFL projection [0, 1, ..., 15] as a frozen parameter: one per head
    group as in ORIG (so parameter counts match the published ones); forward does not use it.
    """

    def __init__(self, in_channels: list[int], num_classes: int, strides: list[int]) -> None:
        super().__init__()
        if len(in_channels) != len(strides):
            raise ValueError(f"DFLHead: {len(in_channels)} input levels but {len(strides)} strides")
        self.num_classes = num_classes
        self.out_dim = 4 * REG_MAX + num_classes
        self.heads = nn.ModuleList(DFLLevelHead(in_channels[0], c, num_classes) for c in in_channels)
        self.anc2vec_bins = nn.Parameter(torch.arange(REG_MAX, dtype=torch.float32), requires_grad=False)
        self.init_biases(strides)

    @torch.no_grad()
    def init_biases(self, strides: list[int]) -> None:
        """ORIG priors: box bias 1.0; class bias log(5 / nc / (640 / s)^2), i.e. about 5 objects
        expected per 640x640 image spread over the cells of a stride-s level."""
        for head, s in zip(self.heads, strides):
            head.anchor_conv[-1].bias.fill_(1.0)
            head.class_conv[-1].bias.fill_(math.log(5 / self.num_classes / (640 / s) ** 2))

    def forward(self, feats: list[Tensor]) -> Tensor:
        out = [head(x).flatten(2) for head, x in zip(self.heads, feats)]
        return torch.cat(out, 2).transpose(1, 2).contiguous()
