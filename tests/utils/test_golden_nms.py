"""Golden NMS outcomes worked by hand (the pure-PyTorch path, forced even where torchvision is installed), and
``postprocess``: its NMS IoU, confidence filter, multi-label slots, class-wise / agnostic NMS, max_det,
pre_nms_topk and ``num_nms``."""
import pytest
import torch
from loguru import logger

import utils.nms
from models.postprocess import postprocess
from utils.nms import batched_nms, nms

# Five boxes, 10 px tall, sliding right (E apart). Pairwise IoUs, all 10 px high:
#   A [0, 0, 10, 10] .9 - B [1, 0, 11, 10] .8: inter 9 x 10 = 90, union 200 - 90 = 110 -> 9/11 = .818
#   A - C [2, 0, 12, 10] .7: inter 80, union 120 -> 2/3;     B - C: 90 / 110 = .818
#   A - D [5, 0, 15, 10] .6: inter 50, union 150 -> 1/3;     B - D: 60 / 140 = .429;  C - D: 70 / 130 = .538
#   E [20, 20, 30, 30] .5: 0 with every other box
# Greedy, in score order (a box suppressed by a kept one only):
#   .7: A keeps; B goes (.818); C stays (.667 to A; B, gone, suppresses nothing); D stays (.333, .538); E -> A C D E
#   .5: A; B goes; C goes (.667); D stays (.333 to A) -> A D E
#   .3: A; B, C go; D goes (.333 > .3) -> A E
BOXES = {"A": ([0, 0, 10, 10], 0.9), "B": ([1, 0, 11, 10], 0.8), "C": ([2, 0, 12, 10], 0.7),
         "D": ([5, 0, 15, 10], 0.6), "E": ([20, 20, 30, 30], 0.5)}
ORDER = "DAECB"  # input order, so the output order (by score) is not the input's


def scene():
    boxes = torch.tensor([BOXES[k][0] for k in ORDER], dtype=torch.float32)
    scores = torch.tensor([BOXES[k][1] for k in ORDER])
    return boxes, scores


def names(idx):
    return "".join(ORDER[i] for i in idx.tolist())


@pytest.fixture(autouse=True)
def pure_pytorch(monkeypatch):
    """Test the pure-PyTorch path even where torchvision is installed."""
    monkeypatch.setattr(utils.nms, "_tv_batched_nms", None)


@pytest.mark.parametrize("thres, kept", [(0.7, "ACDE"), (0.5, "ADE"), (0.3, "AE")])
def test_greedy_nms_at_three_thresholds(thres, kept):
    boxes, scores = scene()
    assert names(nms(boxes, scores, thres)) == kept
    same = torch.zeros(5, dtype=torch.long)
    assert names(batched_nms(boxes, scores, same, thres)) == kept


def test_iou_equal_to_the_threshold_does_not_suppress():
    # [0, 0, 10, 10] and [0, 0, 10, 20]: inter 100, union 200 -> exactly .5 (float32 keeps it exact)
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 20]])
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]


def test_class_wise_keeps_other_labels_and_agnostic_does_not():
    boxes, scores = scene()
    labels = torch.tensor([0 if k in "ACE" else 1 for k in ORDER])  # A C E class 0, B D class 1
    # .5 class-wise: class 0 {A, C, E}: C goes (.667 to A) -> A E; class 1 {B, D}: .429 -> both stay
    assert names(batched_nms(boxes, scores, labels, 0.5)) == "ABDE"
    assert names(batched_nms(boxes, scores, torch.zeros_like(labels), 0.5)) == "ADE"


def test_labels_never_suppress_each_other_even_with_negative_coordinates():
    # A decoded box may reach past the image. Offsetting label 1 by max + 1 = 641 alone would move
    # [-200, -200, 10, 10] onto [441, 441, 651, 651], which overlaps label 0's [400, 400, 640, 640] by
    # 199^2 / (240^2 + 210^2 - 199^2) = 39601 / 62099 = .64 and would suppress it at .5.
    boxes = torch.tensor([[400.0, 400, 640, 640], [-200, -200, 10, 10]])
    scores = torch.tensor([0.9, 0.8])
    assert batched_nms(boxes, scores, torch.tensor([0, 1]), 0.5).tolist() == [0, 1]
    assert batched_nms(boxes, scores, torch.tensor([1, 1]), 0.5).tolist() == [0, 1]  # IoU 0: both stay


def test_empty_input():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).tolist() == []


# -- postprocess -----------------------------------------------------------------------------------
def slots(*rows):
    """rows of (box, [score per class]) -> boxes [1, P, 4], scores [1, P, nc]."""
    return (torch.tensor([[r[0] for r in rows]], dtype=torch.float32),
            torch.tensor([[r[1] for r in rows]], dtype=torch.float32))


def test_postprocess_uses_the_nms_iou_it_is_given():
    # A .9, C .7, D .6, all class 0 (A-C 2/3, A-D 1/3, C-D .538): .7 keeps all three, .5 drops C,
    # .3 drops C and D.
    boxes, scores = slots((BOXES["A"][0], [0.9]), (BOXES["C"][0], [0.7]), (BOXES["D"][0], [0.6]))
    kept = {iou: postprocess(boxes, scores, 0.25, iou, 100)[0]["scores"].tolist() for iou in (0.7, 0.5, 0.3)}
    assert kept == {0.7: pytest.approx([0.9, 0.7, 0.6]), 0.5: pytest.approx([0.9, 0.6]), 0.3: pytest.approx([0.9])}


def test_confidence_filter_is_strict_and_multi_label_slots_give_one_detection_per_class():
    # slot 0 scores (.9, .6): both classes pass .25 and become two detections of the same box; slot 1's
    # .25 equals the threshold and is dropped; slot 2 (.3) passes.
    boxes, scores = slots(([0, 0, 10, 10], [0.9, 0.6]), ([50, 50, 60, 60], [0.25, 0.0]),
                          ([80, 80, 90, 90], [0.0, 0.3]))
    out = postprocess(boxes, scores, 0.25, 0.5, 100)[0]
    assert out["labels"].tolist() == [0, 1, 1] and out["scores"].tolist() == pytest.approx([0.9, 0.6, 0.3])
    assert out["boxes"].tolist() == [[0, 0, 10, 10], [0, 0, 10, 10], [80, 80, 90, 90]]
    assert out["num_nms"] == 3 and out["labels"].dtype == torch.long
    # agnostic: the class-1 copy of slot 0 (IoU 1 with the class-0 one) goes
    agn = postprocess(boxes, scores, 0.25, 0.5, 100, agnostic=True)[0]
    assert agn["labels"].tolist() == [0, 1] and agn["scores"].tolist() == pytest.approx([0.9, 0.3])
    # at .2499 slot 1's .25 passes too
    assert postprocess(boxes, scores, 0.2499, 0.5, 100)[0]["num_nms"] == 4


def test_max_det_caps_after_nms_and_num_nms_counts_before_the_cap():
    # Four disjoint boxes .6 .9 .7 .8 plus B .85 (class 0) on top of the .9 box (IoU 9/11): NMS keeps 4;
    # max_det 2 keeps the best two, .9 and .8; num_nms stays 4.
    boxes, scores = slots(([0, 0, 10, 10], [0.6]), ([20, 0, 30, 10], [0.9]), ([40, 0, 50, 10], [0.7]),
                          ([60, 0, 70, 10], [0.8]), ([21, 0, 31, 10], [0.85]))
    out = postprocess(boxes, scores, 0.25, 0.5, 2)[0]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8])
    assert out["num_nms"] == 4
    assert out["boxes"].tolist() == [[20, 0, 30, 10], [60, 0, 70, 10]]


def test_pre_nms_topk_counts_slot_class_pairs_by_score():
    # pairs by score: (slot 0, class 0) .9, (slot 0, class 1) .85, (slot 1, class 0) .8, (slot 2, class 1) .3.
    # pre_nms_topk 2 keeps the first two: both of slot 0; 3 adds slot 1.
    boxes, scores = slots(([0, 0, 10, 10], [0.9, 0.85]), ([20, 0, 30, 10], [0.8, 0.0]),
                          ([40, 0, 50, 10], [0.0, 0.3]))
    two = postprocess(boxes, scores, 0.25, 0.5, 100, pre_nms_topk=2)[0]
    assert two["labels"].tolist() == [0, 1] and two["num_nms"] == 2
    assert two["boxes"].tolist() == [[0, 0, 10, 10]] * 2
    three = postprocess(boxes, scores, 0.25, 0.5, 100, pre_nms_topk=3)[0]
    assert three["scores"].tolist() == pytest.approx([0.9, 0.85, 0.8]) and three["num_nms"] == 3


def test_each_image_of_the_batch_on_its_own():
    # image 0: A .9 and B .8 of class 0 (IoU 9/11) -> A only; image 1: the same boxes, scores under conf
    boxes = torch.tensor([[BOXES["A"][0], BOXES["B"][0]]] * 2, dtype=torch.float32)
    scores = torch.tensor([[[0.9], [0.8]], [[0.1], [0.2]]])
    out = postprocess(boxes, scores, 0.25, 0.5, 100)
    assert [o["num_nms"] for o in out] == [1, 0]
    assert out[0]["boxes"].tolist() == [BOXES["A"][0]] and out[1]["boxes"].shape == (0, 4)


def test_the_nms_in_use_is_logged_once_per_device_and_the_cuda_fallback_warns(monkeypatch):
    messages = []
    sink = logger.add(lambda m: messages.append((m.record["level"].name, m.record["message"])), level="INFO")
    try:
        monkeypatch.setattr(utils.nms, "_announced", set())
        monkeypatch.setattr(utils.nms, "_tv_batched_nms", None)
        boxes, scores = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10]]), torch.tensor([0.9, 0.8])
        for _ in range(3):
            batched_nms(boxes, scores, torch.tensor([0, 0]), 0.5)
        assert messages == [("INFO", "NMS: utils.nms (pure PyTorch) on cpu")]
        utils.nms._announce(torch.device("cuda"))  # no GPU here: what a CUDA run's first call says
        assert messages[1] == ("INFO", "NMS: utils.nms (pure PyTorch) on cuda")
        assert messages[2][0] == "WARNING" and "falls back to the pure-PyTorch version on CUDA" in messages[2][1]
        monkeypatch.setattr(utils.nms, "_announced", set())
        monkeypatch.setattr(utils.nms, "_tv_batched_nms", lambda b, s, l, t: torch.arange(len(b)))
        utils.nms._announce(torch.device("cuda"))
        assert messages[3:] == [("INFO", "NMS: torchvision.ops.batched_nms on cuda")]  # no warning
    finally:
        logger.remove(sink)
