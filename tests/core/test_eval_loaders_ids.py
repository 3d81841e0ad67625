"""--task val and --task predict read images with the configured loader and cache: an encrypted
copy of a tiny COCO dataset scores and predicts exactly like the plain one. The dataset's own
(non-contiguous) COCO category ids and its image ids survive into every exported json."""
from __future__ import annotations

import json
import secrets
from pathlib import Path

import numpy as np
import pytest
import torch
from loguru import logger

from configs.base_config import ConfigError
from configs.validation import METRIC_KEYS
from core.checks import validate
from core.evaluation.evaluator import Evaluator
from core.evaluation.predict_outputs import coco_predictions
from core.loaders import build_eval_loader
from datasets.crypto import Cipher, encrypt_tree
from main import main
from tests.datasets.three_formats import (
    CAT_IDS,
    NAMES,
    cfg_for,
    default_items,
    write_coco,
)
from utils.coco_eval import coco_evaluate
from utils.dist import DistInfo

ENV = "YOLO_TEST_EVAL_IDS_KEY"
CPU = DistInfo(0, 0, 1, torch.device("cpu"))
ENCRYPTED = [f"data.image_loader={'datasets.loaders.EncryptedLoader'!r}", f"data.key_env={ENV!r}"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Plain and encrypted copies of one COCO dataset (category ids 3, 7, 11); one epoch on the plain one."""
    tmp = tmp_path_factory.mktemp("eval_ids")
    plain = write_coco(tmp / "plain", default_items())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV, secrets.token_hex(32))
        assert encrypt_tree(plain, tmp / "enc", Cipher.from_env(ENV)) == 6
        ov = {"data.format": "coco", "data.root": str(plain), "data.class_names": [],
              "data.train_sets": ["annotations/instances_train.json"],
              "data.val_sets": ["annotations/instances_val.json"], "data.img_size": 64,
              "data.num_workers": 0, "data.cache_dir": str(tmp / "cache"), "model.channel_sparsity": 0.25,
              "train.epochs": 1, "train.batch_size": 2, "eval.batch_size": 2, "train.num_threads": 1}
        args = ["--config", "bccd_yolo_r18", "--task", "train", "--out", str(tmp / "run")]
        assert main(args + [f"{k}={v!r}" for k, v in ov.items()]) == 0
        yield tmp, tmp / "run" / "last.pth"


def _val(ckpt: Path, out: Path, root: Path, cache: Path, *extra: str) -> tuple[int, Path]:
    rc = main(["--task", "val", "--ckpt", str(ckpt), "--out", str(out), f"data.root={str(root)!r}",
               f"data.cache_dir={str(cache)!r}", "eval.max_images=1", "eval.plots=False",
               "eval.dashboard=False", *extra])
    return rc, out


def test_val_on_encrypted_copy_equals_plain_and_caches_only_the_subset(trained):
    tmp, ckpt = trained
    rc_plain, plain = _val(ckpt, tmp / "val_plain", tmp / "plain", tmp / "cache_plain")
    rc_enc, enc = _val(ckpt, tmp / "val_enc", tmp / "enc", tmp / "cache_enc", *ENCRYPTED,
                       "data.cache_images='disk'", "data.encrypt_cache=True")
    assert (rc_plain, rc_enc) == (0, 0)
    preds = json.loads((enc / "predictions.json").read_text())
    assert preds and preds == json.loads((plain / "predictions.json").read_text())
    assert {p["image_id"] for p in preds} == {100}  # eval.max_images=1: the first val image only (json id 100)
    metrics = json.loads((enc / "metrics.json").read_text())
    assert (metrics["num_images"], metrics["num_images_total"]) == (1, 2)
    # the subset has its own image cache; the whole val split was neither decoded nor cached
    assert sorted(p.name for p in (tmp / "cache_enc").rglob("*.lmdb")) == ["images_s64_n1.lmdb"]
    assert "evaluated 1 of 2 images" in (enc / "val.log").read_text()


def test_val_exports_keep_the_datasets_category_ids(trained):
    tmp, ckpt = trained
    rc, out = _val(ckpt, tmp / "val_ids", tmp / "plain", tmp / "cache_ids", "eval.max_images=0")
    assert rc == 0
    preds = json.loads((out / "predictions.json").read_text())
    assert preds and {p["category_id"] for p in preds} <= set(CAT_IDS)
    gt = json.loads((out / "ground_truth.json").read_text())
    assert gt["categories"] == [{"id": c, "name": n} for c, n in zip(CAT_IDS, NAMES)]
    source = json.loads((tmp / "plain" / "annotations" / "instances_val.json").read_text())
    assert gt["images"] == source["images"]  # the json's own image ids (100, 101), names and sizes
    assert [(a["image_id"], a["category_id"], a["bbox"], a["iscrowd"]) for a in gt["annotations"]] == \
        [(a["image_id"], a["category_id"], [float(v) for v in a["bbox"]], a["iscrowd"]) for a in source["annotations"]]
    assert {p["image_id"] for p in preds} <= {100, 101}
    # predictions.json scores against the original annotation file exactly as the run scored it
    metrics = json.loads((out / "metrics.json").read_text())
    for backend in ("pycocotools", "faster_coco_eval"):
        again = coco_evaluate(source, preds, list(NAMES), backend=backend)
        assert [again[k] for k in METRIC_KEYS] == pytest.approx([metrics[k] for k in METRIC_KEYS], abs=1e-12)
    per_class = json.loads((out / "metrics.json").read_text())["per_class"]
    assert [(c["name"], c["category_id"]) for c in per_class] == list(zip(NAMES, CAT_IDS))


def _predict(ckpt: Path, out: Path, source: Path, *extra: str) -> int:
    return main(["--task", "predict", "--ckpt", str(ckpt), "--out", str(out), f"predict.source={str(source)!r}",
                 "predict.conf_thres=0.0", "predict.max_det=5", "predict.save_txt=True", "predict.save_coco=True",
                 "predict.save_images=False", *extra])


def test_predict_reads_encrypted_images_and_exports_category_ids(trained, monkeypatch):
    tmp, ckpt = trained
    monkeypatch.setenv(ENV, secrets.token_hex(32))  # a new key: the loader really decrypts with it
    enc_dir = tmp / "enc_pred"
    encrypt_tree(tmp / "plain" / "val", enc_dir, Cipher.from_env(ENV))
    assert _predict(ckpt, tmp / "pred_plain", tmp / "plain" / "val") == 0
    assert _predict(ckpt, tmp / "pred_enc", enc_dir, *ENCRYPTED) == 0
    plain = json.loads((tmp / "pred_plain" / "predictions.json").read_text())
    enc = json.loads((tmp / "pred_enc" / "predictions.json").read_text())
    assert [Path(r["file"]).name for r in enc] == ["val000.jpg.enc", "val001.jpg.enc"]
    assert [(r["height"], r["width"], r["detections"]) for r in enc] == \
        [(r["height"], r["width"], r["detections"]) for r in plain]
    assert all(len(r["detections"]) == 5 for r in enc)
    assert sorted(p.name for p in (tmp / "pred_enc" / "labels").iterdir()) == ["val000.txt", "val001.txt"]
    coco = json.loads((tmp / "pred_enc" / "predictions_coco.json").read_text())
    assert coco["categories"] == [{"id": c, "name": n} for c, n in zip(CAT_IDS, NAMES)]
    by_label = {d["label"]: CAT_IDS[d["label"]] for r in enc for d in r["detections"]}
    assert [a["category_id"] for a in coco["annotations"]] == \
        [by_label[d["label"]] for r in enc for d in r["detections"]]
    # the checkpoint's plain loader cannot read .enc files: the error names the file and the fix
    assert _predict(ckpt, tmp / "pred_bad", enc_dir) == 2
    log = (tmp / "pred_bad" / "predict.log").read_text()
    assert "val000.jpg.enc: not an image" in log and "data.image_loader=datasets.loaders.EncryptedLoader" in log


def test_evaluator_scores_perfect_detections_under_the_datasets_ids(tmp_path):
    root = write_coco(tmp_path / "coco", default_items())
    cfg = cfg_for(root, "coco", tmp_path / "cache", class_names=list(NAMES), category_ids=list(CAT_IDS))
    cfg.eval.plots = False
    records = build_eval_loader(cfg, CPU).dataset.records
    ev = Evaluator(cfg, records, CPU)
    dets = {r.image_id: {"boxes": r.boxes, "scores": np.ones(len(r.labels)), "labels": r.labels}
            for r in records}
    metrics = ev.score(dets, tmp_path / "out")
    assert metrics["mAP"] == pytest.approx(1.0)
    results = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert sorted(p["category_id"] for p in results) == [3, 7, 11]  # one box of each class in val
    source = json.loads((root / "annotations" / "instances_val.json").read_text())
    assert coco_evaluate(source, results, list(NAMES))["mAP"] == pytest.approx(1.0)


def test_image_ids_shared_by_two_val_jsons_fall_back_to_positions(tmp_path):
    """Two val json files with the same image ids: the files number the images 1..N (one warning)
    instead of exporting two images under one id."""
    root = write_coco(tmp_path / "coco", default_items())
    (root / "val" / "copy.json").write_text((root / "annotations" / "instances_val.json").read_text())
    cfg = cfg_for(root, "coco", tmp_path / "cache", class_names=list(NAMES), category_ids=list(CAT_IDS),
                  val_sets=["annotations/instances_val.json", "val/copy.json"])
    cfg.eval.plots = False
    records = build_eval_loader(cfg, CPU).dataset.records
    assert records.source_ids.tolist() == [100, 101, 100, 101] and records.image_ids.tolist() == [1, 2, 3, 4]
    dets = {r.image_id: {"boxes": r.boxes, "scores": np.ones(len(r.labels)), "labels": r.labels}
            for r in records}
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(str(m)), level="WARNING")
    try:
        Evaluator(cfg, records, CPU).score(dets, tmp_path / "out")
    finally:
        logger.remove(sink)
    gt = json.loads((tmp_path / "out" / "ground_truth.json").read_text())
    assert [im["id"] for im in gt["images"]] == [1, 2, 3, 4]
    assert {p["image_id"] for p in json.loads((tmp_path / "out" / "predictions.json").read_text())} <= {1, 2, 3, 4}
    assert sum("share image ids" in m for m in seen) == 1


def test_val_loader_subset_and_category_id_errors(tmp_path):
    root = write_coco(tmp_path / "coco", default_items())
    cfg = cfg_for(root, "coco", tmp_path / "cache", class_names=list(NAMES))
    loader = build_eval_loader(cfg, CPU, "val", max_images=5)  # more than the split holds: all of it
    assert (len(loader.dataset.records), loader.dataset.split_size, len(loader.dataset)) == (2, 2, 2)
    assert (len(build_eval_loader(cfg, CPU, "val", max_images=1).dataset), loader.dataset.split_size) == (1, 2)
    assert cfg.coco_category_ids() == [1, 2, 3]  # no ids resolved: 1..nc
    cfg.data.category_ids = [3, 7]
    with pytest.raises(ConfigError, match=r"data.category_ids=\[3, 7\] must hold 3 distinct ids"):
        validate(cfg)
    cfg.data.category_ids = [3, 3, 11]
    with pytest.raises(ConfigError, match="must hold 3 distinct ids"):
        validate(cfg)
    cfg.data.category_ids = []
    cfg.eval.max_images = -1
    with pytest.raises(ConfigError, match="eval.max_images=-1 must be >= 0"):
        validate(cfg)
    default = coco_predictions([{"file": "a.jpg", "frame": None, "height": 4, "width": 4, "detections": [
        {"box_xyxy": [0, 0, 2, 2], "score": 0.5, "label": 2, "class_name": "bird"}]}], list(NAMES))
    assert default["annotations"][0]["category_id"] == 3 and default["categories"][2]["id"] == 3
