"""Optimizer groups, lr scaling, builders, and the warm-up + cosine schedule."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from configs.base_config import OptimCfg, SchedCfg
from utils.optim import build_optimizer, param_groups, scale_lr
from utils.scheduler import IterScheduler, Schedule, build_scheduler


def _model() -> nn.Module:
    m = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 4, 1), nn.GroupNorm(2, 4), nn.Flatten(), nn.LazyLinear(2))
    m(torch.zeros(1, 3, 6, 6))  # materialise the lazy layer
    m[0].weight.requires_grad_(False)  # a frozen weight must not be in any group
    return m


def test_param_groups_partition():
    model = _model()
    groups = {g["name"]: g for g in param_groups(model, 5e-4)}
    assert list(groups) == ["decay", "no_decay", "bias"]
    ids = [id(p) for g in groups.values() for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(ids) == sorted(trainable) and len(ids) == len(set(ids))
    by_id = {id(p): n for n, p in model.named_parameters()}
    names = {k: sorted(by_id[id(p)] for p in g["params"]) for k, g in groups.items()}
    assert names == {"decay": ["3.weight", "6.weight"], "no_decay": ["1.weight", "4.weight"],
                     "bias": ["1.bias", "3.bias", "4.bias", "6.bias"]}
    assert (groups["decay"]["weight_decay"], groups["no_decay"]["weight_decay"],
            groups["bias"]["weight_decay"]) == (5e-4, 0.0, 0.0)


def test_scale_lr():
    assert scale_lr(1e-3, 16, 16) == pytest.approx(1e-3)
    assert scale_lr(1e-3, 16, 64) == pytest.approx(4e-3)
    assert scale_lr(0.01, 64, 8) == pytest.approx(0.00125)
    with pytest.raises(ValueError, match="base_batch=0"):
        scale_lr(1e-3, 0, 16)


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                      ("adamw", torch.optim.AdamW)])
def test_build_optimizer(name, cls):
    cfg = OptimCfg(name=name, lr=0.01, base_batch=16, momentum=0.9, weight_decay=1e-4)
    opt = build_optimizer(cfg, _model(), global_batch=32)
    assert type(opt) is cls and [g["lr"] for g in opt.param_groups] == [pytest.approx(0.02)] * 3
    if name == "sgd":
        assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["nesterov"] is True
    else:
        assert opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0, 0.0]


def test_build_optimizer_unknown():
    with pytest.raises(ValueError, match=r"optim.name='lion'; valid: \['adam', 'adamw', 'sgd'\]"):
        build_optimizer(OptimCfg(name="lion"), _model(), 16)


def test_lr_factor_points():
    s = Schedule(total_steps=110, warmup_steps=10, warmup_start_factor=0.01, min_lr_ratio=0.05)

    def cosine(step):
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / 110))
    assert s.lr_factor(0) == pytest.approx(0.01)
    assert s.lr_factor(5) == pytest.approx(0.01 + (cosine(5) - 0.01) * 0.5)  # warm-up blends into the curve
    assert s.lr_factor(10) == pytest.approx(cosine(10))
    assert s.lr_factor(55) == pytest.approx(0.05 + 0.95 * 0.5)  # cosine midpoint
    assert s.lr_factor(110) == pytest.approx(0.05)
    assert s.lr_factor(500) == pytest.approx(0.05)
    assert Schedule(total_steps=100).lr_factor(0) == pytest.approx(1.0)  # no warm-up


def _opt() -> torch.optim.Optimizer:
    torch.manual_seed(0)
    return torch.optim.SGD(param_groups(_model(), 1e-4), lr=0.1, momentum=0.9)


def test_scheduler_initial_and_resume():
    shape = Schedule(total_steps=20, warmup_steps=4, warmup_start_factor=0.1, min_lr_ratio=0.05)
    full_opt = _opt()
    full = IterScheduler(full_opt, shape)
    assert full.get_last_lr() == [pytest.approx(0.01)] * 3  # step-0 lr right after construction
    assert [g["initial_lr"] for g in full_opt.param_groups] == [0.1] * 3
    lrs_full = []
    for _ in range(12):
        full.step()
        lrs_full.append(full.get_last_lr())

    first_opt = _opt()
    first = IterScheduler(first_opt, shape)
    lrs_resumed = []
    for _ in range(5):
        first.step()
        lrs_resumed.append(first.get_last_lr())
    saved_opt, saved_sched = first_opt.state_dict(), first.state_dict()
    assert saved_sched["last_step"] == 5 and all(type(v) in (int, float) for v in saved_sched.values())

    second_opt = _opt()
    second = IterScheduler(second_opt, shape)
    second_opt.load_state_dict(saved_opt)
    second.load_state_dict(saved_sched)
    assert second.get_last_lr() == lrs_resumed[-1]
    for _ in range(7):
        second.step()
        lrs_resumed.append(second.get_last_lr())
    assert lrs_resumed == lrs_full


def test_build_scheduler():
    opt = _opt()
    sched = build_scheduler(SchedCfg(warmup_epochs=0.5, warmup_start_factor=0.2, min_lr_ratio=0.1), opt,
                            iters_per_epoch=10, epochs=3)
    assert (sched.schedule.total_steps, sched.schedule.warmup_steps) == (30, 5)
    assert sched.get_last_lr()[0] == pytest.approx(0.02)
    for _ in range(5):
        sched.step()
    # end of warm-up: on the cosine curve of the whole run
    assert sched.get_last_lr()[0] == pytest.approx(0.1 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 6))))
    for _ in range(25):
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="sched.name='exponential'"):
        build_scheduler(SchedCfg(name="exponential"), opt, 10, 3)
