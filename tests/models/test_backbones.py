"""Backbones: shapes/strides, torchvision-compatible names and counts, pretrained loading."""
from __future__ import annotations

import pytest
import torch
from loguru import logger
from torch import nn

from models.backbones import BACKBONES, build_backbone, load_pretrained
from models.layers import ConvBNAct, make_activation, scale_channels

INPUT_HW = (128, 96)  # non-square on purpose: catches swapped H/W

# torchvision's totals minus fc: resnet18 11,689,512 - (512*1000 + 1000);
# resnet34 21,797,672 - 513,000; resnet50 25,557,032 - (2048*1000 + 1000).
TORCHVISION_PARAMS_NO_FC = {"resnet18": 11_176_512, "resnet34": 21_284_672,
                            "resnet50": 23_508_032}

FULL_WIDTH_CHANNELS = {"resnet18": [128, 256, 512], "resnet34": [128, 256, 512],
                       "resnet50": [512, 1024, 2048], "darknet53": [256, 512, 1024],
                       "darknet_tiny": [128, 256, 512]}


def _bn_keys(prefix: str) -> list[str]:
    return [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                                      "num_batches_tracked")]


def _torchvision_resnet18_keys() -> list[str]:
    """torchvision resnet18 state-dict keys (minus fc), written from its naming scheme."""
    keys = ["conv1.weight", *_bn_keys("bn1")]
    for layer in range(1, 5):
        for block in range(2):
            p = f"layer{layer}.{block}"
            keys += [f"{p}.conv1.weight", *_bn_keys(f"{p}.bn1"),
                     f"{p}.conv2.weight", *_bn_keys(f"{p}.bn2")]
            if layer > 1 and block == 0:  # stride-2 first block of layer2..4
                keys += [f"{p}.downsample.0.weight", *_bn_keys(f"{p}.downsample.1")]
    return keys


def _strides(feats: list[torch.Tensor]) -> list[tuple[int, int]]:
    return [(INPUT_HW[0] // f.shape[2], INPUT_HW[1] // f.shape[3]) for f in feats]


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("width", [1.0, 0.75])
def test_output_shapes_and_strides(name: str, width: float) -> None:
    model = build_backbone(name, width=width, activation="relu").eval()
    with torch.no_grad():
        feats = model(torch.randn(2, 3, *INPUT_HW))
    assert len(feats) == 3 and len(model.out_channels) == 3
    assert _strides(feats) == [(8, 8), (16, 16), (32, 32)]
    assert [f.shape[1] for f in feats] == model.out_channels
    assert all(f.shape[0] == 2 for f in feats)
    assert all(c % 8 == 0 for c in model.out_channels)
    assert model.out_channels == [scale_channels(c, width) for c in FULL_WIDTH_CHANNELS[name]]


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS_NO_FC))
def test_resnet_param_count_equals_torchvision(name: str) -> None:
    model = build_backbone(name)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS_NO_FC[name]


def test_resnet18_state_dict_names_equal_torchvision() -> None:
    keys = list(build_backbone("resnet18").state_dict())
    expected = _torchvision_resnet18_keys()
    assert len(expected) == 120  # torchvision's 122 keys minus fc.weight, fc.bias
    assert keys == expected


def test_resnet50_bottleneck_names() -> None:
    keys = set(build_backbone("resnet50").state_dict())
    assert {"layer1.0.conv3.weight", "layer1.0.bn3.running_var", "layer1.0.downsample.0.weight",
            "layer4.2.bn3.num_batches_tracked"} <= keys
    assert "layer1.1.downsample.0.weight" not in keys


def test_last_bn_of_each_residual_block_is_zero() -> None:
    model = build_backbone("resnet18")
    assert torch.all(model.layer3[1].bn2.weight == 0)
    assert torch.all(model.layer3[1].bn1.weight == 1)


def _randomise(model: nn.Module, seed: int = 0) -> None:
    """Give every float tensor random values so a wrong copy cannot pass by chance."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)


def test_pretrained_roundtrip_with_fc_and_module_prefix(tmp_path) -> None:
    torch.manual_seed(0)
    src = build_backbone("resnet18")
    _randomise(src)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    state["module.fc.weight"] = torch.randn(1000, 512)
    state["module.fc.bias"] = torch.randn(1000)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": state}, path)

    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="INFO")
    try:
        dst = build_backbone("resnet18", pretrained=str(path))
    finally:
        logger.remove(sink)
    x = torch.randn(2, 3, *INPUT_HW)
    src.eval(), dst.eval()
    with torch.no_grad():
        for a, b in zip(src(x), dst(x)):
            assert torch.equal(a, b)
    assert any("120 tensors loaded exactly" in m and "2 classifier tensors ignored" in m
               for m in messages)
    assert not any("WARNING" in m for m in messages)


def test_pretrained_width_075_loads_leading_slices(tmp_path) -> None:
    src = build_backbone("resnet18", width=1.0)
    _randomise(src)
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    dst = build_backbone("resnet18", width=0.75)
    counts = load_pretrained(dst, str(path))
    assert counts["exact"] + counts["sliced"] == 120 and counts["skipped"] == 0
    assert counts["sliced"] > 0 and counts["missing"] == 0
    w_src = src.state_dict()["layer2.0.conv1.weight"]  # [128, 64, 3, 3] -> [96, 48, 3, 3]
    assert torch.equal(dst.state_dict()["layer2.0.conv1.weight"], w_src[:96, :48])
    assert torch.equal(dst.bn1.running_var, src.bn1.running_var[:48])


def test_pretrained_skips_incompatible_and_warns(tmp_path) -> None:
    src = build_backbone("resnet18")
    state = dict(src.state_dict())
    state["conv1.weight"] = torch.randn(32, 3, 7, 7)  # smaller than the model: skipped
    state["extra.weight"] = torch.randn(3)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        counts = load_pretrained(build_backbone("resnet18"), str(path))
    finally:
        logger.remove(sink)
    assert counts["skipped"] == 2 and counts["exact"] == 119
    assert any("conv1.weight" in m and "extra.weight" in m for m in messages)


def test_pretrained_detector_checkpoint_keeps_backbone_keys(tmp_path) -> None:
    src = build_backbone("darknet_tiny", activation="leaky_relu")
    _randomise(src)
    state = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    state["neck.spp.reduce.conv.weight"] = torch.randn(8, 8, 1, 1)
    torch.save({"model": state}, tmp_path / "det.pth")
    dst = build_backbone("darknet_tiny", activation="leaky_relu")
    counts = load_pretrained(dst, str(tmp_path / "det.pth"))
    assert counts == {"exact": len(state) - 1, "sliced": 0, "skipped": 0, "missing": 0,
                      "ignored": 0}
    assert torch.equal(dst.stem.conv.weight, src.stem.conv.weight)


def test_missing_pretrained_path_names_config_key(tmp_path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"model\.pretrained.*nope\.pth"):
        build_backbone("resnet18", pretrained=str(missing))


def test_unrelated_file_raises(tmp_path) -> None:
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="no tensor"):
        build_backbone("resnet18", pretrained=str(tmp_path / "x.pth"))


def test_unknown_names_list_valid_choices() -> None:
    with pytest.raises(ValueError, match=r"model\.backbone.*resnet18"):
        build_backbone("resnet101")
    with pytest.raises(ValueError, match=r"model\.activation.*leaky_relu.*mish"):
        make_activation("gelu")


@pytest.mark.parametrize("name, cls", [("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU),
                                       ("silu", nn.SiLU), ("mish", nn.Mish),
                                       ("hardswish", nn.Hardswish)])
def test_activation_choice_appears_in_modules(name: str, cls: type) -> None:
    for backbone in ("resnet18", "darknet_tiny"):
        model = build_backbone(backbone, width=0.25, activation=name)
        kinds = {type(m) for m in model.modules() if not list(m.children())}
        acts = kinds & {nn.ReLU, nn.LeakyReLU, nn.SiLU, nn.Mish, nn.Hardswish}
        assert acts == {cls}
    if name == "leaky_relu":
        assert make_activation(name).negative_slope == 0.1


def test_layers_helpers() -> None:
    assert [scale_channels(c, w) for c, w in [(64, 0.75), (64, 0.1), (100, 1.0), (512, 0.5)]] \
        == [48, 8, 104, 256]
    block = ConvBNAct(3, 16, k=3, s=2, activation="silu")
    assert block.conv.bias is None and block.conv.padding == (1, 1)
    assert block(torch.randn(1, 3, 9, 8)).shape == (1, 16, 5, 4)


# resnet34 is left out only for speed: it is built from the same BasicBlock as resnet18.
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "darknet53", "darknet_tiny"])
def test_gradients_reach_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = build_backbone(name, width=0.25, activation="silu")
    # The zero-init residual gammas block gradients to the convs before them at step 0 (by
    # design); set gammas to 1 so a zero gradient can only mean a disconnected parameter.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
    feats = model(torch.randn(2, 3, 64, 64))
    sum(f.square().mean() for f in feats).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} unused"
        assert p.grad.abs().sum() > 0, f"{pname} gets no gradient"
