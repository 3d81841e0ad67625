"""DistanceCoder decoding and the DFL loss: perfect predictions, two-bin minimum, gradients, aux branch."""
import math

import pytest
import torch

from configs.base_config import ConfigError, LossCfg
from core.checks import validate
from models.assigners.task_aligned import TaskAlignedAssigner
from models.coders import CODERS, DistanceCoder
from models.losses import LOSSES, V9Loss
from models.priors import make_priors

NC, R = 2, 16


def priors():
    return make_priors((64, 64), [8], None)  # 8x8 anchor points at 4, 12, ..., 60


def bin_logits_for(dist):
    """[..., 4] distances (stride units) -> [..., 4 * R] logits whose softmax puts 1 - f on floor(d)
    and f on floor(d) + 1: the optimum of the two-bin DFL target."""
    d = dist.clamp(0, R - 1 - 0.01)
    left = d.floor().long()
    f = d - left
    p = torch.zeros(*d.shape, R)
    p.scatter_(-1, left[..., None], (1 - f)[..., None])
    p.scatter_add_(-1, (left + 1)[..., None], f[..., None])
    return p.clamp(min=1e-12).log().flatten(-2)


def perfect_raw(p, gt, cls, batch=1):
    """Raw outputs decoding to box gt on every anchor point (equal class logits)."""
    c, s = p.centers, p.stride[:, None]
    dist = torch.cat((c - gt[None, :2], gt[None, 2:] - c), -1) / s
    raw = torch.zeros(batch, len(p), 4 * R + NC)
    raw[..., : 4 * R] = bin_logits_for(dist)
    raw[..., 4 * R + cls] = 2.0
    return raw


def make_loss(**kw):
    return V9Loss(LossCfg(**kw), TaskAlignedAssigner(), DistanceCoder(), NC)


def test_distance_coder_decodes_known_logits():
    p = priors()
    coder = CODERS["distance"]()
    assert not coder.has_objectness
    dist = torch.tensor([1.0, 2.75, 0.0, 14.5])
    cls_logits = torch.tensor([-1.0, 3.0])
    raw = torch.cat((bin_logits_for(dist), cls_logits)).expand(1, len(p), -1)
    assert coder.bin_logits(raw).shape == (1, len(p), 4, R)
    assert torch.allclose(coder.bin_logits(raw)[0, 0, 1], bin_logits_for(dist)[R:2 * R])  # side-major layout
    assert torch.allclose(coder.distances(raw)[0], dist.expand(len(p), 4), atol=1e-5)
    boxes = coder.decode_boxes(raw, p)[0]
    i = 9  # anchor point (12, 12), stride 8
    assert boxes[i].tolist() == pytest.approx([12 - 8, 12 - 22, 12 + 0, 12 + 116], abs=1e-4)
    assert coder.class_logits(raw)[0, i].tolist() == [-1.0, 3.0]
    assert torch.allclose(coder.scores(raw)[0, i], torch.sigmoid(torch.tensor([-1.0, 3.0])))
    # uniform bins: the expectation is the mean bin, (R - 1) / 2
    assert torch.allclose(coder.distances(torch.zeros(1, 3, 4 * R + NC)), torch.full((1, 3, 4), 7.5))


@pytest.mark.parametrize("shift, frac", [(0.0, 0.0), (-2.0, 0.25)])
def test_perfect_predictions_reach_the_dfl_minimum(shift, frac):
    # Anchor points lie at 4 + 8i, so edges at 4 + 8i give integer distances (DFL minimum 0),
    # edges moved out by 2 px give distances with fractional part 0.25 on every side.
    p = priors()
    gt = torch.tensor([4.0, 4, 44, 36]) + torch.tensor([shift, shift, -shift, -shift])
    raw = perfect_raw(p, gt, 1).requires_grad_(True)
    loss, parts = make_loss()(raw, torch.tensor([[0, 1, *gt.tolist()]]), p)
    assert parts["box"].item() == pytest.approx(0.0, abs=1e-5)
    # Equal t on every candidate makes every soft score 1, so the DFL is the binary entropy of frac.
    entropy = 0.0 if frac == 0 else -(frac * math.log(frac) + (1 - frac) * math.log(1 - frac))
    assert parts["dfl"].item() == pytest.approx(entropy, abs=1e-4)
    assert set(parts) == {"box", "cls", "dfl"}
    c = LossCfg()
    weighted = c.box_weight * parts["box"] + c.cls_weight * parts["cls"] + c.dfl_weight * parts["dfl"]
    assert loss.item() == pytest.approx(weighted.item(), rel=1e-6)
    # A per-batch mean: the same image twice gives the same loss (no batch-size factor).
    loss2, _ = make_loss()(perfect_raw(p, gt, 1, batch=2), torch.tensor([[0, 1, *gt.tolist()],
                                                                         [1, 1, *gt.tolist()]]), p)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-5)


def test_worse_boxes_cost_more_and_gradients_flow():
    torch.manual_seed(0)
    p = priors()
    gt = torch.tensor([4.0, 4, 44, 36])
    t = torch.tensor([[0, 1, *gt.tolist()], [1, 0, 10, 20, 50, 60], [1, -1, 0, 0, 20, 20]])
    good, _ = make_loss()(perfect_raw(p, gt, 1, batch=2), t, p)
    raw = torch.randn(2, len(p), 4 * R + NC, requires_grad=True)
    bad, parts = make_loss()(raw, t, p)
    assert bad > good and parts["box"] > 0.05 and parts["dfl"] > 0.05
    bad.backward()
    assert torch.isfinite(raw.grad).all()
    assert raw.grad[..., : 4 * R].abs().sum() > 0 and raw.grad[..., 4 * R:].abs().sum() > 0


def test_no_gt_gives_class_loss_only():
    raw = torch.randn(2, len(priors()), 4 * R + NC, requires_grad=True)
    loss, parts = make_loss()(raw, torch.zeros(0, 6), priors())
    assert parts["box"] == 0 and parts["dfl"] == 0 and parts["cls"] > 0
    loss.backward()
    assert torch.isfinite(raw.grad).all()


def test_aux_branch_adds_its_weighted_total():
    torch.manual_seed(1)
    p = priors()
    t = torch.tensor([[0, 1, 4.0, 4, 44, 36], [0, 0, 20, 20, 60, 60]])
    main, aux = torch.randn(2, 1, len(p), 4 * R + NC)
    main_only, main_parts = make_loss()(main, t, p)
    aux_only, _ = make_loss()(aux, t, p)
    both, parts = make_loss()((main, aux), t, p)
    assert both.item() == pytest.approx(main_only.item() + 0.25 * aux_only.item(), rel=1e-6)
    assert parts["aux"].item() == pytest.approx(aux_only.item(), rel=1e-6)
    assert all(torch.equal(parts[k], main_parts[k]) for k in ("box", "cls", "dfl"))
    half, _ = make_loss(aux_weight=0.5)((main, aux), t, p)
    assert half.item() == pytest.approx(main_only.item() + 0.5 * aux_only.item(), rel=1e-6)


def test_registry_and_assigner_check():
    assert LOSSES["dfl"] is V9Loss
    from configs import load_config
    with pytest.raises(ConfigError, match=r"assign.method='nearby_grid' does not train the dfl head of "
                                          r"model.name='v9-t'; methods that do: \['atss', 'simota', 'task_aligned'\]"):
        validate(load_config("bccd_v9t", ["assign.method=nearby_grid"]))
