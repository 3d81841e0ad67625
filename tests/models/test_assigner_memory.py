"""Assigner memory: the live-bytes tracker on a hand-worked case, every method's peak under a stated formula
that grows with its candidates (not with all priors where it has fewer), and the image chunks that bound
the dense methods without changing a result."""
import math

import pytest
import torch

from models.assigners import ASSIGNERS, Predictions
from models.assigners import padding
from models.priors import make_priors
from utils.memory_track import LiveBytes, MemoryBudgetExceeded

NC = 80
COCO_ANCHORS = [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]], [[116, 90], [156, 198], [373, 326]]]
CASES = [(m, head) for m, cls in ASSIGNERS.items() for head in sorted(cls.coders)]
RESULT_BYTES = 1 + 8 + 16 + 8 + 4  # AssignResult per (image, prior): fg, gt_index, target box, label, score


# -- the tracker -----------------------------------------------------------------------------------
def test_live_bytes_counts_new_storages_until_they_are_freed():
    before = torch.ones(1000)  # made before the mode: neither it nor its views count
    with LiveBytes() as mem:
        view_of_old = before[:10]
        a = torch.zeros(1000)  # 4000 bytes
        b = torch.ones(250, dtype=torch.float64)  # 2000
        head = a[:10]  # a view: shares a's storage
        assert (mem.current, mem.peak) == (6000, 6000)
        del a
        assert mem.current == 6000  # the view keeps the storage alive
        del head
        assert mem.current == 2000
        c = torch.empty(3000, dtype=torch.uint8)  # 3000
        assert (mem.current, mem.peak) == (5000, 6000)
        b.add_(1)  # in place: nothing new
        d = b * 2  # 2000
        assert (mem.current, mem.peak) == (7000, 7000)
        del c, d
        assert (mem.current, mem.peak) == (2000, 7000)
    assert view_of_old.shape == (10,)


def test_live_bytes_stops_code_past_its_limit():
    keep = []
    with pytest.raises(MemoryBudgetExceeded, match="over the limit"):
        with LiveBytes(limit=10_000) as mem:
            for _ in range(3):
                keep.append(torch.zeros(1000))  # 4000 bytes each
    assert mem.peak == 12_000 and len(keep) == 2  # the third allocation raised, past 10000 bytes


# -- peaks against a formula -----------------------------------------------------------------------
def scene(head: str, batch: int, num_gt: int, img: int = 256, seed: int = 0):
    """(targets, priors, predictions): num_gt boxes per image with log-uniform sides 4..img/2, 80 classes,
    a predicted box around each prior and scores u^3."""
    g = torch.Generator().manual_seed(seed)
    anchors = [[[w * img / 640, h * img / 640] for w, h in lv] for lv in COCO_ANCHORS] if head == "anchor" else None
    priors = make_priors((img, img), [8, 16, 32], anchors)
    centre = torch.rand(batch, num_gt, 2, generator=g) * img
    wh = torch.empty(batch, num_gt, 2).uniform_(math.log(4), math.log(img / 2), generator=g).exp()
    boxes = torch.cat((centre - wh / 2, centre + wh / 2), -1).clamp(0, img)
    image = torch.arange(batch, dtype=torch.float32)[:, None, None].expand(batch, num_gt, 1)
    cls = torch.randint(0, NC, (batch, num_gt, 1), generator=g).float()
    targets = torch.cat((image, cls, boxes), -1).reshape(-1, 6)
    p = len(priors)
    c = priors.centers + torch.randn(batch, p, 2, generator=g) * priors.stride[:, None]
    half = torch.empty(batch, p, 2).uniform_(math.log(4), math.log(img / 2), generator=g).exp() / 2
    return targets, priors, Predictions(torch.cat((c - half, c + half), -1), torch.rand(batch, p, NC, generator=g) ** 3)


def candidates_per_gt(method: str, priors) -> int:
    """K: the (GT, prior) pairs per GT a method holds. The grid methods list their cells (1, 9 or 3 per
    level, every anchor of each), ATSS its top-k per level; all_grid, simota and task_aligned weigh every
    prior (their candidates can be any prior of the image)."""
    levels, anchors = len(priors.level_hw), priors.num_anchors
    cells = {"single_grid": 1, "nearby_grid": 9, "ratio_grid": 3}
    if method in cells:
        return levels * cells[method] * anchors
    if method == "atss":
        return levels * ASSIGNERS["atss"]().opt.topk
    return len(priors)


def peak_bound(method: str, batch: int, num_gt: int, priors) -> int:
    """Bytes: 3 x the AssignResult per (image, prior) (the result, per-prior winners and scores), 16 floats
    per (GT, candidate) pair, plus ATSS's distances to one level at a time (3 floats per pair: the
    difference vectors and their norm) and SimOTA's per-prior class terms (2 floats per prior and class)."""
    num_p = len(priors)
    bound = 3 * RESULT_BYTES * batch * num_p + 16 * 4 * batch * num_gt * candidates_per_gt(method, priors)
    if method == "atss":
        bound += 3 * 4 * batch * num_gt * max(count for _, count in priors.level_ranges())
    if method == "simota":
        bound += 2 * 4 * batch * num_p * NC
    return bound


@pytest.fixture
def accelerator_chunks(monkeypatch):
    """The chunks a GPU uses (the whole batch here), so that the layout itself is what is measured."""
    monkeypatch.setitem(padding.CHUNK_PAIRS, "cpu", padding.DEFAULT_CHUNK_PAIRS)


@pytest.mark.parametrize("method, head", CASES)
@pytest.mark.parametrize("batch, num_gt", [(2, 20), (2, 40)])
def test_peak_memory_grows_with_the_candidates(method, head, batch, num_gt, accelerator_chunks):
    # 256 px: 4032 anchor-head priors, 1344 DFL points. The layouts of before (several [B, G, P] tensors for
    # every method, [pairs x 80 classes] for SimOTA) pass these bounds 2 to 20 times over.
    targets, priors, preds = scene(head, batch, num_gt)
    with LiveBytes() as mem:
        ASSIGNERS[method]().assign(targets, priors, preds, max_gt=num_gt)
    assert 0 < mem.peak <= peak_bound(method, batch, num_gt, priors)


@pytest.mark.parametrize("method, head", CASES)
def test_chunks_of_images_change_no_result_and_bound_the_dense_methods(method, head, monkeypatch):
    targets, priors, preds = scene(head, 4, 20, seed=1)
    whole = ASSIGNERS[method]().assign(targets, priors, preds, max_gt=20)
    monkeypatch.setitem(padding.CHUNK_PAIRS, "cpu", 1)  # one image per chunk
    with LiveBytes() as mem:
        chunked = ASSIGNERS[method]().assign(targets, priors, preds, max_gt=20)
    for field in ("fg_mask", "gt_index", "target_boxes", "target_labels", "target_scores"):
        assert torch.equal(getattr(chunked, field), getattr(whole, field)), field
    assert whole.fg_mask.any()
    # the result of the whole batch, plus what one image's chunk holds at its peak
    one_image = peak_bound(method, 1, 20, priors) - 3 * RESULT_BYTES * len(priors)
    assert mem.peak <= 2 * RESULT_BYTES * 4 * len(priors) + one_image


def test_image_chunks_follow_the_device_budget():
    cpu, gpu = torch.device("cpu"), torch.device("meta")
    per_image = padding.CHUNK_PAIRS["cpu"] // 3 + 1  # three images overflow a CPU chunk, two fit
    assert padding.image_chunks(5, per_image, cpu) == [(0, 2), (2, 4), (4, 5)]
    assert padding.image_chunks(5, per_image, gpu) == [(0, 5)]  # elsewhere the bound is far larger
    assert padding.image_chunks(3, 10 * padding.DEFAULT_CHUNK_PAIRS, gpu) == [(0, 1), (1, 2), (2, 3)]
