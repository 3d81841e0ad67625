"""Darknet backbones built from ``ConvBNAct``: Darknet-53 (YOLOv3) and a tiny plain net."""
from __future__ import annotations

import torch
from torch import nn

from models.layers import ConvBNAct, init_conv_bn, scale_channels


class DarkResidual(nn.Module):
    """1x1 conv to c/2, 3x3 conv back to c, plus identity: ``[B, c, H, W] -> same shape``."""

    def __init__(self, c: int, activation: str) -> None:
        super().__init__()
        hidden = c // 2  # c is a multiple of 8 (scale_channels), so hidden is a whole channel count
        self.reduce = ConvBNAct(c, hidden, 1, activation=activation)
        self.expand = ConvBNAct(hidden, c, 3, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(self.reduce(x))


class _StagedBackbone(nn.Module):
    """A stem then five stride-2 stages; the last three stage outputs are C3, C4, C5."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: ``[B, 3, H, W]`` -> ``[C3 (H/8), C4 (H/16), C5 (H/32)]``."""
        outs = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[2:]


class Darknet53(_StagedBackbone):
    """YOLOv3's Darknet-53 without the classifier.

    Stem 3x3 conv to 32 channels, then five stages, each a 3x3 stride-2 conv doubling the
    channels (64, 128, 256, 512, 1024 at width 1) followed by 1, 2, 8, 8, 4 residual blocks.
    Returns the last three stages ``[C3, C4, C5]`` at strides 8, 16, 32.
    """

    depths = (1, 2, 8, 8, 4)

    def __init__(self, width: float = 1.0, activation: str = "leaky_relu") -> None:
        super().__init__()
        c = scale_channels(32, width)
        self.stem = ConvBNAct(3, c, 3, activation=activation)
        stages = []
        for i, depth in enumerate(self.depths):
            c_out = scale_channels(64 * 2 ** i, width)
            layers = [ConvBNAct(c, c_out, 3, 2, activation=activation)]
            layers += [DarkResidual(c_out, activation) for _ in range(depth)]
            stages.append(nn.Sequential(*layers))
            c = c_out
        self.stages = nn.ModuleList(stages)
        self.out_channels: list[int] = [scale_channels(64 * 2 ** i, width) for i in (2, 3, 4)]
        init_conv_bn(self)


class DarknetTiny(_StagedBackbone):
    """A small plain net in the spirit of YOLOv3-tiny: 3x3 convs, each stage halved by max-pool.

    Channels 16, 32, 64, 128, 256, 512 at strides 1, 2, 4, 8, 16, 32 (width 1); the stride-32
    stage has an extra 3x3 conv so the deepest map has more context. Returns
    ``[C3, C4, C5]`` = 128, 256, 512 channels at strides 8, 16, 32.
    """

    def __init__(self, width: float = 1.0, activation: str = "leaky_relu") -> None:
        super().__init__()
        chans = [scale_channels(16 * 2 ** i, width) for i in range(6)]
        self.stem = ConvBNAct(3, chans[0], 3, activation=activation)
        stages = []
        for i in range(1, 6):
            layers = [nn.MaxPool2d(2, 2, ceil_mode=True),
                      ConvBNAct(chans[i - 1], chans[i], 3, activation=activation)]
            if i == 5:
                layers.append(ConvBNAct(chans[i], chans[i], 3, activation=activation))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.out_channels: list[int] = chans[3:]
        init_conv_bn(self)


def darknet53(width: float = 1.0, activation: str = "leaky_relu") -> Darknet53:
    """Darknet-53; C3/C4/C5 = 256/512/1024 channels at width 1."""
    return Darknet53(width, activation)


def darknet_tiny(width: float = 1.0, activation: str = "leaky_relu") -> DarknetTiny:
    """Tiny plain Darknet; C3/C4/C5 = 128/256/512 channels at width 1."""
    return DarknetTiny(width, activation)
