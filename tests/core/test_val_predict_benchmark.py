"""Evaluation reports during training, --task val / benchmark / predict as a user runs them."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tiny_data import make_tiny_voc, tiny_overrides

from core.evaluation.frames import count_frames
from core.evaluation.predict_outputs import coco_predictions, write_yolo_txt
from main import main

PLOTS = ["F1_curve.png", "PR_curve.png", "P_curve.png", "R_curve.png", "confusion_matrix.png"]


class FakeWandbRun:
    def __init__(self):
        self.logged: list[tuple[int, dict]] = []
        self.finished = False

    def log(self, scalars, step):
        self.logged.append((step, scalars))

    def finish(self):
        self.finished = True


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny data, 2 epochs validated each, W&B on (a stand-in module records what is logged)."""
    tmp = tmp_path_factory.mktemp("evalrep")
    root = make_tiny_voc(tmp / "data", n_train=4, n_val=3)
    fake = types.ModuleType("wandb")
    fake.runs = []
    fake.Settings = lambda **kw: kw
    fake.init = lambda **kw: fake.runs.append(FakeWandbRun()) or fake.runs[-1]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "wandb", fake)
        for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            mp.delenv(var, raising=False)
        ov = tiny_overrides(root, **{"train.epochs": 2, "train.wandb": True, "train.log_interval": 1})
        assert main(["--config", "bccd_yolo_r18", "--task", "train", "--out", str(tmp / "run")] + ov) == 0
    return root, tmp / "run", fake.runs


def test_training_writes_reports_each_validation(trained):
    _, run, wandb_runs = trained
    for epoch in ("epoch001", "epoch002"):
        for name in PLOTS:
            assert (run / "val" / "plots" / epoch / name).stat().st_size > 1000, (epoch, name)
    history = json.loads((run / "val" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and {"mAP", "f1", "precision"} <= set(history[0])
    board = (run / "val" / "dashboard.txt").read_text()
    assert "epoch 2/2" in board and "trends, epochs 1..2" in board and "threshold sweep" in board
    log = (run / "train.log").read_text()
    assert "epoch 1/2 done in" in log and "NEW BEST | saved best.pth, last.pth" in log
    assert "epoch 2/2 done in" in log and "mAP" in log.split("epoch 2/2 done in")[1].splitlines()[0]
    metrics = json.loads((run / "val" / "metrics.json").read_text())
    assert metrics["operative"]["num_gt"] == sum(c["num_gt"] for c in metrics["per_class"])
    # W&B got the per-iteration losses and the validation scalars, then was closed with the run.
    (wb,) = wandb_runs
    tags = {t for _, scalars in wb.logged for t in scalars}
    assert {"train/total", "train/lr", "val/mAP", "val/operative/f1", "epoch/total"} <= tags and wb.finished
    steps = [s for s, _ in wb.logged]
    assert steps == sorted(steps)  # never decreasing, as W&B requires


def test_tensorboard_has_metrics_losses_lr_and_memory(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    _, run, _ = trained
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/total", "train/lr", "val/mAP", "val/AR100", "val/AP50/RBC", "val/operative/recall",
            "val/operative/fp_kinds/background", "epoch/total"} <= tags
    if sys.platform.startswith("linux"):
        assert [e.step for e in acc.Scalars("memory/rss_mb")] == [1, 2]


def test_val_from_checkpoint_alone_subset_and_outputs(trained, tmp_path):
    _, run, _ = trained
    out = tmp_path / "val"
    assert main(["--task", "val", "--ckpt", str(run / "last.pth"), "--out", str(out),
                 "eval.max_images=2"]) == 0
    assert "evaluated 2 of 3 images" in (out / "val.log").read_text()
    m = json.loads((out / "metrics.json").read_text())
    assert (m["num_images"], m["num_images_total"], m["operative"]["num_images"]) == (2, 3, 2)
    assert [c["name"] for c in m["per_class"]] == ["RBC", "WBC", "Platelets"]  # names from the checkpoint
    assert len(json.loads((out / "ground_truth.json").read_text())["images"]) == 2
    assert all((out / "plots" / p).stat().st_size > 1000 for p in PLOTS)
    board = (out / "dashboard.txt").read_text()
    assert "evaluated 2 of 3 images" in board and "checkpoint epoch 2 recorded mAP" in board
    quiet = tmp_path / "quiet"
    assert main(["--task", "val", "--ckpt", str(run / "last.pth"), "--out", str(quiet), "eval.plots=False",
                 "eval.save_json=False", "eval.dashboard=False"]) == 0
    assert sorted(p.name for p in quiet.iterdir()) == ["dashboard.txt", "val.log"]


def test_val_bad_eval_value_is_a_config_error(trained, tmp_path):
    _, run, _ = trained
    from loguru import logger
    messages = []
    sink = logger.add(lambda m: messages.append(str(m)), level="ERROR")
    try:
        assert main(["--task", "val", "--ckpt", str(run / "last.pth"), "--out", str(tmp_path / "v"),
                     "eval.conf_prod=1.5"]) == 2
    finally:
        logger.remove(sink)
    assert any("eval.conf_prod=1.5 must be in [0, 1]" in m for m in messages)
    assert not (tmp_path / "v").exists()  # refused before anything is written


BENCH = ["eval.bench_iters=6", "eval.bench_warmup=1", "eval.bench_batch=2"]


class ScriptedClock:
    """time.perf_counter for core/evaluation/benchmark.py: each call gives the next of ``values`` (s)."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def perf_counter(self) -> float:
        assert self.values, "the benchmark read the clock more often than scripted"
        return self.values.pop(0)


def test_benchmark_task_output_fields(trained, tmp_path, monkeypatch):
    import resource

    import core.evaluation.benchmark as benchmark
    from utils.logging import _rss_mb
    _, run, _ = trained
    ckpt = run / "last.pth"
    out = tmp_path / "bench"
    # bench_iters=6 latency calls (start and end read each), then the throughput span; latencies
    # 4, 1, 3, 2, 9, 5 ms and 2 batches of 2 (max(2, 6 // 10)) in 8 ms.
    starts = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    clock = ScriptedClock([t for t0, ms in zip(starts, [4, 1, 3, 2, 9, 5]) for t in (t0, t0 + ms / 1e3)]
                          + [10.0, 10.008])
    rss_before = _rss_mb()
    with monkeypatch.context() as m:
        m.setattr(benchmark, "time", clock)
        assert main(["--task", "benchmark", "--ckpt", str(ckpt), "--out", str(out)] + BENCH) == 0
    assert clock.values == []  # every scripted reading used
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
    res = json.loads((out / "benchmark.json").read_text())
    info, (cpu,) = res["model"], res["runs"]
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    n_params = sum(v.numel() for k, v in state["model"].items() if not k.endswith(buffers))
    assert info["params"] == n_params and info["gflops"] > 0 and info["img_size"] == 64
    assert info["checkpoint_mb"] == pytest.approx(ckpt.stat().st_size / 2**20)
    # Sorted 1, 2, 3, 4, 5, 9 ms: mean 24 / 6 = 4; numpy's linear percentiles at rank q/100 * 5: p50 at 2.5
    # -> 3.5, p95 at 4.75 -> 5 + 0.75 * 4 = 8, p99 at 4.95 -> 5 + 0.95 * 4 = 8.8; throughput 2 * 2 images
    # / 0.008 s = 500 img/s.
    assert cpu["latency_ms"] == pytest.approx({"mean": 4.0, "p50": 3.5, "p95": 8.0, "p99": 8.8, "min": 1.0})
    assert cpu["device"] == "cpu" and cpu["latency_iters"] == 6 and cpu["throughput_batch"] == 2
    assert cpu["throughput_img_s"] == pytest.approx(500.0)
    assert rss_before <= cpu["peak_memory_mb"] <= peak_after  # this process's peak, read during the run
    assert cpu["memory_kind"] == "process peak RSS"
    with_val = tmp_path / "val_bench"
    assert main(["--task", "val", "--ckpt", str(ckpt), "--out", str(with_val),
                 "eval.benchmark=True"] + BENCH) == 0
    assert json.loads((with_val / "benchmark.json").read_text())["model"]["params"] == n_params
    if not torch.cuda.is_available():
        assert main(["--task", "benchmark", "--ckpt", str(ckpt), "--out", str(tmp_path / "c"),
                     "eval.bench_device='cuda'"]) == 2


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(f)
    vw.release()


def test_predict_video_frames_txt_coco_and_names_file(trained, tmp_path):
    root, run, _ = trained
    img = cv2.imread(str(min((root / "JPEGImages").glob("*.jpg"))))
    src = tmp_path / "src"
    src.mkdir()
    write_video(src / "clip.mp4", [np.roll(img, 8 * i, axis=1) for i in range(5)])
    assert count_frames([src / "clip.mp4"], 2) == 3
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"0": "red", "1": "white", "2": "platelet"}))
    out = tmp_path / "pred"
    assert main(["--task", "predict", "--ckpt", str(run / "last.pth"), "--out", str(out),
                 f"predict.source={str(src)!r}", "predict.conf_thres=0.0", "predict.max_det=5",
                 "predict.video_stride=2", "predict.batch_size=2", "predict.save_txt=True",
                 f"predict.class_names_file={str(names)!r}"]) == 0
    recs = json.loads((out / "predictions.json").read_text())
    assert [(Path(r["file"]).name, r["frame"]) for r in recs] == [("clip.mp4", i) for i in (0, 2, 4)]
    assert all((r["width"], r["height"]) == (640, 480) and len(r["detections"]) == 5 for r in recs)
    assert {d["class_name"] for r in recs for d in r["detections"]} <= {"red", "white", "platelet"}
    coco = json.loads((out / "predictions_coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["red", "white", "platelet"]
    assert [im["frame"] for im in coco["images"]] == [0, 2, 4] and len(coco["annotations"]) == 15
    for i in (0, 2, 4):
        rows = [ln.split() for ln in (out / "labels" / f"clip_{i:06d}.txt").read_text().splitlines()]
        assert len(rows) == 5
        assert all(len(r) == 6 and all(0 <= float(v) <= 1 for v in r[1:]) for r in rows)
    cap = cv2.VideoCapture(str(out / "videos" / "clip.mp4"))
    n, ok = 0, True
    while ok:
        ok, frame = cap.read()
        n += ok
    cap.release()
    assert n == 3 and frame is None
    names.write_text(json.dumps(["only", "two"]))
    assert main(["--task", "predict", "--ckpt", str(run / "last.pth"), "--out", str(tmp_path / "bad"),
                 f"predict.source={str(src)!r}", f"predict.class_names_file={str(names)!r}"]) == 2
    assert "2 names but the model predicts 3 classes" in (tmp_path / "bad" / "predict.log").read_text()


def test_batched_detection_equals_one_by_one(trained):
    from configs.base_config import BaseConfig
    from core.evaluation.predictor import Predictor
    from core.weights import load_weights
    root, run, _ = trained
    cfg = BaseConfig.from_dict(torch.load(run / "last.pth", map_location="cpu", weights_only=True)["config"])
    cfg.predict.conf_thres = 0.0
    pred = Predictor(cfg, load_weights(cfg, str(run / "last.pth"), torch.device("cpu")))
    files = sorted((root / "JPEGImages").glob("*.jpg"))[:2]
    imgs = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]
    imgs[1] = imgs[1][:300, :500].copy()  # another size: letterboxed differently inside the batch
    batch = pred.detect_batch(imgs)
    for im, b in zip(imgs, batch):
        one = pred.detect(im)
        assert np.allclose(one["boxes"], b["boxes"], atol=1e-3) and np.array_equal(one["labels"], b["labels"])
        assert b["boxes"][:, 2].max() <= im.shape[1] and b["boxes"][:, 3].max() <= im.shape[0]


def test_yolo_txt_and_coco_export_values(tmp_path):
    det = {"boxes": np.array([[10.0, 20.0, 30.0, 60.0]]), "scores": np.array([0.87654]),
           "labels": np.array([2])}
    write_yolo_txt(tmp_path / "l" / "a.txt", det, (100, 200))
    assert (tmp_path / "l" / "a.txt").read_text() == "2 0.100000 0.400000 0.100000 0.400000 0.8765\n"
    empty = {"boxes": np.zeros((0, 4)), "scores": [], "labels": []}
    write_yolo_txt(tmp_path / "l" / "empty.txt", empty, (9, 9))
    assert (tmp_path / "l" / "empty.txt").read_text() == ""
    recs = [{"file": "/x/a.jpg", "frame": None, "height": 100, "width": 200,
             "detections": [{"box_xyxy": [10.0, 20.0, 30.0, 60.0], "score": 0.9, "label": 1,
                             "class_name": "b"}]}]
    coco = coco_predictions(recs, ["a", "b"])
    assert coco["images"] == [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 200}]
    (ann,) = coco["annotations"]
    assert ann == {"id": 1, "image_id": 1, "category_id": 2, "bbox": [10.0, 20.0, 20.0, 40.0], "area": 800.0,
                   "score": 0.9, "iscrowd": 0}


@pytest.mark.parametrize("key, value, message", [
    ("eval.conf_prod", 1.5, "eval.conf_prod=1.5 must be in [0, 1]"),
    ("eval.conf_prod", 0.0005, "eval.conf_prod=0.0005 is below eval.conf_thres=0.001"),
    ("eval.match_iou", 0.0, "eval.match_iou=0.0 must be in"),
    ("eval.sweep_confs", [0.5, 2.0], "eval.sweep_confs=[0.5, 2.0] must hold confidences in [0, 1]"),
    ("eval.max_images", -1, "eval.max_images=-1 must be >= 0"),
    ("eval.bench_iters", 0, "eval.bench_iters=0 must be positive"),
    ("eval.bench_device", "gpu", "eval.bench_device='gpu' is not one of ['auto', 'cpu', 'cuda', 'all']"),
])
def test_eval_config_checks_name_the_key(key, value, message):
    from configs.base_config import BaseConfig, ConfigError
    cfg = BaseConfig()
    cfg.validate()  # the defaults are valid
    cfg.set(key, value)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        cfg.validate()
