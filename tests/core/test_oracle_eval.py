"""The real Evaluator and Predictor driven by oracle models (tests/core/oracle.py) on BCCD images of
640x480 and 480x640: the ground truth scores mAP 1.0 on both COCO backends and comes back to
original pixels within 1e-3 px, square and rectangular batches alike; a perturbed oracle scores the
mAP its construction gives. Letterbox scales are exact here (640 -> 416 and 320: 0.65 and 0.5 give
whole-pixel sides), so the content rectangle the oracle sees is the letterbox's own scale."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from oracle import (
    CPU,
    Perturbation,
    coco_xyxy,
    evaluate,
    expected_coco,
    make_oracle_voc,
    oracle_cfg,
    oracle_for,
    read_rgb,
    sorted_boxes,
)

from core.evaluation.predictor import Predictor
from core.loaders import build_eval_loader


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return make_oracle_voc(tmp_path_factory.mktemp("oracle") / "voc")


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
@pytest.mark.parametrize("rect,size", [(False, 416), (True, 416), (False, 320), (True, 320)])
def test_oracle_scores_one_and_its_boxes_come_back_exactly(voc, tmp_path, backend, rect, size):
    cfg = oracle_cfg(voc, **{"eval.backend": backend, "eval.rect": rect, "data.img_size": size})
    loader = build_eval_loader(cfg, CPU, "val")
    if rect:  # both orientations give their own canvas: landscape and portrait batches
        assert sorted({tuple(hw) for hw in loader.dataset.canvas_hw.tolist()}) != [(size, size)]
    metrics, preds, records = evaluate(cfg, oracle_for(loader.dataset.records, 3), tmp_path)
    assert metrics["backend"] == backend and metrics["num_images"] == 8
    assert metrics["mAP"] == pytest.approx(1.0, abs=1e-12) and metrics["mAP50"] == pytest.approx(1.0, abs=1e-12)
    assert {r.img_hw for r in records} == {(480, 640), (640, 480)}
    for r in records:
        got = coco_xyxy(preds, r.image_id)
        assert got.shape == r.boxes.shape
        np.testing.assert_allclose(got, sorted_boxes(r.boxes), atol=1e-3, err_msg=Path(r.file).name)


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_perturbed_oracle_scores_what_its_construction_gives(voc, tmp_path, backend):
    perturb = Perturbation(iou=0.625)
    cfg = oracle_cfg(voc, **{"eval.backend": backend, "eval.rect": True, "data.img_size": 416})
    loader = build_eval_loader(cfg, CPU, "val")
    metrics, _, records = evaluate(cfg, oracle_for(loader.dataset.records, 3, perturb), tmp_path)
    want = expected_coco(records, perturb, 3)
    assert 0.5 < want["mAP"] < 0.9  # a value a wrong mapping or matching would move
    for key in ("mAP", "mAP50", "mAP75"):
        assert metrics[key] == pytest.approx(want[key], abs=1e-9), key
    assert metrics["mAP50"] == pytest.approx(1.0)  # IoU 0.625 >= 0.5: every box still matches


def test_perturbation_moves_every_second_box_to_the_set_iou():
    # A 40x20 box at x 100..140 in a 640x480 image: d = 40 * (1 - 0.625) / 1.625 = 9.2308 px to the
    # right; overlap (40 - d) * 20 = 615.38, union (40 + d) * 20 = 984.62, IoU = 0.625.
    boxes = np.array([[10, 10, 50, 30], [100, 50, 140, 70], [600, 0, 640, 20]], np.float64)
    moved, scores, shifted = Perturbation(iou=0.625).apply(boxes, (480, 640))
    assert shifted.tolist() == [False, True, False] and scores.tolist() == [0.9, 0.6, 0.9]
    np.testing.assert_allclose(moved[1], [100 + 40 * 0.375 / 1.625, 50, 140 + 40 * 0.375 / 1.625, 70])
    np.testing.assert_array_equal(moved[[0, 2]], boxes[[0, 2]])
    # At the right edge the box moves left instead: [600, 0, 640, 20] as the second of two boxes.
    moved, _, _ = Perturbation(iou=0.625).apply(boxes[[0, 2]], (480, 640))
    np.testing.assert_allclose(moved[1], [600 - 9.230769230769, 0, 640 - 9.230769230769, 20])


def test_expected_coco_is_worked_out_per_class():
    # Labels [0, 0, 0, 1]: positions 1 and 3 are shifted. Class 0 has n = 3, k = 2 exact; class 1 has
    # n = 1, k = 0. Above IoU 0.625, class 0 reaches recall 2/3 at precision 1: the recall points
    # 0.00..0.66 (67 of 101) count; class 1's only detection is a false positive: AP 0. At 0.5, 0.55
    # and 0.6 every class scores 1. mAP75 = (67/101 + 0) / 2; mAP = (3 x 1 + 7 x mAP75) / 10.
    class R:  # a record's fields that expected_coco reads
        boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]], np.float64)
        labels = np.array([0, 0, 0, 1])
        img_hw = (100, 100)

    want = expected_coco([R()], Perturbation(iou=0.625), 2)
    high = (67 / 101 + 0.0) / 2
    assert want["mAP50"] == pytest.approx(1.0)
    assert want["mAP75"] == pytest.approx(high)
    assert want["mAP"] == pytest.approx((3 * 1.0 + 7 * high) / 10)


def test_predictor_maps_the_oracle_back_to_original_pixels(voc, tmp_path):
    cfg = oracle_cfg(voc, **{"data.img_size": 416, "predict.batch_size": 3})
    loader = build_eval_loader(cfg, CPU, "val")
    records = list(loader.dataset.records)
    predictor = Predictor(cfg, oracle_for(records, 3))
    images = [np.ascontiguousarray((read_rgb(Path(r.file)).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
              for r in records]
    for r, det in zip(records, predictor.detect_batch(images)):
        np.testing.assert_allclose(sorted_boxes(det["boxes"]), sorted_boxes(r.boxes), atol=1e-3,
                                   err_msg=Path(r.file).name)
        assert sorted(det["labels"].tolist()) == sorted(r.labels.tolist())
    # The whole task path: a folder source, predictions written as COCO json in original pixels.
    summary = predictor.run(str(voc / "JPEGImages"), tmp_path / "pred")
    assert summary["frames"] == 8 and summary["detections"] == sum(len(r.labels) for r in records)
    coco = json.loads((tmp_path / "pred" / "predictions_coco.json").read_text())
    by_name = {im["file_name"]: im["id"] for im in coco["images"]}
    for r in records:
        got = coco_xyxy(coco["annotations"], by_name[Path(r.file).name])
        np.testing.assert_allclose(got, sorted_boxes(r.boxes), atol=1e-3, err_msg=Path(r.file).name)
