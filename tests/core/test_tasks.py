"""main.py tasks as a user runs them: strict overrides, val, predict, debug plots."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_data import tiny_overrides, train_tiny

from main import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny dataset and a checkpoint trained one epoch on it."""
    tmp = tmp_path_factory.mktemp("tasks")
    root, ckpt = train_tiny(tmp)
    return root, ckpt, tmp


def test_unknown_key_exits_non_zero_without_traceback():
    p = subprocess.run([sys.executable, "main.py", "--config", "bccd_yolo_r18", "--task", "debug",
                        "train.epoch=3"], check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "did you mean train.epochs" in p.stderr
    assert "Traceback" not in p.stderr


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    assert main(["--task", "val", "--ckpt", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "v")]) == 2


def test_val_from_checkpoint_alone_writes_metrics_and_coco_files(easy_run, tmp_path):
    """Both backends score a checkpoint whose mAP is well inside (0, 1) to the same numbers."""
    _, run = easy_run
    for backend in ("faster_coco_eval", "pycocotools"):
        out = tmp_path / backend
        assert main(["--task", "val", "--ckpt", str(run / "last.pth"), "--out", str(out), f"eval.backend={backend}"]) == 0
    m = {b: json.loads((tmp_path / b / "metrics.json").read_text()) for b in ("faster_coco_eval", "pycocotools")}
    assert 0.05 < m["pycocotools"]["mAP"] < 0.95 and 0.05 < m["pycocotools"]["AR100"] < 1.0
    keys = ["mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large", "AR1", "AR10", "AR100"]
    for k in keys:
        assert m["faster_coco_eval"][k] == pytest.approx(m["pycocotools"][k], abs=1e-6), k
    per_class = {b: [(c["name"], c["AP"]) for c in m[b]["per_class"]] for b in m}
    assert [n for n, _ in per_class["pycocotools"]] == ["cat", "dog"]
    for (_, a), (_, b) in zip(per_class["faster_coco_eval"], per_class["pycocotools"]):
        assert a == pytest.approx(b, abs=1e-6) and 0.0 < b < 1.0
    gt = json.loads((tmp_path / "pycocotools" / "ground_truth.json").read_text())
    preds = json.loads((tmp_path / "pycocotools" / "predictions.json").read_text())
    assert len(gt["images"]) == 5 and len(gt["annotations"]) == 7
    assert {p["image_id"] for p in preds} == {i["id"] for i in gt["images"]}
    assert {p["category_id"] for p in preds} == {1, 2}


def test_predict_folder_writes_images_and_json(trained, tmp_path):
    root, ckpt, _ = trained
    src = tmp_path / "imgs"
    src.mkdir()
    for i, f in enumerate(sorted((root / "JPEGImages").glob("*.jpg"))[:2]):
        Image.open(f).save(src / f"img {i}.png")  # spaces in names, PNG input
    out = tmp_path / "pred"
    assert main(["--task", "predict", "--ckpt", str(ckpt), "--out", str(out), f"predict.source={str(src)!r}",
                 "predict.conf_thres=0.0"]) == 0
    res = json.loads((out / "predictions.json").read_text())
    assert [Path(r["file"]).name for r in res] == ["img 0.png", "img 1.png"]
    for r in res:
        assert (r["width"], r["height"]) == (640, 480)
        for d in r["detections"]:
            x1, y1, x2, y2 = d["box_xyxy"]
            assert 0 <= x1 <= x2 <= 640 and 0 <= y1 <= y2 <= 480  # original-image pixels
            assert d["class_name"] in ("RBC", "WBC", "Platelets")
    drawn = Image.open(out / "images" / "img 0.jpg")
    assert drawn.size == (640, 480)
    assert np.asarray(drawn).std() > 0


@pytest.mark.parametrize("method", ["single_grid", "nearby_grid", "all_grid", "simota", "atss"])
def test_debug_draws_assignments_without_checkpoint(trained, tmp_path, method):
    root, _, _ = trained
    out = tmp_path / method
    ov = tiny_overrides(root, **{"assign.method": method, "debug.batch_size": 2, "data.img_size": 128})
    assert main(["--config", "bccd_yolo_r18", "--task", "debug", "--out", str(out)] + ov) == 0
    pngs = sorted((out / "debug").glob("*.png"))
    assert len(pngs) == 2 * 3  # one per image and head level
    assert all(Image.open(p).size[0] == 128 for p in pngs)
