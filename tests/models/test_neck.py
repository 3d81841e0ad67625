"""SPP-PAN neck: output shapes/channels, registry errors, every parameter receives gradient."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.backbones import build_backbone
from models.layers import scale_channels
from models.necks import NECKS, build_neck


def _feats(channels: list[int], hw: tuple[int, int], batch: int = 2) -> list[torch.Tensor]:
    """Fake backbone maps at strides 8, 16, 32 of an input of size ``hw``."""
    return [torch.randn(batch, c, hw[0] // s, hw[1] // s) for c, s in zip(channels, (8, 16, 32))]


@pytest.mark.parametrize("out_channels", [[128, 256, 512], [96, 192, 384]])
def test_output_shapes_and_channels(out_channels: list[int]) -> None:
    in_channels = [64, 128, 256]
    neck = build_neck("spp_pan", in_channels, out_channels, "leaky_relu").eval()
    with torch.no_grad():
        outs = neck(_feats(in_channels, (128, 96)))
    assert neck.out_channels == out_channels
    assert [tuple(o.shape) for o in outs] == [
        (2, out_channels[0], 16, 12), (2, out_channels[1], 8, 6), (2, out_channels[2], 4, 3)]


def test_odd_input_size_still_aligns() -> None:
    # 100 x 70 input: strided convs round up (13x9, 7x5, 4x3); the neck must still line up.
    backbone = build_backbone("darknet_tiny", width=0.25).eval()
    neck = build_neck("spp_pan", backbone.out_channels, [16, 32, 64], "relu").eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 100, 70))
        outs = neck(feats)
    assert [o.shape[-2:] for o in outs] == [f.shape[-2:] for f in feats]


def test_spp_pools_keep_size_and_activation_is_used() -> None:
    neck = NECKS["spp_pan"]([32, 64, 128], [32, 64, 128], "mish")
    assert [p.kernel_size for p in neck.spp.pools] == [5, 9, 13]
    assert all(p.stride == 1 and p.padding == p.kernel_size // 2 for p in neck.spp.pools)
    acts = {type(m) for m in neck.modules() if isinstance(m, (nn.Mish, nn.ReLU, nn.LeakyReLU))}
    assert acts == {nn.Mish}


def test_unknown_neck_and_wrong_levels() -> None:
    with pytest.raises(ValueError, match=r"model\.neck.*spp_pan"):
        build_neck("bifpn", [8, 16, 32], [8, 16, 32], "relu")
    with pytest.raises(ValueError, match="3 levels"):
        build_neck("spp_pan", [8, 16], [8, 16, 32], "relu")


def test_gradients_reach_every_backbone_and_neck_parameter() -> None:
    """No unused parameters (DDP would otherwise need find_unused_parameters=True)."""
    torch.manual_seed(0)
    width = 0.25
    backbone = build_backbone("resnet18", width=width, activation="leaky_relu")
    for m in backbone.modules():  # undo zero-init gammas so zero grads mean "disconnected"
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
    out_channels = [scale_channels(c, width) for c in (128, 256, 512)]
    neck = build_neck("spp_pan", backbone.out_channels, out_channels, "leaky_relu")
    outs = neck(backbone(torch.randn(2, 3, 64, 96)))
    sum(o.square().mean() for o in outs).backward()
    for prefix, module in (("backbone", backbone), ("neck", neck)):
        for name, p in module.named_parameters():
            assert p.grad is not None, f"{prefix}.{name} unused"
            assert p.grad.abs().sum() > 0, f"{prefix}.{name} gets no gradient"
