"""ResNet-18/34/50 (He et al. 2016) as a three-level detection backbone.

Parameter and buffer names equal torchvision's ``ResNet`` (``conv1``, ``bn1``,
``layer1..layer4``, blocks with ``conv1/bn1/conv2/bn2(/conv3/bn3)`` and
``downsample.0/downsample.1``), minus the classifier ``fc``, so that at width 1.0 a
torchvision ImageNet state dict saved with ``torch.save(model.state_dict())`` loads
key for key (see ``models.backbones.load_pretrained``). The bottleneck puts its stride
on the 3x3 conv ("ResNet v1.5"), as torchvision does.
"""
from __future__ import annotations

import torch
from torch import nn

from models.layers import init_conv_bn, make_activation, scale_channels

STAGE_PLANES = (64, 128, 256, 512)  # bottleneck widths of layer1..layer4 at width 1.0


def _conv(c_in: int, c_out: int, k: int, s: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs plus identity: ``[B, c_in, H, W] -> [B, planes, H/s, W/s]``."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, activation: str) -> None:
        super().__init__()
        self.conv1 = _conv(c_in, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act = make_activation(activation)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(c_in, planes, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand plus identity: ``-> [B, 4 * planes, H/s, W/s]``."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, activation: str) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = _conv(c_in, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, c_out, 1)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.act = make_activation(activation)
        self.downsample = _shortcut(c_in, c_out, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + identity)


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Sequential | None:
    """1x1 strided conv + BN when the identity's shape changes (torchvision's ``downsample``)."""
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(_conv(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out))


class ResNet(nn.Module):
    """ResNet trunk returning layer2/3/4 outputs ``[C3, C4, C5]`` at strides 8, 16, 32.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        depths: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        width: channel multiplier (config ``model.channel_sparsity``) applied through
            ``scale_channels`` to the stem and every stage's planes.
        activation: replaces torchvision's ReLU everywhere (parameter-free, names unchanged).
        zero_init_residual: zero the last BN gamma of each block (see ``_init_weights``).
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], depths: tuple[int, ...],
                 width: float = 1.0, activation: str = "relu",
                 zero_init_residual: bool = True) -> None:
        super().__init__()
        stem = scale_channels(64, width)
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.act = make_activation(activation)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in, outs = stem, []
        for i, (planes, depth) in enumerate(zip(STAGE_PLANES, depths)):
            planes = scale_channels(planes, width)
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                blocks.append(block(c_in, planes, stride if j == 0 else 1, activation))
                c_in = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            outs.append(c_in)
        self.out_channels: list[int] = outs[1:]
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        init_conv_bn(self)
        if zero_init_residual:
            # Each residual block then starts as the identity, so the deep net behaves like a
            # shallow one early in training and trains stably with large lr / batch
            # (Goyal et al. 2017, "Accurate, Large Minibatch SGD", sec. 5.1). Pretrained
            # weights, when loaded, overwrite these gammas.
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn.weight)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: ``[B, 3, H, W]`` normalised image -> ``[C3 (H/8), C4 (H/16), C5 (H/32)]``."""
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        c3 = self.layer2(self.layer1(x))
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


def resnet18(width: float = 1.0, activation: str = "relu") -> ResNet:
    """ResNet-18: BasicBlock x (2, 2, 2, 2); C3/C4/C5 = 128/256/512 channels at width 1."""
    return ResNet(BasicBlock, (2, 2, 2, 2), width, activation)


def resnet34(width: float = 1.0, activation: str = "relu") -> ResNet:
    """ResNet-34: BasicBlock x (3, 4, 6, 3); C3/C4/C5 = 128/256/512 channels at width 1."""
    return ResNet(BasicBlock, (3, 4, 6, 3), width, activation)


def resnet50(width: float = 1.0, activation: str = "relu") -> ResNet:
    """ResNet-50: Bottleneck x (3, 4, 6, 3); C3/C4/C5 = 512/1024/2048 channels at width 1."""
    return ResNet(Bottleneck, (3, 4, 6, 3), width, activation)
