"""SimOTA on hand-made predictions: centre-prior candidates, dynamic k, costs, conflicts, empty images,
batch equals per-image, and both heads' losses."""
import pytest
import torch

from configs import load_config
from configs.base_config import LossCfg
from core.checks import validate
from models import build_assigner_for, build_model
from models.assigners import ASSIGNERS, Predictions
from models.coders import CODERS
from models.losses import V9Loss, YoloAnchorLoss
from models.priors import make_priors

NC = 3
SimOTA = ASSIGNERS["simota"]


def priors():
    """One anchor-free level, stride 8, on a 64x64 input: points at 4, 12, ..., 60."""
    return make_priors((64, 64), [8], None)


def slot(x, y):
    return int((y - 4) // 8 * 8 + (x - 4) // 8)


def targets(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


def far_preds(batch=1, score=0.5):
    """Tiny boxes in a corner (IoU 0 with every GT) and constant scores."""
    p = priors()
    boxes = torch.tensor([0.0, 0.0, 0.5, 0.5]).expand(batch, len(p), 4).clone()
    return Predictions(boxes, torch.full((batch, len(p), NC), score))


def positives(res, b=0):
    return {int(i): int(res.gt_index[b, i]) for i in torch.nonzero(res.fg_mask[b]).squeeze(1)}


def test_dynamic_k_takes_the_cheapest_centre_prior_candidates():
    gt = [16.0, 16, 48, 48]  # centre (32, 32); the centre region reaches 20 px (2.5 strides) around it
    preds = far_preds()
    perfect = [slot(20, 20), slot(28, 28), slot(36, 36)]
    for i in perfect + [slot(60, 60)]:  # (60, 60) is outside the box and the centre region
        preds.boxes[0, i] = torch.tensor(gt)
    res = SimOTA().assign(targets([0, 1, *gt]), priors(), preds)
    assert positives(res) == dict.fromkeys(perfect, 0)  # dynamic k = floor(1 + 1 + 1) = 3
    assert res.target_scores[0, perfect].tolist() == [1.0, 1.0, 1.0]
    assert res.target_labels[0, perfect].tolist() == [1, 1, 1]
    assert res.target_boxes[0, perfect[0]].tolist() == gt


def test_a_prior_outside_the_centre_region_costs_more_than_any_inside():
    gt = [4.0, 4, 60, 60]  # centre (32, 32)
    preds = far_preds()
    preds.boxes[0, slot(20, 20)] = torch.tensor(gt)  # perfect, in the box, 12 px from the centre
    preds.boxes[0, slot(28, 28)] = torch.tensor([8.0, 8, 56, 56])  # IoU 0.73, in box and centre region
    res = SimOTA(center_radius=1.0).assign(targets([0, 0, *gt]), priors(), preds)  # region: 8 px
    assert positives(res) == {slot(28, 28): 0}  # dynamic k = floor(1 + 0.73) = 1: the geometric one
    res = SimOTA(center_radius=2.5).assign(targets([0, 0, *gt]), priors(), preds)
    assert positives(res) == {slot(20, 20): 0}  # both in the region now: the perfect box is cheaper


def test_the_class_cost_prefers_the_right_class():
    gt = [16.0, 16, 48, 48]
    preds = far_preds(score=0.1)
    for i in (slot(28, 28), slot(36, 36)):
        preds.boxes[0, i] = torch.tensor([18.0, 18, 46, 46])  # IoU 0.77 each: dynamic k = 1
    preds.scores[0, slot(36, 36), 2] = 0.9  # the GT's class
    preds.scores[0, slot(28, 28), 0] = 0.9  # another class
    res = SimOTA().assign(targets([0, 2, *gt]), priors(), preds)
    assert positives(res) == {slot(36, 36): 0}


def test_a_prior_wanted_by_two_gts_keeps_the_cheaper():
    a, b = [16.0, 16, 48, 48], [24.0, 24, 56, 56]
    preds = far_preds()
    shared = slot(36, 36)  # inside both boxes and both centre regions
    preds.boxes[0, shared] = torch.tensor(b)  # IoU 1 with b, 0.39 with a
    preds.boxes[0, slot(28, 28)] = torch.tensor([16.0, 16, 46, 46])  # a's own good prior (IoU 0.88 with a)
    res = SimOTA().assign(targets([0, 0, *a], [0, 1, *b]), priors(), preds)
    assert res.gt_index[0, shared] == 1 and res.target_labels[0, shared] == 1
    assert positives(res)[slot(28, 28)] == 0


def test_empty_images_and_ignore_regions_get_no_positive():
    res = SimOTA().assign(torch.zeros(0, 6), priors(), far_preds(2))
    assert res.fg_mask.shape == (2, 64) and not res.fg_mask.any()
    res = SimOTA().assign(targets([1, -1, 0, 0, 64, 64]), priors(), far_preds(2))  # an ignore region only
    assert not res.fg_mask.any()
    res = SimOTA().assign(targets([1, 0, 8, 8, 40, 40]), priors(), far_preds(2))  # image 0 empty
    assert not res.fg_mask[0].any() and res.fg_mask[1].any()  # IoU 0 everywhere: still k = 1
    assert (res.target_scores[~res.fg_mask] == 0).all() and (res.gt_index[~res.fg_mask] == -1).all()


def test_batch_equals_per_image():
    g = torch.Generator().manual_seed(0)
    p = make_priors((96, 96), [8, 16, 32], None)
    rows = []
    for b in range(4):
        n = 1 + b * 2
        xy = torch.rand(n, 2, generator=g) * 60
        wh = torch.rand(n, 2, generator=g) * 40 + 4
        rows.append(torch.cat([torch.full((n, 1), float(b)), torch.randint(0, NC, (n, 1), generator=g).float(),
                               xy, xy + wh], 1))
    t = torch.cat(rows)
    c = p.centers[None].expand(4, -1, -1)
    spread = torch.rand(4, len(p), 4, generator=g) * 24 + 2
    preds = Predictions(torch.cat([c - spread[..., :2], c + spread[..., 2:]], -1),
                        torch.rand(4, len(p), NC, generator=g))
    full = SimOTA().assign(t, p, preds)
    assert full.num_fg > 0
    for b in range(4):
        one = t[t[:, 0] == b].clone()
        one[:, 0] = 0
        single = SimOTA().assign(one, p, Predictions(preds.boxes[b:b + 1], preds.scores[b:b + 1]))
        assert torch.equal(full.fg_mask[b], single.fg_mask[0])
        offset = int((t[:, 0] < b).sum())
        assert torch.equal(full.gt_index[b][full.fg_mask[b]], single.gt_index[0][single.fg_mask[0]] + offset)
        assert torch.equal(full.target_scores[b], single.target_scores[0])


def test_options_are_validated():
    with pytest.raises(ValueError, match="candidate_topk=0 must be >= 1"):
        SimOTA(candidate_topk=0)
    with pytest.raises(ValueError, match="center_radius=0.0 must be positive"):
        SimOTA(center_radius=0.0)


@pytest.mark.parametrize("config, loss_cls", [("bccd_yolo_r18", YoloAnchorLoss), ("bccd_v9t", V9Loss)])
def test_both_heads_train_with_simota(config, loss_cls):
    width = ["model.channel_sparsity=0.25"] if config == "bccd_yolo_r18" else []
    cfg = validate(load_config(config, ["assign.method=simota", "data.img_size=64", "data.class_names=['a','b','c']",
                                        *width]))
    model = build_model(cfg)
    assert isinstance(model.coder, CODERS[SimOTA.coders[model.family]])
    loss_fn = loss_cls(LossCfg(level_weights=[1.0, 1.0, 1.0]), build_assigner_for(cfg), model.coder, 3)
    raw = model(torch.rand(2, 3, 64, 64))
    t = targets([0, 1, 8, 8, 40, 30], [1, 2, 20, 24, 60, 60])
    loss, parts = loss_fn(raw, t, model.priors((64, 64)))
    loss.backward()
    assert torch.isfinite(loss) and parts["box"] > 0
    assert all(torch.isfinite(q.grad).all() for q in model.parameters() if q.grad is not None)
