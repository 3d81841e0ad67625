"""Golden values worked by hand: the EMA decay ramp and updates (a weight and BatchNorm buffers), and
the lr / momentum of every param group through the warm-up and along the cosine and linear decays."""
import math

import pytest
import torch
from torch import nn

from configs.base_config import OptimCfg, SchedCfg
from utils.ema import ModelEMA
from utils.optim import build_optimizer
from utils.scheduler import IterScheduler, Schedule, build_scheduler


# -- EMA -------------------------------------------------------------------------------------------
def tiny():
    """One scalar weight (1.0), one bias (0.0) and a BatchNorm1d(1) (running mean 0, var 1, count 0)."""
    m = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        m[0].weight.fill_(1.0)
        m[0].bias.fill_(0.0)
    return m


def test_ema_decay_ramp_by_hand():
    # decay_at(u) = decay * (1 - exp(-u / tau)). With tau = 1 / ln 2, exp(-u / tau) = 2^-u:
    #   u = 0: 0;  u = 1: .8 * 1/2 = .4;  u = 2: .8 * 3/4 = .6;  u = 3: .8 * 7/8 = .7;  u = 10: .8 * 1023/1024
    ema = ModelEMA(tiny(), decay=0.8, tau=1 / math.log(2))
    assert [ema.decay_at(u) for u in (0, 1, 2, 3, 10)] == pytest.approx([0, 0.4, 0.6, 0.7, 0.8 * 1023 / 1024])
    # the defaults (decay .9999, tau 2000): u = 2000: .9999 (1 - e^-1) = .9999 * .63212056 = .63205735;
    # u = 4000: .9999 (1 - e^-2) = .9999 * .86466472 = .86457825; u = 1: .9999 (1 - e^-.0005) = .00049983
    ema = ModelEMA(tiny())
    assert ema.decay_at(2000) == pytest.approx(0.63205735, abs=1e-8)
    assert ema.decay_at(4000) == pytest.approx(0.86457825, abs=1e-8)
    assert ema.decay_at(1) == pytest.approx(0.00049983, abs=1e-8)


def test_ema_updates_of_a_weight_and_batchnorm_buffers_by_hand():
    # decay .8, tau 1 / ln 2: updates 1, 2, 3 use d = .4, .6, .7 (the count is incremented first).
    model = tiny()
    ema = ModelEMA(model, decay=0.8, tau=1 / math.log(2))
    with torch.no_grad():
        model[0].weight.fill_(6.0)
        model[1].running_mean.fill_(5.0)
        model[1].running_var.fill_(3.0)
    model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    e = ema.ema.state_dict()
    # weight .4 * 1 + .6 * 6 = 4; running_mean .4 * 0 + .6 * 5 = 3; running_var .4 * 1 + .6 * 3 = 2.2;
    # the integer count is copied (7), not averaged; the unchanged bias stays 0
    assert e["0.weight"].item() == pytest.approx(4.0)
    assert e["1.running_mean"].item() == pytest.approx(3.0)
    assert e["1.running_var"].item() == pytest.approx(2.2)
    assert e["1.num_batches_tracked"].item() == 7 and e["1.num_batches_tracked"].dtype == torch.long
    assert e["0.bias"].item() == 0.0 and ema.updates == 1
    ema.update(model)  # d = .6: .6 * 4 + .4 * 6 = 4.8
    assert ema.ema[0].weight.item() == pytest.approx(4.8)
    ema.update(model)  # d = .7: .7 * 4.8 + .3 * 6 = 5.16
    assert ema.ema[0].weight.item() == pytest.approx(5.16)
    assert ema.ema[1].running_mean.item() == pytest.approx(0.7 * (0.6 * 3 + 0.4 * 5) + 0.3 * 5)  # 4.16
    assert model[0].weight.item() == 6.0  # the model itself is never touched


def test_ema_resumed_count_sets_the_next_decay():
    # a resumed EMA at updates = 2 uses d = decay_at(3) = .7 for its next update: .7 * 1 + .3 * 6 = 2.5
    model = tiny()
    ema = ModelEMA(model, decay=0.8, tau=1 / math.log(2), updates=2)
    with torch.no_grad():
        model[0].weight.fill_(6.0)
    ema.update(model)
    assert ema.ema[0].weight.item() == pytest.approx(2.5) and ema.updates == 3


# -- lr and momentum schedules --------------------------------------------------------------------------
def groups_of(opt):
    return {g["name"]: g for g in opt.param_groups}


def sgd_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # decay: conv weight; no_decay: BN weight


# 12 epochs of 10 iterations = 120 steps, warm-up 2 epochs = 20 steps. Base lr .01 (lr .01 at base batch
# 16 = the global batch). Cosine with r = .05: f(s) = .05 + .95 (1 + cos(pi s / 120)) / 2:
#   s 10: cos 15 deg = .96592583 -> .05 + .95 * .98296291 = .98381477
#   s 20: cos 30 deg = .86602540 -> .05 + .95 * .93301270 = .93636207
#   s 40: cos 60 deg = .5 -> .7625;  s 60: 0 -> .525;  s 80: -.5 -> .2875;  s 120: -1 -> .05
# Warm-up (s < 20), linear in s from its start to base lr * f(s) (values to 8 decimals, checked to 1e-8):
#   weights from .1 * .01 = .001:  s 10: .001 + (.0098381477 - .001) * 10/20 = .00541907
#   bias    from .1:               s 10: .1 + (.0098381477 - .1) * 10/20 = .05491907
#   momentum from .8 to .9:        s 10: .85
COSINE = {0: (0.001, 0.1, 0.8), 10: (0.00541907, 0.05491907, 0.85), 20: (0.0093636207, 0.0093636207, 0.9),
          40: (0.007625, 0.007625, 0.9), 60: (0.00525, 0.00525, 0.9), 80: (0.002875, 0.002875, 0.9),
          120: (0.0005, 0.0005, 0.9)}
# Linear with r = .05: f(s) = (1 - s / 120) * .95 + .05:
#   s 10: 11/12 * .95 + .05 = .92083333;  s 20: 5/6 * .95 + .05 = .84166667;  s 40: .68333333;  s 60: .525;
#   s 80: .36666667;  s 120: .05.  Warm-up at s 10: weights .001 + (.0092083333 - .001) / 2 = .00510417,
#   bias .1 + (.0092083333 - .1) / 2 = .05460417
LINEAR = {0: (0.001, 0.1, 0.8), 10: (0.00510417, 0.05460417, 0.85), 20: (0.0084166667, 0.0084166667, 0.9),
          40: (0.0068333333, 0.0068333333, 0.9), 60: (0.00525, 0.00525, 0.9), 80: (0.0036666667, 0.0036666667, 0.9),
          120: (0.0005, 0.0005, 0.9)}


@pytest.mark.parametrize("name, table", [("cosine", COSINE), ("linear", LINEAR)])
def test_every_group_lr_and_momentum_by_hand(name, table):
    opt = build_optimizer(OptimCfg(name="sgd", lr=0.01, base_batch=16, momentum=0.9, weight_decay=5e-4),
                          sgd_model(), global_batch=16)
    cfg = SchedCfg(name=name, warmup_epochs=2.0, warmup_start_factor=0.1, warmup_bias_lr=0.1,
                   warmup_momentum=0.8, min_lr_ratio=0.05)
    sched = build_scheduler(cfg, opt, iters_per_epoch=10, epochs=12)
    assert (sched.schedule.total_steps, sched.schedule.warmup_steps) == (120, 20)
    for step, (weights, bias, momentum) in table.items():
        while sched.last_step < step:
            sched.step()
        g = groups_of(opt)
        assert g["decay"]["lr"] == pytest.approx(weights, abs=1e-8), step
        assert g["no_decay"]["lr"] == pytest.approx(weights, abs=1e-8), step
        assert g["bias"]["lr"] == pytest.approx(bias, abs=1e-8), step
        assert [x["momentum"] for x in opt.param_groups] == pytest.approx([momentum] * 3), step
        assert [x["initial_lr"] for x in opt.param_groups] == [0.01] * 3  # the base lr is never overwritten


def test_without_bias_or_momentum_warmup_every_group_starts_at_the_factor():
    # warmup_bias_lr 0 and warmup_momentum 0: the bias group warms like the others (.01 * .01 = 1e-4 at
    # step 0), momentum stays .9; 10 warm-up steps of 100 (cosine, r .05): at step 5, f = .05 + .95 *
    # (1 + cos 9 deg) / 2 = .05 + .95 * .99384417 = .99415196 -> 1e-4 + (.0099415196 - 1e-4) / 2 = .00502076
    opt = torch.optim.SGD([{"name": n, "params": [nn.Parameter(torch.zeros(1))]} for n in ("decay", "bias")],
                          lr=0.01, momentum=0.9)
    sched = IterScheduler(opt, Schedule(total_steps=100, warmup_steps=10, warmup_start_factor=0.01,
                                        min_lr_ratio=0.05, momentum=0.9))
    assert sched.get_last_lr() == pytest.approx([1e-4, 1e-4], abs=1e-12)
    for _ in range(5):
        sched.step()
    assert sched.get_last_lr() == pytest.approx([0.00502076, 0.00502076], abs=1e-8)
    assert [g["momentum"] for g in opt.param_groups] == [0.9, 0.9]


def test_adam_beta1_warmup_and_scaled_lr_by_hand():
    # Adam, lr .001 tuned for 16 images, global batch 48: lr .001 * 48 / 16 = .003. Warm-up 4 steps of 8 from
    # factor 0 (YOLO), beta1 .5 -> .9; cosine r .1: f(2) = .1 + .9 (1 + cos 45 deg) / 2 = .1 + .9 * .85355339
    # = .86819805 -> lr .003 * .86819805 / 2 = .00130230, beta1 .5 + .4 / 2 = .7; beta2 stays .999
    opt = build_optimizer(OptimCfg(name="adam", lr=1e-3, base_batch=16, momentum=0.9), sgd_model(), 48)
    sched = IterScheduler(opt, Schedule(total_steps=8, warmup_steps=4, warmup_start_factor=0.0,
                                        min_lr_ratio=0.1, warmup_momentum=0.5, momentum=0.9))
    assert sched.get_last_lr() == [0.0, 0.0, 0.0] and opt.param_groups[0]["betas"] == (0.5, 0.999)
    sched.step()
    sched.step()
    assert sched.get_last_lr() == pytest.approx([0.00130230] * 3, abs=1e-8)
    assert opt.param_groups[1]["betas"] == (pytest.approx(0.7), 0.999)
