"""YOLOv9 / GELAN / YOLOv7 / YOLO-RD networks: spec parameter counts, row layout, outputs, deploy form."""
import functools

import pytest
import torch
from torch import nn

from models.fuse import deploy_model
from models.heads.dfl_head import DFLHead
from models.nets import NETS, build_net
from models.nets.v7 import V7_ANCHORS
from utils.model_info import count_params, gflops, model_summary

# spec section 4.7: training (aux, unfused) and inference fused counts, nc = 80, ORIG DFL counting
SPEC_COUNTS = {
    "v9-t": (3_717_680, 2_407_632),
    "v9-s": (9_804_512, 7_105_888),
    "v9-m": (32_878_432, 19_978_672),
    "v9-c": (51_182_080, 25_288_768),
    "v9-e": (69_529_664, 57_345_920),
    "rd-9c": (51_722_240, 25_827_392),
    "v7": (37_622_682, 36_907_898),
}
SPEC_INFERENCE_UNFUSED = {"v9-t": 2_442_640, "v9-s": 7_226_208, "v9-m": 20_124_000, "v9-c": 25_498_752,
                          "v9-e": 58_114_432, "rd-9c": 26_038_912}


IMAGES = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))


def _measure(bn: nn.BatchNorm2d, inputs: tuple) -> None:
    x = inputs[0]
    bn.running_mean.copy_(x.mean((0, 2, 3)))
    bn.running_var.copy_(x.var((0, 2, 3), unbiased=False))


def randomise_bn(model: nn.Module) -> nn.Module:
    """Random BN affine parameters; running statistics measured on IMAGES (means far from 0,
    variances far from 1, so folding them is really exercised).

    Default-initialised deep nets with identity BN statistics lose the input signal, and random
    statistics blow it up through a hundred layers (rounding errors included); measured ones keep
    every layer near unit scale, so the deploy comparison sees image-dependent outputs of moderate
    size and only the fusion error.
    """
    g = torch.Generator().manual_seed(0)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.weight.data.copy_(torch.rand(bn.num_features, generator=g) * 0.5 + 0.75)
        bn.bias.data.copy_(torch.rand(bn.num_features, generator=g) * 0.2 - 0.1)
    handles = [bn.register_forward_pre_hook(_measure) for bn in bns]
    with torch.no_grad():
        model.eval()(IMAGES)  # each BN measures its own input just before using the statistics
    for h in handles:
        h.remove()
    for bn in bns:  # a little extra variance: exactly measured statistics make the deep nets chaotic
        bn.running_var.add_(0.05)
    return model


@functools.cache
def trained_like(name: str) -> nn.Module:
    """The nc = 80 model with the auxiliary branch and random BN statistics (built once per run)."""
    torch.manual_seed(0)
    return randomise_bn(build_net(name, 80))


@functools.cache
def deployed(name: str) -> nn.Module:
    return deploy_model(trained_like(name))


@pytest.mark.parametrize("name", list(SPEC_COUNTS))
def test_parameter_counts_equal_the_spec(name):
    train_count, fused_count = SPEC_COUNTS[name]
    assert count_params(trained_like(name)) == train_count
    assert count_params(deployed(name)) == fused_count


@pytest.mark.parametrize("name", list(SPEC_INFERENCE_UNFUSED))
def test_unfused_inference_counts(name):
    model = trained_like(name)
    rows = [model.model[str(i)] for i in model.sources if i not in model.aux_indices]
    assert sum(count_params(row) for row in rows) == SPEC_INFERENCE_UNFUSED[name]


@pytest.mark.parametrize("name", ["v9-t", "v9-m", "rd-9c", "v9-e", "v7"])
def test_deploy_equals_the_main_branch(name):
    model = trained_like(name).eval()
    feats = {}  # the P3-P5 features entering each main head
    hooks = [net.main_head.register_forward_pre_hook(lambda _, x, key=key: feats.__setitem__(key, x[0]))
             for key, net in (("ref", model), ("out", deployed(name)))]
    with torch.no_grad():
        ref = model(IMAGES)
        out = deployed(name)(IMAGES)
    for h in hooks:
        h.remove()
    assert ref.shape == out.shape
    assert (ref[0] - ref[1]).abs().max() > 5e-3  # the output depends on the image
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    for f_ref, f_out in zip(feats["ref"], feats["out"]):
        assert (f_ref[0] - f_ref[1]).abs().max() > 5e-3
        torch.testing.assert_close(f_out, f_ref, atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed(name).modules())
    assert deployed(name).aux_indices == frozenset() and not deployed(name).training


def test_output_shapes_and_training_tuple():
    model = build_net("v9-t", 7)
    x = torch.rand(2, 3, 64, 96)
    slots = 8 * 12 + 4 * 6 + 2 * 3
    main, aux = model.train()(x)
    assert main.shape == aux.shape == (2, slots, 64 + 7)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, slots, 64 + 7)
    assert len(model.priors((64, 96))) == slots
    no_aux = build_net("v9-t", 7, aux=False).train()
    out = no_aux(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, slots, 64 + 7)


def test_v7_output_shape_and_attributes():
    model = build_net("v7", 4).eval()
    with torch.no_grad():
        raw = model(torch.rand(1, 3, 64, 96))
    assert raw.shape == (1, 3 * (8 * 12 + 4 * 6 + 2 * 3), 5 + 4)
    assert model.family == "anchor" and model.strides == [8, 16, 32] and model.anchors == V7_ANCHORS
    assert model.anchors[0] == [[12, 16], [19, 36], [40, 28]] and model.anchors[2][2] == [459, 401]
    assert model.train()(torch.rand(1, 3, 64, 64)).shape == (1, 3 * 84, 9)  # v7 has no aux branch
    assert len(model.priors((64, 96))) == raw.shape[1]


def test_aux_rows_do_not_run_in_eval_mode():
    model = build_net("v9-t", 3)
    calls = []
    model.aux_head.register_forward_hook(lambda *_: calls.append(1))
    model.model["23"].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model.eval()(torch.rand(1, 3, 64, 64))
    assert calls == []
    model.train()(torch.rand(1, 3, 64, 64))
    assert len(calls) == 2


@pytest.mark.parametrize("name, main, aux_head, aux_rows", [
    ("v9-t", 22, 30, range(23, 31)),
    ("v9-s", 22, 30, range(23, 31)),
    ("v9-m", 22, 38, range(23, 39)),
    ("v9-c", 22, 38, range(23, 39)),
    ("rd-9c", 22, 38, range(23, 39)),
    ("v9-e", 49, 50, [*range(29, 36), 50]),
])
def test_row_layout(name, main, aux_head, aux_rows):
    model = trained_like(name)
    assert model.main_head_index == main and model.aux_head_index == aux_head
    assert model.aux_indices == frozenset(aux_rows)
    assert isinstance(model.main_head, DFLHead) and isinstance(model.aux_head, DFLHead)
    assert model.family == "dfl" and model.anchors is None and model.strides == [8, 16, 32]


def test_mit_keys_and_spec_details():
    c = trained_like("v9-c").state_dict()
    assert c["model.22.heads.0.anchor_conv.2.weight"].shape == (64, 16, 1, 1)  # Cb 64, groups 4
    assert c["model.38.heads.0.class_conv.0.conv.weight"].shape == (512, 512, 3, 3)  # AUX Cc 512
    assert c["model.23.conv.bias"].shape == (256,) and c["model.25.conv.weight"].shape == (1280, 512, 1, 1)
    assert c["model.4.conv2.0.bottleneck.0.conv1.conv2.bn.running_var"].shape == (64,)
    rd = trained_like("rd-9c").state_dict()
    assert rd["model.4.dconv.GIE.conv.weight"].shape == (512, 1, 5, 5)
    assert not any(k.startswith("model.28.dconv") for k in rd)  # only the main backbone has DConv
    m = trained_like("v9-m").state_dict()
    assert m["model.16.conv.conv.weight"].shape == (184, 240, 3, 3)  # the released width
    e = trained_like("v9-e")
    assert e.state_dict()["model.48.conv1.conv.weight"].shape == (1024, 1024, 1, 1)  # P5: part 1024
    assert len(e.model["9"].conv2[0].bottleneck) == 2  # n = 2
    assert e.sources[15] == ("img",) and e.sources[16] == (10, 11, 12, 13, 14, 15)
    v7 = trained_like("v7")
    assert v7.sources[66] == (24,)  # ORIG routes the conv at 24, not MIT's concat at 23
    assert v7.sources[80] == (79, 77, 63) and v7.main_head_index == 105


@pytest.mark.parametrize("name", ["gelan-t", "gelan-e"])
def test_gelan_is_v9_without_aux(name):
    gelan = build_net(name, 80, aux=True)
    v9 = trained_like(name.replace("gelan", "v9"))
    main_rows = {f"model.{i}." for i in v9.sources if i not in v9.aux_indices}
    v9_main = {k: v.shape for k, v in v9.state_dict().items() if k.startswith(tuple(main_rows))}
    assert not gelan.has_aux and gelan.aux_head is None
    assert {k: v.shape for k, v in gelan.state_dict().items()} == v9_main


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown network 'v9-x'.*'gelan-c'.*'v9-t'"):
        build_net("v9-x", 80)
    with pytest.raises(ValueError, match="num_classes"):
        build_net("v9-t", 0)
    assert set(NETS) == {"v9-t", "v9-s", "v9-m", "v9-c", "v9-e", "gelan-t", "gelan-s", "gelan-m", "gelan-c",
                         "gelan-e", "v7", "rd-9c"}


def test_model_info():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False)).train()
    assert gflops(conv, 32) == pytest.approx(2 * 8 * 3 * 9 * 32 * 32 / 1e9)  # 2 FLOPs per multiply-add
    assert conv.training  # the mode is restored
    model = build_net("v9-t", 80)
    text = model_summary(model, 64)
    assert "V9T (v9-t)" in text and "31 rows" in text
    assert "3,717,680 (3,717,648 trainable)" in text  # the two DFL bin vectors are frozen
    assert f"{gflops(model, 64):.1f} at 64x64" in text and model.training
