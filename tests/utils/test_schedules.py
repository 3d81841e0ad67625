"""Training schedules as pure functions of the step: the decay curves, YOLO's warm-up of lr, bias lr
and momentum, the gradient-accumulation ramp, their application to optimizer groups, the nominal
batch rules of the optimizer, and the config checks of these keys."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from configs import load_config
from configs.base_config import ConfigError, OptimCfg, SchedCfg
from utils.optim import accumulation_steps, build_optimizer, param_groups
from utils.scheduler import IterScheduler, Schedule, build_scheduler


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def test_decay_curves_at_given_steps():
    cos = Schedule(100, name="cosine", min_lr_ratio=0.1)
    assert [cos.decay(s) for s in (0, 50, 100, 150)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    lin = Schedule(100, name="linear", min_lr_ratio=0.01)
    expected = [(1 - e / 100) * 0.99 + 0.01 for e in (0, 25, 100)]
    assert [lin.decay(s) for s in (0, 25, 100)] == pytest.approx(expected)
    step = Schedule(100, name="step", milestones=(30, 80), gamma=0.1)
    assert [step.decay(s) for s in (0, 29, 30, 79, 80, 100)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    oc = Schedule(100, name="one_cycle", one_cycle_pct=0.25, one_cycle_div=20.0, min_lr_ratio=0.01)
    assert [oc.decay(s) for s in (0, 12.5, 25, 62.5, 100)] == pytest.approx(
        [0.05, 0.05 + 0.95 / 2, 1.0, 0.01 + 0.99 / 2, 0.01])


def _yolo_sgd() -> torch.optim.Optimizer:
    return torch.optim.SGD(param_groups(_model(), 5e-4), lr=0.01, momentum=0.937, nesterov=True)


def test_yolo_warmup_of_lr_bias_lr_and_momentum_matches_the_original_formulas():
    """ORIG: linear lf(e) = (1 - e/E)(1 - lrf) + lrf; warm-up max(3 epochs, 100 iterations) in which the
    bias lr falls from 0.1 and the other lrs rise from 0 to lr * lf, momentum 0.8 -> 0.937 (np.interp)."""
    opt = _yolo_sgd()
    cfg = SchedCfg(name="linear", warmup_epochs=3.0, warmup_min_iters=100, warmup_start_factor=0.0,
                   warmup_bias_lr=0.1, warmup_momentum=0.8, min_lr_ratio=0.01)
    sched = build_scheduler(cfg, opt, iters_per_epoch=10, epochs=300)
    # 3 epochs are 30 iterations, fewer than the floor of 100
    assert (sched.schedule.total_steps, sched.schedule.warmup_steps) == (3000, 100)

    def lf(step):
        return (1 - step / 3000) * (1 - 0.01) + 0.01
    for step in (0, 1, 37, 50, 99, 100, 101, 1500, 3000):
        while sched.last_step < step:
            sched.step()
        weights, bias = 0.01 * lf(step), 0.01 * lf(step)
        momentum = 0.937
        if step <= 100:
            weights = np.interp(step, [0, 100], [0.0, 0.01 * lf(step)])
            bias = np.interp(step, [0, 100], [0.1, 0.01 * lf(step)])
            momentum = np.interp(step, [0, 100], [0.8, 0.937])
        groups = {g["name"]: g for g in opt.param_groups}
        assert groups["decay"]["lr"] == pytest.approx(weights)
        assert groups["no_decay"]["lr"] == pytest.approx(weights)
        assert groups["bias"]["lr"] == pytest.approx(bias), step
        assert all(g["momentum"] == pytest.approx(momentum) for g in opt.param_groups), step


def test_adam_beta1_follows_the_momentum_warmup():
    opt = torch.optim.Adam(param_groups(_model(), 0.0), lr=1e-3, betas=(0.9, 0.999))
    sched = IterScheduler(opt, Schedule(100, warmup_steps=10, warmup_momentum=0.5, momentum=0.9))
    assert opt.param_groups[0]["betas"] == (pytest.approx(0.5), 0.999)
    for _ in range(5):
        sched.step()
    assert opt.param_groups[2]["betas"] == (pytest.approx(0.7), 0.999)


def test_accumulation_ramp_and_the_nominal_batch_rules():
    assert [accumulation_steps(64, b) for b in (16, 24, 64, 128)] == [4, 3, 1, 1]
    assert accumulation_steps(0, 16) == 1  # off
    s = Schedule(1000, warmup_steps=100, accumulate=4)
    original = [max(1, int(np.interp(i, [0, 100], [1, 4]).round())) for i in range(130)]
    assert [s.accumulate_at(i) for i in range(130)] == original
    assert (s.accumulate_at(0), s.accumulate_at(100), s.accumulate_at(999)) == (1, 4, 4)

    cfg = OptimCfg(name="sgd", lr=0.01, base_batch=64, nominal_batch=64, weight_decay=5e-4)
    opt = build_optimizer(cfg, _model(), global_batch=24)  # 3 batches of 24 = 72 images per step
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 72 / 64)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(5e-4 * 72 / 64)
    assert [g["weight_decay"] for g in opt.param_groups[1:]] == [0.0, 0.0]
    plain = build_optimizer(OptimCfg(name="sgd", lr=0.01, base_batch=64, weight_decay=5e-4), _model(), 24)
    assert plain.param_groups[0]["lr"] == pytest.approx(0.01 * 24 / 64)
    assert plain.param_groups[0]["weight_decay"] == 5e-4


def test_schedule_curves_are_plottable(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = Schedule(300, warmup_steps=30, name="one_cycle", warmup_bias_lr=0.1, warmup_momentum=0.8,
                 accumulate=4)
    curves = s.curves(base_lr=0.01)
    assert {len(v) for v in curves.values()} == {301}
    assert curves["bias_lr"][0] == pytest.approx(0.1) and curves["momentum"][0] == pytest.approx(0.8)
    assert curves["accumulate"][0] == 1 and curves["accumulate"][-1] == 4
    peak = curves["lr"].index(max(curves["lr"]))
    assert peak == 90 and all(a >= b for a, b in zip(curves["lr"][peak:], curves["lr"][peak + 1:]))
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    for ax, key in zip(axes, ("lr", "bias_lr", "momentum")):
        ax.plot(curves["step"], curves[key])
        ax.set_title(key)
    fig.savefig(tmp_path / "schedule.png")
    plt.close(fig)
    assert (tmp_path / "schedule.png").stat().st_size > 1000


def test_schedule_rejects_bad_shapes():
    with pytest.raises(ValueError, match="sched.name='poly'"):
        Schedule(10, name="poly")
    with pytest.raises(ValueError, match="needs milestones"):
        Schedule(10, name="step")
    with pytest.raises(ValueError, match="warmup_steps <= total_steps"):
        Schedule(10, warmup_steps=11)


@pytest.mark.parametrize("key,value,message", [
    ("sched.name", "poly", "sched.name='poly' is not one of"),
    ("sched.name", "step", r"sched.step_epochs=\[\] must list increasing positive epochs"),
    ("sched.warmup_momentum", 1.0, r"must be in \[0, 1\)"),
    ("optim.nominal_batch", -64, "must not be negative"),
    ("train.monitor", "loss", "train.monitor='loss' is not one of"),
    ("train.freeze", [""], "must list non-empty strings"),
    ("train.patience", -1, "must not be negative"),
])
def test_config_checks_of_the_control_keys(key, value, message):
    cfg = load_config("bccd_yolo_r18", [f"{key}={value!r}"])
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_step_schedule_from_config_epochs():
    sched = build_scheduler(SchedCfg(name="step", warmup_epochs=0.0, step_epochs=[2, 3.5], step_gamma=0.5),
                            _yolo_sgd(), iters_per_epoch=4, epochs=5)
    assert sched.schedule.milestones == (8, 14)
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        sched.step()
    assert [lrs[7], lrs[8], lrs[14]] == pytest.approx([0.01, 0.005, 0.0025])
    assert math.isclose(sched.get_last_lr()[0], 0.0025)
