"""Confusion matrix and PR / P / R / F1 curve PNGs: written, readable, non-blank, the right size."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from utils.metrics import operative_metrics
from utils.plots import class_color, plot_confusion_matrix, plot_metric_curves

NAMES = ["rbc", "wbc", "platelet"]


def _case():
    rng = np.random.default_rng(0)
    dets, gts = [], []
    for _ in range(10):
        xy = rng.uniform(0, 200, (4, 2))
        boxes = np.concatenate([xy, xy + 30], 1)
        labels = rng.integers(0, 3, 4)
        gts.append({"boxes": boxes, "labels": labels})
        dets.append({"boxes": np.concatenate([boxes + rng.normal(0, 2, boxes.shape), boxes[:1] + 100]),
                     "scores": rng.random(5), "labels": np.concatenate([labels, [1]])})
    return operative_metrics(dets, gts, NAMES)


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_confusion_matrix_png(tmp_path):
    report, _ = _case()
    conf = report["confusion"]
    path = plot_confusion_matrix(conf["matrix"], conf["labels"], tmp_path / "sub" / "cm.png", title="t")
    assert path == tmp_path / "sub" / "cm.png" and path.stat().st_size > 5000
    px = _pixels(path)
    assert px.shape[0] >= 400 and px.std() > 10  # drawn, not a blank canvas
    with pytest.raises(ValueError, match=r"matrix \(4, 4\) does not fit 3 labels"):
        plot_confusion_matrix(conf["matrix"], NAMES, tmp_path / "bad.png")


def test_curve_pngs(tmp_path):
    _, curves = _case()
    paths = plot_metric_curves(curves, NAMES, tmp_path, title="(epoch 3)")
    assert sorted(p.name for p in paths) == ["F1_curve.png", "PR_curve.png", "P_curve.png", "R_curve.png"]
    for p in paths:
        px = _pixels(p)
        assert px.shape == (480, 640, 3) and px.std() > 10
        # each class is drawn in its box colour (utils.plots.class_color), so plots and images agree
        for c in range(len(NAMES)):
            assert (np.abs(px.astype(int) - class_color(c)).sum(-1) < 30).any(), (p.name, c)


def test_curves_with_no_detections_still_plot(tmp_path):
    gts = [{"boxes": np.array([[0.0, 0, 10, 10]]), "labels": np.array([0])}]
    _, curves = operative_metrics([{"boxes": np.zeros((0, 4)), "scores": [], "labels": []}], gts, NAMES)
    for p in plot_metric_curves(curves, NAMES, tmp_path):
        assert p.stat().st_size > 0 and _pixels(p).std() > 0
