"""GTs padded to the caller's ``max_gt``: any bound at or above the real count gives the same assignment and
the same loss as padding to the batch's own count; a wrong bound or batch index fails on the device. And
SimOTA's per-prior class cost assigns exactly as the textbook [pairs x classes] cost."""
import pytest
import torch

from configs.base_config import LossCfg
from models.assigners import ASSIGNERS, Predictions
from models.assigners.base import INSIDE_EPS
from models.coders import CODERS
from models.losses import LOSSES
from models.priors import make_priors
from utils.boxes import bbox_iou

CASES = [(m, head) for m, cls in ASSIGNERS.items() for head in sorted(cls.coders)]
FIELDS = ("fg_mask", "gt_index", "target_boxes", "target_labels", "target_scores")
ANCHORS = [[[12, 16], [24, 20]], [[40, 48], [64, 40]], [[90, 80], [120, 110]]]


def scene(head: str, seed: int, nc: int = 3, batch: int = 3, img: int = 128):
    """(targets, priors, predictions, rows per image): image 1 has no GT; rows of the images interleave;
    some rows are ignore regions (class -1)."""
    g = torch.Generator().manual_seed(seed)
    priors = make_priors((img, img), [8, 16, 32], ANCHORS if head == "anchor" else None)
    counts = [int(torch.randint(1, 12, (1,), generator=g)) if b != 1 else 0 for b in range(batch)]
    rows = []
    for b, n in enumerate(counts):
        xy = torch.rand(n, 2, generator=g) * img * 0.7
        wh = torch.rand(n, 2, generator=g) * img * 0.4 + 3
        cls = torch.randint(0, nc, (n, 1), generator=g).float()
        cls[torch.rand(n, generator=g) < 0.2] = -1
        rows.append(torch.cat((torch.full((n, 1), float(b)), cls, xy, (xy + wh).clamp(max=img)), 1))
    targets = torch.cat(rows)[torch.randperm(sum(counts), generator=g)]
    c = priors.centers + torch.randn(batch, len(priors), 2, generator=g) * 6
    half = torch.rand(batch, len(priors), 2, generator=g) * img / 4 + 1
    preds = Predictions(torch.cat((c - half, c + half), -1), torch.rand(batch, len(priors), nc, generator=g))
    return targets, priors, preds, max(counts)


@pytest.mark.parametrize("method, head", CASES)
def test_a_larger_max_gt_gives_the_same_assignment(method, head):
    for seed in range(4):
        targets, priors, preds, rows = scene(head, seed)
        ref = ASSIGNERS[method]().assign(targets, priors, preds)  # padded to the GT count read from the device
        assert ref.fg_mask.any() and not ref.fg_mask[1].any()
        for max_gt in (rows, rows + 1, rows + 9):
            res = ASSIGNERS[method]().assign(targets, priors, preds, max_gt=max_gt)
            for field in FIELDS:
                assert torch.equal(getattr(res, field), getattr(ref, field)), (seed, max_gt, field)


def raw_outputs(family: str, batch: int, num_p: int, nc: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    width = 5 + nc if family == "anchor" else 4 * 16 + nc
    raw = (torch.randn(batch, num_p, width, generator=g) * 0.5).requires_grad_()
    if family == "anchor":
        return raw, [raw]
    aux = (torch.randn(batch, num_p, width, generator=g) * 0.5).requires_grad_()
    return (raw, aux), [raw, aux]


@pytest.mark.parametrize("method, head", CASES)
def test_a_larger_max_gt_gives_the_same_loss_and_gradients(method, head):
    cls = ASSIGNERS[method]
    coder = CODERS[cls.coders[head]]()
    loss_fn = LOSSES[head](LossCfg(level_weights=[4.0, 1.0, 0.4]), cls(), coder, 3)
    targets, priors, _, rows = scene(head, seed=7)
    if head == "anchor":  # an ignore region the size of the image: some negatives lose their objectness term
        targets = torch.cat((targets, torch.tensor([[2, -1, 0.0, 0, 128, 128]])))
        rows += 1
    results = []
    for max_gt in (None, rows, rows + 5):
        raw, leaves = raw_outputs(head, 3, len(priors), 3, seed=3)
        total, parts = loss_fn(raw, targets, priors, max_gt=max_gt)
        total.backward()
        results.append((total.detach(), {k: v for k, v in parts.items()}, [x.grad for x in leaves]))
    (ref_total, ref_parts, ref_grads), *others = results
    assert ref_parts["box"] > 0
    for total, parts, grads in others:
        assert torch.equal(total, ref_total) and parts.keys() == ref_parts.keys()
        assert all(torch.equal(parts[k], ref_parts[k]) for k in parts)
        assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


def test_a_wrong_bound_or_batch_index_fails_on_the_device():
    targets, priors, preds, rows = scene("dfl", seed=0)
    for method in ("task_aligned", "nearby_grid"):
        head = "dfl" if method == "task_aligned" else "anchor"
        t, p, pr, _ = scene(head, seed=0)
        gts = int(torch.bincount(t[t[:, 1] >= 0, 0].long()).max())  # the most GTs of an image
        with pytest.raises(RuntimeError, match=f"more than max_gt={gts - 1} GTs"):
            ASSIGNERS[method]().assign(t, p, pr, max_gt=gts - 1)
    stray = torch.cat((targets, torch.tensor([[3, 0, 8.0, 8, 40, 40]])))  # image 3 of a batch of 3
    with pytest.raises(ValueError, match=r"target batch index out of range \[0, 2\]"):
        ASSIGNERS["atss"]().assign(stray, priors, preds)
    with pytest.raises(RuntimeError, match=r"target batch index out of range \[0, 2\]"):
        ASSIGNERS["atss"]().assign(stray, priors, preds, max_gt=rows + 1)
    wrong_class = torch.cat((targets, torch.tensor([[0, 3, 8.0, 8, 40, 40]])))  # 3 classes: 0..2
    with pytest.raises(ValueError, match="target class 3 is out of range for 3 classes"):
        ASSIGNERS["simota"]().assign(wrong_class, priors, preds)
    with pytest.raises(RuntimeError, match="a target class is out of range for 3 classes"):
        ASSIGNERS["simota"]().assign(wrong_class, priors, preds, max_gt=rows + 1)


# -- SimOTA: the class cost per prior equals the textbook one ---------------------------------------
def reference_simota(targets, priors, preds, radius=2.5, topk=10, iou_weight=3.0, eps=1e-7):
    """SimOTA image by image, GT by GT, with the class cost as the plain BCE of every candidate's scores
    against the GT's one-hot class: a [GTs x priors x classes] tensor. Returns (fg, gt_index, score)."""
    batch, num_p = preds.boxes.shape[:2]
    fg = torch.zeros(batch, num_p, dtype=torch.bool)
    gt_index = torch.full((batch, num_p), -1)
    score = torch.zeros(batch, num_p)
    c, stride = priors.centers, priors.stride
    for b in range(batch):
        rows = torch.nonzero((targets[:, 0] == b) & (targets[:, 1] >= 0)).squeeze(1)
        if not len(rows):
            continue
        gt, labels = targets[rows, 2:6], targets[rows, 1].long()
        in_box = ((c[None] - gt[:, None, :2] > INSIDE_EPS) & (gt[:, None, 2:] - c[None] > INSIDE_EPS)).all(-1)
        in_ctr = ((c[None] - (gt[:, None, :2] + gt[:, None, 2:]) / 2).abs() < radius * stride[None, :, None]).all(-1)
        cand = (in_box | in_ctr).any(0)
        iou = bbox_iou(gt[:, None], preds.boxes[b][None], "iou").clamp(0, 1)  # [G, P]
        s = preds.scores[b].clamp(eps, 1 - eps)[None]  # [1, P, nc]
        one_hot = torch.nn.functional.one_hot(labels, s.shape[-1]).float()[:, None]  # [G, 1, nc]
        bce = -(one_hot * s.log() + (1 - one_hot) * (1 - s).log()).sum(-1)  # [G, P]
        cost = bce + iou_weight * -torch.log(iou + 1e-8) + 1e5 * ~(in_box & in_ctr)
        cost[:, ~cand], iou[:, ~cand] = float("inf"), 0.0
        matched = torch.zeros_like(cost, dtype=torch.bool)
        for g in range(len(rows)):
            k = max(1, int(iou[g].topk(min(topk, num_p)).values.sum()))
            cheapest = cost[g].argsort()[:k]
            matched[g, cheapest[torch.isfinite(cost[g, cheapest])]] = True
        for p in torch.nonzero(matched.any(0)).squeeze(1):
            g = cost[:, p].masked_fill(~matched[:, p], float("inf")).argmin()
            fg[b, p], gt_index[b, p], score[b, p] = True, rows[g], iou[g, p]
    return fg, gt_index, score


@pytest.mark.parametrize("seed", range(6))
def test_simota_assigns_as_with_the_textbook_class_cost(seed):
    head = "anchor" if seed % 2 else "dfl"
    targets, priors, preds, rows = scene(head, seed, nc=(1, 3, 80)[seed % 3], batch=4)
    res = ASSIGNERS["simota"]().assign(targets, priors, preds, max_gt=rows)
    fg, gt_index, score = reference_simota(targets, priors, preds)
    assert fg.any() and torch.equal(res.fg_mask, fg) and torch.equal(res.gt_index, gt_index)
    torch.testing.assert_close(res.target_scores, score, rtol=0, atol=0)
