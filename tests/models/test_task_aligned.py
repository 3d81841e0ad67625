"""Task-aligned assigner on hand-made predictions: top-k, conflicts, candidates, padding, soft scores."""
import pytest
import torch

from configs.base_config import ConfigError
from models.assigners import ASSIGNERS, Predictions, build_assigner
from models.assigners.task_aligned import TaskAlignedAssigner
from models.priors import make_priors

# One anchor-free level, stride 8, on a 64x64 input: 8x8 anchor points at 4, 12, ..., 60.
NC = 3


def priors():
    return make_priors((64, 64), [8], None)


def targets(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


def slot(x, y):
    """Prior index of the anchor point (x, y) in pixels."""
    return int((y - 4) // 8 * 8 + (x - 4) // 8)


def preds(batch=1, scores=0.5, boxes=None):
    """Predicted boxes (default: an 8x8 box on every anchor point) and constant class scores."""
    p = priors()
    if boxes is None:
        boxes = torch.cat((p.centers - 4, p.centers + 4), -1)[None].repeat(batch, 1, 1)
    return Predictions(boxes.clone(), torch.full((batch, len(p), NC), scores))


def test_topk_keeps_the_k_best_aligned_candidates_with_normalised_scores():
    p = priors()
    t = targets([0, 1, 0, 0, 64, 64])  # every anchor point is a candidate
    boxes = t[:, 2:6].expand(1, len(p), 4).clone()  # perfect boxes: CIoU 1 everywhere
    scores = torch.zeros(1, len(p), NC)
    scores[0, :, 1] = torch.linspace(0.01, 0.64, len(p))
    res = TaskAlignedAssigner(topk=3).assign(t, p, Predictions(boxes, scores))
    top = [len(p) - 3, len(p) - 2, len(p) - 1]
    assert torch.nonzero(res.fg_mask[0]).squeeze(1).tolist() == top
    # t = s^0.5 * 1^6 and max_u = 1, so the soft score is sqrt(s / s_max)
    expected = (scores[0, top, 1] / scores[0, -1, 1]).sqrt()
    assert torch.allclose(res.target_scores[0, top], expected, atol=1e-6)
    assert res.target_labels[0, top].tolist() == [1, 1, 1]
    assert res.gt_index[0, top].tolist() == [0, 0, 0]
    assert (res.target_boxes[0, top] == t[0, 2:6]).all()
    bg = ~res.fg_mask[0]
    assert (res.target_scores[0][bg] == 0).all() and (res.gt_index[0][bg] == -1).all()


def test_conflict_goes_to_the_gt_the_prediction_overlaps_most():
    t = targets([0, 0, 0, 0, 32, 32], [0, 2, 16, 16, 48, 48])  # both contain the points 20 and 28
    boxes, scores = preds()
    boxes[0, slot(20, 20)] = t[1, 2:6]  # predicts GT 1 exactly
    boxes[0, slot(28, 28)] = t[0, 2:6]  # predicts GT 0 exactly
    res = TaskAlignedAssigner(topk=64).assign(t, priors(), Predictions(boxes, scores))
    assert res.gt_index[0, slot(20, 20)] == 1 and res.target_labels[0, slot(20, 20)] == 2
    assert res.gt_index[0, slot(28, 28)] == 0 and res.target_labels[0, slot(28, 28)] == 0
    assert res.gt_index[0, slot(4, 4)] == 0 and res.gt_index[0, slot(44, 44)] == 1  # uncontested
    # Reference quirk: the argmax runs over every GT of the image, even one not containing the point.
    t3 = torch.cat((t, targets([0, 1, 48, 48, 64, 64])))
    boxes[0, slot(20, 20)] = t3[2, 2:6]
    res = TaskAlignedAssigner(topk=64).assign(t3, priors(), Predictions(boxes, scores))
    assert res.gt_index[0, slot(20, 20)] == 2


def test_gt_without_candidate_point_gets_nothing():
    t = targets([0, 0, 5, 5, 11, 11], [0, 1, 24, 24, 40, 40])  # GT 0 lies between anchor points
    res = TaskAlignedAssigner().assign(t, priors(), preds())
    assert res.num_fg > 0
    assert not (res.gt_index == 0).any()
    assert (res.gt_index[res.fg_mask] == 1).all()


def test_empty_batch_and_images_without_gts():
    res = TaskAlignedAssigner().assign(torch.zeros(0, 6), priors(), preds(2))
    assert res.fg_mask.shape == (2, 64) and res.num_fg == 0
    assert (res.gt_index == -1).all() and (res.target_labels == -1).all()
    t = targets([1, 0, 8, 8, 40, 40])
    res = TaskAlignedAssigner().assign(t, priors(), preds(3))
    assert not res.fg_mask[0].any() and not res.fg_mask[2].any()
    assert res.fg_mask[1].any() and (res.gt_index[1][res.fg_mask[1]] == 0).all()


def test_padding_gives_the_same_result_as_each_image_alone():
    torch.manual_seed(0)
    p = priors()
    counts = [3, 0, 5, 1]
    img = torch.cat([torch.full((n,), float(b)) for b, n in enumerate(counts)])
    xy = torch.rand(len(img), 2) * 40
    wh = torch.rand(len(img), 2) * 24 + 8
    t = torch.cat((img[:, None], torch.randint(0, NC, (len(img), 1)).float(), xy, xy + wh), 1)
    t = t[torch.randperm(len(t))]  # rows of one image need not be contiguous
    size = torch.rand(4, len(p), 2) * 32 + 8
    boxes = torch.cat((p.centers - size / 2, p.centers + size / 2), -1)
    scores = torch.rand(4, len(p), NC)
    full = TaskAlignedAssigner().assign(t, p, Predictions(boxes, scores))
    assert full.num_fg > 0
    for b in range(4):
        rows = torch.nonzero(t[:, 0] == b).squeeze(1)
        if rows.numel() == 0:
            assert not full.fg_mask[b].any() and (full.gt_index[b] == -1).all()
            continue
        one = t[rows].clone()
        one[:, 0] = 0
        single = TaskAlignedAssigner().assign(one, p, Predictions(boxes[b:b + 1], scores[b:b + 1]))
        assert torch.equal(full.fg_mask[b], single.fg_mask[0])
        mapped = torch.where(single.gt_index[0] >= 0, rows[single.gt_index[0].clamp(min=0)], -1)
        assert torch.equal(full.gt_index[b], mapped)
        assert torch.equal(full.target_labels[b], single.target_labels[0])
        assert torch.equal(full.target_boxes[b], single.target_boxes[0])
        assert torch.allclose(full.target_scores[b], single.target_scores[0])


def test_ignore_rows_are_never_assigned_and_change_nothing():
    boxes, scores = preds()
    t = targets([0, -1, 0, 0, 64, 64], [0, 1, 8, 8, 40, 40])
    res = TaskAlignedAssigner().assign(t, priors(), Predictions(boxes, scores))
    ref = TaskAlignedAssigner().assign(t[1:], priors(), Predictions(boxes, scores))
    assert not (res.gt_index == 0).any()
    assert torch.equal(res.fg_mask, ref.fg_mask)
    assert torch.equal(res.gt_index[ref.fg_mask], ref.gt_index[ref.fg_mask] + 1)
    assert torch.equal(res.target_scores, ref.target_scores)
    assert TaskAlignedAssigner().assign(t[:1], priors(), Predictions(boxes, scores)).num_fg == 0


def test_soft_score_normalisation_worked_example():
    # The GT covers the image, so every point is a candidate. A: perfect box (u = 1), score 1e-4
    # -> t_A = 0.01. B: concentric 48x48 box (u = 48^2 / 64^2 = 0.5625, no CIoU penalty),
    # score 1 -> t_B = 0.5625^6. Every other box is far away (u = 0, t = 0).
    a, b = slot(4, 4), slot(12, 4)
    boxes = torch.tensor([200.0, 200, 210, 210]).repeat(1, 64, 1)
    boxes[0, a] = torch.tensor([0.0, 0, 64, 64])
    boxes[0, b] = torch.tensor([8.0, 8, 56, 56])
    scores = torch.ones(1, 64, NC)
    scores[0, a, 0] = 1e-4
    t = targets([0, 0, 0, 0, 64, 64])
    res = TaskAlignedAssigner(topk=2).assign(t, priors(), Predictions(boxes, scores))
    t_a, t_b = 0.01, 0.5625 ** 6
    max_t, max_u = t_b, 1.0  # the maxima come from different anchors
    assert torch.nonzero(res.fg_mask[0]).squeeze(1).tolist() == [a, b]
    assert res.target_scores[0, a].item() == pytest.approx(t_a * max_u / max_t, rel=1e-4)  # 0.3155
    assert res.target_scores[0, b].item() == pytest.approx(t_b * max_u / max_t, rel=1e-4)  # 1.0
    # Reference quirk: with k above the number of t > 0 candidates, candidates with t = 0 are
    # positives too, with a soft score of 0.
    res = TaskAlignedAssigner(topk=4).assign(t, priors(), Predictions(boxes, scores))
    extra = res.fg_mask[0].clone()
    extra[[a, b]] = False
    assert res.num_fg == 4 and (res.target_scores[0][extra] == 0).all()


def test_rejects_target_classes_the_predictions_do_not_have():
    with pytest.raises(ValueError, match="class 5 is out of range"):
        TaskAlignedAssigner().assign(targets([0, 5, 8, 8, 40, 40]), priors(), preds())


def test_registry_builds_each_method_with_its_own_options():
    cls = ASSIGNERS["task_aligned"]
    assert cls.coders == {"dfl": "distance"} and cls.uses_predictions
    a = build_assigner("task_aligned", {"topk": 5, "alpha": 1, "beta": 2.0})
    assert (a.opt.topk, a.opt.alpha, a.opt.beta) == (5, 1.0, 2.0) and isinstance(a.opt.alpha, float)
    assert build_assigner("ratio_grid", {"anchor_t": 3.0}).opt.anchor_t == 3.0
    assert build_assigner("nearby_grid", {"match_iou_thres": 0.3}).opt.match_iou_thres == 0.3
    assert build_assigner("task_aligned", {}).opt.topk == 10  # unset options keep the method's defaults
    with pytest.raises(ConfigError, match="assign.options of task_aligned: topk=0 must be >= 1"):
        build_assigner("task_aligned", {"topk": 0})
    with pytest.raises(ConfigError, match="task_aligned has no option 'top_k'; did you mean 'topk'"):
        build_assigner("task_aligned", {"top_k": 5})
    with pytest.raises(ConfigError, match=r"nearby_grid has no option 'topk' \(its options: \['ensure_one_match'"):
        build_assigner("nearby_grid", {"topk": 5})
    with pytest.raises(ConfigError, match=r"assign.options\['topk'\] of task_aligned: expected int"):
        build_assigner("task_aligned", {"topk": 2.5})


def _dense_reference(targets, priors, batch_size, pred_boxes, pred_scores, topk=10, alpha=0.5, beta=6.0):
    """The textbook [B, G, P] formulation (CIoU and alignment at every pair), for comparison."""
    from models.assigners.base import INSIDE_EPS, pad_per_image
    from utils.boxes import bbox_iou
    gt_rows = torch.nonzero(targets[:, 1] >= 0).squeeze(1)
    rows, boxes, labels, valid = pad_per_image(targets, gt_rows, batch_size)
    c = priors.centers[None, None]
    gap = torch.cat((c - boxes[:, :, None, :2], boxes[:, :, None, 2:] - c), -1).amin(-1)
    in_gt = (gap > INSIDE_EPS) & valid[..., None]
    overlaps = bbox_iou(boxes[:, :, None], pred_boxes[:, None], "ciou").clamp(min=0) * valid[..., None]
    cls = pred_scores.transpose(1, 2).gather(1, labels[..., None].expand(-1, -1, len(priors)))
    align = cls.pow(alpha) * overlaps.pow(beta)
    top = (align * in_gt).topk(min(topk, len(priors)), dim=-1).indices
    pos = torch.zeros_like(in_gt).scatter_(-1, top, True) & in_gt
    best = torch.zeros_like(pos).scatter_(1, overlaps.masked_fill(~valid[..., None], -1.0).argmax(1)[:, None], True)
    pos = torch.where((pos.sum(1) > 1)[:, None], best, pos)
    fg, gt_idx = pos.any(1), pos.byte().argmax(1)
    align_pos = align * pos
    soft = (align_pos * (overlaps * pos).amax(-1, keepdim=True)
            / (align_pos.amax(-1, keepdim=True) + 1e-9)).amax(1)
    return fg, torch.where(fg, rows.gather(1, gt_idx), -1), soft * fg


@pytest.mark.parametrize("seed", range(12))
def test_sparse_computation_equals_the_dense_formulation(seed):
    """Crowded, overlapping GTs (many conflicts), ignore rows, ties at zero score, empty images."""
    g = torch.Generator().manual_seed(seed)
    size, nc, batch = (64, 128, 160)[seed % 3], 1 + seed % 4, 1 + seed % 5
    priors = make_priors((size, size), [8, 16, 32], None, torch.device("cpu"))
    rows = []
    for b in range(batch):
        n = int(torch.randint(0, 12, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * size * 0.7
        wh = torch.rand(n, 2, generator=g) * size * 0.5 + 1
        if seed % 4 == 0 and n:  # near-duplicates: every anchor contested
            wh[:], xy[:] = wh[0], xy[0] + torch.rand(n, 2, generator=g) * 4
        cls = torch.randint(0, nc, (n, 1), generator=g).float()
        if seed % 3 == 1 and n:
            cls[0] = -1  # an ignore region
        rows.append(torch.cat([torch.full((n, 1), float(b)), cls, xy, (xy + wh).clamp(max=size)], 1))
    targets = torch.cat(rows)
    c = priors.centers[None].expand(batch, -1, -1)
    spread = torch.rand(batch, len(priors), 4, generator=g) * size / 4
    pred_boxes = torch.cat([c - spread[..., :2], c + spread[..., 2:]], -1)
    pred_scores = torch.rand(batch, len(priors), nc, generator=g)
    if seed % 5 == 0:
        pred_scores = (pred_scores > 0.5).float()  # zero alignments: ties inside top-k
    topk = 1 + seed % 13
    res = TaskAlignedAssigner(topk=topk).assign(targets, priors, Predictions(pred_boxes, pred_scores))
    if (targets[:, 1] >= 0).sum() == 0:
        assert not res.fg_mask.any()
        return
    fg, gt_index, soft = _dense_reference(targets, priors, batch, pred_boxes, pred_scores, topk)
    assert torch.equal(res.fg_mask, fg) and torch.equal(res.gt_index, gt_index)
    torch.testing.assert_close(res.target_scores, soft, rtol=1e-6, atol=1e-7)  # same terms, other kernels
