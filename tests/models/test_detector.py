"""Detector assembly: output layout matches the priors for every backbone, activation and method."""
import pytest
import torch

from configs import load_config
from models import build_model, scaled_anchors


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50", "darknet53", "darknet_tiny"])
def test_output_matches_priors(backbone):
    cfg = load_config("bccd_yolo_r18", [f"model.backbone={backbone}", "model.channel_sparsity=0.25",
                                        "data.img_size=64"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        raw = model(torch.rand(2, 3, 64, 96))
    priors = model.priors((64, 96))
    assert raw.shape == (2, len(priors), 5 + 3)
    assert len(priors) == 3 * (8 * 12 + 4 * 6 + 2 * 3)
    boxes, scores = model.decode(raw, (64, 96))
    assert boxes.shape == (2, len(priors), 4) and scores.shape == (2, len(priors), 3)
    assert (scores >= 0).all() and (scores <= 1).all()


def test_slot_order_is_level_row_column_anchor():
    """Slot p of the output and prior p describe the same cell: perturb one cell of one level."""
    cfg = load_config("bccd_yolo_r18", ["model.channel_sparsity=0.25", "data.img_size=64"])
    model = build_model(cfg).eval()
    channels = [conv.in_channels for conv in model.head.preds]
    model.head.stems = torch.nn.ModuleList(torch.nn.Identity() for _ in channels)  # 1x1 path only
    feats = [torch.zeros(1, c, h, w) for c, (h, w) in zip(channels, [(8, 8), (4, 4), (2, 2)])]
    feats[1][0, :, 3, 2] = 5.0  # level 1, row 3, column 2
    with torch.no_grad():
        base = model.head([torch.zeros_like(f) for f in feats])
        out = model.head(feats)
    changed = (out - base).abs().sum(-1)[0] > 0
    p = model.priors((64, 64))
    hit = torch.nonzero(changed).squeeze(1)
    assert len(hit) == 3  # the three anchors of that cell, and only them
    assert (p.level[hit] == 1).all() and (p.grid_xy[hit] == torch.tensor([2.0, 3.0])).all()
    assert p.anchor_idx[hit].tolist() == [0, 1, 2]


def test_initial_objectness_is_the_prior():
    cfg = load_config("bccd_yolo_r18", ["model.channel_sparsity=0.25", "data.img_size=64"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        raw = model(torch.zeros(1, 3, 64, 64))
    assert raw[..., 4].sigmoid().mean().item() == pytest.approx(0.01, abs=0.01)


def test_anchors_scale_with_input_size():
    cfg = load_config("bccd_yolo_r18")
    a = scaled_anchors(cfg.model, 320)
    assert a[0][0] == [10 * 0.5, 13 * 0.5] and a[2][2] == [373 * 0.5, 326 * 0.5]


@pytest.mark.parametrize("act", ["relu", "silu", "mish", "hardswish"])
def test_activation_is_used(act):
    cfg = load_config("bccd_yolo_r18", [f"model.activation={act}", "model.channel_sparsity=0.25"])
    names = {type(m).__name__.lower() for m in build_model(cfg).modules()}
    assert {"relu": "relu", "silu": "silu", "mish": "mish", "hardswish": "hardswish"}[act] in names
