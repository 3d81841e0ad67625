"""Training end to end on a tiny dataset; resume gives the same weights as an uninterrupted run."""
from pathlib import Path

import pytest
import torch
from tiny_data import make_tiny_voc, tiny_overrides

from configs import load_config
from core.train import Trainer
from utils.checkpoint import load_checkpoint
from utils.dist import DistInfo

CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory.mktemp("tiny_voc"))


def cfg_for(root, **extra):
    return load_config("bccd_yolo_r18", tiny_overrides(root, **extra))


def test_resume_equals_uninterrupted(data_root, tmp_path):
    straight = Trainer(cfg_for(data_root), CPU, tmp_path / "a")
    straight.fit()
    first = Trainer(cfg_for(data_root), CPU, tmp_path / "b")
    first.fit(stop_after_epoch=1)
    assert first.epoch == 1 and (tmp_path / "b" / "last.pth").is_file()
    resumed = Trainer(cfg_for(data_root), CPU, tmp_path / "b", resume=str(tmp_path / "b" / "last.pth"))
    assert resumed.epoch == 1 and resumed.step == first.step
    resumed.fit()
    a = load_checkpoint(tmp_path / "a" / "last.pth")
    b = load_checkpoint(tmp_path / "b" / "last.pth")
    assert a["step"] == b["step"] == 2 * straight.iters_per_epoch
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]["model"]:
        assert torch.equal(a["ema"]["model"][k], b["ema"]["model"][k]), k
    assert a["ema"]["updates"] == b["ema"]["updates"]
    assert a["scheduler"] == b["scheduler"]
    assert a["metrics"] == b["metrics"]


def test_checkpoint_holds_the_full_training_state(data_root, tmp_path):
    t = Trainer(cfg_for(data_root, **{"train.epochs": 1}), CPU, tmp_path)
    metrics = t.fit()
    ck = load_checkpoint(tmp_path / "last.pth")
    for key in ("model", "ema", "optimizer", "scheduler", "scaler", "epoch", "step", "best_score",
                "rng", "config", "class_names", "metrics"):
        assert key in ck, key
    assert ck["epoch"] == 1 and ck["class_names"] == ["RBC", "WBC", "Platelets"]
    assert ck["config"]["data"]["img_size"] == 64
    assert (tmp_path / "best.pth").is_file()  # the first finite mAP is the best so far
    assert 0.0 <= metrics["mAP"] <= 1.0
    for f in ("metrics.json", "predictions.json", "ground_truth.json"):
        assert (tmp_path / "val" / f).stat().st_size > 0
    assert list((tmp_path / "tb").glob("events.*"))


def test_resume_of_finished_run_says_so(data_root, tmp_path, capsys):
    t = Trainer(cfg_for(data_root, **{"train.epochs": 1}), CPU, tmp_path)
    t.fit()
    again = Trainer(cfg_for(data_root, **{"train.epochs": 1}), CPU, tmp_path, resume=str(tmp_path / "last.pth"))
    messages = []
    from loguru import logger
    sink = logger.add(messages.append, level="WARNING")
    try:
        again.fit()
    finally:
        logger.remove(sink)
    assert again.step == t.step  # nothing trained
    assert any("already trained 1 of 1 epochs" in m for m in messages)


def test_non_finite_loss_steps_are_skipped_then_stop(data_root, tmp_path, monkeypatch):
    from core.train import NonFiniteLossError
    t = Trainer(cfg_for(data_root, **{"train.max_bad_steps": 2}), CPU, tmp_path)
    before = {k: v.clone() for k, v in t.model.named_parameters()}
    real = t.criterion

    def nan_loss(raw, targets, priors):
        loss, parts = real(raw, targets, priors)
        return loss * float("nan"), parts
    t.criterion = nan_loss
    with pytest.raises(NonFiniteLossError, match="step 2"):
        t.fit()
    for k, v in t.model.named_parameters():
        assert torch.equal(v, before[k]), k  # the skipped steps never reached the weights
    assert not (Path(tmp_path) / "last.pth").exists()
