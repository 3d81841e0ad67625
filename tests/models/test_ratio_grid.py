"""ratio_grid assignment (YOLOv5/v7 style) and the v7 decode that pairs with it."""
import pytest
import torch

from models.assigners import ASSIGNERS, blank_predictions
from models.coders import V7Coder
from models.priors import make_priors
from utils.boxes import box_iou

# Two levels on a 64x64 input: stride 8 (8x8 cells) and stride 16 (4x4 cells), two anchors each.
ANCHORS = [[[8, 8], [40, 40]], [[16, 16], [64, 64]]]


def priors():
    return make_priors((64, 64), [8, 16], ANCHORS)


def targets(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


def box(cx, cy, w, h):
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def slots(res, b=0):
    """{(level, col, row, anchor)} of the positives of image b."""
    p = priors()
    idx = torch.nonzero(res.fg_mask[b]).squeeze(1)
    return {(int(p.level[i]), int(p.grid_xy[i, 0]), int(p.grid_xy[i, 1]), int(p.anchor_idx[i])) for i in idx}


def test_shape_ratio_filter_is_strict():
    # 10x10: ratio 1.25 to the 8 anchor, 1.6 to 16, exactly 4.0 to 40 (rejected), 6.4 to 64.
    r = ASSIGNERS["ratio_grid"]().assign(targets([0, 0, *box(13, 27, 10, 10)]), priors(), blank_predictions(1, len(priors())))
    assert {(lv, a) for lv, _, _, a in slots(r)} == {(0, 0), (1, 0)}
    r = ASSIGNERS["ratio_grid"]().assign(targets([0, 0, *box(13, 27, 10.5, 10.5)]), priors(), blank_predictions(1, len(priors())))
    assert {(lv, a) for lv, _, _, a in slots(r)} == {(0, 0), (0, 1), (1, 0)}  # 40 / 10.5 = 3.81
    r = ASSIGNERS["ratio_grid"](anchor_t=1.5).assign(targets([0, 0, *box(13, 27, 10, 10)]), priors(), blank_predictions(1, len(priors())))
    assert {(lv, a) for lv, _, _, a in slots(r)} == {(0, 0)}
    # every side counts: 4x16 against the 16 anchor has a width ratio of 4 although the heights match
    r = ASSIGNERS["ratio_grid"]().assign(targets([0, 0, *box(13, 27, 4, 16)]), priors(), blank_predictions(1, len(priors())))
    assert {(lv, a) for lv, _, _, a in slots(r)} == {(0, 0)}
    assert ASSIGNERS["ratio_grid"]().assign(targets([0, 0, *box(30, 30, 1, 60)]), priors(), blank_predictions(1, len(priors()))).num_fg == 0


def test_centre_cell_and_the_two_nearest_neighbours():
    # Centre (13, 27): stride 8 -> (1.625, 3.375): cell (1, 3), right half in x, upper half in y.
    #                  stride 16 -> (0.8125, 1.6875): cell (0, 1), right half in x, lower half in y.
    r = ASSIGNERS["ratio_grid"]().assign(targets([0, 0, *box(13, 27, 10, 10)]), priors(), blank_predictions(1, len(priors())))
    assert {(c, rw) for lv, c, rw, _ in slots(r) if lv == 0} == {(1, 3), (2, 3), (1, 2)}
    assert {(c, rw) for lv, c, rw, _ in slots(r) if lv == 1} == {(0, 1), (1, 1), (0, 2)}


def test_neighbours_off_the_map_are_dropped():
    r = ASSIGNERS["ratio_grid"]().assign(targets([0, 0, *box(3, 3, 6, 6)]), priors(), blank_predictions(1, len(priors())))
    assert slots(r) == {(0, 0, 0, 0), (1, 0, 0, 0)}  # upper-left halves of the corner cells
    r = ASSIGNERS["ratio_grid"]().assign(targets([0, 0, *box(61, 3, 6, 6)]), priors(), blank_predictions(1, len(priors())))
    assert {(c, rw) for lv, c, rw, _ in slots(r) if lv == 0} == {(7, 0)}  # right half of the last column


def test_conflict_keeps_the_gt_of_highest_anchor_iou_and_scores_are_that_iou():
    # Both GTs are centred in cell (1, 1) of stride 8; the 8x8 anchor there fits the 8x8 GT best.
    t = targets([0, 0, *box(12, 12, 8, 8)], [0, 1, *box(12.5, 12.5, 12, 12)])
    p = priors()
    r = ASSIGNERS["ratio_grid"]().assign(t, p, blank_predictions(1, len(p)))
    at_cell = (p.grid_xy == torch.tensor([1.0, 1.0])).all(1)
    i = int(torch.nonzero((p.level == 0) & at_cell & (p.anchor_idx == 0)))
    assert r.gt_index[0, i] == 0 and r.target_labels[0, i] == 0
    fg = torch.nonzero(r.fg_mask[0]).squeeze(1)
    iou = box_iou(r.target_boxes[0, fg], p.boxes()[fg]).diagonal()
    assert torch.allclose(r.target_scores[0, fg], iou)


def test_v7_decode_zero_logits_and_range():
    p = priors()
    coder = V7Coder()
    zero = coder.decode_boxes(torch.zeros(1, len(p), 7), p)[0]
    assert torch.allclose((zero[:, :2] + zero[:, 2:]) / 2, p.centers)  # 2 * 0.5 - 0.5 = 0.5
    assert torch.allclose(zero[:, 2:] - zero[:, :2], p.anchor_wh)  # (2 * 0.5)^2 = 1
    for v in (-30.0, 30.0):
        b = coder.decode_boxes(torch.full((1, len(p), 7), v), p)[0]
        rel = (b[:, :2] + b[:, 2:]) / 2 / p.stride[:, None] - p.grid_xy
        assert (rel >= -0.5 - 1e-5).all() and (rel <= 1.5 + 1e-5).all()
        assert ((b[:, 2:] - b[:, :2]) <= 4 * p.anchor_wh + 1e-4).all()


def test_v7_decode_reaches_the_gt_from_every_assigned_slot():
    torch.manual_seed(0)
    p = priors()
    c = torch.rand(20, 2) * 60 + 2
    wh = torch.rand(20, 2) * 40 + 3
    t = torch.cat((torch.zeros(20, 1), torch.randint(0, 2, (20, 1)).float(), c - wh / 2, c + wh / 2), 1)
    res = ASSIGNERS["ratio_grid"]().assign(t, p, blank_predictions(1, len(p)))
    fg = res.fg_mask[0]
    assert res.num_fg >= 20
    gt = res.target_boxes[0, fg]
    stride = p.stride[fg][:, None]
    s_xy = ((gt[:, :2] + gt[:, 2:]) / 2 / stride - p.grid_xy[fg] + 0.5) / 2  # sigmoid needed for the centre
    s_wh = ((gt[:, 2:] - gt[:, :2]) / p.anchor_wh[fg]).sqrt() / 2  # sigmoid needed for the size
    assert ((s_xy > 0) & (s_xy < 1)).all() and ((s_wh > 0) & (s_wh < 1)).all()
    raw = torch.zeros(1, len(p), 7)
    raw[0, fg, 0:2], raw[0, fg, 2:4] = torch.logit(s_xy.double()).float(), torch.logit(s_wh.double()).float()
    decoded = V7Coder().decode_boxes(raw, p)[0, fg]
    assert torch.allclose(decoded, gt, atol=1e-3)


def test_rejects_a_ratio_bound_below_one():
    with pytest.raises(ValueError, match="anchor_t"):
        ASSIGNERS["ratio_grid"](anchor_t=1.0)
