"""Evaluation dashboard: sparklines, NEW BEST / delta lines, every section rendered with real numbers."""
from __future__ import annotations

import numpy as np
import pytest

from utils.coco_eval import (
    coco_evaluate,
    detections_to_coco_results,
    records_to_coco_gt,
)
from utils.dashboard import build_dashboard, history_entry, render_text, sparkline
from utils.metrics import operative_metrics

NAMES = ["rbc", "wbc", "platelet", "other"]


class Rec:
    def __init__(self, image_id, boxes, labels):
        self.image_id, self.file, self.img_hw = image_id, f"/data/img_{image_id}.jpg", (200, 200)
        self.boxes, self.labels, self.ignore = np.asarray(boxes, float), np.asarray(labels), np.zeros((0, 4))


@pytest.fixture(scope="module")
def metrics() -> dict:
    """Two images: rbc and wbc found, one wbc called rbc, a platelet missed, one false alarm."""
    recs = [Rec(1, [[10, 10, 50, 50], [60, 60, 120, 120]], [0, 1]),
            Rec(2, [[5, 5, 40, 40], [100, 100, 150, 150]], [1, 2])]
    dets = [{"boxes": np.array([[10, 10, 50, 50], [60, 60, 120, 120], [150, 10, 190, 40]], float),
             "scores": np.array([0.9, 0.8, 0.6]), "labels": np.array([0, 1, 0])},
            {"boxes": np.array([[5, 5, 40, 40]], float), "scores": np.array([0.7]), "labels": np.array([0])}]
    gt = records_to_coco_gt(recs, NAMES)
    per_image = [{"image_id": r.image_id, **d} for r, d in zip(recs, dets)]
    results = detections_to_coco_results(per_image, [1, 2, 3, 4])
    m = coco_evaluate(gt, results, NAMES)
    gts = [{"boxes": r.boxes, "labels": r.labels, "file": r.file} for r in recs]
    m["operative"], _ = operative_metrics(dets, gts, NAMES, conf=0.25, max_det=3)
    m.update(num_images_total=2)
    return m


def test_sparkline():
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
    assert sparkline([0.2, 0.2]) == "▁▁"  # flat: lowest block, no division by zero
    assert sparkline([-1.0, 0.3, float("nan"), 0.6]) == "·▁·█"  # not measurable values are dots
    assert sparkline([]) == ""


def test_all_sections_with_numbers(metrics):
    hist = [{**history_entry(metrics, 1), "mAP": 0.2}, {**history_entry(metrics, 2), "mAP": 0.9},
            history_entry(metrics, 3)]
    board = build_dashboard(metrics, hist, epoch=3, total_epochs=10, best_before=0.9, seconds=0.25)
    text = render_text(board, width=200)
    for title in ("quality (COCO)", "operative @ conf 0.25, IoU 0.50", "trends, epochs 1..3",
                  "threshold sweep", "classes by AP", "error health", "top confusions"):
        assert title in text, title
    op = metrics["operative"]
    assert (op["tp"], op["fp"], op["fn"]) == (2, 2, 2)
    assert "2 / 2 / 2" in text and "epoch 3/10" in text and "metrics in 0.25 s" in text
    assert f"mAP {metrics['mAP']:.4f}" in text
    assert f"{metrics['mAP'] - 0.9:+.4f} vs best 0.9000, epoch 2" in text and "NEW BEST" not in text
    assert "▁█" in text  # the mAP trend: 0.2, 0.9, then this epoch
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.strip()}
    assert lines["wbc"].split()[:3] == ["wbc", "rbc", "1"]  # top confusion row: wbc predicted as rbc, once
    assert "FN missed" in text and "platelet" in text and "other" in text  # class without GT is named
    assert "0.25" in text and "prod" in text
    assert "images at max_det" in text and "1 of 2" in text  # image 1 has 3 = max_det detections


def test_new_best_first_validation_and_reference(metrics):
    new = render_text(build_dashboard(metrics, [history_entry(metrics, 5)], epoch=5, best_before=0.01))
    assert f"NEW BEST (+{metrics['mAP'] - 0.01:.4f} over 0.0100)" in new
    first = render_text(build_dashboard(metrics, [], epoch=1, best_before=-1.0))
    assert "NEW BEST (first validation)" in first
    val = render_text(build_dashboard({**metrics, "num_images": 2, "num_images_total": 5}, [],
                                      reference={"epoch": 12, "mAP": 0.25}))
    assert "evaluated 2 of 5 images" in val and "checkpoint epoch 12 recorded mAP 0.2500" in val
    assert "NEW BEST" not in val and "trends" not in val  # no history, no best: nothing invented


def test_history_entry(metrics):
    h = history_entry(metrics, 7)
    assert h["epoch"] == 7 and h["mAP"] == metrics["mAP"] and h["f1"] == metrics["operative"]["f1"]
    assert set(h) == {"epoch", "mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large", "AR1", "AR10",
                      "AR100", "precision", "recall", "f1"}
