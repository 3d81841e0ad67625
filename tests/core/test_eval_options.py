"""Evaluation options: rectangular batches (eval.rect) through the Evaluator, agnostic NMS and the
max_det report (postprocess's num_nms, utils.metrics, the dashboard line), the refusal of rect
batches for exported fixed-size models, and the autocast rule of utils.amp."""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from loguru import logger

from configs import load_config
from configs.base_config import ConfigError
from core.evaluation.evaluator import Evaluator, infer, rect_for
from core.loaders import build_eval_loader
from models import build_model
from models.postprocess import postprocess
from tests.datasets.three_formats import NAMES, rect_image, write_yolo
from utils.amp import autocast_for, fp32, needs_grad_scaler, precision_name
from utils.dashboard import build_dashboard, max_det_line, render_text
from utils.dist import DistInfo
from utils.metrics import max_det_report

CPU = DistInfo(0, 0, 1, torch.device("cpu"))
SQUARE = [(64, 64), (100, 100), (48, 48), (64, 64), (130, 130)]  # (h, w), all square
MIXED = [(60, 80), (80, 60), (64, 64), (50, 100), (90, 70), (60, 80), (100, 50)]


def _items(shapes: list[tuple[int, int]], prefix: str) -> list:
    items = []
    for k, (h, w) in enumerate(shapes):
        objs = [(k % 3, w // 8, h // 6, w // 2, h // 2), ((k + 1) % 3, w // 2, h // 2, w - 3, h - 2)]
        items.append((f"{prefix}{k:03d}", rect_image((h, w), objs, k), objs))
    return items


def _cfg(root: Path, img_size: int, **extra) -> object:
    ov = {"data.format": "yolo", "data.root": str(root), "data.train_sets": ["images/train"],
          "data.val_sets": ["images/val"], "data.class_names": list(NAMES), "data.img_size": img_size,
          "data.num_workers": 0, "data.cache_dir": str(root.parent / f"{root.name}_cache"),
          "model.channel_sparsity": 0.25, "eval.batch_size": 2, "eval.pre_nms_topk": 300, "eval.plots": False,
          "eval.save_json": False, "eval.dashboard": False, **extra}
    return load_config("bccd_yolo_r18", [f"{k}={v!r}" for k, v in ov.items()])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two YOLO datasets (square images only; mixed aspect ratios) and one seeded untrained model."""
    tmp = tmp_path_factory.mktemp("eval_options")
    square = write_yolo(tmp / "square", {"train": _items(SQUARE[:2], "t"), "val": _items(SQUARE, "v")})
    mixed = write_yolo(tmp / "mixed", {"train": _items(MIXED[:2], "t"), "val": _items(MIXED, "v")})
    torch.manual_seed(0)
    model = build_model(_cfg(square, 64)).eval()
    return square, mixed, model


def _predict(cfg, model, rect: bool, records=None):
    loader = build_eval_loader(cfg, CPU, "val", rect=rect)
    ev = Evaluator(cfg, loader.dataset.records if records is None else records, CPU)
    return loader, ev, ev.predict(model, loader)


# -- rect evaluation through the Evaluator --------------------------------------------------------
def test_rect_val_equals_square_val_on_square_images(data):
    square, _, model = data
    cfg = _cfg(square, 64)
    rect_loader, ev_r, rect = _predict(cfg, model, True)
    sq_loader, ev_s, sq = _predict(cfg, model, False)
    assert rect_loader.dataset.canvas_hw.tolist() == [[64, 64]] * len(SQUARE)  # the square canvas
    assert [[m["image_id"] for m in b[2]] for b in rect_loader] == [[m["image_id"] for m in b[2]] for b in sq_loader]
    assert sorted(rect) == sorted(sq) == sorted(ev_r.records.image_ids.tolist()) and len(rect) == len(SQUARE)
    assert sum(len(d["scores"]) for d in rect.values()) > 0  # an untrained model still detects at conf 0.001
    for i in sq:
        assert set(rect[i]) == set(sq[i]) == {"boxes", "scores", "labels", "num_nms"}
        for key in ("boxes", "scores", "labels"):
            np.testing.assert_array_equal(rect[i][key], sq[i][key])
        assert rect[i]["num_nms"] == sq[i]["num_nms"] >= len(sq[i]["scores"])
    m_rect, m_sq = ev_r.run(model, rect_loader), ev_s.run(model, sq_loader)
    assert m_rect == m_sq and m_rect["num_images"] == len(SQUARE)
    cap = m_rect["max_det"]
    assert cap["exact"] and cap["max_det"] == 100 and cap["num_images"] == len(SQUARE)
    assert cap["images_over"] == sum(d["num_nms"] > 100 for d in sq.values())
    assert cap["dropped"] == sum(max(d["num_nms"] - 100, 0) for d in sq.values())


def test_rect_val_on_mixed_aspect_ratios(data):
    """Batches in aspect-ratio order, not id order: every record is still predicted, boxes come back in
    original pixels, and Evaluator.run (no process group) scores them with a max_det report."""
    _, mixed, model = data
    cfg = _cfg(mixed, 128, **{"eval.max_det": 5, "eval.rect": True, "eval.rect_pad": 0.0})  # tightest canvases
    loader = build_eval_loader(cfg, CPU, "val")  # rect=None: eval.rect for the val split
    shapes = [tuple(images.shape[2:]) for images, _, _ in loader]
    ids = [[m["image_id"] for m in metas] for _, _, metas in loader]
    # h / w: 50x100 0.5 (id 4), 60x80 0.75 (ids 1, 6), 64x64 (3), 90x70 (5), 80x60 (2), 100x50 2.0 (7)
    assert ids == [[4, 1], [6, 3], [5, 2], [7]]
    assert shapes == [(96, 128), (128, 128), (128, 128), (128, 64)]  # 90x70 -> 128x100: padded to 128
    ev = Evaluator(cfg, loader.dataset.records, CPU)
    preds = ev.predict(model, loader)
    assert sorted(preds) == list(range(1, len(MIXED) + 1))
    for r in loader.dataset.records:
        h, w = r.img_hw
        b = preds[r.image_id]["boxes"]
        assert len(b) <= 5 and (b >= 0).all() and (b[:, [0, 2]] <= w).all() and (b[:, [1, 3]] <= h).all()
    metrics = ev.run(model, loader)
    assert metrics["num_images"] == len(MIXED) and 0 <= metrics["mAP"] <= 1
    cap = metrics["max_det"]
    assert cap == {"max_det": 5, "num_images": len(MIXED), "exact": True,
                   "images_over": sum(p["num_nms"] > 5 for p in preds.values()),
                   "dropped": sum(max(p["num_nms"] - 5, 0) for p in preds.values())}
    assert cap["images_over"] > 0  # an untrained model at conf 0.001 gives more than 5 boxes somewhere
    text = render_text(build_dashboard(metrics))
    assert f"max_det 5 reached in {cap['images_over']} of {len(MIXED)} images ({cap['dropped']} detections" in text
    assert "images over max_det 5" in text
    # an evaluator over the first records only, with a rect loader over all: the loop reads every batch
    _, _, first = _predict(cfg, model, True, records=loader.dataset.records[:3])
    assert sorted(first) == [1, 2, 3]
    for i in first:
        np.testing.assert_array_equal(first[i]["boxes"], preds[i]["boxes"])


def test_eval_loader_rect_default_and_refusals(data):
    _, mixed, _ = data
    cfg = _cfg(mixed, 128, **{"eval.rect": True})
    assert build_eval_loader(cfg, CPU, "val").dataset.canvas_hw is not None
    assert build_eval_loader(cfg, CPU, "train").dataset.canvas_hw is None  # calibration / debug splits: square
    assert build_eval_loader(cfg, CPU, "val", rect=False).dataset.canvas_hw is None
    assert build_eval_loader(cfg, CPU, "val", augment=True).dataset.canvas_hw is None
    with pytest.raises(ConfigError, match="not augmented ones"):
        build_eval_loader(cfg, CPU, "val", augment=True, rect=True)


class FakeRuntime:
    """What the evaluator reads of core.deploy.runtime's models: runtime, img_hw, path, call, decode."""
    runtime, img_hw, path = "onnxruntime", (64, 64), Path("model.onnx")

    def __call__(self, images):
        return torch.zeros(len(images), 7, 4)

    def decode(self, raw, hw):
        return torch.zeros(len(raw), 4, 4), torch.zeros(len(raw), 4, 3)


@contextlib.contextmanager
def _loguru_messages():
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING", format="{message}")
    try:
        yield messages
    finally:
        logger.remove(sink)


def test_exported_model_falls_back_to_the_square(data):
    square, _, model = data
    cfg = _cfg(square, 64, **{"eval.rect": True})
    with _loguru_messages() as msgs:
        assert rect_for(cfg, FakeRuntime()) is False
        assert rect_for(cfg, model) is True
    assert len(msgs) == 1 and "model.onnx was exported for fixed 64x64 inputs" in msgs[0]
    cfg.eval.rect = False
    with _loguru_messages() as msgs:
        assert rect_for(cfg, FakeRuntime()) is False and rect_for(cfg, model) is False
    assert msgs == []
    boxes, scores = infer(FakeRuntime(), torch.zeros(2, 3, 64, 64), cfg.train)
    assert boxes.shape == (2, 4, 4) and scores.shape == (2, 4, 3)
    with pytest.raises(ConfigError, match="cannot run a 64x96 batch; score it with eval.rect=False"):
        infer(FakeRuntime(), torch.zeros(2, 3, 64, 96), cfg.train)


def test_exported_onnx_model_is_scored_on_the_square(data, tmp_path):
    pytest.importorskip("onnxruntime")
    from core.deploy.export import export_onnx
    from core.deploy.runtime import OnnxModel
    from core.deploy.wire import export_metadata
    square, mixed, model = data
    cfg = _cfg(square, 64, **{"eval.rect": True})
    rt = OnnxModel(export_onnx(copy.deepcopy(model), tmp_path / "m.onnx", (64, 64),
                               metadata=export_metadata(cfg, (64, 64))))
    with _loguru_messages() as msgs:
        rect = rect_for(cfg, rt)
    assert rect is False and len(msgs) == 1 and "m.onnx was exported for fixed 64x64 inputs" in msgs[0]
    loader = build_eval_loader(cfg, CPU, "val", rect=rect)
    assert loader.dataset.canvas_hw is None
    metrics = Evaluator(cfg, loader.dataset.records, CPU).run(rt, loader)
    assert metrics["num_images"] == len(SQUARE) and metrics["max_det"]["exact"]
    # the same file on rectangular batches: refused with the way out
    cfg = _cfg(mixed, 64, **{"eval.rect": True, "eval.rect_pad": 0.0})
    loader = build_eval_loader(cfg, CPU, "val")
    assert {tuple(images.shape[2:]) for images, _, _ in loader} != {(64, 64)}
    with pytest.raises(ConfigError, match="score it with eval.rect=False"):
        Evaluator(cfg, loader.dataset.records, CPU).predict(rt, loader)

def test_infer_runs_the_forward_under_the_training_autocast(data):
    _, _, model = data
    cfg = _cfg(Path("unused"), 64, **{"train.amp": True, "train.amp_dtype": "bf16"})
    seen = []
    hook = model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype if torch.is_tensor(o) else None))
    try:
        images = torch.rand(1, 3, 64, 96)
        boxes, scores = infer(model, images, cfg.train)  # cpu bf16: autocast
        cfg.train.amp_dtype = "fp16"
        boxes32, scores32 = infer(model, images, cfg.train)  # cpu fp16: plain fp32
    finally:
        hook.remove()
    assert seen == [torch.bfloat16, torch.float32]
    assert boxes.dtype == scores.dtype == boxes32.dtype == torch.float32 and boxes.shape == boxes32.shape
    assert (scores - scores32).abs().max() < 0.05  # bf16 forward, close to the fp32 one


# -- agnostic NMS, num_nms, max_det report ---------------------------------------------------------
def _overlapping() -> tuple[torch.Tensor, torch.Tensor]:
    boxes = torch.tensor([[[10.0, 10.0, 50.0, 50.0], [11.0, 10.0, 51.0, 50.0], [100.0, 100.0, 120.0, 130.0]]])
    scores = torch.zeros(1, 3, 2)
    scores[0, 0, 0], scores[0, 1, 1], scores[0, 2, 1] = 0.8, 0.9, 0.3
    return boxes, scores


def test_agnostic_nms_suppresses_across_classes():
    boxes, scores = _overlapping()
    per_class = postprocess(boxes, scores, 0.1, 0.5, 100)[0]
    assert per_class["labels"].tolist() == [1, 0, 1] and per_class["num_nms"] == 3
    torch.testing.assert_close(per_class["scores"], torch.tensor([0.9, 0.8, 0.3]))
    agnostic = postprocess(boxes, scores, 0.1, 0.5, 100, agnostic=True)[0]
    assert agnostic["labels"].tolist() == [1, 1] and agnostic["num_nms"] == 2  # the 0.8 box of class 0 is gone
    torch.testing.assert_close(agnostic["scores"], torch.tensor([0.9, 0.3]))
    torch.testing.assert_close(agnostic["boxes"][0], boxes[0, 1])


def test_num_nms_counts_boxes_before_the_max_det_cap():
    n = 7
    x = torch.arange(n, dtype=torch.float32) * 20
    boxes = torch.stack([x, x, x + 10, x + 10], 1)[None]  # disjoint boxes
    scores = torch.linspace(0.9, 0.05, n)[None, :, None]
    out = postprocess(boxes, scores, 0.1, 0.5, 3)[0]
    assert out["num_nms"] == 6 and len(out["scores"]) == 3  # 0.05 is under conf_thres; 3 kept of 6
    torch.testing.assert_close(out["scores"], scores[0, :3, 0])
    empty = postprocess(boxes, torch.zeros_like(scores), 0.1, 0.5, 3)[0]
    assert empty["num_nms"] == 0 and len(empty["boxes"]) == 0


def test_max_det_report_exact_and_inexact():
    exact = max_det_report([3, 2, 0, 3], 3, [5, 2, 0, 3])
    assert exact == {"max_det": 3, "num_images": 4, "images_over": 1, "dropped": 2, "exact": True}
    inexact = max_det_report([3, 2, 0, 3], 3)  # the 2 images holding 3 may have lost some
    assert inexact == {"max_det": 3, "num_images": 4, "images_over": 2, "dropped": -1, "exact": False}
    assert max_det_report([], 100, []) == {"max_det": 100, "num_images": 0, "images_over": 0, "dropped": 0,
                                           "exact": True}
    with pytest.raises(ValueError, match="2 NMS counts for 3 images"):
        max_det_report([1, 2, 3], 3, [1, 2])


def test_max_det_line_text():
    line = max_det_line(max_det_report([3, 2, 0, 3], 3, [5, 2, 0, 3]))
    assert line.plain == ("max_det 3 reached in 1 of 4 images (2 detections beyond it dropped; "
                          "raise eval.max_det to keep them)") and line.style == "yellow"
    line = max_det_line(max_det_report([3, 2, 0, 3], 3))
    assert line.plain == ("max_det 3 reached in 2 of 4 images (detections beyond it may have been dropped; "
                          "raise eval.max_det to keep them)") and line.style == "yellow"
    line = max_det_line(max_det_report([3, 2], 100, [3, 2]))
    assert line.plain == "max_det 100 not reached in any of 2 images (no detections dropped)" and line.style == "dim"


def test_score_reads_num_nms_from_prediction_dicts(data):
    square, _, _ = data
    cfg = _cfg(square, 64, **{"eval.max_det": 2})
    ev = Evaluator(cfg, build_eval_loader(cfg, CPU, "val").dataset.records, CPU)
    dets = {r.image_id: {"boxes": r.boxes[:2].astype(np.float32), "scores": np.array([0.9, 0.8], np.float32),
                         "labels": r.labels[:2]} for r in ev.records}  # every image has 2 objects
    inexact = ev.score(dets)["max_det"]
    assert inexact["exact"] is False and inexact["images_over"] == len(SQUARE) and inexact["dropped"] == -1
    exact = ev.score({i: {**d, "num_nms": 2 + (i == 1)} for i, d in dets.items()})["max_det"]
    assert exact == {"max_det": 2, "num_images": len(SQUARE), "images_over": 1, "dropped": 1, "exact": True}


# -- utils.amp --------------------------------------------------------------------------------------
def test_amp_rule():
    assert (precision_name("cpu", True, "fp16"), needs_grad_scaler("cpu", True, "fp16")) == ("fp32", False)
    assert isinstance(autocast_for("cpu", True, "fp16"), contextlib.nullcontext)
    assert (precision_name("cpu", True, "bf16"), needs_grad_scaler("cpu", True, "bf16")) == ("bf16", False)
    ctx = autocast_for(torch.device("cpu"), True, "bf16")
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    with ctx:
        assert (torch.rand(2, 3) @ torch.rand(3, 2)).dtype == torch.bfloat16
    for dtype in ("fp16", "bf16"):  # amp off
        assert (precision_name("cpu", False, dtype), needs_grad_scaler("cpu", False, dtype)) == ("fp32", False)
        assert isinstance(autocast_for("cpu", False, dtype), contextlib.nullcontext)
        assert precision_name("cuda", False, dtype) == "fp32"
    assert (precision_name("cuda", True, "fp16"), needs_grad_scaler("cuda", True, "fp16")) == ("fp16", True)
    assert (precision_name("cuda:1", True, "bf16"), needs_grad_scaler("cuda:1", True, "bf16")) == ("bf16", False)
    with pytest.raises(ValueError, match="amp dtype 'fp8'"):
        precision_name("cpu", True, "fp8")
    out = fp32((torch.zeros(2, dtype=torch.bfloat16), [torch.zeros(1, dtype=torch.float16)],
                torch.zeros(1, dtype=torch.long)))
    assert isinstance(out, tuple) and isinstance(out[1], list)
    assert [out[0].dtype, out[1][0].dtype, out[2].dtype] == [torch.float32, torch.float32, torch.long]
