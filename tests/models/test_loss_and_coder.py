"""Coder decoding, loss sanity (no GT, perfect boxes, finite gradients), postprocess and NMS."""
import math

import pytest
import torch

from configs.base_config import LossCfg
from models.assigners import ASSIGNERS, blank_predictions
from models.coders import CODERS
from models.losses import YoloAnchorLoss, focal_bce
from models.postprocess import postprocess
from models.priors import make_priors
from utils.boxes import bbox_iou, box_iou
from utils.nms import nms

ANCHORS = [[[8, 8], [24, 24]], [[16, 16], [40, 40]]]


def priors():
    return make_priors((32, 32), [8, 16], ANCHORS)


def inverse_sigmoid(x):
    return math.log(x / (1 - x))


@pytest.mark.parametrize("mode", ["cell", "nearby", "linear"])
def test_coder_zero_logits_and_ranges(mode):
    p = priors()
    raw = torch.zeros(1, len(p), 7)
    boxes = CODERS[mode]().decode_boxes(raw, p)[0]
    wh = boxes[:, 2:] - boxes[:, :2]
    assert torch.allclose(wh, p.anchor_wh)  # exp(0) = 1: anchor size
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    offset = {"cell": 0.5, "nearby": 0.5, "linear": 0.5}[mode]  # sigmoid(0)=.5: 3*.5-1 = .5 too
    assert torch.allclose(centre, (p.grid_xy + offset) * p.stride[:, None])
    big = CODERS[mode]().decode_boxes(torch.full((1, len(p), 7), 50.0), p)[0]
    if mode != "linear":  # bounded modes cannot leave their neighbourhood
        reach = {"cell": 1.0, "nearby": 2.0}[mode]
        assert (((big[:, :2] + big[:, 2:]) / 2) <= (p.grid_xy + reach) * p.stride[:, None] + 1e-4).all()
    assert torch.isfinite(big).all()


def make_loss(method="nearby_grid", **kw):
    cfg = LossCfg(level_weights=[1.0, 1.0], **kw)
    a = ASSIGNERS[method]()
    return YoloAnchorLoss(cfg, a, CODERS[a.coders["anchor"]](), num_classes=2)


def test_no_gt_gives_finite_loss_with_zero_box_and_class_terms():
    raw = torch.randn(2, len(priors()), 7, requires_grad=True)
    loss, parts = make_loss()(raw, torch.zeros(0, 6), priors())
    assert torch.isfinite(loss) and parts["box"] == 0 and parts["cls"] == 0 and parts["obj"] > 0
    loss.backward()
    assert torch.isfinite(raw.grad).all()


def perfect_raw(p, gt, label, mode):
    """Raw outputs whose decoded box equals gt on every slot, confident and correct."""
    raw = torch.full((1, len(p), 7), -20.0)
    c = torch.tensor([(gt[0] + gt[2]) / 2, (gt[1] + gt[3]) / 2])
    wh = torch.tensor([gt[2] - gt[0], gt[3] - gt[1]])
    rel = c / p.stride[:, None] - p.grid_xy
    if mode == "cell":
        t = torch.logit(rel.clamp(1e-6, 1 - 1e-6))
    else:
        t = torch.logit(((rel + 1) / 3).clamp(1e-6, 1 - 1e-6))
    raw[0, :, 0:2] = t
    raw[0, :, 2:4] = torch.log(wh / p.anchor_wh)
    return raw


def test_perfect_boxes_give_zero_box_loss_and_gradients_are_finite():
    p = priors()
    gt = [8.0, 8.0, 16.0, 16.0]
    t = torch.tensor([[0, 1, *gt]])
    raw = perfect_raw(p, gt, 1, "nearby")
    res = ASSIGNERS["nearby_grid"]().assign(t, p, blank_predictions(1, len(p)))
    raw[0, res.fg_mask[0], 4] = 20.0  # objectness 1 where assigned (IoU target 1)
    raw[0, res.fg_mask[0], 6] = 20.0  # class 1
    raw.requires_grad_(True)
    loss, parts = make_loss()(raw, t, p)
    assert parts["box"] == pytest.approx(0.0, abs=1e-5)
    assert parts["cls"] == pytest.approx(0.0, abs=1e-5)
    assert parts["obj"] == pytest.approx(0.0, abs=1e-4)
    loss.backward()
    assert torch.isfinite(raw.grad).all()


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_iou_family_identity_and_ordering(kind):
    a = torch.tensor([[0.0, 0, 10, 10]])
    assert bbox_iou(a, a, kind).item() == pytest.approx(1.0, abs=1e-6)
    near, far = torch.tensor([[1.0, 1, 11, 11]]), torch.tensor([[30.0, 30, 40, 40]])
    assert bbox_iou(a, near, kind) > bbox_iou(a, far, kind)
    z = torch.tensor([[5.0, 5, 5, 5]], requires_grad=True)  # zero-size box stays finite
    v = bbox_iou(a, z, kind)
    v.sum().backward()
    assert torch.isfinite(v).all() and torch.isfinite(z.grad).all()


def test_focal_bce_reduces_easy_examples():
    logits = torch.tensor([-5.0, 5.0])
    t = torch.tensor([0.0, 0.0])
    plain, focal = focal_bce(logits, t, 0.0), focal_bce(logits, t, 2.0)
    assert torch.allclose(plain, torch.nn.functional.binary_cross_entropy_with_logits(logits, t, reduction="none"))
    assert focal[0] / plain[0] < 1e-4 and focal[1] / plain[1] > 0.98


def test_ignore_region_removes_negative_objectness():
    p = priors()
    raw = torch.zeros(1, len(p), 7)
    base, _ = make_loss()(raw, torch.zeros(0, 6), p)
    ign, _ = make_loss()(raw, torch.tensor([[0, -1, 0.0, 0, 32, 32]]), p)
    assert ign < base


def test_nms_matches_greedy_reference():
    torch.manual_seed(1)
    xy = torch.rand(200, 2) * 100
    b = torch.cat([xy, xy + torch.rand(200, 2) * 40 + 2], 1)
    s = torch.rand(200)
    keep = nms(b, s, 0.5)
    order = s.argsort(descending=True)
    iou = box_iou(b[order], b[order])
    ref, dead = [], torch.zeros(200, dtype=torch.bool)
    for i in range(200):
        if not dead[i]:
            ref.append(int(order[i]))
            dead |= iou[i] > 0.5
    assert keep.tolist() == ref


def test_postprocess_filters_keeps_classes_apart_and_caps():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [1, 1, 10, 10]]])
    scores = torch.tensor([[[0.9, 0.0], [0.0, 0.8], [0.3, 0.0], [0.85, 0.0]]])
    out = postprocess(boxes, scores, conf_thres=0.25, nms_iou=0.5, max_det=10)[0]
    assert out["labels"].tolist() == [0, 1, 0]  # same box, other class survives; overlap suppressed
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8, 0.3])
    assert len(postprocess(boxes, scores, 0.25, 0.5, max_det=1)[0]["scores"]) == 1
    assert len(postprocess(boxes, scores, 0.95, 0.5, 10)[0]["scores"]) == 0
