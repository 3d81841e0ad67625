"""Golden values of every coder in ``models.coders.CODERS``, worked by hand at strides 8, 16 and 32.

The priors are those of a 96 x 64 (h x w) input, one anchor per cell, strides 8, 16, 32: the maps
are 12 x 8, 6 x 4 and 3 x 2 cells, so the slots are level 0: 0..95, level 1: 96..119, level 2:
120..125, each level in row-major order (row * cols + col). One slot per level is checked:

    level 0, stride  8, row 2, col 3: slot 2 * 8 + 3           =  19, cell centre ( 28, 20)
    level 1, stride 16, row 1, col 2: slot 96 + 1 * 4 + 2      = 102, cell centre ( 40, 24)
    level 2, stride 32, row 2, col 1: slot 96 + 24 + 2 * 2 + 1 = 125, cell centre ( 48, 80)

The non-square input puts rows and columns on different counts, so a swapped grid fails too.
Logits are picked so the sigmoids are exact: sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4,
sigmoid(-ln 3) = 1/4; exp(ln 2) = 2.
"""
import math

import pytest
import torch

from models.coders import CODERS, MAX_LOG_WH, CellCoder, DistanceCoder, LinearCoder, NearbyCoder, V7Coder
from models.priors import make_priors

LN2, LN3 = math.log(2.0), math.log(3.0)
IMG_HW, STRIDES = (96, 64), [8, 16, 32]
ANCHORS = [[[12, 20]], [[40, 24]], [[64, 96]]]  # one (w, h) per level, input pixels
SLOTS = {8: 19, 16: 102, 32: 125}  # stride -> the slot checked on that level
GRID = {8: (3, 2), 16: (2, 1), 32: (1, 2)}  # stride -> (col, row) of that slot


def anchor_priors():
    return make_priors(IMG_HW, STRIDES, ANCHORS)


def raw_at(num_priors, slot, values, width=7):
    """[1, P, width] zeros with ``values`` written at the start of ``slot``'s row."""
    raw = torch.zeros(1, num_priors, width)
    raw[0, slot, :len(values)] = torch.tensor(values, dtype=torch.float32)
    return raw


def test_the_checked_slots_are_the_cells_the_golden_values_assume():
    p = anchor_priors()
    assert len(p) == 96 + 24 + 6
    for s, slot in SLOTS.items():
        assert p.stride[slot] == s and tuple(p.grid_xy[slot].tolist()) == GRID[s]
    assert p.anchor_wh[[19, 102, 125]].tolist() == [[12, 20], [40, 24], [64, 96]]


# Raw (tx, ty, tw, th) -> xyxy at each stride, worked by hand per coder.
#
# cell   (grid + sigmoid(t)) * s; raw (ln 3, -ln 3, ln 2, 0): offsets (3/4, 1/4), size anchor * (2, 1)
#   s8 : cx = (3 + .75) * 8 = 30, cy = (2 + .25) * 8 = 18,  w = 24,  h = 20 -> [18, 8, 42, 28]
#   s16: cx = 2.75 * 16 = 44,     cy = 1.25 * 16 = 20,      w = 80,  h = 24 -> [4, 8, 84, 32]
#   s32: cx = 1.75 * 32 = 56,     cy = 2.25 * 32 = 72,      w = 128, h = 96 -> [-8, 24, 120, 120]
# nearby (grid + 3 * sigmoid(t) - 1) * s; same raw: offsets 3 * .75 - 1 = 1.25, 3 * .25 - 1 = -.25
#   s8 : cx = 4.25 * 8 = 34,  cy = 1.75 * 8 = 14   -> [34 - 12, 14 - 10, 34 + 12, 14 + 10] = [22, 4, 46, 24]
#   s16: cx = 3.25 * 16 = 52, cy = .75 * 16 = 12   -> [52 - 40, 12 - 12, 52 + 40, 12 + 12] = [12, 0, 92, 24]
#   s32: cx = 2.25 * 32 = 72, cy = 1.75 * 32 = 56  -> [72 - 64, 56 - 48, 72 + 64, 56 + 48] = [8, 8, 136, 104]
# linear cell centre + t * anchor; raw (0.5, -0.25, ln 2, 0)
#   s8 : cx = 28 + .5 * 12 = 34,  cy = 20 - .25 * 20 = 15  -> [34 - 12, 15 - 10, 46, 25] = [22, 5, 46, 25]
#   s16: cx = 40 + .5 * 40 = 60,  cy = 24 - .25 * 24 = 18  -> [60 - 40, 18 - 12, 100, 30] = [20, 6, 100, 30]
#   s32: cx = 48 + .5 * 64 = 80,  cy = 80 - .25 * 96 = 56  -> [80 - 64, 56 - 48, 144, 104] = [16, 8, 144, 104]
# v7     centre (grid + 2 * sigmoid(t) - .5) * s, size (2 * sigmoid(t))^2 * anchor; raw (ln 3, -ln 3, ln 3, -ln 3):
#        offsets 2 * .75 - .5 = 1 and 2 * .25 - .5 = 0; sizes (1.5)^2 = 2.25 and (.5)^2 = .25 times the anchor
#   s8 : cx = 4 * 8 = 32,   cy = 2 * 8 = 16,   w = 27,  h = 5  -> [18.5, 13.5, 45.5, 18.5]
#   s16: cx = 3 * 16 = 48,  cy = 1 * 16 = 16,  w = 90,  h = 6  -> [3, 13, 93, 19]
#   s32: cx = 2 * 32 = 64,  cy = 2 * 32 = 64,  w = 144, h = 24 -> [-8, 52, 136, 76]
SIGMOID_RAW = [LN3, -LN3, LN2, 0.0]
GOLDEN = {
    "cell": (SIGMOID_RAW, {8: [18, 8, 42, 28], 16: [4, 8, 84, 32], 32: [-8, 24, 120, 120]}),
    "nearby": (SIGMOID_RAW, {8: [22, 4, 46, 24], 16: [12, 0, 92, 24], 32: [8, 8, 136, 104]}),
    "linear": ([0.5, -0.25, LN2, 0.0], {8: [22, 5, 46, 25], 16: [20, 6, 100, 30], 32: [16, 8, 144, 104]}),
    "v7": ([LN3, -LN3, LN3, -LN3], {8: [18.5, 13.5, 45.5, 18.5], 16: [3, 13, 93, 19], 32: [-8, 52, 136, 76]}),
}


@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_anchor_coders_decode_golden_boxes_at_every_stride(name, stride):
    p = anchor_priors()
    values, boxes = GOLDEN[name]
    slot = SLOTS[stride]
    out = CODERS[name]().decode_boxes(raw_at(len(p), slot, values), p)
    assert out.shape == (1, len(p), 4)
    assert out[0, slot].tolist() == pytest.approx(boxes[stride], abs=1e-4)


def test_the_registry_holds_exactly_the_coders_checked_here():
    assert set(CODERS) == set(GOLDEN) | {"distance"}
    assert (CODERS["cell"], CODERS["nearby"], CODERS["linear"], CODERS["v7"], CODERS["distance"]) == (
        CellCoder, NearbyCoder, LinearCoder, V7Coder, DistanceCoder)


def test_exp_sizes_are_clamped_at_64_anchors_and_v7_at_4():
    # tw = th = 10: e^10 = 22026 anchors unclamped; the clamp ln 64 gives 64 * (12, 20) = (768, 1280)
    # around the s8 slot's zero-logit centre (28 + 0, ...): cell/nearby (grid + .5) * 8 = (28, 20).
    p = anchor_priors()
    raw = raw_at(len(p), 19, [0.0, 0.0, 10.0, 10.0])
    assert MAX_LOG_WH == pytest.approx(math.log(64.0))
    for name in ("cell", "nearby", "linear"):
        box = CODERS[name]().decode_boxes(raw, p)[0, 19]
        assert box.tolist() == pytest.approx([28 - 384, 20 - 640, 28 + 384, 20 + 640], abs=1e-3), name
    # v7: (2 * sigmoid(10))^2 -> 4 (to 2e-4): 4 * (12, 20) = (48, 80)
    assert V7Coder().decode_boxes(raw, p)[0, 19].tolist() == pytest.approx([4, -20, 52, 60], abs=1e-2)


def test_anchor_scores_are_objectness_times_class_probability():
    # objectness ln 3 -> 3/4; classes (0, -ln 3, ln 3) -> (1/2, 1/4, 3/4); scores 3/8, 3/16, 9/16
    p = anchor_priors()
    raw = raw_at(len(p), 102, [0, 0, 0, 0, LN3, 0.0, -LN3, LN3], width=8)
    for name in GOLDEN:
        coder = CODERS[name]()
        assert coder.has_objectness
        assert coder.scores(raw)[0, 102].tolist() == pytest.approx([3 / 8, 3 / 16, 9 / 16], abs=1e-6)
        assert coder.objectness_logits(raw)[0, 102].item() == pytest.approx(LN3)
        assert coder.class_logits(raw)[0, 102].tolist() == pytest.approx([0.0, -LN3, LN3])


@pytest.mark.parametrize("stride", STRIDES)
def test_hand_encoded_boxes_decode_back_at_every_stride(stride):
    # A 16 x 30 GT centred 3/4 of a cell right and 1/4 down from the slot's cell corner: centre
    # ((col + .75) * s, (row + .25) * s). Each decode inverted by hand gives the raw values:
    #   cell   sigmoid(t) = (.75, .25)                       -> t = (ln 3, -ln 3)
    #   nearby 3 * sigmoid(t) - 1 = (.75, .25)               -> sigmoid(t) = (7/12, 5/12)
    #   v7     2 * sigmoid(t) - .5 = (.75, .25)              -> sigmoid(t) = (5/8, 3/8)
    #   linear (.75 - .5, .25 - .5) * s = t * anchor         -> t = (.25, -.25) * s / anchor
    #   sizes  exp(t) = wh / anchor, v7 (2 * sigmoid(t))^2 = wh / anchor -> sigmoid(t) = sqrt(wh / anchor) / 2
    p = anchor_priors()
    slot = SLOTS[stride]
    col, row = GRID[stride]
    cx, cy = (col + 0.75) * stride, (row + 0.25) * stride
    gt = [cx - 8, cy - 15, cx + 8, cy + 15]
    aw, ah = p.anchor_wh[slot].tolist()
    log_wh = [math.log(16 / aw), math.log(30 / ah)]

    def logit(x):
        return math.log(x / (1 - x))
    raws = {"cell": [LN3, -LN3, *log_wh],
            "nearby": [logit(7 / 12), logit(5 / 12), *log_wh],
            "v7": [logit(5 / 8), logit(3 / 8), logit(math.sqrt(16 / aw) / 2), logit(math.sqrt(30 / ah) / 2)],
            "linear": [0.25 * stride / aw, -0.25 * stride / ah, *log_wh]}
    for name, values in raws.items():
        out = CODERS[name]().decode_boxes(raw_at(len(p), slot, values), p)[0, slot]
        assert out.tolist() == pytest.approx(gt, abs=1e-3), name


# -- the anchor-free DFL decode --------------------------------------------------------------------
NEG = -1e4  # e^-10000 underflows to exactly 0: the bin gets no probability


def dfl_priors():
    return make_priors(IMG_HW, STRIDES, None)


def side_logits():
    """reg_max = 4 (bins 0..3); one distribution per side whose expectation is worked by hand:
    l: log(.1, .2, .3, .4)       -> p = (.1, .2, .3, .4),   E = .2 + .6 + 1.2 = 2.0
    t: (0, 0, 0, 0)              -> p = 1/4 each,            E = (0 + 1 + 2 + 3) / 4 = 1.5
    r: (0, ln 3, -inf, -inf)     -> p = (1/4, 3/4, 0, 0),    E = 3/4
    b: (5, 5, 5 + ln 2, -inf)    -> p = (1/4, 1/4, 1/2, 0),  E = 1/4 + 2/2 = 1.25 (a shift changes nothing)
    """
    return [*[math.log(v) for v in (0.1, 0.2, 0.3, 0.4)], 0.0, 0.0, 0.0, 0.0,
            0.0, LN3, NEG, NEG, 5.0, 5.0, 5.0 + LN2, NEG]


def test_dfl_expectation_of_each_side_is_the_softmax_mean():
    p = dfl_priors()
    coder = DistanceCoder(reg_max=4)
    raw = raw_at(len(p), 19, [*side_logits(), LN3, 0.0], width=4 * 4 + 2)
    assert coder.distances(raw)[0, 19].tolist() == pytest.approx([2.0, 1.5, 0.75, 1.25], abs=1e-6)
    # all-zero logits: every side uniform, E = 1.5 (bins 0..3)
    assert coder.distances(raw)[0, 0].tolist() == pytest.approx([1.5] * 4, abs=1e-6)
    assert coder.bin_logits(raw).shape == (1, len(p), 4, 4)
    assert coder.scores(raw)[0, 19].tolist() == pytest.approx([0.75, 0.5])  # sigmoid(ln 3), sigmoid(0)
    assert not coder.has_objectness


def test_dfl_decode_at_every_stride():
    # box = [cx - l * s, cy - t * s, cx + r * s, cy + b * s] with (l, t, r, b) = (2, 1.5, .75, 1.25)
    #   s8,  centre (28, 20): [28 - 16, 20 - 12, 28 + 6, 20 + 10]  = [12, 8, 34, 30]
    #   s16, centre (40, 24): [40 - 32, 24 - 24, 40 + 12, 24 + 20] = [8, 0, 52, 44]
    #   s32, centre (48, 80): [48 - 64, 80 - 48, 48 + 24, 80 + 40] = [-16, 32, 72, 120]
    p = dfl_priors()
    want = {19: [12, 8, 34, 30], 102: [8, 0, 52, 44], 125: [-16, 32, 72, 120]}
    raw = torch.zeros(1, len(p), 4 * 4 + 2)
    for slot in want:
        raw[0, slot, :16] = torch.tensor(side_logits())
    out = DistanceCoder(reg_max=4).decode_boxes(raw, p)[0]
    for slot, box in want.items():
        assert out[slot].tolist() == pytest.approx(box, abs=1e-4), slot
    # zero logits: 1.5 strides on each side of the s8 cell (0, 0) centred (4, 4): [4 - 12, ..., 4 + 12]
    assert out[0].tolist() == pytest.approx([-8, -8, 16, 16], abs=1e-4)


def test_dfl_default_sixteen_bins_and_the_two_bin_target_round_trip():
    # reg_max 16 (bins 0..15): bins 7 and 8 at logit 0, the rest at -inf -> E = 7.5; at s16 the slot
    # centred (40, 24) decodes to [40 - 120, 24 - 120, 40 + 120, 24 + 120].
    p = dfl_priors()
    coder = DistanceCoder()
    assert coder.reg_max == 16
    raw = torch.full((1, len(p), 64 + 1), NEG)
    raw[..., 64] = 0.0
    raw[0, :, [7, 8, 23, 24, 39, 40, 55, 56]] = 0.0
    assert coder.decode_boxes(raw, p)[0, 102].tolist() == pytest.approx([-80, -96, 160, 144], abs=1e-3)
    # The DFL target of a distance d puts (floor(d) + 1 - d) on bin floor(d) and (d - floor(d)) on the
    # next: its expectation is d. d = (3.25, 0.5, 14.9, 6): log of those two-bin weights decodes back.
    d = [3.25, 0.5, 14.9, 6.0]
    raw = torch.full((1, len(p), 65), NEG)
    for side, v in enumerate(d):
        left = math.floor(v)
        raw[0, :, side * 16 + left] = math.log(left + 1 - v)
        if v > left:
            raw[0, :, side * 16 + left + 1] = math.log(v - left)
    assert coder.distances(raw)[0, 125].tolist() == pytest.approx(d, abs=1e-5)


def test_dfl_rejects_fewer_than_two_bins():
    with pytest.raises(ValueError, match="reg_max must be >= 2, got 1"):
        DistanceCoder(reg_max=1)
