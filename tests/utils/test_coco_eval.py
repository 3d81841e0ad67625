"""COCO evaluation: GT/result conversion, both backends, parity, ignore regions, errors."""
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
    with_source_image_ids,
)
from utils.coco_results import CocoResults

NAMES = ["rbc", "wbc", "platelet", "other"]
BACKENDS = ["faster_coco_eval", "pycocotools"]


def make_records(seed: int = 0, n_images: int = 30, with_ignore: bool = False) -> list:
    """Seeded synthetic records: 0-6 boxes per image, sides 4..300 px (small, medium, large)."""
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n_images):
        n = int(rng.integers(0, 7))
        xy = rng.uniform(0, 300, (n, 2))
        wh = np.exp(rng.uniform(np.log(4), np.log(300), (n, 2)))
        ign = np.zeros((0, 4), np.float32)
        if with_ignore and i % 3 == 0:
            ign = np.array([[500, 500, 600, 560]], np.float32)
        recs.append(SimpleNamespace(image_id=i + 1, file=f"/data/img dir/{i:03d}.jpg", img_hw=(640, 700),
                                    boxes=np.concatenate([xy, xy + wh], 1).astype(np.float32),
                                    labels=rng.integers(0, len(NAMES), n).astype(np.int64), ignore=ign))
    return recs


def perfect_dets(recs: list) -> list[dict]:
    return [{"image_id": r.image_id, "boxes": r.boxes, "scores": np.ones(len(r.boxes)), "labels": r.labels}
            for r in recs]


def noisy_dets(recs: list, seed: int = 1) -> list[dict]:
    """GT jittered by a few px (some labels flipped) plus 3 random false positives per image."""
    rng = np.random.default_rng(seed)
    out = []
    for r in recs:
        b = r.boxes + rng.normal(0, 4, r.boxes.shape)
        labels = np.where(rng.random(len(r.labels)) < 0.1, rng.integers(0, 4, len(r.labels)), r.labels)
        fp_xy = rng.uniform(0, 600, (3, 2))
        fp = np.concatenate([fp_xy, fp_xy + rng.uniform(5, 120, (3, 2))], 1)
        out.append({"image_id": r.image_id, "boxes": np.concatenate([b, fp]),
                    "scores": rng.random(len(b) + 3), "labels": np.concatenate([labels, rng.integers(0, 4, 3)])})
    return out


@pytest.fixture(scope="module")
def recs() -> list:
    return make_records()


@pytest.fixture(scope="module")
def gt(recs) -> dict:
    return records_to_coco_gt(recs, NAMES)


def test_records_to_coco_gt_fields():
    r = SimpleNamespace(image_id=7, file="/a/b/x.jpg", img_hw=(100, 200),
                        boxes=np.array([[10, 20, 40, 60]], np.float32), labels=np.array([2]),
                        ignore=np.array([[0, 0, 5, 5]], np.float32))
    gt = records_to_coco_gt([r], ["a", "b", "c"], cat_ids=[5, 9, 11])
    assert gt["images"] == [{"id": 7, "file_name": "x.jpg", "height": 100, "width": 200}]
    assert gt["categories"] == [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}, {"id": 11, "name": "c"}]
    a0 = gt["annotations"][0]
    assert a0 == {"id": 1, "image_id": 7, "category_id": 11, "bbox": [10.0, 20.0, 30.0, 40.0],
                  "area": 1200.0, "iscrowd": 0}
    crowd = gt["annotations"][1:]
    assert [a["category_id"] for a in crowd] == [5, 9, 11]  # one crowd annotation per category
    assert all(a["iscrowd"] == 1 and a["bbox"] == [0.0, 0.0, 5.0, 5.0] for a in crowd)
    assert [a["id"] for a in gt["annotations"]] == [1, 2, 3, 4]


def test_records_to_coco_gt_errors():
    def rec(**kw):
        base = {"image_id": 1, "file": "a.jpg", "img_hw": (10, 10),
                "boxes": np.array([[1, 1, 5, 5]], np.float32), "labels": np.array([0]),
                "ignore": np.zeros((0, 4), np.float32)}
        return SimpleNamespace(**{**base, **kw})
    with pytest.raises(ValueError, match="duplicate image_id 1"):
        records_to_coco_gt([rec(), rec(file="b.jpg")], ["a"])
    with pytest.raises(ValueError, match=r"a.jpg: label 3 not in \[0, 0\]"):
        records_to_coco_gt([rec(labels=np.array([3]))], ["a"])
    with pytest.raises(ValueError, match="a.jpg: boxes"):
        records_to_coco_gt([rec(boxes=np.array([[5, 5, 5, 9]], np.float32))], ["a"])
    with pytest.raises(ValueError, match="cat_ids has 2 ids"):
        records_to_coco_gt([rec()], ["a"], cat_ids=[1, 2])


def test_detections_to_coco_results_full_precision():
    box = np.array([[10.123456789, 20.5, 40.987654321, 60.25]])
    res = detections_to_coco_results([{"image_id": 3, "boxes": box, "scores": [0.87654321], "labels": [1]}],
                                     cat_ids=[4, 8])
    assert res[0]["image_id"] == 3 and res[0]["category_id"] == 8 and res[0]["score"] == 0.87654321
    assert res[0]["bbox"] == [10.123456789, 20.5, 40.987654321 - 10.123456789, 60.25 - 20.5]
    with pytest.raises(ValueError, match="image_id 3: predicted label 2"):
        detections_to_coco_results([{"image_id": 3, "boxes": box, "scores": [0.5], "labels": [2]}], [4, 8])


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_predictions_score_one(recs, gt, backend):
    m = coco_evaluate(gt, detections_to_coco_results(perfect_dets(recs), [1, 2, 3, 4]), NAMES, backend=backend)
    for k in ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large", "AR100"):
        assert m[k] == pytest.approx(1.0), k
    assert [c["AP"] for c in m["per_class"]] == pytest.approx([1.0] * 4)
    assert m["backend"] == backend and m["num_images"] == 30
    assert sum(c["num_gt"] for c in m["per_class"]) == sum(len(r.boxes) for r in recs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_predictions_scores_zero(gt, backend):
    m = coco_evaluate(gt, [], NAMES, backend=backend)
    assert all(m[k] == 0.0 for k in METRIC_KEYS)
    assert all(c["AP"] == 0.0 and c["AP50"] == 0.0 and c["num_det"] == 0 for c in m["per_class"])


def test_backends_agree_on_noisy_predictions(recs, gt, capsys):
    results = detections_to_coco_results(noisy_dets(recs), [1, 2, 3, 4])
    fast = coco_evaluate(gt, results, NAMES, backend="faster_coco_eval")
    ref = coco_evaluate(gt, results, NAMES, backend="pycocotools")
    assert capsys.readouterr().out == ""  # backend prints are swallowed; the table goes to loguru
    assert 0.05 < ref["mAP"] < 0.95  # a non-trivial score, so agreement means something
    for k in METRIC_KEYS:
        assert fast[k] == pytest.approx(ref[k], abs=1e-6), k
    for a, b in zip(fast["per_class"], ref["per_class"]):
        assert a["AP"] == pytest.approx(b["AP"], abs=1e-6) and a["AP50"] == pytest.approx(b["AP50"], abs=1e-6)
        assert (a["num_gt"], a["num_det"]) == (b["num_gt"], b["num_det"])
    assert results[0].keys() == {"image_id", "category_id", "bbox", "score"}  # inputs not mutated


@pytest.mark.parametrize("backend", BACKENDS)
def test_detection_on_ignore_region_is_not_false_positive(backend):
    recs = make_records(seed=3, with_ignore=True)
    base = detections_to_coco_results(noisy_dets(recs, seed=4), [1, 2, 3, 4])
    on_ignore = [{"image_id": r.image_id, "category_id": 1 + (r.image_id % 4), "bbox": [500.0, 500.0, 100.0, 60.0],
                  "score": 0.999} for r in recs if len(r.ignore)]
    gt = records_to_coco_gt(recs, NAMES)
    without = coco_evaluate(gt, base, NAMES, backend=backend)
    with_ = coco_evaluate(gt, base + on_ignore, NAMES, backend=backend)
    # AR1 is exempt: COCO truncates to maxDets before matching, so an ignored detection still
    # takes the single slot of its (image, class) pair. Every AP and AR10/AR100 are unchanged.
    for k in [k for k in METRIC_KEYS if k != "AR1"]:
        assert with_[k] == pytest.approx(without[k], abs=1e-12), k
    assert [c["AP"] for c in with_["per_class"]] == [c["AP"] for c in without["per_class"]]
    # Control: without the crowd annotations the same detections are high-scoring false positives.
    gt_no_ign = {**gt, "annotations": [a for a in gt["annotations"] if not a["iscrowd"]]}
    hurt = coco_evaluate(gt_no_ign, base + on_ignore, NAMES, backend=backend)
    assert hurt["mAP"] < without["mAP"] - 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_category_raises(gt, backend):
    res = [{"image_id": 1, "category_id": 42, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.5}]
    with pytest.raises(ValueError, match=r"category_id 42.*valid ids: \[1, 2, 3, 4\]"):
        coco_evaluate(gt, res, NAMES, backend=backend)
    with pytest.raises(ValueError, match="image_id 999"):
        coco_evaluate(gt, [{**res[0], "category_id": 1, "image_id": 999}], NAMES, backend=backend)
    with pytest.raises(ValueError, match="unknown eval backend 'detectron'"):
        coco_evaluate(gt, [], NAMES, backend="detectron")


@pytest.mark.parametrize("backend", BACKENDS)
def test_img_ids_subset_matches_subset_gt(recs, backend):
    results = detections_to_coco_results(noisy_dets(recs), [1, 2, 3, 4])
    keep = list(range(1, 31, 2))
    sub = coco_evaluate(records_to_coco_gt(recs, NAMES), results, NAMES, backend=backend, img_ids=keep)
    sub_recs = [r for r in recs if r.image_id in keep]
    sub_res = [r for r in results if r["image_id"] in keep]
    ref = coco_evaluate(records_to_coco_gt(sub_recs, NAMES), sub_res, NAMES, backend=backend)
    assert sub["num_images"] == ref["num_images"] == 15
    for k in METRIC_KEYS:
        assert sub[k] == pytest.approx(ref[k], abs=1e-12), k
    assert [c["num_det"] for c in sub["per_class"]] == [c["num_det"] for c in ref["per_class"]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_images_without_gt_and_missing_classes(backend):
    empty = [SimpleNamespace(image_id=i, file=f"{i}.jpg", img_hw=(50, 50), boxes=np.zeros((0, 4), np.float32),
                             labels=np.zeros(0, np.int64), ignore=np.zeros((0, 4), np.float32)) for i in (1, 2)]
    full = SimpleNamespace(image_id=3, file="3.jpg", img_hw=(50, 50), boxes=np.array([[5, 5, 20, 20]], np.float32),
                           labels=np.array([0]), ignore=np.zeros((0, 4), np.float32))
    gt = records_to_coco_gt(empty + [full], NAMES)
    res = [{"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.3},
           {"image_id": 3, "category_id": 1, "bbox": [5.0, 5.0, 15.0, 15.0], "score": 0.9}]
    m = coco_evaluate(gt, res, NAMES, backend=backend)
    assert m["mAP"] == pytest.approx(1.0) and m["num_images"] == 3
    assert m["mAP_medium"] == -1.0 and m["mAP_large"] == -1.0  # no GT in those ranges
    assert [c["AP"] for c in m["per_class"]] == [pytest.approx(1.0), -1.0, -1.0, -1.0]
    m0 = coco_evaluate(records_to_coco_gt(empty, NAMES), [], NAMES, backend=backend)
    assert all(m0[k] == -1.0 for k in METRIC_KEYS)  # nothing measurable at all


def test_format_metrics_table(gt, recs):
    m = coco_evaluate(gt, detections_to_coco_results(perfect_dets(recs), [1, 2, 3, 4]), NAMES)
    text = format_metrics({**m, "mAP_small": -1.0})
    lines = text.splitlines()
    assert lines[0].split() == list(METRIC_KEYS)
    assert lines[1].split()[0] == "1.000" and lines[1].split()[3] == "-"
    assert len(lines) == 3 + len(NAMES) and lines[3].split()[:2] == ["rbc", "1"]



@pytest.mark.parametrize("backend", BACKENDS)
def test_results_under_the_datasets_own_image_ids_score_the_same(recs, backend):
    """Positions 1..N renamed to the dataset's ids (shuffled, sparse): the same numbers against the
    renamed ground truth, every id changed consistently."""
    gt = records_to_coco_gt(recs, NAMES)
    results = CocoResults.from_dicts(detections_to_coco_results(noisy_dets(recs), [1, 2, 3, 4]))
    ids = np.array([r.image_id for r in recs])
    own = np.random.default_rng(5).permutation(len(recs)) * 1000 + 139
    mapped_gt, mapped = with_source_image_ids(gt, results, ids, own)
    lookup = dict(zip(ids.tolist(), own.tolist()))
    assert [im["id"] for im in mapped_gt["images"]] == [lookup[im["id"]] for im in gt["images"]]
    assert [a["image_id"] for a in mapped_gt["annotations"]] == [lookup[a["image_id"]] for a in gt["annotations"]]
    assert mapped.image_id.tolist() == [lookup[i] for i in results.image_id.tolist()]
    assert gt["images"][0]["id"] == 1  # the input is left as it was
    before, after = coco_evaluate(gt, results, NAMES, backend), coco_evaluate(mapped_gt, mapped, NAMES, backend)
    assert [after[k] for k in METRIC_KEYS] == [before[k] for k in METRIC_KEYS]


def test_no_own_ids_or_shared_ids_keep_positions_and_unknown_images_raise(recs):
    gt = records_to_coco_gt(recs, NAMES)
    results = CocoResults.from_dicts(detections_to_coco_results(perfect_dets(recs), [1, 2, 3, 4]))
    ids = np.arange(1, len(recs) + 1)
    assert with_source_image_ids(gt, results, ids, np.full(len(recs), -1)) is None  # VOC / YOLO txt
    assert with_source_image_ids(gt, results, ids, np.r_[ids[:-1], 1] + 10) is None  # two images, one id
    stray = CocoResults(np.array([len(recs) + 5]), np.array([1]), np.zeros((1, 4)), np.ones(1))
    with pytest.raises(ValueError, match=f"image_id {len(recs) + 5}, which is not an image"):
        with_source_image_ids(gt, stray, ids, ids + 100)
