"""Faults met in process (USERS.md 4b): a full disk, bad checkpoints, a finished run extended,
non-finite losses, gradients and weights."""
import errno
import os

import pytest
import torch
from loguru import logger
from tiny_data import make_tiny_voc, tiny_overrides

from configs import load_config
from core.train import NonFiniteWeightsError, Trainer
from core.train.selection import Verdict
from utils.checkpoint import CheckpointError, load_checkpoint
from utils.dist import DistInfo

CPU = DistInfo.single()
FAST = {"train.channels_last": False, "eval.plots": False, "eval.dashboard": False, "train.epochs": 2}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory.mktemp("tiny_voc_faults"), n_train=12, n_val=2)  # 3 steps/epoch


def cfg_for(root, **extra):
    return load_config("bccd_yolo_r18", tiny_overrides(root, **{**FAST, **extra}))


# -- disk and files ------------------------------------------------------------------------
def test_disk_full_names_the_path_and_keeps_the_old_checkpoint(data_root, tmp_path, monkeypatch):
    t = Trainer(cfg_for(data_root, **{"train.epochs": 2}), CPU, tmp_path)
    t.fit(stop_after_epoch=1)
    before = {name: (tmp_path / name).read_bytes() for name in ("best.pth", "last.pth")}

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", full_disk)
    full = rf"could not write {tmp_path}/(best|last).pth: No space left on device"
    with pytest.raises(CheckpointError, match=full):
        t.fit()
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert not list(tmp_path.glob("*.tmp-*"))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pth")["epoch"] == 1


def test_truncated_or_foreign_checkpoints_name_the_file_and_the_problem(data_root, tmp_path):
    t = Trainer(cfg_for(data_root, **{"train.epochs": 1}), CPU, tmp_path / "run")
    t.fit()
    last = tmp_path / "run" / "last.pth"
    cut = tmp_path / "run" / "cut.pth"
    cut.write_bytes(last.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=rf"{cut}: truncated or corrupt checkpoint file.*other "
                                              rf"checkpoints of this run: .*best.pth"):
        Trainer(cfg_for(data_root), CPU, tmp_path / "run", resume=str(cut))
    foreign = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match=rf"{foreign}: missing key 'model'"):
        Trainer(cfg_for(data_root), CPU, tmp_path / "x", resume=str(foreign))
    with pytest.raises(CheckpointError, match=r"cannot resume with another model or class list \(model.name: "
                                              r"'yolo' -> 'v9-t'; .*\).*train.init_weights"):
        Trainer(cfg_for(data_root, **{"model.name": "v9-t"}), CPU, tmp_path / "y", resume=str(last))


def test_resume_extends_a_finished_run_and_lists_the_change(data_root, tmp_path):
    Trainer(cfg_for(data_root, **{"train.epochs": 1}), CPU, tmp_path).fit()
    messages = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        t = Trainer(cfg_for(data_root, **{"train.epochs": 2}), CPU, tmp_path,
                    resume=str(tmp_path / "last.pth"))
        t.fit()
    finally:
        logger.remove(sink)
    assert t.epoch == 2 and load_checkpoint(tmp_path / "last.pth")["epoch"] == 2
    assert any("train.epochs: 1 -> 2" in m for m in messages)


# -- non-finite values ---------------------------------------------------------------------
def test_skipped_step_restores_batchnorm_statistics(data_root, tmp_path):
    t = Trainer(cfg_for(data_root), CPU, tmp_path)
    images, targets, _ = next(iter(t.train_loader))
    t.model.train()
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    real = t.criterion

    def nan_loss(raw, tg, pr, **kw):
        loss, parts = real(raw, tg, pr, **kw)
        return loss * float("nan"), parts
    t.criterion = nan_loss
    assert t.train_step(images, targets) == {} and t.bad_steps == 1
    after = t.model.state_dict()
    for k, v in before.items():  # weights and running_mean / running_var / num_batches_tracked alike
        assert torch.equal(v, after[k]), k
    t.criterion = real
    assert t.train_step(images, targets) and t.bad_steps == 0
    key = "backbone.bn1.running_mean"
    assert not torch.equal(before[key], t.model.state_dict()[key])


def test_non_finite_gradient_is_skipped_and_weights_never_saved_non_finite(data_root, tmp_path):
    t = Trainer(cfg_for(data_root, **{"train.epochs": 2}), CPU, tmp_path)
    t.fit(stop_after_epoch=1)
    saved = (tmp_path / "last.pth").read_bytes()
    images, targets, _ = next(iter(t.train_loader))
    real = t.criterion
    w = t.model.head.parameters().__next__()

    def inf_gradient(raw, tg, pr, **kw):  # finite value, infinite gradient: d sqrt(|x|) / dx at x = 0
        loss, parts = real(raw, tg, pr, **kw)
        return loss + (w.flatten()[0] - w.flatten()[0].detach()).abs().sqrt(), parts
    t.criterion = inf_gradient
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.model.train()
    assert t.train_step(images, targets, flush=True) == {} and t.bad_steps == 1
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())
    t.criterion = real
    with torch.no_grad():
        w.fill_(float("nan"))  # weights gone bad some other way: they must never be saved
    with pytest.raises(NonFiniteWeightsError, match="became non-finite.*last.pth and best.pth keep"):
        t.save(Verdict(score=0.9, best_before=0.1, best_epoch_before=1, improved=True, stop_reason=""))
    assert (tmp_path / "last.pth").read_bytes() == saved
    assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path / "best.pth")["model"].values()
               if v.is_floating_point())
