"""Golden assignments worked by hand on small scenes with two strides: ratio_grid, the grid tie-break,
atss, simota and task_aligned, each with a slot wanted by two GTs and an image without GTs.

Every scene uses a 32 x 32 input with strides 8 (4 x 4 cells, centres 4, 12, 20, 28) and 16 (2 x 2
cells, centres 8, 24). Slot numbers: level 0 first, row-major, anchors innermost; ``slot(lv, col,
row, a)`` spells them out. The exact cells of the grid methods are in test_assigners.py.
"""
import pytest
import torch

from models.assigners import ASSIGNERS, Predictions, blank_predictions
from models.priors import make_priors


def slot(level, col, row, anchor=0, num_anchors=1):
    """Prior index on the 32 x 32 input: level 0 has 16 cells, level 1 follows with 4."""
    first, cols = (0, 4) if level == 0 else (16 * num_anchors, 2)
    return first + (row * cols + col) * num_anchors + anchor


def targets(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


def positives(res, b=0):
    """{slot: (gt_index, label)} of image b."""
    return {int(i): (int(res.gt_index[b, i]), int(res.target_labels[b, i]))
            for i in torch.nonzero(res.fg_mask[b]).squeeze(1)}


def assert_background(res):
    bg = ~res.fg_mask
    assert (res.gt_index[bg] == -1).all() and (res.target_labels[bg] == -1).all()
    assert (res.target_scores[bg] == 0).all() and (res.target_boxes[bg] == 0).all()


# -- ratio_grid ----------------------------------------------------------------------------------
# Anchors: level 0 (8, 8) and (48, 24); level 1 (16, 16) and (64, 64).
# GT0 [8, 7, 18, 13], class 1: centre (13, 10), 10 x 6.
#   shape: (8, 8) max(10/8, 8/6) = 1.33 < 4 ok; (48, 24) 48/10 = 4.8 no; (16, 16) 16/6 = 2.67 ok; (64, 64) no.
#   s8:  centre / 8 = (1.625, 1.25): cell (1, 1); x in the right half -> (2, 1); y in the upper half -> (1, 0)
#   s16: centre / 16 = (.8125, .625): cell (0, 0); right half -> (1, 0); lower half -> (0, 1)
# GT1 [8, 8, 16, 16], class 0: centre (12, 12), 8 x 8. Shape: (8, 8) and (16, 16) only.
#   s8:  (1.5, 1.5): cell (1, 1), exactly mid-cell on both axes -> no neighbour at all
#   s16: (.75, .75): cell (0, 0); -> (1, 0) and (0, 1)
# Anchor boxes at their cell centres and their IoUs (score of a positive = IoU with its GT):
#   s8 (1,1)  [8, 8, 16, 16]:  GT0 inter 8 x 5 = 40, union 64 + 60 - 40 = 84 -> 10/21; GT1 1  -> GT1 wins
#   s8 (2,1)  [16, 8, 24, 16]: GT0 inter 2 x 5 = 10, union 114 -> 5/57
#   s8 (1,0)  [8, 0, 16, 8]:   GT0 inter 8 x 1 = 8, union 116 -> 2/29
#   s16 (0,0) [0, 0, 16, 16]:  GT0 inter 8 x 6 = 48, union 256 + 60 - 48 = 268 -> 12/67; GT1 64/256 = 1/4 -> GT1
#   s16 (1,0) [16, 0, 32, 16]: GT0 inter 2 x 6 = 12, union 304 -> 3/76; GT1 0 -> GT0
#   s16 (0,1) [0, 16, 16, 32]: GT0 0, GT1 0: a tie -> the GT listed last (GT1), score 0
RATIO_ANCHORS = [[[8, 8], [48, 24]], [[16, 16], [64, 64]]]


def test_ratio_grid_golden_scene_with_conflicts_and_an_empty_image():
    p = make_priors((32, 32), [8, 16], RATIO_ANCHORS)
    t = targets([0, 1, 8, 7, 18, 13], [0, 0, 8, 8, 16, 16])
    res = ASSIGNERS["ratio_grid"]().assign(t, p, blank_predictions(2, len(p)))

    def s(lv, col, row):
        return slot(lv, col, row, 0, num_anchors=2)
    want = {s(0, 1, 1): (1, 0, 1.0), s(0, 2, 1): (0, 1, 5 / 57), s(0, 1, 0): (0, 1, 2 / 29),
            s(1, 0, 0): (1, 0, 0.25), s(1, 1, 0): (0, 1, 3 / 76), s(1, 0, 1): (1, 0, 0.0)}
    assert positives(res) == {k: v[:2] for k, v in want.items()}
    for i, (g, _, score) in want.items():
        assert res.target_scores[0, i].item() == pytest.approx(score, abs=1e-6), i
        assert res.target_boxes[0, i].tolist() == t[g, 2:].tolist()
    assert not res.fg_mask[1].any()  # image 1 has no GT
    assert_background(res)
    # the shape bound decides alone: anchor_t = 1.3 drops GT0 from the 8 x 8 anchor (ratio 8/6 = 1.33)
    # and every GT from the 16 x 16 one (ratios 1.6 and 2); GT1 keeps its mid-cell slot only
    tight = ASSIGNERS["ratio_grid"](anchor_t=1.3).assign(t, p, blank_predictions(1, len(p)))
    assert positives(tight) == {s(0, 1, 1): (1, 0)}


def test_grid_tie_goes_to_the_gt_listed_last_and_higher_iou_beats_order():
    # nearby_grid, one 8 x 8 anchor per level. Two identical GTs [8, 8, 16, 16] (classes 0 and 2): every
    # slot they match has equal IoU, so each goes to row 1. IoU of the s8 (1, 1) anchor [8, 8, 16, 16]
    # is 1; of its neighbours, e.g. [16, 8, 24, 16], 0 (< 0.0625, not matched); s16 (0, 0) [4, 4, 12, 12]:
    # inter 16, union 112 -> 1/7.
    p = make_priors((32, 32), [8, 16], [[[8, 8]], [[8, 8]]])
    grid = ASSIGNERS["nearby_grid"]()
    res = grid.assign(targets([0, 0, 8, 8, 16, 16], [0, 2, 8, 8, 16, 16]), p, blank_predictions(1, len(p)))
    assert positives(res) == {slot(0, 1, 1): (1, 2), slot(1, 0, 0): (1, 2)}
    assert res.target_scores[0, slot(1, 0, 0)].item() == pytest.approx(1 / 7, abs=1e-6)
    # a 4 x 4 GT [10, 10, 14, 14] listed last matches the s8 (1, 1) anchor with IoU 16/64 = 1/4 (the s16
    # (0, 0) anchor [4, 4, 12, 12]: inter 4, union 76 -> 1/19 < 0.0625, no match) and loses that slot to
    # the 8 x 8 GT's IoU 1: a higher IoU beats the listing order
    res = grid.assign(targets([0, 0, 8, 8, 16, 16], [0, 2, 10, 10, 14, 14]), p, blank_predictions(1, len(p)))
    assert positives(res) == {slot(0, 1, 1): (0, 0), slot(1, 0, 0): (0, 0)}


# -- atss ----------------------------------------------------------------------------------------
# Anchors (8, 8) on level 0 and (16, 16) on level 1, topk = 3 per level; threshold mean + std (unbiased)
# of the GT's 6 candidate IoUs; positive also needs its centre strictly inside the GT.
# A [8, 8, 16, 16] (centre (12, 12)): s8 (12, 12) d 0 -> IoU 1; two of its 4 side neighbours (d 8, IoU 0);
#   s16 (8, 8) d 5.7 [0, 0, 16, 16] -> 64/256 = 1/4, (24, 8) and (8, 24) d 12.6 -> 0.
#   {1, 0, 0, 1/4, 0, 0}: mean 5/24; SS = 17/16 - 6 (5/24)^2 = 462/576; std sqrt(462/2880) = .4005;
#   threshold .6089 -> s8 (12, 12) only.
# B [8, 8, 20, 16] (centre (14, 12)): s8 (12, 12) d 2 -> 64/96 = 2/3; (20, 12) d 6 [16, 8, 24, 16] -> 32/128
#   = 1/4; (12, 4) or (12, 20) d 8.2 -> 0. s16 (8, 8) d 7.2 -> 64/288 = 2/9; (24, 8) d 10.8 -> 32/320 = 1/10;
#   (8, 24) d 13.4 -> 0. Mean 1.2389 / 6 = .2065; SS = .5663 - 6 * .2065^2 = .3105; std .2492; threshold
#   .4557 -> s8 (12, 12) only, which A also takes with IoU 1 > 2/3: A keeps it, B ends with nothing.
# C [16, 16, 32, 32] (centre (24, 24)): three of the s8 (20|28, 20|28) at d 5.7, each inside C -> 64/256 = 1/4;
#   s16 (24, 24) d 0 -> 1; (8, 24), (24, 8) d 16 -> 0. Mean 1.75 / 6; SS = 1.1875 - 6 (.2917)^2 = .6771;
#   std .3680; threshold .6597 -> s16 (24, 24) only.
def atss_scene():
    p = make_priors((32, 32), [8, 16], [[[8, 8]], [[16, 16]]])
    boxes = torch.zeros(2, len(p), 4)
    boxes[0, slot(0, 1, 1)] = torch.tensor([8.0, 8, 16, 14])  # IoU with A: 48/64 = .75
    boxes[0, slot(1, 1, 1)] = torch.tensor([18.0, 18, 30, 30])  # IoU with C: 144/256 = .5625
    return p, Predictions(boxes, torch.zeros(2, len(p), 3))


def test_atss_golden_scene_thresholds_conflict_quality_and_empty_image():
    p, preds = atss_scene()
    a, b, c = [8.0, 8, 16, 16], [8.0, 8, 20, 16], [16.0, 16, 32, 32]
    res = ASSIGNERS["atss"](topk=3).assign(targets([0, 0, *a], [0, 1, *b], [0, 2, *c]), p, preds)
    assert positives(res) == {slot(0, 1, 1): (0, 0), slot(1, 1, 1): (2, 2)}
    assert res.target_scores[0, slot(0, 1, 1)].item() == pytest.approx(0.75, abs=1e-6)
    assert res.target_scores[0, slot(1, 1, 1)].item() == pytest.approx(0.5625, abs=1e-6)
    assert res.target_boxes[0, slot(1, 1, 1)].tolist() == c
    assert not res.fg_mask[1].any()
    assert_background(res)
    # B alone keeps its slot (no rival), with quality IoU([8, 8, 16, 14], B) = 48 / 96 = .5
    alone = ASSIGNERS["atss"](topk=3).assign(targets([0, 1, *b]), p, preds)
    assert positives(alone) == {slot(0, 1, 1): (0, 1)}
    assert alone.target_scores[0, slot(0, 1, 1)].item() == pytest.approx(0.5, abs=1e-6)
    # listed B first, A still wins by IoU (1 > 2/3), not by order
    swapped = ASSIGNERS["atss"](topk=3).assign(targets([0, 1, *b], [0, 0, *a]), p, preds)
    assert positives(swapped) == {slot(0, 1, 1): (1, 0)}
    # two identical A boxes tie on every IoU: the GT listed first keeps the slot (argmax takes the first)
    tie = ASSIGNERS["atss"](topk=3).assign(targets([0, 0, *a], [0, 1, *a]), p, preds)
    assert positives(tie) == {slot(0, 1, 1): (0, 0)}


def test_atss_threshold_is_mean_plus_unbiased_std_and_centres_must_lie_strictly_inside():
    # Image 1, D [18, 16, 26, 30] (8 x 14, centre (22, 23), area 112), topk 3:
    #   s8  (20, 20) d 3.6 [16, 16, 24, 24]: inter 6 x 8 = 48, union 64 + 112 - 48 = 128 -> 3/8
    #   s8  (20, 28) d 5.4 [16, 24, 24, 32]: inter 6 x 6 = 36, union 140 -> 9/35 = .2571
    #   s8  (28, 20) d 6.7 [24, 16, 32, 24]: inter 2 x 8 = 16, union 160 -> 1/10
    #   s16 (24, 24) d 2.2 [16, 16, 32, 32]: holds D -> 112/256 = 7/16; (8, 24) d 14.0 and (24, 8) d 15.1 -> 0
    # mean 1.16964 / 6 = .19494; sum of squares .408153 - 6 * .19494^2 = .180141;
    # unbiased std sqrt(.180141 / 5) = .18981 -> threshold .38475: only 7/16 passes (3/8 = .375 does not;
    # a biased std .17327 would let it in at .36821, a bare mean .19494 would add 9/35 too).
    # Image 2, E [20, 14, 26, 28] (6 x 14, centre (23, 21), area 84), topk 3:
    #   s8  (20, 20) d 3.2 [16, 16, 24, 24]: inter 4 x 8 = 32, union 116 -> 8/29 = .2759, centre ON the left edge
    #   s8  (28, 20) d 5.1 and (20, 28) d 7.6: inter 2 x 8 and 4 x 4 = 16, union 132 -> 4/33 each
    #   s16 (24, 24) d 3.2 [16, 16, 32, 32]: inter 6 x 12 = 72, union 268 -> 18/67 = .2687
    #   s16 (24, 8) d 13.0 [16, 0, 32, 16]: inter 6 x 2 = 12, union 328 -> 3/82; (8, 24) d 15.3 -> 0
    # mean .82353 / 6 = .13726; SS .178999 - 6 * .13726^2 = .065965; std sqrt(.065965 / 5) = .11486;
    # threshold .25212: 8/29 and 18/67 pass, but the s8 (20, 20) centre is not strictly inside E -> s16 only.
    p, _ = atss_scene()
    t = targets([1, 0, 18, 16, 26, 30], [2, 1, 20, 14, 26, 28])
    res = ASSIGNERS["atss"](topk=3).assign(t, p, blank_predictions(3, len(p)))
    assert not res.fg_mask[0].any()
    assert positives(res, 1) == {slot(1, 1, 1): (0, 0)}
    assert positives(res, 2) == {slot(1, 1, 1): (1, 1)}
    assert_background(res)


# -- simota --------------------------------------------------------------------------------------
# Anchor-free priors, 2 classes, every score 0.5 unless said: the class cost of any pair is then
# -ln(.5) - ln(1 - .5) = 2 ln 2. center_radius 1: within 8 px (s8) / 16 px (s16) of the GT centre.
# GT0 [2, 2, 22, 22] (class 0, centre (12, 12)): box holds s8 centres {4, 12, 20}^2 and s16 (8, 8); the
#   centre region holds s8 (12, 12) and all four s16 -> both: s8 (12, 12), s16 (8, 8).
# GT1 [6, 6, 30, 30] (class 1, centre (18, 18)): both: s8 {12, 20}^2 and all four s16.
# Predicted boxes (elsewhere [0, 0, .5, .5], IoU 0 with both GTs) and their IoUs:
#   s8 (12, 12) [2, 2, 22, 22]: GT0 1;            GT1 inter 16^2 = 256, union 400 + 576 - 256 -> 16/45
#   s8 (20, 12) [2, 2, 22, 20]: GT0 360/400 = .9; GT1 inter 16 x 14 = 224, union 576 + 360 - 224 -> 28/89
#   s16 (8, 8)  [4, 4, 28, 28]: GT0 inter 18^2 = 324, union 652 -> 81/163; GT1 inter 22^2 = 484, union 668 -> 121/167
#   s16 (24,24) [6, 6, 30, 30]: GT1 1;            GT0 16/45
# dynamic k: GT0 floor(1 + .9 + .497 + .356) = 2; GT1 floor(1 + .725 + .356 + .315) = 2.
# Costs beyond 2 ln 2: GT0: s8 (12, 12) 0; s16 (8, 8) 3 ln(163/81) = 2.0975; s8 (20, 12) is outside
#   GT0's centre region (+1e5) -> GT0 takes s8 (12, 12), s16 (8, 8).
#   GT1: s16 (24, 24) 0; s16 (8, 8) 3 ln(167/121) = .9666; s8 (12, 12) 3 ln(45/16) = 3.1022 -> GT1 takes
#   s16 (24, 24), s16 (8, 8). Both want s16 (8, 8): GT1's .9666 < GT0's 2.0975 -> GT1 keeps it.
def simota_preds(batch=2):
    p = make_priors((32, 32), [8, 16], None)
    boxes = torch.tensor([0.0, 0, 0.5, 0.5]).repeat(batch, len(p), 1)
    for i, box in ((slot(0, 1, 1), [2, 2, 22, 22]), (slot(0, 2, 1), [2, 2, 22, 20]),
                   (slot(1, 0, 0), [4, 4, 28, 28]), (slot(1, 1, 1), [6, 6, 30, 30])):
        boxes[0, i] = torch.tensor(box, dtype=torch.float32)
    return p, Predictions(boxes, torch.full((batch, len(p), 2), 0.5))


def test_simota_golden_scene_dynamic_k_costs_conflict_and_empty_image():
    p, preds = simota_preds()
    t = targets([0, 0, 2, 2, 22, 22], [0, 1, 6, 6, 30, 30])
    res = ASSIGNERS["simota"](center_radius=1.0).assign(t, p, preds)
    assert positives(res) == {slot(0, 1, 1): (0, 0), slot(1, 0, 0): (1, 1), slot(1, 1, 1): (1, 1)}
    scores = res.target_scores[0, [slot(0, 1, 1), slot(1, 0, 0), slot(1, 1, 1)]].tolist()
    assert scores == pytest.approx([1.0, 121 / 167, 1.0], abs=1e-6)  # the IoU of the positive
    assert res.target_boxes[0, slot(1, 0, 0)].tolist() == [6, 6, 30, 30]
    assert not res.fg_mask[1].any()
    assert_background(res)


def test_simota_conflict_goes_to_the_cheaper_gt_not_the_higher_iou():
    # s16 (8, 8) now scores (.9, .5). Its class cost for GT0 (class 0): -ln .9 - ln(1 - .5) = .1054 + .6931
    # = .7985, total .7985 + 2.0975 = 2.8960; for GT1 (class 1): -ln(1 - .9) - ln .5 = 2.3026 + .6931 =
    # 2.9957, total 2.9957 + .9666 = 3.9624. GT1 still takes it (its next, s8 (12, 12), costs 2 ln 2 +
    # 3.1022 = 4.4885), and so does GT0: the conflict goes to GT0 (2.8960 < 3.9624) although GT1's IoU is
    # higher (121/167 > 81/163). The positive's score is GT0's IoU 81/163.
    p, preds = simota_preds(1)
    preds.scores[0, slot(1, 0, 0)] = torch.tensor([0.9, 0.5])
    t = targets([0, 0, 2, 2, 22, 22], [0, 1, 6, 6, 30, 30])
    res = ASSIGNERS["simota"](center_radius=1.0).assign(t, p, preds)
    assert positives(res) == {slot(0, 1, 1): (0, 0), slot(1, 0, 0): (0, 0), slot(1, 1, 1): (1, 1)}
    assert res.target_scores[0, slot(1, 0, 0)].item() == pytest.approx(81 / 163, abs=1e-6)


# -- task_aligned ----------------------------------------------------------------------------------
# Anchor-free priors, topk 3, alpha .5, beta 6: t = sqrt(score) * CIoU^6. Concentric squares have CIoU
# = IoU; a square pair off-centre has CIoU = IoU - rho^2 / c^2 (no aspect term).
# GT0 [0, 0, 16, 16] (class 0): candidates s8 (4|12, 4|12), s16 (8, 8).
# GT1 [8, 8, 32, 32] (class 1): candidates s8 (12|20|28, 12|20|28), s16 (24, 24).
# Predictions (elsewhere far away: CIoU < 0, clamped to 0, so t = 0):
#   s8 (4, 4)    [0, 0, 16, 16]   score .04: GT0 u 1 -> t = .2
#   s16 (8, 8)   [4, 4, 16, 16]   score .64: GT0 IoU 144/256 = 9/16, rho^2 = 2^2 + 2^2 = 8, c^2 = 2 * 16^2
#                                 = 512 -> u = 9/16 - 1/64 = 35/64 -> t = .8 (35/64)^6 = .02143
#   s8 (12, 12)  [4, 4, 20, 20]   score 1: GT0 IoU 144/368 = 9/23, rho^2 32, c^2 2 * 20^2 = 800 -> u = 9/23
#                                 - .04 = .3513; GT1 IoU 144/688 = 9/43, rho^2 128, c^2 2 * 28^2 -> u = .1277
#   s16 (24, 24) [10, 10, 30, 30] score .25: GT1 u 400/576 = 25/36 (concentric) -> t = .5 (25/36)^6 = .05608
#   s8 (20, 20)  [11, 11, 29, 29] score 1: GT1 u 324/576 = (3/4)^2 -> t = (3/4)^12 = .03168
# Top 3: GT0 {(4, 4), s16 (8, 8), (12, 12)}, GT1 {s16 (24, 24), (20, 20), (12, 12)}: (12, 12) is contested and
# goes to the GT its box overlaps most, GT0 (.3513 > .1277). Soft score t * max_u / max_t per GT:
#   GT0 (max_t .2, max_u 1): 1, 4 (35/64)^6 = .1071, .3513^6 / .2 = .0094
#   GT1 (max_t .5 (25/36)^6, max_u 25/36): 25/36 = .6944, (3/4)^12 (25/36) / (.5 (25/36)^6) = .3923
U5 = 9 / 23 - 32 / 800


def test_task_aligned_golden_scene_alignment_conflict_soft_scores_and_empty_image():
    p = make_priors((32, 32), [8, 16], None)
    boxes = torch.tensor([100.0, 100, 101, 101]).repeat(2, len(p), 1)
    scores = torch.full((2, len(p), 2), 0.5)
    for i, box, cls, s in ((slot(0, 0, 0), [0, 0, 16, 16], 0, 0.04), (slot(1, 0, 0), [4, 4, 16, 16], 0, 0.64),
                           (slot(0, 1, 1), [4, 4, 20, 20], None, 1.0), (slot(1, 1, 1), [10, 10, 30, 30], 1, 0.25),
                           (slot(0, 2, 2), [11, 11, 29, 29], 1, 1.0)):
        boxes[0, i] = torch.tensor(box, dtype=torch.float32)
        scores[0, i, slice(None) if cls is None else cls] = s
    t = targets([0, 0, 0, 0, 16, 16], [0, 1, 8, 8, 32, 32])
    res = ASSIGNERS["task_aligned"](topk=3).assign(t, p, Predictions(boxes, scores))
    t19, u19 = 0.5 * (25 / 36) ** 6, 25 / 36
    want = {slot(0, 0, 0): (0, 0, 1.0), slot(1, 0, 0): (0, 0, 4 * (35 / 64) ** 6), slot(0, 1, 1): (0, 0, U5 ** 6 / 0.2),
            slot(1, 1, 1): (1, 1, u19), slot(0, 2, 2): (1, 1, 0.75 ** 12 * u19 / t19)}
    assert positives(res) == {k: v[:2] for k, v in want.items()}
    for i, (g, _, soft) in want.items():
        assert res.target_scores[0, i].item() == pytest.approx(soft, rel=1e-4), i
        assert res.target_boxes[0, i].tolist() == t[g, 2:].tolist()
    assert not res.fg_mask[1].any()
    assert_background(res)
    # topk 2: GT0 keeps (4, 4) and s16 (8, 8), GT1 s16 (24, 24) and (20, 20); nothing is contested
    res = ASSIGNERS["task_aligned"](topk=2).assign(t, p, Predictions(boxes, scores))
    assert positives(res) == {slot(0, 0, 0): (0, 0), slot(1, 0, 0): (0, 0), slot(1, 1, 1): (1, 1),
                              slot(0, 2, 2): (1, 1)}
