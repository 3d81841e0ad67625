"""COCO metrics: the identity and empty cases on both backends, per class and per size."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from utils.coco_eval import (
    METRIC_KEYS,
    coco_evaluate,
    detections_to_coco_results,
    format_metrics,
    records_to_coco_gt,
)

NAMES = ["a", "b", "c"]
BACKENDS = ["faster_coco_eval", "pycocotools"]
PER_CLASS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100")


def rec(image_id, boxes, labels):
    return SimpleNamespace(image_id=image_id, file=f"{image_id}.jpg", img_hw=(600, 600),
                           boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                           labels=np.asarray(labels, np.int64), ignore=np.zeros((0, 4), np.float32))


# class a: a small (20 px) and a large (200 px) box; class b: one medium (60 px) box; class c: no GT.
RECS = [rec(1, [[10, 10, 30, 30], [100, 100, 300, 300]], [0, 0]), rec(2, [[50, 50, 110, 110]], [1]),
        rec(3, [], [])]


def results(recs):
    dets = [{"image_id": r.image_id, "boxes": r.boxes, "scores": np.full(len(r.boxes), 0.9),
             "labels": r.labels} for r in recs]
    return detections_to_coco_results(dets, [1, 2, 3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_scores_one_per_class_and_size(backend):
    m = coco_evaluate(records_to_coco_gt(RECS, NAMES), results(RECS), NAMES, backend=backend)
    assert all(m[k] == pytest.approx(1.0) for k in METRIC_KEYS if k != "AR1")
    # AR@1 keeps one detection per (image, class): class a finds 1 of its 2 boxes, b its 1: (0.5 + 1) / 2.
    assert m["AR1"] == pytest.approx(0.75)
    a, b, c = m["per_class"]
    assert (a["name"], b["name"], c["name"]) == ("a", "b", "c")
    # class a has no medium box: -1 there
    assert [a[k] for k in PER_CLASS] == pytest.approx([1.0, 1.0, 1.0, 1.0, -1.0, 1.0, 1.0])
    assert [b[k] for k in PER_CLASS] == pytest.approx([1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0])
    assert all(c[k] == -1.0 for k in PER_CLASS)  # no GT: not measurable, not zero
    assert (a["num_gt"], a["num_det"], c["num_gt"], c["num_det"]) == (2, 2, 0, 0)
    table = format_metrics(m)
    assert "AP75" in table and "medium" in table and "AR100" in table


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_predictions_score_zero_not_crash(backend):
    m = coco_evaluate(records_to_coco_gt(RECS, NAMES), [], NAMES, backend=backend)
    assert all(m[k] == 0.0 for k in METRIC_KEYS)  # every size range has a GT box here
    assert m["per_class"][0]["AP_small"] == 0.0 and m["per_class"][2]["AP"] == -1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_ground_truth_is_not_measurable(backend):
    gt = records_to_coco_gt([rec(1, [], []), rec(2, [], [])], NAMES)
    for res in ([], detections_to_coco_results([{"image_id": 1, "boxes": [[0, 0, 9, 9]], "scores": [0.8],
                                                 "labels": [2]}], [1, 2, 3])):
        m = coco_evaluate(gt, res, NAMES, backend=backend)
        assert all(m[k] == -1.0 for k in METRIC_KEYS)
        assert all(r[k] == -1.0 for r in m["per_class"] for k in PER_CLASS)
        assert m["num_images"] == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_img_ids_subset_is_scored_alone(backend):
    """Scoring 'N of M' images: detections on excluded images never count."""
    gt = records_to_coco_gt(RECS, NAMES)
    wrong = detections_to_coco_results([{"image_id": 2, "boxes": [[400, 400, 450, 450]], "scores": [0.99],
                                         "labels": [0]}], [1, 2, 3])
    m = coco_evaluate(gt, results(RECS[:1]) + wrong, NAMES, backend=backend, img_ids=[1])
    assert m["num_images"] == 1 and m["mAP"] == pytest.approx(1.0)
    assert m["per_class"][0]["num_det"] == 2 and m["per_class"][1]["num_gt"] == 0
