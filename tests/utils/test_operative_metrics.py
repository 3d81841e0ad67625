"""Operative metrics and confusion matrix on hand-made cases with known answers, and against COCO."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from utils.coco_eval import (
    coco_evaluate,
    detections_to_coco_results,
    records_to_coco_gt,
)
from utils.metrics import box_iou_np, match_image, operative_metrics, top_confusions

NAMES = ["rbc", "wbc", "platelet"]
EMPTY4 = np.zeros((0, 4))


def gt(boxes, labels, ignore=EMPTY4, file="img.jpg") -> dict:
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "labels": np.asarray(labels, int),
            "ignore": np.asarray(ignore, float).reshape(-1, 4), "file": file}


def det(boxes, scores, labels) -> dict:
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "scores": np.asarray(scores, float),
            "labels": np.asarray(labels, int)}


GTS = [gt([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1], file="a.jpg"), gt([[5, 5, 25, 25]], [0], file="b.jpg")]
NO_DETS = [det(EMPTY4, [], []), det(EMPTY4, [], [])]


def test_all_correct():
    dets = [det(g["boxes"], [0.9] * len(g["labels"]), g["labels"]) for g in GTS]
    r, curves = operative_metrics(dets, GTS, NAMES, conf=0.25)
    assert (r["tp"], r["fp"], r["fn"]) == (3, 0, 0)
    assert r["precision"] == r["recall"] == r["f1"] == 1.0
    assert r["mean_iou_tp"] == 1.0 and r["best_f1"] == 1.0 and r["best_f1_conf"] == 0.9
    assert r["confusion"]["matrix"] == [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert r["confusion"]["labels"] == NAMES + ["background"]
    assert r["top_confusions"] == [] and r["worst_images"] == []
    assert r["fp_kinds"] == {"confused": 0, "duplicate": 0, "localization": 0, "background": 0}
    pc = {c["name"]: c for c in r["per_class"]}
    assert pc["rbc"]["tp"] == 2 and pc["wbc"]["recall"] == 1.0 and pc["rbc"]["ap50"] == 1.0
    assert pc["platelet"]["recall"] == -1.0 and pc["platelet"]["precision"] == -1.0  # no GT, no dets
    assert pc["platelet"]["ap50"] == -1.0 and pc["platelet"]["best_f1"] == -1.0
    assert r["dets_per_image_mean"] == 1.5 and r["images_without_dets"] == 0
    assert np.isnan(curves["precision"][2]).all()  # platelet: never measurable
    assert curves["f1"][-1][90] == 1.0 and curves["f1"][-1][91] == 0.0  # kept up to conf 0.90, gone above


def test_zero_predictions():
    r, curves = operative_metrics(NO_DETS, GTS, NAMES, conf=0.25)
    assert (r["tp"], r["fp"], r["fn"]) == (0, 0, 3)
    assert r["precision"] == -1.0 and r["recall"] == 0.0 and r["f1"] == 0.0  # precision not measurable
    assert r["best_f1"] == 0.0 and r["best_f1_conf"] == -1.0 and r["mean_iou_tp"] == -1.0
    assert r["confusion"]["matrix"] == [[0, 0, 0, 2], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert r["fn_kinds"] == {"confused": 0, "missed": 3}
    assert r["images_without_dets"] == 2
    assert r["dets_per_image_mean"] == 0.0 and r["dets_per_image_p95"] == 0.0
    assert [w["image"] for w in r["worst_images"]] == ["a.jpg", "b.jpg"]
    assert all(row["tp"] == 0 and row["fn"] == 3 for row in r["sweep"])
    assert not curves["pr"].any()


def test_zero_targets():
    empty = [gt(EMPTY4, []), gt(EMPTY4, [])]
    dets = [det([[0, 0, 10, 10], [1, 1, 5, 5]], [0.9, 0.3], [0, 2]), det([[0, 0, 9, 9]], [0.1], [1])]
    r, _ = operative_metrics(dets, empty, NAMES, conf=0.25)
    assert (r["tp"], r["fp"], r["fn"], r["num_gt"]) == (0, 2, 0, 0)
    assert r["precision"] == 0.0 and r["recall"] == -1.0 and r["f1"] == 0.0
    assert r["best_f1"] == -1.0  # nothing to find: no threshold is "best"
    assert r["confusion"]["matrix"][3] == [1, 0, 1, 0]  # background row: false alarms by predicted class
    assert r["fp_kinds"]["background"] == 2
    assert r["dets_per_image_mean"] == 1.0 and r["images_without_dets"] == 1  # the 0.1 one is below conf


def test_all_confused():
    dets = [det(GTS[0]["boxes"], [0.8, 0.7], [1, 0]), det(GTS[1]["boxes"], [0.6], [2])]
    r, _ = operative_metrics(dets, GTS, NAMES, conf=0.25)
    assert (r["tp"], r["fp"], r["fn"]) == (0, 3, 3)
    assert r["precision"] == r["recall"] == r["f1"] == 0.0
    m = np.array(r["confusion"]["matrix"])
    assert m.tolist() == [[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert r["fp_kinds"]["confused"] == 3 and r["fn_kinds"] == {"confused": 3, "missed": 0}
    assert r["top_confusions"] == [
        {"true": "rbc", "pred": "wbc", "count": 1, "share": 0.5},
        {"true": "rbc", "pred": "platelet", "count": 1, "share": 0.5},
        {"true": "wbc", "pred": "rbc", "count": 1, "share": 1.0}]


def test_thresholds_error_kinds_ignore_and_best_f1():
    g = [gt([[0, 0, 10, 10], [20, 0, 30, 10]], [0, 0], ignore=[[100, 100, 150, 150]])]
    d = [det([[0, 0, 10, 8],  # A 0.9: TP on g0 at IoU 0.8
              [50, 50, 60, 60],  # B 0.8: background FP
              [20, 0, 30, 10],  # C 0.7: TP on g1 at IoU 1
              [0, 0, 10, 10],  # D 0.6: duplicate of g0 (taken by A)
              [20, 0, 23, 10],  # E 0.3: IoU 0.3 with g1: localization error
              [110, 110, 120, 120]],  # F 0.95: on the ignore region: ignored
             [0.9, 0.8, 0.7, 0.6, 0.3, 0.95], [0] * 6)]
    r, _ = operative_metrics(d, g, NAMES, conf=0.25, sweep_confs=[0.5, 0.65])
    assert (r["tp"], r["fp"], r["fn"], r["ignored"]) == (2, 3, 0, 1)
    assert r["precision"] == pytest.approx(0.4) and r["recall"] == 1.0 and r["f1"] == pytest.approx(4 / 7)
    assert r["mean_iou_tp"] == pytest.approx(0.9)
    assert r["fp_kinds"] == {"confused": 0, "duplicate": 1, "localization": 1, "background": 1}
    assert r["best_f1"] == pytest.approx(0.8) and r["best_f1_conf"] == 0.7  # after A, B, C: 2 TP, 1 FP
    assert r["dets_per_image_mean"] == 6  # what a user sees, ignored detection included
    sweep = {row["conf"]: row for row in r["sweep"]}
    assert sorted(sweep) == [0.25, 0.5, 0.65, 0.7]  # requested, production and best-F1 thresholds
    assert sweep[0.7]["f1"] == pytest.approx(0.8)
    assert (sweep[0.65]["tp"], sweep[0.65]["fp"], sweep[0.65]["fn"]) == (2, 1, 0)
    assert (sweep[0.5]["tp"], sweep[0.5]["fp"], sweep[0.5]["dets_per_image"]) == (2, 2, 5)
    assert r["confusion"]["matrix"][0][0] == 2 and r["confusion"]["matrix"][3][0] == 3


def test_greedy_takes_highest_iou_and_score_order():
    g = gt([[0, 0, 10, 10], [2, 0, 12, 10]], [0, 0])
    d = det([[2, 0, 12, 10], [0, 0, 10, 10]], [0.5, 0.9], [0, 0])
    m = match_image(d, g, 0.5)
    assert m.order.tolist() == [1, 0]  # by descending score
    assert m.gt_det.tolist() == [0, 1]  # each detection took its exact box, not the first one above 0.5
    assert m.iou.tolist() == [1.0, 1.0]


def random_case(seed: int, n_img: int = 40, nc: int = 3):
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for i in range(n_img):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 200, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, 80, (n, 2))], 1)
        labels = rng.integers(0, nc, n)
        ign = np.array([[300.0, 300, 340, 330]]) if i % 4 == 0 else EMPTY4
        gts.append(gt(boxes, labels, ign, file=f"{i}.jpg"))
        jitter = boxes + rng.normal(0, 3, boxes.shape)
        jitter = np.concatenate([jitter[:, :2], np.maximum(jitter[:, 2:], jitter[:, :2] + 1)], 1)
        flip = np.where(rng.random(n) < 0.2, rng.integers(0, nc, n), labels)
        fp_xy = rng.uniform(0, 320, (4, 2))
        fp = np.concatenate([fp_xy, fp_xy + rng.uniform(5, 60, (4, 2))], 1)
        fp_labels = rng.integers(0, nc, 4)
        dets.append(det(np.concatenate([jitter, fp]), rng.random(n + 4), np.concatenate([flip, fp_labels])))
    return dets, gts


@pytest.mark.parametrize("conf", [0.0, 0.3, 0.7])
def test_matrix_invariants_and_sweep_consistency(conf):
    dets, gts = random_case(seed=5)
    r, curves = operative_metrics(dets, gts, NAMES, conf=conf, sweep_confs=[0.0, 0.3, 0.7])
    m = np.array(r["confusion"]["matrix"])
    nc = len(NAMES)
    num_gt = np.bincount(np.concatenate([g["labels"] for g in gts]), minlength=nc)
    assert (m[:nc].sum(1) == num_gt).all()  # every GT lands once in its row
    pc = r["per_class"]
    assert [c["tp"] for c in pc] == m.diagonal()[:nc].tolist()
    assert [c["tp"] + c["fp"] for c in pc] == m[:, :nc].sum(0).tolist()  # columns: non-ignored detections
    assert r["tp"] + r["fp"] == m[:, :nc].sum() and r["fn"] == m[:nc].sum() - np.trace(m)
    assert r["fp"] == sum(r["fp_kinds"].values()) and r["fn"] == sum(r["fn_kinds"].values())
    assert r["fp_kinds"]["confused"] == r["fn_kinds"]["confused"] == m[:nc, :nc].sum() - np.trace(m[:nc, :nc])
    row = next(s for s in r["sweep"] if s["conf"] == conf)
    # one matching serves all thresholds
    assert (row["tp"], row["fp"], row["fn"]) == (r["tp"], r["fp"], r["fn"])
    assert r["best_f1"] >= np.nanmax(curves["f1"][-1]) - 1e-12  # exact search beats the 0.01 grid
    assert 0.2 < r["best_f1"] < 1.0


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_ap50_equals_coco_per_class_ap50(backend):
    """Same matching as COCO at one IoU: the PR curve's 101-point AP equals COCO's AP50 per class."""
    dets, gts = random_case(seed=11, n_img=60)
    recs = [SimpleNamespace(image_id=i + 1, file=g["file"], img_hw=(400, 400), boxes=g["boxes"],
                            labels=g["labels"], ignore=g["ignore"]) for i, g in enumerate(gts)]
    coco_gt = records_to_coco_gt(recs, NAMES)
    res = detections_to_coco_results([{"image_id": i + 1, **d} for i, d in enumerate(dets)], [1, 2, 3])
    coco = coco_evaluate(coco_gt, res, NAMES, backend=backend)
    r, curves = operative_metrics(dets, gts, NAMES)
    ours = [c["ap50"] for c in r["per_class"]]
    assert ours == pytest.approx([c["AP50"] for c in coco["per_class"]], abs=1e-9)
    assert 0.2 < min(ours) < 0.95  # a non-trivial score, so agreement means something
    assert curves["pr"].mean(1) == pytest.approx(ours)


def test_images_at_max_det_and_errors():
    d = [det([[0, 0, 5, 5]] * 3, [0.9, 0.8, 0.7], [0, 0, 0]), det([[0, 0, 5, 5]], [0.9], [0])]
    r, _ = operative_metrics(d, [gt(EMPTY4, []), gt(EMPTY4, [])], NAMES, max_det=3)
    assert r["images_at_max_det"] == 1
    with pytest.raises(ValueError, match="2 detection lists but 1 GT lists"):
        operative_metrics(d, [gt(EMPTY4, [])], NAMES)
    with pytest.raises(ValueError, match="match_iou=0"):
        operative_metrics(d, d, NAMES, match_iou=0)


def test_box_iou_and_top_confusions_order():
    assert box_iou_np([[0, 0, 10, 10]], [[5, 0, 15, 10], [20, 20, 20, 20]]).tolist() == [[1 / 3, 0.0]]
    m = np.array([[5, 1, 3, 0], [4, 2, 0, 1], [0, 0, 0, 0], [9, 9, 9, 0]])
    assert [(c["true"], c["pred"], c["count"]) for c in top_confusions(m, NAMES, k=2)] == [
        ("wbc", "rbc", 4), ("rbc", "platelet", 3)]
