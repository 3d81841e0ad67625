"""YOLOv9-family blocks and heads: output shapes, the computations of spec section 2, fusion."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import (
    ELAN,
    SPPCSPC,
    SPPELAN,
    AConv,
    ADown,
    Bottleneck,
    CBFuse,
    CBLinear,
    Concat,
    Conv,
    DConv,
    ImplicitA,
    ImplicitM,
    Pool,
    RepConv,
    RepNCSP,
    RepNCSPELAN,
    RepNCSPELAND,
    UpSample,
)
from models.fuse import fuse_model
from models.heads.dfl_head import DFLHead
from models.heads.v7_head import IDetectHead
from models.priors import make_priors


def randomise_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding them is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) * 0.6 - 0.3)
    return module


def assert_fuses_exactly(block: nn.Module, x) -> torch.Tensor:
    block = randomise_bn(block).eval()
    with torch.no_grad():
        ref = block(x)
        fused = fuse_model(copy.deepcopy(block))
        out = fused(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    refs, outs = (ref, out) if isinstance(ref, tuple) else ((ref,), (out,))
    for r, o in zip(refs, outs):
        torch.testing.assert_close(o, r, atol=1e-4, rtol=1e-4)
    return ref


X = torch.rand(2, 8, 16, 12)


@pytest.mark.parametrize("block, out_shape", [
    (Conv(8, 16, 3, 2), (2, 16, 8, 6)),
    (Conv(8, 8, 3, 1, g=4), (2, 8, 16, 12)),
    (RepConv(8, 16), (2, 16, 16, 12)),
    (Bottleneck(8), (2, 8, 16, 12)),
    (RepNCSP(8, 12, n=2), (2, 12, 16, 12)),
    (ELAN(8, 16, 8, 4), (2, 16, 16, 12)),
    (RepNCSPELAN(8, 16, 8, 4, n=2), (2, 16, 16, 12)),
    (AConv(8, 16), (2, 16, 8, 6)),
    (ADown(8, 16), (2, 16, 8, 6)),
    (SPPELAN(8, 16, 4), (2, 16, 16, 12)),
    (SPPCSPC(8, 8), (2, 8, 16, 12)),
    (RepNCSPELAND(8, 16, 8, 4, atoms=12), (2, 16, 16, 12)),
])
def test_block_shape_and_fusion(block, out_shape):
    assert assert_fuses_exactly(block, X).shape == out_shape


def test_conv_fuse_folds_bn_into_a_biased_conv():
    conv = randomise_bn(Conv(8, 16, 3)).eval()
    conv.fuse()
    assert isinstance(conv.bn, nn.Identity) and conv.conv.bias is not None
    assert sum(p.numel() for p in conv.parameters()) == 16 * 8 * 9 + 16


def test_repconv_fuses_into_one_3x3_conv():
    rep = randomise_bn(RepConv(8, 16)).eval()
    rep.fuse()
    convs = [m for m in rep.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (3, 3) and convs[0].bias is not None
    assert sum(p.numel() for p in rep.parameters()) == 16 * 8 * 9 + 16


def test_repconv_has_no_identity_branch():
    """act(ConvNA3x3 + ConvNA1x1) only: with both branches zeroed the output is SiLU(0) = 0."""
    rep = RepConv(8, 8).eval()
    for conv in (rep.conv1, rep.conv2):
        nn.init.zeros_(conv.conv.weight)
        nn.init.zeros_(conv.bn.bias)
    assert rep(X).abs().max() == 0


def test_bottleneck_is_residual():
    b = Bottleneck(8).eval()
    nn.init.zeros_(b.conv2.bn.weight)
    nn.init.zeros_(b.conv2.bn.bias)  # the processed branch outputs SiLU(0) = 0
    torch.testing.assert_close(b(X), X)


def test_sppelan_pools_in_sequence():
    block = SPPELAN(8, 16, 4).eval()
    x = torch.rand(1, 8, 16, 16)
    y0 = block.conv1(x)
    y1 = F.max_pool2d(y0, 5, 1, 2)
    y2 = F.max_pool2d(y1, 5, 1, 2)
    y3 = F.max_pool2d(y2, 5, 1, 2)
    torch.testing.assert_close(block(x), block.conv5(torch.cat((y0, y1, y2, y3), 1)))


def test_sppcspc_pools_in_parallel():
    block = SPPCSPC(8, 8).eval()
    x = torch.rand(1, 8, 20, 20)
    x1 = block.pre_conv(x)
    pooled = [F.max_pool2d(x1, k, 1, k // 2) for k in (5, 9, 13)]
    y1 = block.post_conv(torch.cat([x1, *pooled], 1))
    torch.testing.assert_close(block(x), block.merge_conv(torch.cat((y1, block.short_conv(x)), 1)))


def test_adown_halves_and_concats():
    block = ADown(8, 16).eval()
    x = torch.rand(1, 8, 16, 16)
    p = F.avg_pool2d(x, 2, 1, 0)
    ref = torch.cat((block.conv1(p[:, :4]), block.conv2(F.max_pool2d(p[:, 4:], 3, 2, 1))), 1)
    torch.testing.assert_close(block(x), ref)


def test_cblinear_splits_a_biased_1x1_conv():
    block = CBLinear(8, [4, 6, 2])
    assert block.conv.bias is not None and block.conv.kernel_size == (1, 1)
    parts = block(X)
    assert [p.shape[1] for p in parts] == [4, 6, 2]
    torch.testing.assert_close(torch.cat(parts, 1), block.conv(X))


def test_cbfuse_adds_resized_chunks_to_the_target():
    a = (torch.rand(1, 2, 4, 4), torch.rand(1, 3, 4, 4))
    b = (torch.rand(1, 3, 2, 2),)
    target = torch.rand(1, 3, 8, 8)
    out = CBFuse([1, 0])([a, b, target])
    ref = target + a[1].repeat_interleave(2, 2).repeat_interleave(2, 3) \
        + b[0].repeat_interleave(4, 2).repeat_interleave(4, 3)
    torch.testing.assert_close(out, ref)


def test_parameter_free_blocks():
    a, b = torch.rand(1, 2, 4, 6), torch.rand(1, 3, 4, 6)
    assert torch.equal(Concat()([a, b]), torch.cat((a, b), 1))
    assert torch.equal(UpSample()(a), a.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert torch.equal(Pool()(a), F.max_pool2d(a, 2, 2))


def test_implicit_knowledge():
    torch.manual_seed(0)
    ia, im = ImplicitA(64), ImplicitM(64)
    assert ia.implicit.shape == (1, 64, 1, 1)
    assert abs(ia.implicit.mean().item()) < 0.02 and abs(im.implicit.mean().item() - 1) < 0.02
    x = torch.rand(2, 64, 3, 3)
    torch.testing.assert_close(ia(x), x + ia.implicit)
    torch.testing.assert_close(im(x), x * im.implicit)


def test_dconv_is_pono_with_unbiased_std_and_mixes_08_02():
    d = DConv(16, 24).eval()
    x = torch.rand(2, 16, 5, 5)
    g = d.GIE(d.CG(x))
    mean = g.mean(1, keepdim=True)
    std = ((g - mean) ** 2).sum(1, keepdim=True).div(g.shape[1] - 1).sqrt()  # unbiased
    ref = 0.8 * d.D((g - mean) / (std + 1e-5)) + 0.2 * x
    torch.testing.assert_close(d(x), ref)
    assert d.GIE.conv.weight.shape == (24, 1, 5, 5) and isinstance(d.GIE.act, nn.Identity)


def test_repncspeland_applies_dconv_to_the_elan_output():
    block = RepNCSPELAND(8, 16, 8, 4, atoms=12).eval()
    torch.testing.assert_close(block(X), block.dconv(RepNCSPELAN.forward(block, X)))


def test_bn_settings():
    bn = Conv(4, 4).bn
    assert bn.eps == 1e-3 and bn.momentum == 0.03


# -- heads ------------------------------------------------------------------------------------
@pytest.mark.parametrize("in_ch, nc, cb, cc", [
    ([64, 96, 128], 80, 64, 128),  # v9-t main
    ([64, 96, 128], 3, 64, 64),  # v9-t with few classes: the class branch narrows
    ([240, 360, 480], 80, 64, 240),  # v9-m
    ([512, 512, 512], 80, 128, 512),  # v9-c AUX
    ([256, 512, 512], 80, 64, 256),  # v9-c / e main
])
def test_dfl_head_widths(in_ch, nc, cb, cc):
    head = DFLHead(in_ch, nc, [8, 16, 32])
    for level in head.heads:
        assert level.anchor_conv[0].conv.out_channels == cb and level.anchor_conv[1].conv.groups == 4
        assert level.anchor_conv[2].out_channels == 64 and level.anchor_conv[2].groups == 4
        assert level.class_conv[0].conv.out_channels == cc and level.class_conv[2].out_channels == nc
    assert head.anc2vec_bins.tolist() == list(range(16)) and not head.anc2vec_bins.requires_grad


def test_dfl_head_bias_init():
    head = DFLHead([64, 64, 64], 80, [8, 16, 32])
    for level, expected in zip(head.heads, (-11.54, -10.16, -8.77)):
        assert torch.all(level.anchor_conv[2].bias == 1.0)
        assert level.class_conv[2].bias[0].item() == pytest.approx(expected, abs=0.01)


def _one_cell_changes(head, channels, sizes, level, row, col):
    """Indices of the output slots that change when one cell of one level's input changes."""
    feats = [torch.zeros(1, c, h, w) for c, (h, w) in zip(channels, sizes)]
    for lv in head.heads:  # 1x1 path only, so a cell influences only its own slot(s)
        for name in ("anchor_conv", "class_conv"):
            if hasattr(lv, name):
                seq = getattr(lv, name)
                seq[0], seq[1] = nn.Identity(), nn.Identity()
    with torch.no_grad():
        base = head([f.clone() for f in feats])
        feats[level][0, :, row, col] = 3.0
        out = head(feats)
    return torch.nonzero((out - base).abs().sum(-1)[0] > 0).squeeze(1), out


def test_dfl_head_slot_order_and_channels():
    head = DFLHead([16, 16, 16], 5, [8, 16, 32]).eval()
    for lv in head.heads:  # make the 1x1 outputs depend on the input
        lv.anchor_conv[2] = nn.Conv2d(16, 64, 1, groups=1)
        lv.class_conv[2] = nn.Conv2d(16, 5, 1)
    hit, out = _one_cell_changes(head, [16, 16, 16], [(8, 12), (4, 6), (2, 3)], level=1, row=3, col=2)
    assert out.shape == (1, 8 * 12 + 4 * 6 + 2 * 3, 64 + 5)
    priors = make_priors((64, 96), [8, 16, 32], None)
    assert len(hit) == 1 and priors.level[hit].item() == 1
    assert priors.grid_xy[hit].tolist() == [[2.0, 3.0]]
    # channel layout: box-bin logits first (conv output order, side-major), then classes
    lv = head.heads[0]
    x = torch.rand(1, 16, 8, 12)
    with torch.no_grad():
        raw = head([x, torch.rand(1, 16, 4, 6), torch.rand(1, 16, 2, 3)])
        torch.testing.assert_close(raw[0, 0, :64], lv.anchor_conv(x)[0, :, 0, 0])
        torch.testing.assert_close(raw[0, 13, 64:], lv.class_conv(x)[0, :, 1, 1])


def test_idetect_slot_order_anchor_innermost():
    head = IDetectHead([8, 8, 8], 2, 3, [8, 16, 32]).eval()
    feats = [torch.rand(1, 8, h, w) for h, w in ((8, 12), (4, 6), (2, 3))]
    with torch.no_grad():
        out = head(feats)
        lv = head.heads[2]
        y = lv(feats[2])  # [1, 3 * 7, 2, 3], anchor-major channels
    assert out.shape == (1, 3 * (96 + 24 + 6), 7)
    start = 3 * (96 + 24)
    row, col = 1, 2
    for a in range(3):
        slot = start + (row * 3 + col) * 3 + a
        torch.testing.assert_close(out[0, slot], y[0, a * 7:(a + 1) * 7, row, col])


def test_idetect_fuse_is_exact_and_keeps_names():
    head = IDetectHead([8, 16, 32], 4, 3, [8, 16, 32]).eval()
    feats = [torch.rand(2, c, 4, 4) for c in (8, 16, 32)]
    keys = set(head.state_dict())
    with torch.no_grad():
        ref = head(feats)
        for lv in head.heads:
            lv.fuse()
        torch.testing.assert_close(head(feats), ref, atol=1e-5, rtol=1e-5)
    assert set(head.state_dict()) == keys
    assert all(torch.all(lv.implicit_a.implicit == 0) and torch.all(lv.implicit_m.implicit == 1)
               for lv in head.heads)


def test_idetect_bias_init():
    head = IDetectHead([8, 8, 8], 4, 3, [8, 16, 32])
    for lv, s in zip(head.heads, (8, 16, 32)):
        b = lv.head_conv.bias.view(3, 9)
        w = lv.head_conv.weight
        bound = 1 / math.sqrt(w.shape[1])  # default init range before the prior is added
        assert torch.all((b[:, 4] - math.log(8 / (640 / s) ** 2)).abs() <= bound)
        assert torch.all((b[:, 5:] - math.log(0.6 / (4 - 0.99))).abs() <= bound)
