"""The validation inside training scores what best.pth / last.pth will be used for: the EMA weights
the checkpoint stores. On a run whose mAP is well inside (0, 1), ``--task val`` of last.pth gives the
same numbers and the same predictions.json, image by image; the raw weights would not."""
from __future__ import annotations

import json

import pytest
import torch

from configs.base_config import BaseConfig
from core.evaluation.evaluator import Evaluator
from core.loaders import build_eval_loader
from core.tasks import config_from_data
from core.weights import load_weights
from main import main
from tiny_data import assert_same_predictions, by_image
from utils.checkpoint import load_checkpoint
from utils.dist import DistInfo

KEYS = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large", "AR1", "AR10", "AR100")
CPU = DistInfo.single()


def test_in_training_val_equals_task_val_of_the_saved_ema_weights(easy_run, tmp_path):
    _, run = easy_run
    trained = json.loads((run / "val" / "metrics.json").read_text())
    assert 0.05 < trained["mAP"] < 0.95 and trained["num_images"] == 5  # a score worth comparing
    assert main(["--task", "val", "--ckpt", str(run / "last.pth"), "--out", str(tmp_path / "val")]) == 0
    again = json.loads((tmp_path / "val" / "metrics.json").read_text())
    for k in KEYS:
        assert again[k] == trained[k], k
    preds = [json.loads((d / "predictions.json").read_text()) for d in (run / "val", tmp_path / "val")]
    assert len(by_image(preds[0])) == 5
    assert_same_predictions(*preds)


def test_the_raw_weights_score_differently_so_the_parity_above_can_fail(easy_run, tmp_path):
    """The EASY recipe's EMA (decay 0.6) differs from the weights: scoring those instead of the EMA
    changes predictions.json, which the parity test would catch."""
    _, run = easy_run
    ckpt = load_checkpoint(run / "last.pth")
    differ = [k for k, v in ckpt["model"].items() if v.is_floating_point() and not torch.equal(v, ckpt["ema"]["model"][k])]
    assert len(differ) > 10
    cfg: BaseConfig = config_from_data(ckpt["config"], str(run / "last.pth"))
    cfg.data.cache_dir = str(tmp_path / "cache")
    raw = load_weights(cfg, str(run / "last.pth"), "cpu", prefer_ema=False)
    loader = build_eval_loader(cfg, CPU, "val")
    metrics = Evaluator(cfg, loader.dataset.records, CPU).run(raw, loader, tmp_path)
    trained = json.loads((run / "val" / "metrics.json").read_text())
    with pytest.raises(AssertionError):
        assert_same_predictions(json.loads((tmp_path / "predictions.json").read_text()),
                                json.loads((run / "val" / "predictions.json").read_text()))
    assert metrics["mAP"] != pytest.approx(trained["mAP"], abs=1e-9) or metrics["AR100"] != trained["AR100"]
