"""SPP + PAN neck (YOLOv4 / YOLOX style): SPP on C5, top-down FPN, then bottom-up PAN."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import ConvBNAct


class SPP(nn.Module):
    """Spatial pyramid pooling: ``[B, c_in, H, W] -> [B, c_out, H, W]``.

    1x1 reduce to ``c_in // 2``, max-pools 5/9/13 (stride 1, same padding) concatenated with
    their input, 1x1 fuse. The pools widen the receptive field of the deepest map cheaply.
    """

    def __init__(self, c_in: int, c_out: int, activation: str,
                 kernels: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        hidden = c_in // 2
        self.reduce = ConvBNAct(c_in, hidden, 1, activation=activation)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in kernels)
        self.fuse = ConvBNAct(hidden * (len(kernels) + 1), c_out, 1, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        return self.fuse(torch.cat([x] + [pool(x) for pool in self.pools], dim=1))


class CSPBlock(nn.Module):
    """Small CSP block: ``[B, c_in, H, W] -> [B, c_out, H, W]``.

    Two 1x1 branches of ``c_out // 2``; one goes through a 1x1 + 3x3 bottleneck (no shortcut,
    since the input is a concat of different maps), then both are concatenated and fused by a
    1x1. Splitting halves the 3x3 cost while keeping a direct gradient path (Wang et al. 2020).
    """

    def __init__(self, c_in: int, c_out: int, activation: str) -> None:
        super().__init__()
        hidden = c_out // 2
        self.main = ConvBNAct(c_in, hidden, 1, activation=activation)
        self.short = ConvBNAct(c_in, hidden, 1, activation=activation)
        self.bottleneck = nn.Sequential(ConvBNAct(hidden, hidden, 1, activation=activation),
                                        ConvBNAct(hidden, hidden, 3, activation=activation))
        self.fuse = ConvBNAct(2 * hidden, c_out, 1, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.bottleneck(self.main(x)), self.short(x)], dim=1))


def _upsample_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Nearest upsample ``x`` to ``ref``'s spatial size (exactly 2x when H, W are multiples of 32;
    sizing by ``ref`` also handles odd sizes where strided convs rounded up)."""
    return F.interpolate(x, size=ref.shape[-2:], mode="nearest")


class SPPPAN(nn.Module):
    """SPP on C5, top-down FPN and bottom-up PAN.

    Args:
        in_channels: backbone channels ``[C3, C4, C5]`` (strides 8, 16, 32).
        out_channels: output channels ``[P3, P4, P5]`` (already width-scaled by the caller).
        activation: ``models.layers.make_activation`` name.

    ``forward([C3, C4, C5])`` returns ``[P3, P4, P5]``, each with the spatial size of its input
    level. Every parameter takes part in every forward (no unused parameters under DDP).
    """

    def __init__(self, in_channels: list[int], out_channels: list[int], activation: str) -> None:
        super().__init__()
        if len(in_channels) != 3 or len(out_channels) != 3:
            raise ValueError(f"SPPPAN needs 3 levels; got in_channels={in_channels}, "
                             f"out_channels={out_channels} (config model.neck_channels)")
        c3, c4, c5 = in_channels
        o3, o4, o5 = out_channels
        self.out_channels: list[int] = list(out_channels)
        self.spp = SPP(c5, o5, activation)
        # top-down: deeper map -> 1x1 lateral -> upsample -> concat with the shallower C -> block
        self.lateral5 = ConvBNAct(o5, o4, 1, activation=activation)
        self.td4 = CSPBlock(o4 + c4, o4, activation)
        self.lateral4 = ConvBNAct(o4, o3, 1, activation=activation)
        self.td3 = CSPBlock(o3 + c3, o3, activation)
        # bottom-up: 3x3 stride-2 downsample -> concat with the same level's lateral -> block
        self.down3 = ConvBNAct(o3, o3, 3, 2, activation=activation)
        self.bu4 = CSPBlock(o3 + o3, o4, activation)
        self.down4 = ConvBNAct(o4, o4, 3, 2, activation=activation)
        self.bu5 = CSPBlock(o4 + o4, o5, activation)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """feats: ``[C3 [B,c3,H/8,W/8], C4 [B,c4,H/16,W/16], C5 [B,c5,H/32,W/32]]``
        -> ``[P3 [B,o3,H/8,W/8], P4 [B,o4,H/16,W/16], P5 [B,o5,H/32,W/32]]``."""
        c3, c4, c5 = feats
        lat5 = self.lateral5(self.spp(c5))
        t4 = self.td4(torch.cat([_upsample_to(lat5, c4), c4], dim=1))
        lat4 = self.lateral4(t4)
        p3 = self.td3(torch.cat([_upsample_to(lat4, c3), c3], dim=1))
        p4 = self.bu4(torch.cat([self.down3(p3), lat4], dim=1))
        p5 = self.bu5(torch.cat([self.down4(p4), lat5], dim=1))
        return [p3, p4, p5]
