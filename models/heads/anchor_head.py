"""Three-scale anchor head: per level a 3x3 conv block and a 1x1 prediction conv."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.layers import ConvBNAct


class AnchorHead(nn.Module):
    """forward(feats) -> raw [B, P, 5 + nc], slots ordered level, row, column, anchor.

    in_channels: channels of each neck level; num_anchors: anchors per cell.
    """

    def __init__(self, in_channels: list[int], num_classes: int, num_anchors: int = 3,
                 activation: str = "leaky_relu", obj_prior: float = 0.01) -> None:
        super().__init__()
        self.num_classes, self.num_anchors = num_classes, num_anchors
        self.out_dim = 5 + num_classes
        self.stems = nn.ModuleList(ConvBNAct(c, c, 3, activation=activation) for c in in_channels)
        self.preds = nn.ModuleList(nn.Conv2d(c, num_anchors * self.out_dim, 1) for c in in_channels)
        self._init_bias(obj_prior)

    def _init_bias(self, obj_prior: float) -> None:
        # Start with low objectness and near-uniform classes so the first steps are not
        # dominated by a flood of confident false positives (focal-loss paper, sec. 4.1).
        for conv in self.preds:
            b = conv.bias.view(self.num_anchors, self.out_dim)
            with torch.no_grad():
                b.zero_()
                b[:, 4] = math.log(obj_prior / (1 - obj_prior))
                b[:, 5:] = math.log(1.0 / max(self.num_classes, 2))

    def forward(self, feats: list[Tensor]) -> Tensor:
        out = []
        for x, stem, pred in zip(feats, self.stems, self.preds):
            y = pred(stem(x))
            b, _, h, w = y.shape
            y = y.view(b, self.num_anchors, self.out_dim, h, w).permute(0, 3, 4, 1, 2)
            out.append(y.reshape(b, h * w * self.num_anchors, self.out_dim))
        return torch.cat(out, 1)
