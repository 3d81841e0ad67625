"""Building blocks of YOLOv9 / GELAN / YOLOv7 / YOLO-RD (spec /work/shared/YOLOV9.md, section 2).

Attribute names follow the MIT release (spec section 8.1), so its state dicts load by key.
Blocks that can be re-parameterised for deployment have a ``fuse()`` that converts them in
place: ``Conv`` folds its BatchNorm into the convolution, ``RepConv`` merges both branches
into one 3x3 convolution. Fusion changes state-dict names, so load weights before fusing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# BN settings of the original code (ORIG sets them in initialize_weights, MIT in the constructor).
BN_EPS, BN_MOMENTUM = 1e-3, 0.03


class Conv(nn.Module):
    """Conv2d (no bias, padding k // 2) -> BatchNorm2d -> SiLU; ``act=False`` gives ConvNA.

    [B, ci, H, W] -> [B, co, ceil(H / s), ceil(W / s)]. Children: ``conv``, ``bn``, ``act``.
    """

    def __init__(self, ci: int, co: int, k: int = 1, s: int = 1, g: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ci, co, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(co, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fused_weight_bias(self) -> tuple[Tensor, Tensor]:
        """(weight, bias) of one conv equal to conv -> bn (in eval mode); valid fused or not."""
        w = self.conv.weight
        b = self.conv.bias if self.conv.bias is not None else torch.zeros_like(w[:, 0, 0, 0])
        if isinstance(self.bn, nn.BatchNorm2d):
            scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
            w = w * scale[:, None, None, None]
            b = self.bn.bias + (b - self.bn.running_mean) * scale
        return w, b

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the BatchNorm into the convolution (which gains a bias) and drop it."""
        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        w, b = self.fused_weight_bias()
        self.conv.weight = nn.Parameter(w)
        self.conv.bias = nn.Parameter(b)
        self.bn = nn.Identity()


class RepConv(nn.Module):
    """act(ConvNA_kxk(x) + ConvNA_1x1(x)): ORIG RepConvN (v9) and the v7 RepConv (no identity branch
    is ever used in these models). Children ``conv1`` (k x k), ``conv2`` (1 x 1), ``act``.

    ``fuse()`` replaces both branches by the single k x k convolution ``fused`` (with bias).
    """

    def __init__(self, ci: int, co: int, k: int = 3) -> None:
        super().__init__()
        self.conv1 = Conv(ci, co, k, act=False)
        self.conv2 = Conv(ci, co, 1, act=False)
        self.act = nn.SiLU()
        self.register_module("fused", None)

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        return self.act(self.conv1(x) + self.conv2(x))

    @torch.no_grad()
    def fuse(self) -> None:
        if self.fused is not None:
            return
        w1, b1 = self.conv1.fused_weight_bias()
        w2, b2 = self.conv2.fused_weight_bias()
        k = w1.shape[-1]
        w2 = F.pad(w2, [k // 2] * 4)  # the 1x1 kernel sits at the centre of the kxk one
        conv = nn.Conv2d(w1.shape[1], w1.shape[0], k, 1, k // 2, bias=True).to(w1.device, w1.dtype)
        conv.weight.copy_(w1 + w2)
        conv.bias.copy_(b1 + b2)
        del self.conv1, self.conv2
        self.fused = conv


class Bottleneck(nn.Module):
    """RepNBottleneck: x + Conv3x3(RepConv(x)), channels c -> c. Children ``conv1``, ``conv2``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = RepConv(c, c, 3)
        self.conv2 = Conv(c, c, 3)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.conv1(x))


class RepNCSP(nn.Module):
    """CSP block: conv3(cat[bottleneck^n(conv1(x)), conv2(x)]), ci -> co, hidden co // 2."""

    def __init__(self, ci: int, co: int, n: int = 1) -> None:
        super().__init__()
        h = co // 2
        self.conv1 = Conv(ci, h, 1)
        self.conv2 = Conv(ci, h, 1)
        self.conv3 = Conv(2 * h, co, 1)
        self.bottleneck = nn.Sequential(*(Bottleneck(h) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(torch.cat((self.bottleneck(self.conv1(x)), self.conv2(x)), 1))


class ELAN(nn.Module):
    """ORIG ELAN1: split conv1(x) into [a, b]; c = conv2(b); d = conv3(c); conv4(cat[a, b, c, d])."""

    def __init__(self, ci: int, co: int, part: int, proc: int | None = None) -> None:
        super().__init__()
        proc = part // 2 if proc is None else proc
        self.conv1 = Conv(ci, part, 1)
        self.conv2 = Conv(part // 2, proc, 3)
        self.conv3 = Conv(proc, proc, 3)
        self.conv4 = Conv(part + 2 * proc, co, 1)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.conv1(x).chunk(2, 1)
        c = self.conv2(b)
        d = self.conv3(c)
        return self.conv4(torch.cat((a, b, c, d), 1))


class RepNCSPELAN(ELAN):
    """ORIG RepNCSPELAN4: ELAN whose two processing steps are RepNCSP(n) -> Conv3x3.

    Children ``conv1``, ``conv2`` = (RepNCSP, Conv), ``conv3`` = (RepNCSP, Conv), ``conv4``;
    forward is ELAN's.
    """

    def __init__(self, ci: int, co: int, part: int, proc: int | None = None, n: int = 1) -> None:
        nn.Module.__init__(self)  # same skeleton as ELAN, other processing steps
        proc = part // 2 if proc is None else proc
        self.conv1 = Conv(ci, part, 1)
        self.conv2 = nn.Sequential(RepNCSP(part // 2, proc, n), Conv(proc, proc, 3))
        self.conv3 = nn.Sequential(RepNCSP(proc, proc, n), Conv(proc, proc, 3))
        self.conv4 = Conv(part + 2 * proc, co, 1)


class AConv(nn.Module):
    """Downsample: AvgPool(2, stride 1) then Conv3x3 stride 2. Child ``conv``."""

    def __init__(self, ci: int, co: int) -> None:
        super().__init__()
        self.avg_pool = nn.AvgPool2d(2, 1, 0)
        self.conv = Conv(ci, co, 3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.avg_pool(x))


class ADown(nn.Module):
    """Downsample: AvgPool(2, 1), halves -> [Conv3x3 s2, MaxPool(3, 2, 1) -> Conv1x1], concat."""

    def __init__(self, ci: int, co: int) -> None:
        super().__init__()
        self.avg_pool = nn.AvgPool2d(2, 1, 0)
        self.conv1 = Conv(ci // 2, co // 2, 3, 2)
        self.max_pool = nn.MaxPool2d(3, 2, 1)
        self.conv2 = Conv(ci // 2, co // 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.avg_pool(x).chunk(2, 1)
        return torch.cat((self.conv1(x1), self.conv2(self.max_pool(x2))), 1)


class SPPELAN(nn.Module):
    """conv1 to ``neck`` channels, three MaxPool(5, 1, 2) applied in sequence, conv5 of all four."""

    def __init__(self, ci: int, co: int, neck: int | None = None) -> None:
        super().__init__()
        neck = co // 2 if neck is None else neck
        self.conv1 = Conv(ci, neck, 1)
        self.pools = nn.ModuleList(nn.MaxPool2d(5, 1, 2) for _ in range(3))
        self.conv5 = Conv(4 * neck, co, 1)

    def forward(self, x: Tensor) -> Tensor:
        ys = [self.conv1(x)]
        for pool in self.pools:
            ys.append(pool(ys[-1]))
        return self.conv5(torch.cat(ys, 1))


class CBLinear(nn.Module):
    """One plain 1x1 Conv2d with bias (no BN, no activation) whose output is split into ``cos``."""

    def __init__(self, ci: int, cos: list[int]) -> None:
        super().__init__()
        self.out_channels = list(cos)
        self.conv = nn.Conv2d(ci, sum(cos), 1, bias=True)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return self.conv(x).split(self.out_channels, 1)


class CBFuse(nn.Module):
    """target + sum of chunk ``idx[j]`` of routed source j, each resized (nearest) to the target."""

    def __init__(self, idx: list[int]) -> None:
        super().__init__()
        self.idx = list(idx)

    def forward(self, xs: list) -> Tensor:
        target = xs[-1]
        out = target
        for pick, routed in zip(self.idx, xs[:-1]):
            out = out + F.interpolate(routed[pick], size=target.shape[2:], mode="nearest")
        return out


class Concat(nn.Module):
    """Concatenate along channels, in the listed order."""

    def forward(self, xs: list[Tensor]) -> Tensor:
        return torch.cat(xs, 1)


class UpSample(nn.Module):
    """Nearest-neighbour upsampling by 2."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class Pool(nn.Module):
    """v7 "MP": MaxPool(2, 2)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, 2, 2)


class SPPCSPC(nn.Module):
    """YOLOv7 SPP-CSP block, ci -> co, hidden co. Pools 5/9/13 run in parallel on the same input
    (as in ORIG v7; MIT chains them, which changes the receptive fields).

    Children: ``pre_conv`` (1x1, 3x3, 1x1), ``short_conv``, ``post_conv`` (1x1, 3x3), ``merge_conv``.
    """

    def __init__(self, ci: int, co: int) -> None:
        super().__init__()
        c = co
        self.pre_conv = nn.Sequential(Conv(ci, c, 1), Conv(c, c, 3), Conv(c, c, 1))
        self.short_conv = Conv(ci, c, 1)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13))
        self.post_conv = nn.Sequential(Conv(4 * c, c, 1), Conv(c, c, 3))
        self.merge_conv = Conv(2 * c, co, 1)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.pre_conv(x)
        y1 = self.post_conv(torch.cat([x1] + [pool(x1) for pool in self.pools], 1))
        return self.merge_conv(torch.cat((y1, self.short_conv(x)), 1))


class ImplicitA(nn.Module):
    """YOLOR implicit knowledge, additive: x + implicit, implicit [1, C, 1, 1] ~ N(0, 0.02)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.implicit = nn.Parameter(torch.empty(1, c, 1, 1))
        nn.init.normal_(self.implicit, mean=0.0, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.implicit


class ImplicitM(nn.Module):
    """YOLOR implicit knowledge, multiplicative: x * implicit, implicit [1, C, 1, 1] ~ N(1, 0.02)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.implicit = nn.Parameter(torch.empty(1, c, 1, 1))
        nn.init.normal_(self.implicit, mean=1.0, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.implicit


class DConv(nn.Module):
    """YOLO-RD dictionary retrieval: coefficient generator ``CG`` (1x1 Conv), global information
    exchanger ``GIE`` (5x5 depthwise ConvNA), PONO, dictionary ``D`` (1x1 ConvNA).

    out = alpha * D(PONO(GIE(CG(x)))) + (1 - alpha) * x; alpha weights the retrieved term, as in
    the MIT code (the paper writes the weights the other way round).
    """

    def __init__(self, ci: int = 512, atoms: int = 512, alpha: float = 0.8) -> None:
        super().__init__()
        self.alpha = alpha
        self.CG = Conv(ci, atoms, 1)
        self.GIE = Conv(atoms, atoms, 5, g=atoms, act=False)
        self.D = Conv(atoms, ci, 1, act=False)

    @staticmethod
    def pono(x: Tensor) -> Tensor:
        """Positional normalisation: each pixel over channels, unbiased std."""
        return (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-5)

    def forward(self, x: Tensor) -> Tensor:
        r = self.D(self.pono(self.GIE(self.CG(x))))
        return self.alpha * r + (1 - self.alpha) * x


class RepNCSPELAND(RepNCSPELAN):
    """RepNCSPELAN followed by DConv on its output (YOLO-RD). Extra child ``dconv``."""

    def __init__(self, ci: int, co: int, part: int, proc: int | None = None, n: int = 1,
                 atoms: int = 512) -> None:
        super().__init__(ci, co, part, proc, n)
        self.dconv = DConv(co, atoms)

    def forward(self, x: Tensor) -> Tensor:
        return self.dconv(super().forward(x))
