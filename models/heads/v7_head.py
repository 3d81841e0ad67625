"""The YOLOv7 anchor-based head ``IDetect`` (spec section 3.3): per level ImplicitA -> 1x1 conv ->
ImplicitM, with ``num_anchors`` anchors per cell and slots [x, y, w, h, obj, cls...] (logits).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.blocks import ImplicitA, ImplicitM


class IDetectLevel(nn.Module):
    """One level: [B, ci, h, w] -> [B, A * (5 + nc), h, w], anchor-major channels.

    Children ``implicit_a``, ``head_conv``, ``implicit_m`` (MIT names). ``fuse()`` folds both
    implicit tensors into the convolution exactly and resets them to the identity (0 and 1): the
    level keeps its structure and state-dict names, and its parameter count stays the one ORIG
    reports for the fused model (ORIG keeps the folded tensors too).
    """

    def __init__(self, ci: int, num_classes: int, num_anchors: int) -> None:
        super().__init__()
        co = num_anchors * (5 + num_classes)
        self.implicit_a = ImplicitA(ci)
        self.head_conv = nn.Conv2d(ci, co, 1)
        self.implicit_m = ImplicitM(co)

    def forward(self, x: Tensor) -> Tensor:
        return self.implicit_m(self.head_conv(self.implicit_a(x)))

    @torch.no_grad()
    def fuse(self) -> None:
        # m * (W (x + a) + b) = (m W) x + m (W a + b); folding twice is a no-op (a = 0, m = 1).
        w = self.head_conv.weight  # [co, ci, 1, 1]
        a = self.implicit_a.implicit.view(-1)
        m = self.implicit_m.implicit.view(-1)
        self.head_conv.bias.copy_((self.head_conv.bias + w.flatten(1) @ a) * m)
        self.head_conv.weight.mul_(m[:, None, None, None])
        self.implicit_a.implicit.zero_()
        self.implicit_m.implicit.fill_(1.0)


class IDetectHead(nn.Module):
    """forward(feats: per-level [B, ci, h, w], P3 first) -> raw [B, P, 5 + nc].

    Slots: level, row, column, anchor (anchor innermost, matching models.priors).
    """

    def __init__(self, in_channels: list[int], num_classes: int, num_anchors: int,
                 strides: list[int]) -> None:
        super().__init__()
        if len(in_channels) != len(strides):
            raise ValueError(f"IDetectHead: {len(in_channels)} input levels but {len(strides)} strides")
        self.num_classes, self.num_anchors = num_classes, num_anchors
        self.out_dim = 5 + num_classes
        self.heads = nn.ModuleList(IDetectLevel(c, num_classes, num_anchors) for c in in_channels)
        self.init_biases(strides)

    @torch.no_grad()
    def init_biases(self, strides: list[int]) -> None:
        """YOLOv5/v7 priors: objectness log(8 / (640 / s)^2) (about 8 objects per 640 image),
        classes log(0.6 / (nc - 0.99))."""
        for head, s in zip(self.heads, strides):
            b = head.head_conv.bias.view(self.num_anchors, self.out_dim)
            b[:, 4] += math.log(8 / (640 / s) ** 2)
            b[:, 5:] += math.log(0.6 / (self.num_classes - 0.99))

    def forward(self, feats: list[Tensor]) -> Tensor:
        out = []
        for head, x in zip(self.heads, feats):
            y = head(x)
            b, _, h, w = y.shape
            y = y.view(b, self.num_anchors, self.out_dim, h, w).permute(0, 3, 4, 1, 2)
            out.append(y.reshape(b, h * w * self.num_anchors, self.out_dim))
        return torch.cat(out, 1)
