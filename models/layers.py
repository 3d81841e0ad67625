"""Small building blocks shared by backbones, necks and heads."""
from __future__ import annotations

import math

from torch import nn

# name -> factory; every activation is parameter-free, so swapping one never changes
# state-dict names (a torchvision ResNet checkpoint loads whatever activation is chosen).
_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.1, inplace=True),  # YOLOv3's slope
    "silu": lambda: nn.SiLU(inplace=True),
    "mish": lambda: nn.Mish(inplace=True),
    "hardswish": lambda: nn.Hardswish(inplace=True),
}


def make_activation(name: str) -> nn.Module:
    """Return a new activation module for ``name`` (config key ``model.activation``).

    Raises ValueError listing the valid names when ``name`` is unknown.
    """
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"model.activation: unknown activation {name!r}; valid: {sorted(_ACTIVATIONS)}"
        ) from None


def scale_channels(c: int, width: float, divisor: int = 8) -> int:
    """Channel count ``c * width`` rounded to the nearest multiple of ``divisor``, >= divisor.

    Multiples of 8 keep vectorised / tensor-core kernels efficient. Rounding to the nearest
    multiple keeps the network close to the requested width; when that would fall more than
    10% below ``c * width`` the next multiple up is taken (the usual ``make_divisible`` rule).
    Examples: (64, 0.75) -> 48, (64, 0.1) -> 8, (100, 1.0) -> 104.
    """
    if width <= 0:
        raise ValueError(f"model.channel_sparsity: width must be > 0, got {width}")
    scaled = max(divisor, int(c * width + divisor / 2) // divisor * divisor)
    if scaled < 0.9 * c * width:  # rounding down lost more than 10%: go one step up
        scaled += divisor
    return scaled


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias, since BN supplies it) + BatchNorm2d + activation.

    Input ``[B, c_in, H, W]`` -> output ``[B, c_out, ceil(H / s), ceil(W / s)]`` (padding k // 2,
    odd k). Submodule names are ``conv``, ``bn``, ``act``.
    """

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1,
                 activation: str = "leaky_relu", groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = make_activation(activation)


def init_conv_bn(module: nn.Module) -> None:
    """He-normal conv weights (fan_out, as torchvision's ResNet) and BN gamma=1, beta=0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                bound = 1 / math.sqrt(max(1, m.weight[0].numel()))
                nn.init.uniform_(m.bias, -bound, bound)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
