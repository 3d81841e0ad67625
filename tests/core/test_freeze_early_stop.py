"""Training control on the real trainer: layer freezing (gradients, BatchNorm statistics, thaw, the
log), the backbone of the YOLOv9-family graphs, early stopping (decisions, the reason, resuming a
stopped run), best and top-K checkpoints, transfer to another class count, gradient clipping, seeds."""
import math
from itertools import chain

import pytest
import torch
from loguru import logger
from tiny_data import make_tiny_voc, tiny_overrides

from configs import ConfigError, load_config
from core.train import Trainer
from core.train.selection import Selection
from models import build_model
from utils.checkpoint import TopKCheckpoints, load_checkpoint
from utils.dist import DistInfo, seed_everything
from utils.optim import freeze_plan

CPU = DistInfo.single()
FAST = {"train.channels_last": False, "eval.plots": False, "eval.dashboard": False}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory.mktemp("tiny_voc_control"), n_train=4, n_val=2)  # 1 step per epoch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cfg_for(root, **extra):
    return load_config("bccd_yolo_r18", tiny_overrides(root, **{**FAST, **extra}))


class Messages(list):
    """Log lines at INFO and above while in the ``with`` block."""

    def __enter__(self):
        self._sink = logger.add(lambda m: self.append(str(m)), level="INFO")
        return self

    def __exit__(self, *exc):
        logger.remove(self._sink)


def test_frozen_backbone_gets_no_gradient_keeps_its_statistics_and_thaws(data_root, tmp_path):
    with Messages() as log:
        cfg = cfg_for(data_root, **{"train.freeze": ["backbone"], "train.freeze_epochs": 1})
        t = Trainer(cfg, CPU, tmp_path)
        start = {k: v.clone() for k, v in t.model.state_dict().items()}
        t.fit(stop_after_epoch=1)
        after_one = {k: v.clone() for k, v in t.model.state_dict().items()}
        assert all(torch.equal(start[k], after_one[k]) for k in start if k.startswith("backbone."))
        assert any(not torch.equal(start[k], after_one[k]) for k in start if k.startswith("head."))
        assert "backbone.bn1.running_mean" in start  # BatchNorm statistics are among the frozen tensors

        images, targets, _ = next(iter(t.train_loader))  # a backward while frozen: no gradient reaches them
        loss, _ = t.criterion(t.model(images), targets, t.model.priors(tuple(images.shape[2:])))
        loss.backward()
        named = dict(t.model.named_parameters())
        assert all(named[n].grad is None for n in t.freeze.params)
        assert all(p.grad is not None for n, p in named.items() if n.startswith("head."))
        t.optimizer.zero_grad(set_to_none=True)

        t.fit()  # epoch 2: thawed
    end = t.model.state_dict()
    assert not torch.equal(after_one["backbone.conv1.weight"], end["backbone.conv1.weight"])
    assert not torch.equal(after_one["backbone.bn1.running_mean"], end["backbone.bn1.running_mean"])
    frozen_line = next(m for m in log if "train.freeze: frozen" in m)
    assert "until epoch 1 (thawing at the start of epoch 2)" in frozen_line
    assert "'backbone': backbone.conv1, backbone.bn1, backbone.layer1" in frozen_line
    assert f"BatchNorm statistics of {len(t.freeze.norms)} layers frozen too" in frozen_line
    assert any("epoch 2: train.freeze thawed" in m for m in log)


def test_graph_net_backbone_is_the_rows_before_the_neck_and_patterns_select_by_name(data_root):
    model = build_model(cfg_for(data_root, **{"model.name": "v9-t"}))
    plan = freeze_plan(model, ["backbone"])
    rows = {int(n.split(".")[1]) for n in plan.params}
    assert rows == set(range(9))  # rows 0-8; row 9 (SPPELAN) opens the neck
    assert len(plan.params) == sum(1 for n, _ in model.named_parameters() if int(n.split(".")[1]) < 9)
    assert plan.norms and all(int(n.split(".")[1]) < 9 for n in plan.norms)
    chosen = freeze_plan(model, ["model.9", "*.anchor_conv.*"])  # a row prefix and an fnmatch pattern
    expected = [n for n, _ in model.named_parameters() if n.startswith("model.9.") or ".anchor_conv." in n]
    assert chosen.params == expected and any(".anchor_conv." in n and "model.30." in n for n in expected)
    with pytest.raises(ConfigError, match="train.freeze entry 'neck' matches no parameter"):
        freeze_plan(model, ["neck"])


def test_early_stopping_decisions(tmp_path):
    sel = Selection(tmp_path, "mAP", patience=2, min_delta=0.01)
    verdicts = [sel.update(e, s) for e, s in enumerate([0.10, 0.105, float("nan"), 0.2, -1.0, 0.205, 0.3], start=1)]
    assert [(v.improved, bool(v.stop_reason)) for v in verdicts] == [
        (True, False), (False, False), (False, True), (True, False), (False, False), (False, True), (True, False)]
    assert [(v.best_before, v.best_epoch_before) for v in verdicts[:2]] == [(-1.0, 0), (0.10, 1)]
    assert (sel.best, sel.best_epoch) == (0.3, 7)
    never = Selection(tmp_path, "mAP", patience=0)
    assert not any(never.update(e, 0.1).stop_reason for e in range(1, 100))  # 0 = never
    assert not Selection(tmp_path, "mAP", patience=1).update(5, 0.0, last=True).stop_reason  # not at the end


def test_top_k_keeps_the_best_files_with_epoch_and_metric_in_the_name(tmp_path):
    top = TopKCheckpoints(tmp_path, k=2, metric="mAP50")
    state = {"w": torch.zeros(1)}
    names = [top.add(state, e, s) for e, s in enumerate([0.3, 0.5, 0.4, float("nan"), 0.4, 0.45], start=1)]
    assert names == ["epoch001_mAP50_0.3000.pth", "epoch002_mAP50_0.5000.pth", "epoch003_mAP50_0.4000.pth",
                     None, None, "epoch006_mAP50_0.4500.pth"]  # NaN never enters; a tie keeps the older file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch002_mAP50_0.5000.pth",
                                                          "epoch006_mAP50_0.4500.pth"]
    again = TopKCheckpoints(tmp_path, k=2, metric="mAP50")
    (tmp_path / "epoch006_mAP50_0.4500.pth").unlink()
    again.load_state_dict(top.state_dict())
    assert [e["epoch"] for e in again.entries] == [2]  # a vanished file leaves the ranking


def test_early_stopping_ends_the_run_says_why_and_a_resume_respects_it(data_root, tmp_path):
    scores = iter([0.30, 0.50, 0.40, float("nan"), 0.45])
    extra = {"train.epochs": 8, "train.patience": 3, "train.save_top_k": 2}
    t = Trainer(cfg_for(data_root, **extra), CPU, tmp_path)
    t.validate = lambda: {"mAP": next(scores)}
    with Messages() as log:
        t.fit()
    assert t.epoch == 5
    reason = ("mAP has not improved by more than min_delta=0 for 3 epochs (train.patience=3); best 0.5000 at "
              "epoch 2")
    assert any(f"early stopping after epoch 5: {reason}" in m for m in log)
    nan_line = "mAP nan: best 0.5000 at epoch 2; early stopping: 2 of 3 epochs without improvement"
    assert any(nan_line in m for m in log)
    assert sorted(p.name for p in tmp_path.glob("epoch*.pth")) == ["epoch002_mAP_0.5000.pth",
                                                                  "epoch005_mAP_0.4500.pth"]
    best, last = load_checkpoint(tmp_path / "best.pth"), load_checkpoint(tmp_path / "last.pth")
    assert best["epoch"] == 2 and last["epoch"] == 5 and last["stop_reason"] == reason
    assert [e["epoch"] for e in last["top_k"]] == [2, 5]

    again = Trainer(cfg_for(data_root, **extra), CPU, tmp_path, resume=str(tmp_path / "last.pth"))
    with Messages() as log:
        again.fit()
    assert again.epoch == 5 and any("this run stopped early after epoch 5" in m for m in log)
    more = Trainer(cfg_for(data_root, **{**extra, "train.patience": 0, "train.epochs": 6}), CPU, tmp_path,
                   resume=str(tmp_path / "last.pth"))
    more.validate = lambda: {"mAP": 0.6}
    more.fit()
    assert more.epoch == 6 and load_checkpoint(tmp_path / "best.pth")["epoch"] == 6


def test_transfer_to_another_class_count_for_the_yolo_family(data_root, tmp_path):
    Trainer(cfg_for(data_root, **{"train.epochs": 1}), CPU, tmp_path / "src").fit()
    src = load_checkpoint(tmp_path / "src" / "last.pth")["ema"]["model"]
    with Messages() as log:
        t = Trainer(cfg_for(data_root, **{"train.init_weights": str(tmp_path / "src" / "last.pth"),
                                          "data.class_names": ["RBC", "WBC", "Platelets", "a", "b"]}),
                    CPU, tmp_path / "dst")
    own = t.model.state_dict()
    for k in ("backbone.conv1.weight", "neck.spp.reduce.conv.weight", "head.stems.0.conv.weight"):
        assert torch.equal(own[k], src[k]), k  # the whole model transfers, not just the backbone
    assert torch.equal(t.ema.ema.state_dict()["backbone.conv1.weight"], src["backbone.conv1.weight"])
    warnings = [m for m in log if "load_matching: loaded" in m]
    assert len(warnings) == 1  # one warning lists every tensor that did not fit: the class outputs
    listed = [item.split(":")[0] for item in warnings[0].split("skipped 6: ")[1].split("; ")]
    assert sorted(listed) == sorted(f"head.preds.{i}.{w}" for i in range(3) for w in ("weight", "bias"))


def test_gradient_clipping_bounds_the_update(data_root, tmp_path):
    def update_norm(clip: float) -> float:
        cfg = cfg_for(data_root, **{"optim.name": "sgd", "optim.lr": 0.01, "optim.base_batch": 4,
                                    "optim.momentum": 0.0, "optim.weight_decay": 0.0, "optim.grad_clip": clip,
                                    "sched.warmup_epochs": 0.0, "train.ema": False})
        t = Trainer(cfg, CPU, tmp_path / str(clip))
        before = [p.detach().clone() for p in t.model.parameters()]
        images, targets, _ = next(iter(t.train_loader))
        t.model.train()
        t.train_step(images, targets)
        deltas = [(p.detach() - b).flatten() for p, b in zip(t.model.parameters(), before)]
        return float(torch.cat(deltas).norm())
    assert update_norm(1.0) == pytest.approx(0.01 * 1.0, rel=1e-2)  # lr x the clipped gradient norm
    assert update_norm(1e6) > 0.02  # unclipped: the raw gradient is larger


def test_seed_fixes_the_run_and_deterministic_switches_torch(data_root, tmp_path):
    def first_step(seed: int, deterministic: bool = False):
        t = Trainer(cfg_for(data_root, **{"train.seed": seed, "train.deterministic": deterministic}), CPU,
                    tmp_path / f"{seed}{deterministic}")
        init = [p.detach().clone() for p in t.model.parameters()]
        images, targets, _ = next(iter(t.train_loader))
        t.model.train()
        return init, t.train_step(images, targets), images
    try:
        a, b = first_step(0), first_step(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        c = first_step(1)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        seed_everything(0, deterministic=False)
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0])) and a[1] == b[1] and torch.equal(a[2], b[2])
    assert not all(torch.equal(x, y) for x, y in zip(a[0], c[0]))
    assert not torch.equal(a[2], c[2])  # the augmentation stream follows the seed too
    assert all(math.isfinite(v) for v in chain(a[1].values(), c[1].values()))
