"""--task export, val, predict and benchmark with the exported .onnx file, as a user runs them:
val / predict / benchmark must give the PyTorch results from the .onnx file alone."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_data import assert_same_detections, by_image, randomize_bn, train_tiny

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from configs.base_config import BaseConfig
from core.deploy.export import deployment_form
from core.deploy.wire import read_export_metadata
from main import main
from models import build_model
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.model_info import count_params

IMG = 64
HW = (IMG, IMG)
NAMES = ["cat", "dog", "bird"]


# -- the tasks, from the command line ---------------------------------------------------------------

def spread_scores(ckpt: Path, out: Path) -> Path:
    """``ckpt`` with EMA weights whose scores spread over 0.05..0.2: after one epoch on four images
    every box scores about the same, and near-ties would let float rounding decide the NMS order."""
    state = load_checkpoint(ckpt)
    model = build_model(BaseConfig.from_dict(state["config"]))
    model.load_state_dict(state["ema"]["model"])
    randomize_bn(model)
    with torch.no_grad():
        for conv in model.head.preds:
            conv.weight.mul_(4)
            conv.bias.view(3, -1)[:, 4] = 0.0  # objectness 0.5 before the features speak
    state["ema"]["model"] = model.state_dict()
    save_checkpoint(state, out)
    return out


def pseudo_labels(root: Path, ckpt: Path) -> None:
    """Replace the val annotations by every other of the checkpoint's 16 best detections, rounded
    to whole pixels: the PyTorch mAP is then well inside (0, 1), so equal metrics mean something."""
    from core.evaluation.predictor import Predictor
    from core.weights import load_weights
    cfg = BaseConfig.from_dict(load_checkpoint(ckpt)["config"])
    cfg.predict.conf_thres = 0.05
    predictor = Predictor(cfg, load_weights(cfg, str(ckpt), torch.device("cpu")))
    for name in (root / "ImageSets/Main/val.txt").read_text().split():
        image = np.asarray(Image.open(root / "JPEGImages" / f"{name}.jpg").convert("RGB"))
        det = predictor.detect(image)
        objects = "".join(
            f"<object><name>{cfg.data.class_names[int(c)]}</name><difficult>0</difficult><bndbox>"
            + "".join(f"<{k}>{round(float(v))}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), b))
            + "</bndbox></object>"
            for b, c in zip(det["boxes"][:16:2], det["labels"][:16:2]))
        h, w = image.shape[:2]
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>{w}</width><height>{h}</height>"
            f"</size>{objects}</annotation>")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny dataset, a checkpoint trained one epoch on it (scores spread), its --task export output."""
    tmp = tmp_path_factory.mktemp("export_tasks")
    root, last = train_tiny(tmp)
    ckpt = spread_scores(last, tmp / "run" / "spread.pth")
    pseudo_labels(root, ckpt)
    assert main(["--task", "export", "--ckpt", str(ckpt), "--out", str(tmp / "export"), "export.nms=True"]) == 0
    return root, ckpt, tmp / "export", tmp


def test_export_task_writes_the_files(exported):
    _, _, out, _ = exported
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".log") == [
        "bccd_yolo_r18.onnx", "bccd_yolo_r18_nms.onnx", "metadata.json"]
    check = re.search(r"max abs diff boxes (\S+) px, scores (\S+)", (out / "export.log").read_text())
    assert float(check[1]) < 1e-4 and float(check[2]) < 1e-5  # the task's own ONNX-vs-PyTorch check
    meta = read_export_metadata(out / "bccd_yolo_r18_nms.onnx")
    assert meta["nms"]["conf_thres"] == 0.25 and meta["nms"]["max_det"] == 300
    assert meta["class_names"] == ["RBC", "WBC", "Platelets"]


def _val(ckpt: Path, out: Path) -> tuple[dict, dict]:
    assert main(["--task", "val", "--ckpt", str(ckpt), "--out", str(out), "eval.plots=False"]) == 0
    return json.loads((out / "metrics.json").read_text()), by_image(json.loads((out / "predictions.json").read_text()))


def test_val_with_the_onnx_file_equals_the_checkpoint(exported, tmp_path):
    _, ckpt, out, _ = exported
    m_pt, p_pt = _val(ckpt, tmp_path / "pt")
    m_ox, p_ox = _val(out / "bccd_yolo_r18.onnx", tmp_path / "onnx")  # config from the file's metadata
    # Each pseudo label is one of the checkpoint's own detections rounded to whole pixels (IoU > 0.9
    # with it), and the other half of its detections rank between them as false positives: mAP near
    # 0.5 (0.535 measured). Predict and val mapping boxes back differently would drop it (0.155 when
    # val ignored the letterbox pad); tests/core/test_oracle_eval.py checks that mapping exactly.
    assert 0.4 < m_pt["mAP"] < 0.7
    for key in ("mAP", "mAP50", "mAP75", "AR100", "num_images"):
        assert m_ox[key] == pytest.approx(m_pt[key], abs=1e-4), key
    assert m_ox["operative"]["f1"] == pytest.approx(m_pt["operative"]["f1"], abs=1e-4)
    assert sorted(p_pt) == sorted(p_ox) and sum(map(len, p_pt.values())) > 0
    for image_id, dets in p_pt.items():
        assert_same_detections(dets, p_ox[image_id], box_tol=1e-3, score_tol=1e-5)  # original pixels


def test_predict_with_the_onnx_file_equals_the_checkpoint(exported, tmp_path):
    root, ckpt, out, _ = exported
    src = root / "JPEGImages"
    results = {}
    for name, model in (("pt", ckpt), ("onnx", out / "bccd_yolo_r18.onnx")):
        assert main(["--task", "predict", "--ckpt", str(model), "--out", str(tmp_path / name),
                     f"predict.source={str(src)!r}", "predict.conf_thres=0.1", "predict.save_images=False"]) == 0
        results[name] = json.loads((tmp_path / name / "predictions.json").read_text())
    assert [r["file"] for r in results["pt"]] == [r["file"] for r in results["onnx"]]
    assert sum(len(r["detections"]) for r in results["pt"]) > 0
    for a, b in zip(results["pt"], results["onnx"]):
        dets = [[{"cls": d["label"], "box": d["box_xyxy"], "score": d["score"]} for d in r["detections"]]
                for r in (a, b)]
        assert_same_detections(*dets, box_tol=0.011, score_tol=1.1e-4)  # json rounds to 0.01 px, 1e-4


def test_benchmark_of_the_onnx_file(exported, tmp_path):
    _, ckpt, out, _ = exported
    onnx_file = out / "bccd_yolo_r18.onnx"
    assert main(["--task", "benchmark", "--ckpt", str(onnx_file), "--out", str(tmp_path / "b"),
                 "eval.bench_iters=3", "eval.bench_warmup=1", "eval.bench_batch=2"]) == 0
    info = json.loads((tmp_path / "b" / "benchmark.json").read_text())["model"]
    assert info["runtime"] == "onnxruntime" and info["gflops"] is None
    assert info["checkpoint_mb"] == pytest.approx(onnx_file.stat().st_size / 2**20)
    cfg = BaseConfig.from_dict(read_export_metadata(onnx_file)["config"])
    from core.weights import load_weights
    model = load_weights(cfg, str(ckpt), torch.device("cpu"))
    assert info["params"] == count_params(deployment_form(model))


def test_exported_files_serve_only_val_predict_benchmark(exported, tmp_path, monkeypatch):
    _, _, out, _ = exported
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnxruntime", None)  # a clear error (exit code 2), not a traceback
        assert main(["--task", "val", "--ckpt", str(out / "bccd_yolo_r18.onnx"), "--out", str(tmp_path / "n")]) == 2
    assert main(["--task", "export", "--ckpt", str(out / "bccd_yolo_r18.onnx"), "--out", str(tmp_path / "e")]) == 2
    assert main(["--task", "val", "--ckpt", str(out / "bccd_yolo_r18.onnx"), "--out", str(tmp_path / "v"),
                 "data.img_size=96"]) == 2  # the file was exported for 64 px
