"""The benchmarks' switches and published protocols, checked in-process (fast): ``--tiny`` /
BENCH_TINY=1 selects the small run, and without it every script keeps the protocol its published
figures were measured with. The tiny runs themselves: tests/test_benchmarks.py."""
from __future__ import annotations

import os
from pathlib import Path

from benchmarks.common import TINY_ENV, pick, tiny_mode

REPO = Path(__file__).resolve().parents[1]


def test_tiny_mode_takes_the_flag_or_the_environment(monkeypatch):
    monkeypatch.delenv(TINY_ENV, raising=False)
    argv = ["v9-t", "a.b=1"]
    assert not tiny_mode(argv) and argv == ["v9-t", "a.b=1"] and TINY_ENV not in os.environ
    argv = ["v9-t", "--tiny", "a.b=1"]
    assert tiny_mode(argv) and argv == ["v9-t", "a.b=1"]  # the flag never reaches argparse or the overrides
    assert os.environ[TINY_ENV] == "1"  # so child processes (scale.py's stages) run tiny too
    assert tiny_mode([]) and pick(True, 640, 64) == 64 and pick(False, 640, 64) == 640
    monkeypatch.setenv(TINY_ENV, "0")
    assert not tiny_mode([])


def test_without_the_switch_the_full_protocols_are_unchanged(monkeypatch):
    """The published figures were measured with these settings (copied from the scripts as they were)."""
    monkeypatch.delenv(TINY_ENV, raising=False)
    from benchmarks import bccd, dataloader, eval_speed, export, memory, model_info, rect_eval, scale, train_speed
    assert train_speed.PROTOCOL == ["data.img_size=416", "train.batch_size=16", "train.epochs=1"]
    assert (train_speed.WARMUP, train_speed.STEPS, train_speed.ROUNDS) == (2, 6, 2)
    assert bccd.PROTOCOL == ["data.img_size=416", "train.epochs=40", "train.batch_size=16", "model.pretrained=''",
                             "data.train_sets=['train']", "data.val_sets=['val']", "train.eval_interval=10"]
    assert dataloader.Protocol() == dataloader.Protocol(size=640, batch=16, rounds=3, fraction=1.0)
    assert memory.EPOCHS == 20 and memory.IMAGES == (16, 4) and "train.epochs=20" in memory.PROTOCOL
    assert model_info.IMG_SIZE == 640 and len(model_info.SPEC) == 12  # v9-t/s/m/c/e, rd-9c, v7, gelan-t/s/m/c/e
    assert eval_speed.BACKENDS == ("faster_coco_eval", "pycocotools")
    assert export.FORMATS == ["onnx", "tflite_fp32", "tflite_fp16", "tflite_int8"]
    assert rect_eval.KEYS[0] == "mAP"
    a = scale.parse_args([], tiny=False)
    assert (a.train_images, a.val_images, a.dets_per_image, a.seconds, a.workers) == (118_287, 5_000, 300, 180.0, 2)
    assert Path(a.dir) == REPO / "runs" / "scale" and not a.tiny  # tiny runs never touch the full set's folder
    assert Path(scale.parse_args([], tiny=True).dir) == REPO / "runs" / "scale_tiny"


def test_assigner_memory_protocol_is_the_issues(monkeypatch):
    monkeypatch.delenv(TINY_ENV, raising=False)
    from benchmarks import assigner_memory
    assert assigner_memory.FULL == {"batch": 16, "img_size": 640, "gts": [20, 100, 250], "repeats": 2}
    assert assigner_memory.STRIDES == (8, 16, 32) and assigner_memory.NUM_CLASSES == 80  # 25,200 / 8,400 priors
