"""ATSS on hand-made boxes: closest candidates per level, the mean + std threshold, centres inside the
GT, conflicts, empty images, batch equals per-image, anchor-free prior boxes, and both heads' losses."""
import pytest
import torch

from configs import load_config
from configs.base_config import LossCfg
from core.checks import validate
from models import build_assigner_for, build_model
from models.assigners import ASSIGNERS, Predictions, blank_predictions
from models.losses import V9Loss, YoloAnchorLoss
from models.priors import make_priors
from utils.boxes import box_iou

ATSS = ASSIGNERS["atss"]
# Two anchor-based levels on 64x64: stride 8 (8x8 cells) and stride 16 (4x4 cells), one anchor each.
ANCHORS = [[[16, 16]], [[32, 32]]]


def priors(anchors=ANCHORS):
    return make_priors((64, 64), [8, 16], anchors)


def targets(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


def run(t, p, batch=1, **options):
    return ATSS(**options).assign(t, p, blank_predictions(batch, len(p)))


def expected_positives(gt, p, k):
    """The paper's rule written out for one GT: per level the k nearest centres, then IoU >= mean + std
    and the centre inside the box."""
    centre = (gt[:2] + gt[2:]) / 2
    dist = (p.centers - centre).norm(dim=-1)
    cand = torch.zeros(len(p), dtype=torch.bool)
    for lv in range(2):
        idx = torch.nonzero(p.level == lv).squeeze(1)
        cand[idx[dist[idx].topk(min(k, idx.numel()), largest=False).indices]] = True
    iou = box_iou(gt[None], p.boxes())[0]
    thr = iou[cand].mean() + iou[cand].std()
    inside = ((p.centers > gt[:2]) & (p.centers < gt[2:])).all(-1)
    return set(torch.nonzero(cand & (iou >= thr) & inside).squeeze(1).tolist()), float(thr)


def test_positives_follow_the_mean_plus_std_rule():
    p = priors()
    gt = torch.tensor([10.0, 6, 42, 30])
    res = run(targets([0, 2, *gt.tolist()]), p)
    want, thr = expected_positives(gt, p, 9)
    got = set(torch.nonzero(res.fg_mask[0]).squeeze(1).tolist())
    assert got == want and len(got) >= 1 and 0 < thr < 1
    assert res.target_labels[0, list(got)].tolist() == [2] * len(got)
    assert res.target_boxes[0, list(got)].tolist() == [gt.tolist()] * len(got)
    assert (res.target_scores[0] == 0).all()  # blank predictions: quality 0


def test_a_small_gt_is_taken_by_the_fine_level_a_large_one_by_the_coarse():
    p = priors()
    small = run(targets([0, 0, 20, 20, 36, 36]), p)  # the 16x16 anchors fit it exactly
    assert set(p.level[small.fg_mask[0]].tolist()) == {0}
    large = run(targets([0, 0, 0, 0, 64, 64]), p)
    assert set(p.level[large.fg_mask[0]].tolist()) == {1}


def fg_slots(res):
    return torch.nonzero(res.fg_mask[0]).squeeze(1).tolist()


def test_topk_sets_the_candidates_and_so_the_threshold():
    # GT [24, 24, 40, 40], centre (32, 32). Level 0 (8 x 8 cells, anchor 16): the 4 centres (28|36, 28|36) at
    # distance 5.7, e.g. [20, 20, 36, 36]: inter 12 x 12 = 144, union 368 -> 9/23; the next ring of 8 at
    # 12.6, e.g. (20, 28) [12, 20, 28, 36]: inter 4 x 12 = 48, union 464 -> 3/29. Level 1 (anchor 32): the 4
    # centres (24|40, 24|40) at 11.3, e.g. [8, 8, 40, 40] holds the GT -> 256/1024 = 1/4; the next ring of 8
    # at 25.3 touches the GT only along an edge -> 0. (Ties in distance share one IoU, so the order among
    # them does not matter.)
    p = priors()
    t = targets([0, 0, 24, 24, 40, 40])
    # topk 1: candidates {9/23, 1/4}; mean .32065, unbiased std |9/23 - 1/4| / sqrt(2) = .09992, threshold
    # .42057 above both: two candidates can never pass (the threshold exceeds the larger unless equal)
    assert run(t, p, topk=1).num_fg == 0
    # topk 9: 4 x 9/23, 5 x 3/29, 4 x 1/4, 5 x 0. Mean 3.08246 / 18 = .17125; SS .91598 - 18 * .17125^2 =
    # .38812; std sqrt(.38812 / 17) = .15110; threshold .32235: the four 9/23 centres, all inside the GT,
    # level 0 slots row * 8 + col for cols 3, 4 and rows 3, 4
    assert fg_slots(run(t, p)) == [27, 28, 35, 36]


def test_a_thin_box_gets_the_column_of_centres_inside_it():
    # GT [26, 0, 30, 64] (4 x 64, centre (28, 32)). Level 0, 9 nearest: (28, 28|36) at 4, (20|36, 28|36) at
    # 8.9, (28, 20|44) at 12, one of (20|36, 20|44) at 14.4. Anchor 16 in column x = 28: inter 4 x 16 = 64,
    # union 448 -> 1/7 (4 of them); at x = 20 or 36: inter 2 x 16 = 32, union 480 -> 1/15 (5).
    # Level 1, 9 nearest: (24|40, 24|40) at 8.9 and 14.4: inter 4 x 32 = 128, union 1152 -> 1/9 (4);
    # (8, 24|40) at 21.5 -> 0 (2); (24, 8|56) at 24.3 and one of (40, 8|56) at 26.8: inter 4 x 24 = 96,
    # union 1184 -> 3/37 (3).
    # Mean 1.59245 / 18 = .08847; SS .17296 - 18 * .08847^2 = .03208; std sqrt(.03208 / 17) = .04344;
    # threshold .13191: the four 1/7 (centres x = 28 inside 26..30), not the 1/9 -> level 0 column 3,
    # rows 2..5, slots 19, 27, 35, 43
    p = priors()
    res = run(targets([0, 0, 26, 0, 30, 64]), p)
    assert fg_slots(res) == [19, 27, 35, 43]
    assert p.grid_xy[fg_slots(res)].tolist() == [[3, 2], [3, 3], [3, 4], [3, 5]]


def test_a_prior_positive_for_two_gts_keeps_the_higher_iou():
    p = priors()
    a, b = [16.0, 16, 32, 32], [18.0, 18, 36, 36]
    res = run(targets([0, 0, *a], [0, 1, *b]), p)
    shared = (set(torch.nonzero(run(targets([0, 0, *a]), p).fg_mask[0]).squeeze(1).tolist())
              & set(torch.nonzero(run(targets([0, 1, *b]), p).fg_mask[0]).squeeze(1).tolist()))
    assert shared
    iou = box_iou(torch.tensor([a, b]), p.boxes())
    for i in shared:
        assert int(res.gt_index[0, i]) == int(iou[:, i].argmax())


def test_empty_images_and_ignore_regions():
    p = priors()
    assert not run(torch.zeros(0, 6), p, batch=2).fg_mask.any()
    assert not run(targets([0, -1, 0, 0, 64, 64]), p).fg_mask.any()
    res = run(targets([1, 0, 8, 8, 40, 40]), p, batch=2)
    assert not res.fg_mask[0].any() and res.fg_mask[1].any()


def test_batch_equals_per_image_and_quality_is_the_predicted_iou():
    g = torch.Generator().manual_seed(1)
    p = make_priors((96, 96), [8, 16, 32], [[[10, 13], [16, 30]], [[30, 61], [62, 45]], [[116, 90], [80, 80]]])
    rows = []
    for b in range(3):
        n = 2 + b
        xy = torch.rand(n, 2, generator=g) * 60
        rows.append(torch.cat([torch.full((n, 1), float(b)), torch.zeros(n, 1), xy,
                               xy + torch.rand(n, 2, generator=g) * 30 + 4], 1))
    t = torch.cat(rows)
    c = p.centers[None].expand(3, -1, -1)
    preds = Predictions(torch.cat([c - 10, c + 10], -1), torch.rand(3, len(p), 1, generator=g))
    full = ATSS().assign(t, p, preds)
    fg = full.fg_mask
    want = torch.diag(box_iou(full.target_boxes[fg], preds.boxes[fg]))
    torch.testing.assert_close(full.target_scores[fg], want)
    for b in range(3):
        one = t[t[:, 0] == b].clone()
        one[:, 0] = 0
        single = ATSS().assign(one, p, Predictions(preds.boxes[b:b + 1], preds.scores[b:b + 1]))
        assert torch.equal(full.fg_mask[b], single.fg_mask[0])
        offset = int((t[:, 0] < b).sum())
        assert torch.equal(full.gt_index[b][fg[b]], single.gt_index[0][single.fg_mask[0]] + offset)


def test_anchor_free_priors_use_squares_of_anchor_scale_strides():
    p = make_priors((64, 64), [8, 16], None)
    assert p.anchor_free
    gt = [8.0, 8, 40, 40]  # 32 px: the 4-stride squares of level 0 fit it exactly
    fine = run(targets([0, 0, *gt]), p, anchor_scale=4.0)
    assert set(p.level[fine.fg_mask[0]].tolist()) == {0}
    coarse = run(targets([0, 0, *gt]), p, anchor_scale=2.0)  # 2-stride squares: level 1 fits it
    assert set(p.level[coarse.fg_mask[0]].tolist()) == {1}


def test_options_are_validated():
    with pytest.raises(ValueError, match="topk=0 must be >= 1"):
        ATSS(topk=0)


@pytest.mark.parametrize("config, loss_cls", [("bccd_yolo_r18", YoloAnchorLoss), ("bccd_v9t", V9Loss)])
def test_both_heads_train_with_atss(config, loss_cls):
    width = ["model.channel_sparsity=0.25"] if config == "bccd_yolo_r18" else []
    cfg = validate(load_config(config, ["assign.method=atss", "data.img_size=64", "data.class_names=['a','b','c']",
                                        *width]))
    model = build_model(cfg)
    loss_fn = loss_cls(LossCfg(level_weights=[1.0, 1.0, 1.0]), build_assigner_for(cfg), model.coder, 3)
    raw = model(torch.rand(2, 3, 64, 64))
    loss, parts = loss_fn(raw, targets([0, 1, 8, 8, 40, 30], [1, 2, 20, 24, 60, 60]), model.priors((64, 64)))
    loss.backward()
    assert torch.isfinite(loss) and parts["box"] > 0
    assert all(torch.isfinite(q.grad).all() for q in model.parameters() if q.grad is not None)
