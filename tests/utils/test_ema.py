"""ModelEMA: decay ramp, update formula, integer buffers, state round trip, DDP unwrap."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from utils.ema import ModelEMA


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_decay_ramp():
    ema = ModelEMA(_model(), decay=0.9999, tau=2000.0)
    assert ema.decay_at(0) == 0.0
    assert ema.decay_at(2000) == pytest.approx(0.9999 * (1 - math.exp(-1)))
    assert ema.decay_at(10**6) == pytest.approx(0.9999, abs=1e-12)
    assert ema.decay_at(10**9) < 1.0  # never freezes


def test_copy_is_frozen_eval():
    model = _model().train()
    ema = ModelEMA(model)
    assert not ema.ema.training and all(not p.requires_grad for p in ema.ema.parameters())
    assert ema.ema[0].weight is not model[0].weight


def test_update_matches_formula():
    model = _model()
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    start = {k: v.clone() for k, v in ema.ema.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()(torch.randn(4, 3))  # moves BN running stats and num_batches_tracked
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1 / 2.0))
    now, src = ema.ema.state_dict(), model.state_dict()
    for k in ("0.weight", "0.bias", "1.running_mean", "1.running_var"):
        assert torch.allclose(now[k], d * start[k] + (1 - d) * src[k], atol=1e-6), k
    assert now["1.num_batches_tracked"].item() == 1 and ema.updates == 1


def test_update_unwraps_module_wrapper():
    model = _model()
    ema = ModelEMA(nn.DataParallel(model), decay=0.5, tau=1e-9)  # d == 0.5 from the first update
    with torch.no_grad():
        model[0].bias.fill_(2.0)
    before = ema.ema[0].bias.clone()
    ema.update(nn.DataParallel(model))
    assert torch.allclose(ema.ema[0].bias, 0.5 * before + 0.5 * 2.0)


def test_state_round_trip():
    model = _model()
    ema = ModelEMA(model, tau=5.0)
    for _ in range(3):
        with torch.no_grad():
            model[0].weight.mul_(1.1)
        ema.update(model)
    other = ModelEMA(_model(), tau=5.0)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 3 and isinstance(ema.state_dict()["updates"], int)
    for k, v in ema.ema.state_dict().items():
        assert torch.equal(other.ema.state_dict()[k], v)
    ema.update(model), other.update(model)
    assert torch.equal(other.ema[0].weight, ema.ema[0].weight)


def test_bad_decay():
    with pytest.raises(ValueError, match="ema_decay"):
        ModelEMA(_model(), decay=1.0)


def test_follows_model_device():
    model = _model()
    ema = ModelEMA(model)
    model.to("meta")  # stands in for .cuda(): a different device without a GPU
    ema.update(model)
    assert {t.device.type for t in ema.ema.state_dict().values()} == {"meta"}


def test_repeated_updates_equal_the_per_tensor_formula_and_follow_replaced_tensors():
    """The foreach update, with its tensor pairs kept between calls, against the formula tensor by
    tensor; replacing a parameter's data (as ``model.to`` does) is followed, not averaged stale."""
    model = _model()
    ema = ModelEMA(model, decay=0.8, tau=3.0)
    expected = {k: v.clone() for k, v in ema.ema.state_dict().items()}
    for i in range(4):
        with torch.no_grad():
            model[0].weight.add_(0.5)
            if i == 2:  # new storage for the first parameter and a BN buffer
                model[0].weight.data = model[0].weight.data.clone() * 3.0
                model[1].running_mean = model[1].running_mean.clone() + 7.0
        model.train()(torch.randn(4, 3))
        ema.update(model)
        d = ema.decay_at(i + 1)
        for k, v in model.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * v if v.is_floating_point() else v.clone()
        for k, v in ema.ema.state_dict().items():
            assert torch.allclose(v, expected[k], atol=1e-6), (i, k)
    assert ema.ema.state_dict()["1.num_batches_tracked"].item() == 4
