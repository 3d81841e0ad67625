"""The YOLOv9 family on the shared trainer: one config line switches family; training, resume,
transfer to another class count, debug plots of task-aligned assignments."""
import json
from pathlib import Path

import pytest
import torch
from loguru import logger
from test_train_resume import assert_same_values
from tiny_data import make_tiny_voc, tiny_overrides

from configs import ConfigError, load_config
from core.checks import validate
from core.train import Trainer
from core.train.debugger import draw_assignments_for_config
from main import main
from models import assign_method, build_model
from models.coders import DistanceCoder, V7Coder
from utils.checkpoint import load_checkpoint
from utils.dist import DistInfo

CPU = DistInfo.single()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory.mktemp("tiny_voc_v9"))


def cfg_for(root, config="bccd_yolo_r18", **extra):
    return load_config(config, tiny_overrides(root, yolo=config == "bccd_yolo_r18", **extra))


def test_one_line_switches_family(data_root):
    cfg = cfg_for(data_root, **{"model.name": "v9-t"})
    assert assign_method(cfg) == "task_aligned"
    model = build_model(cfg)
    assert model.family == "dfl" and isinstance(model.coder, DistanceCoder)
    cfg = cfg_for(data_root, **{"model.name": "v7"})
    assert assign_method(cfg) == "ratio_grid" and isinstance(build_model(cfg).coder, V7Coder)
    assert assign_method(cfg_for(data_root)) == "nearby_grid"


def test_wrong_assigner_for_the_head_is_a_config_error(data_root):
    with pytest.raises(ConfigError, match=r"assign.method='nearby_grid' does not train the dfl head of "
                                          r"model.name='v9-t'; methods that do: \['atss', 'simota', 'task_aligned'\]"):
        validate(cfg_for(data_root, **{"model.name": "v9-t", "assign.method": "nearby_grid"}))
    with pytest.raises(ConfigError, match="'task_aligned' does not train the anchor head of model.name='yolo'"):
        validate(cfg_for(data_root, **{"assign.method": "task_aligned"}))


@pytest.fixture
def one_thread():
    """One torch thread, as main() sets for these runs (train.num_threads=1): the validation in this process
    and --task val then compute the same bits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_v9t_trains_resumes_and_evaluates(data_root, tmp_path, one_thread):
    # ema_tau 2: the EMA weights differ clearly from the raw ones after 4 updates (with the default 2000 the
    # early EMA is the raw model to 0.2 %), so an evaluation of the wrong ones shows.
    # channels_last off: --task val runs the contiguous layout, and the same kernels give the same bits.
    extra = {"train.epochs": 2, "eval.plots": False, "eval.dashboard": False, "train.ema_tau": 2.0,
             "train.channels_last": False}
    straight = Trainer(cfg_for(data_root, "bccd_v9t", **extra), CPU, tmp_path / "a")
    metrics = straight.fit()
    first = Trainer(cfg_for(data_root, "bccd_v9t", **extra), CPU, tmp_path / "b")
    first.fit(stop_after_epoch=1)
    resumed = Trainer(cfg_for(data_root, "bccd_v9t", **extra), CPU, tmp_path / "b",
                      resume=str(tmp_path / "b" / "last.pth"))
    resumed.fit()
    a, b = load_checkpoint(tmp_path / "a" / "last.pth"), load_checkpoint(tmp_path / "b" / "last.pth")
    assert any(k.startswith("model.30.") for k in a["model"])  # the auxiliary head is trained and saved
    assert (a["step"], a["ema"]["updates"]) == (4, 4)  # 2 epochs x 8 images / batch 4
    for key in ("model", "ema", "optimizer", "scheduler", "best_score", "metrics"):
        assert_same_values(a[key], b[key], key)  # the resumed run is the uninterrupted one, value by value
    # It evaluates: the last validation scored the 5 val images with the final EMA weights; an independent
    # evaluation of last.pth (--task val, which loads the EMA weights) finds the same detections.
    assert metrics["num_images"] == 5
    assert a["metrics"] == {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    assert main(["--task", "val", "--ckpt", str(tmp_path / "a" / "last.pth"), "--out", str(tmp_path / "val"),
                 "eval.plots=False", "eval.dashboard=False"]) == 0
    again = json.loads((tmp_path / "val" / "metrics.json").read_text())
    assert {k: again[k] for k in a["metrics"]} == a["metrics"]
    found = json.loads((tmp_path / "a" / "val" / "predictions.json").read_text())
    assert len(found) > 0 and found == json.loads((tmp_path / "val" / "predictions.json").read_text())


def test_loss_parts_include_the_aux_branch(data_root, tmp_path):
    t = Trainer(cfg_for(data_root, "bccd_v9t", **{"train.epochs": 1}), CPU, tmp_path)
    images, targets, _ = next(iter(t.train_loader))
    parts = t.train_step(images, targets)
    assert {"box", "cls", "dfl", "aux", "total"} <= set(parts)
    assert all(torch.isfinite(v) for v in parts.values())


def test_transfer_to_another_class_count_lists_the_class_layers(data_root, tmp_path):
    Trainer(cfg_for(data_root, "bccd_v9t", **{"train.epochs": 1}), CPU, tmp_path / "src").fit()
    messages = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        cfg = cfg_for(data_root, "bccd_v9t", **{"model.pretrained": str(tmp_path / "src" / "last.pth"),
                                                "data.class_names": ["a", "b", "c", "d", "e"]})
        model = build_model(cfg)
    finally:
        logger.remove(sink)
    src = load_checkpoint(tmp_path / "src" / "last.pth")["ema"]["model"]
    own = model.state_dict()
    assert torch.equal(own["model.0.conv.weight"], src["model.0.conv.weight"])
    warn = [m for m in messages if "skipped" in m]
    assert len(warn) == 1 and "class_conv.2.weight" in warn[0]


def test_debug_draws_task_aligned_assignments(data_root, tmp_path):
    cfg = cfg_for(data_root, "bccd_v9t", **{"debug.num_batches": 1, "debug.batch_size": 2})
    paths = draw_assignments_for_config(cfg, tmp_path)
    assert len(paths) == 2 * 3 and all(Path(p).stat().st_size > 0 for p in paths)
