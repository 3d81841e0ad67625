"""Scalars for TensorBoard / W&B, memory figures, the end-of-epoch line, and the W&B writer."""
from __future__ import annotations

import sys
import types

import pytest
import torch

import utils.logging as ulog
from configs.base_config import BaseConfig, ConfigError
from utils.logging import (
    TBWriter,
    WandbWriter,
    check_wandb,
    epoch_summary,
    flatten_scalars,
    memory_scalars,
)


def test_flatten_scalars_keeps_numbers_names_classes_and_skips_not_measurable():
    metrics = {"mAP": 0.5, "mAP_small": -1.0, "backend": "pycocotools", "num_images": 3, "flag": True,
               "per_class": [{"name": "rbc", "category_id": 1, "AP": 0.7, "AP_large": -1.0}],
               "operative": {"precision": 0.8, "fp_kinds": {"background": 4}, "sweep": [{"conf": 0.1}],
                             "per_class": [{"name": "wbc", "f1": 0.25}]}}
    assert flatten_scalars(metrics, "val") == {
        "val/mAP": 0.5, "val/num_images": 3.0, "val/AP/rbc": 0.7, "val/operative/precision": 0.8,
        "val/operative/fp_kinds/background": 4.0, "val/operative/f1/wbc": 0.25}


def test_memory_scalars_cpu():
    mem = memory_scalars(torch.device("cpu"))
    assert set(mem) <= {"memory/rss_mb"}
    if sys.platform.startswith("linux"):
        assert 10 < mem["memory/rss_mb"] < 1e6  # this process, in MB


def test_epoch_summary_lines():
    loss = {"total": 1.23456, "box": 0.5}
    assert epoch_summary(3, 10, 12.4, loss, 0.41, 0.4, 2, True, ["best.pth", "last.pth"]) == (
        "epoch 3/10 done in 12s | loss total 1.2346, box 0.5000 | mAP 0.4100 NEW BEST (+0.0100) | "
        "saved best.pth, last.pth")
    assert epoch_summary(4, 10, 9.6, loss, 0.38, 0.41, 3, False, ["last.pth"]).endswith(
        "| mAP 0.3800, best 0.4100 (epoch 3), -0.0300 | saved last.pth")
    line = epoch_summary(5, 10, 1, loss, None, 0.41, 3, False, ["last.pth"])
    assert "| not evaluated, best 0.4100 (epoch 3) |" in line
    first = epoch_summary(1, 10, 1, {}, 0.0, -1.0, None, True, ["best.pth", "last.pth"])
    assert "| mAP 0.0000 NEW BEST | " in first
    assert "loss no finite step" in epoch_summary(1, 10, 1, {}, None, -1.0, None, False, [])


class FakeRun:
    def __init__(self, **kwargs):
        self.init_kwargs, self.logged, self.finished = kwargs, [], False

    def log(self, scalars, step):
        self.logged.append((step, dict(scalars)))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    mod = types.ModuleType("wandb")
    mod.runs = []

    def init(**kwargs):
        mod.runs.append(FakeRun(**kwargs))
        return mod.runs[-1]

    mod.init, mod.Settings = init, lambda **kw: kw
    monkeypatch.setitem(sys.modules, "wandb", mod)
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    return mod


def test_wandb_writer_mirrors_tb_scalars(tmp_path, fake_wandb):
    cfg = BaseConfig()
    cfg.train.wandb = True
    tb = TBWriter(tmp_path / "tb")
    tb.attach_wandb(WandbWriter(tmp_path, cfg))
    run = fake_wandb.runs[0]
    assert run.init_kwargs["mode"] == "offline" and run.init_kwargs["dir"] == str(tmp_path)
    assert run.init_kwargs["config"]["train"]["wandb"] is True
    assert run.init_kwargs["settings"] == {"console": "off"}
    # nothing is written outside the run dir
    assert ulog.os.environ["WANDB_CACHE_DIR"] == str(tmp_path / "wandb" / "cache")
    tb.add_scalars({"train/loss": torch.tensor(2.0)}, 50)
    tb.add_scalars({"val/mAP": 0.3}, 2)  # an epoch index after iteration 50: W&B needs a non-decreasing step
    assert run.logged == [(50, {"train/loss": 2.0}), (50, {"val/mAP": 0.3})]
    tb.close()
    assert run.finished


def test_wandb_missing_package_and_bad_mode_are_clear_errors(monkeypatch):
    cfg = BaseConfig()
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now fails
    with pytest.raises(ConfigError, match="needs the Weights & Biases package 'wandb'.*pip install wandb"):
        check_wandb(cfg)
    cfg.train.wandb_mode = "cloud"
    with pytest.raises(ConfigError, match=r"train.wandb_mode='cloud' is not one of \['offline', 'online'\]"):
        check_wandb(cfg)


def test_wandb_offline_real_package(tmp_path, monkeypatch):
    """The real package, offline: no account, no network; files only under the run dir."""
    pytest.importorskip("wandb")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = BaseConfig()
    w = WandbWriter(tmp_path, cfg)
    w.log({"val/mAP": 0.25}, 1)
    w.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(p.suffix == ".wandb" and p.stat().st_size > 0 for p in runs[0].iterdir())
