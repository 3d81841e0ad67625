"""Grid assigners on hand-made boxes: expected cells and anchors, conflicts, empty images."""
import pytest
import torch

from models.assigners import ASSIGNERS, blank_predictions
from models.assigners.base import GridIoUAssigner
from models.priors import make_priors

# The grid methods, which assign from GT and priors alone (the others are tested on their own).
GRID_ASSIGNERS = [cls for cls in ASSIGNERS.values() if issubclass(cls, GridIoUAssigner)]

# One level, stride 8, on a 32x32 input: a 4x4 grid; two anchors per cell.
ANCHORS = [[[8, 8], [24, 24]]]


def priors():
    return make_priors((32, 32), [8], ANCHORS)


def targets(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


def slots(res, b=0):
    """{(col, row, anchor): gt_index} of the positives of image b."""
    p = priors()
    idx = torch.nonzero(res.fg_mask[b]).squeeze(1)
    return {(int(p.grid_xy[i, 0]), int(p.grid_xy[i, 1]), int(p.anchor_idx[i])): int(res.gt_index[b, i])
            for i in idx}


def test_single_grid_centre_cell_and_anchor_by_iou():
    # GT 8x8 centred at (12, 12): cell (1, 1). IoU with the 8x8 anchor there = 1, with 24x24 = 1/9.
    r = ASSIGNERS["single_grid"](match_iou_thres=0.5).assign(targets([0, 2, 8, 8, 16, 16]), priors(), blank_predictions(1, len(priors())))
    assert slots(r) == {(1, 1, 0): 0}
    assert r.target_labels[r.fg_mask].tolist() == [2]
    assert r.target_boxes[r.fg_mask].tolist() == [[8, 8, 16, 16]]
    assert r.target_scores[r.fg_mask].tolist() == pytest.approx([1.0])


def test_single_grid_low_threshold_takes_both_anchors():
    r = ASSIGNERS["single_grid"](match_iou_thres=0.1).assign(targets([0, 0, 8, 8, 16, 16]), priors(), blank_predictions(1, len(priors())))
    assert slots(r) == {(1, 1, 0): 0, (1, 1, 1): 0}


def test_nearby_grid_takes_3x3_block_clipped_at_border():
    # GT centred in cell (0, 0): the block is clipped to cells {0,1} x {0,1}.
    t = targets([0, 0, 0, 0, 8, 8])
    r = ASSIGNERS["nearby_grid"](match_iou_thres=0.0, ensure_one_match=False).assign(t, priors(), blank_predictions(1, len(priors())))
    cells = {(c, rw) for c, rw, _ in slots(r)}
    assert cells == {(0, 0), (1, 0), (0, 1), (1, 1)}


def test_nearby_grid_threshold_filters_far_anchors():
    # 8x8 anchor at a neighbour cell has IoU 0 with an 8x8 GT aligned to its own cell.
    r = ASSIGNERS["nearby_grid"](match_iou_thres=0.2).assign(targets([0, 0, 8, 8, 16, 16]), priors(), blank_predictions(1, len(priors())))
    assert (1, 1, 0) in slots(r) and (0, 0, 0) not in slots(r)
    assert all(v == 0 for v in slots(r).values())


def test_all_grid_uses_every_cell_with_overlap():
    # A 24x24 GT centred at (16,16); the 24x24 anchor overlaps it from every cell but not from far ones.
    t = targets([0, 0, 4, 4, 28, 28])
    r = ASSIGNERS["all_grid"](match_iou_thres=0.3).assign(t, priors(), blank_predictions(1, len(priors())))
    cells = {(c, rw) for c, rw, a in slots(r) if a == 1}
    assert cells == {(1, 1), (1, 2), (2, 1), (2, 2)}
    r2 = ASSIGNERS["nearby_grid"](match_iou_thres=0.3).assign(t, priors(), blank_predictions(1, len(priors())))
    assert set(slots(r2)) <= set(slots(r))


def test_conflict_resolved_by_max_iou():
    # Two GTs in cell (1, 1): 8x8 (IoU 1 with anchor 0) and 20x20 (IoU 0.16 with anchor 0).
    t = targets([0, 0, 8, 8, 16, 16], [0, 1, 2, 2, 22, 22])
    r = ASSIGNERS["single_grid"](match_iou_thres=0.1).assign(t, priors(), blank_predictions(1, len(priors())))
    assert slots(r)[(1, 1, 0)] == 0
    assert slots(r)[(1, 1, 1)] == 1  # anchor 1 (24x24) prefers the 20x20 GT
    # without filtering, the later GT keeps a contested slot
    r = ASSIGNERS["single_grid"](match_iou_thres=0.1, filter_by_max_iou=False).assign(t, priors(), blank_predictions(1, len(priors())))
    assert slots(r)[(1, 1, 0)] == 1


def test_empty_images_ignore_rows_and_batch_separation():
    t = targets([1, 0, 8, 8, 16, 16], [1, -1, 0, 0, 32, 32])
    for cls in GRID_ASSIGNERS:
        r = cls().assign(t, priors(), blank_predictions(3, len(priors())))
        assert r.fg_mask.shape == (3, len(priors()))
        assert not r.fg_mask[0].any() and not r.fg_mask[2].any()
        assert r.fg_mask[1].any() and (r.gt_index[1][r.fg_mask[1]] == 0).all()
        r0 = cls().assign(targets(), priors(), blank_predictions(2, len(priors())))
        assert r0.num_fg == 0 and (r0.gt_index == -1).all()


def test_ensure_one_match_gives_a_lonely_gt_its_best_prior():
    t = targets([0, 0, 9, 9, 11, 11])  # tiny 2x2 box: IoU with 8x8 anchor = 4/64 < 0.5
    assert ASSIGNERS["single_grid"](match_iou_thres=0.5, ensure_one_match=False).assign(t, priors(), blank_predictions(1, len(priors()))).num_fg == 0
    r = ASSIGNERS["single_grid"](match_iou_thres=0.5).assign(t, priors(), blank_predictions(1, len(priors())))
    assert slots(r) == {(1, 1, 0): 0}


def test_vectorised_over_batch_matches_per_image():
    torch.manual_seed(0)
    xy = torch.rand(12, 2) * 24
    wh = torch.rand(12, 2) * 16 + 2
    t = torch.cat([torch.randint(0, 4, (12, 1)).float(), torch.randint(0, 3, (12, 1)).float(), xy, xy + wh], 1)
    for cls in GRID_ASSIGNERS:
        full = cls().assign(t, priors(), blank_predictions(4, len(priors())))
        for b in range(4):
            rows = torch.nonzero(t[:, 0] == b).squeeze(1)
            one = t[rows].clone()
            one[:, 0] = 0
            single = cls().assign(one, priors(), blank_predictions(1, len(priors())))
            assert torch.equal(full.fg_mask[b], single.fg_mask[0])
            mapped = torch.where(single.gt_index[0] >= 0, rows[single.gt_index[0].clamp(min=0)], -1)
            assert torch.equal(full.gt_index[b], mapped)
