"""COCO-style bbox evaluation: ground truth and results as COCO dicts, scored in memory.

Two backends give the headline numbers and must agree: ``faster_coco_eval`` (default, C++)
and ``pycocotools`` (the reference). Both are fed the same dicts built here, so category and
image ids are mapped in one place. Results travel as arrays (``utils.coco_results.CocoResults``):
the one dict per detection the backends index is built once, directly in the form their
``loadRes`` gives, and predictions.json is written from the arrays in chunks.

Ignore regions. Our records carry class-less ignore boxes (COCO ``iscrowd=1``, VOC
``difficult``). COCOeval matches a detection only against GT of the detection's own
category, and a crowd GT is the only thing that makes a detection "neither TP nor FP"
(its ``ignore`` flag is overwritten from ``iscrowd``). So each ignore region is emitted as
one crowd annotation *per category*: a detection of any class lying on the region is then
dropped instead of counted as a false positive. This cannot create true positives or
change recall (crowd GT are excluded from the GT count), so it is exact, not an
approximation. Crowd IoU is intersection over the detection's area (COCO rule), so a small
detection inside a large region is ignored too. COCO quirk: detections are cut to maxDets
per (image, class) *before* matching, so an ignored detection still uses a slot; AR1 can
drop when one ranks first, while every AP and AR10/AR100 (with fewer dets) are unchanged.

The value -1.0. COCO reports -1 for a metric with no GT to score (e.g. ``mAP_small`` when
no GT box is smaller than 32x32 px, or a class absent from the evaluated images). We keep
-1.0 rather than 0.0 so "not measurable" is not confused with "measured zero".
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from loguru import logger

from configs.validation import METRIC_KEYS  # the COCO stats order, with the names train.monitor takes
from utils.coco_results import CocoResults
from utils.files import atomic_write


def write_results_json(path: str | os.PathLike, results: CocoResults, chunk: int = 100_000) -> None:
    """Write ``results`` as a COCO results json list, atomically, ``chunk`` detections at a time
    (the text ``write_json_atomic`` gives for the list of result dicts, without that list)."""
    with atomic_write(path, "w") as f:
        f.write("[")
        for start in range(0, len(results), chunk):
            f.write((", " if start else "") + results.json_rows(start, start + chunk))
        f.write("]")


def _resolve_cat_ids(class_names: Sequence[str], cat_ids: Sequence[int] | None) -> list[int]:
    """Category id of each contiguous label (default label + 1); checks length and uniqueness."""
    if cat_ids is None:
        return list(range(1, len(class_names) + 1))
    ids = [int(c) for c in cat_ids]
    if len(ids) != len(class_names):
        raise ValueError(f"cat_ids has {len(ids)} ids but class_names has {len(class_names)} names; "
                         "give one COCO category id per class")
    if len(set(ids)) != len(ids):
        dup = sorted(k for k, v in Counter(ids).items() if v > 1)
        raise ValueError(f"cat_ids has duplicate ids {dup}; each class needs its own category id")
    return ids


def _xyxy_to_xywh(boxes_xyxy: np.ndarray) -> np.ndarray:
    """[N, 4] xyxy -> [N, 4] COCO xywh (top-left corner, width, height), float64."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def records_to_coco_gt(records: Sequence[Any], class_names: Sequence[str],
                       cat_ids: Sequence[int] | None = None) -> dict:
    """Build a COCO ground-truth dict from dataset records.

    records: objects with ``image_id`` (int), ``file``, ``img_hw`` (h, w), ``boxes`` [n, 4]
        xyxy absolute pixels, ``labels`` [n] contiguous 0..nc-1, ``ignore`` [m, 4] xyxy.
    cat_ids: COCO category id of contiguous label i (default i + 1).
    Returns {info, images, annotations, categories}; bbox is [x, y, w, h] pixels, area w*h,
    annotation ids 1-based (id 0 is COCOeval's "unmatched" marker). Ignore regions become
    one ``iscrowd=1`` annotation per category (see the module docstring for why).
    """
    ids = _resolve_cat_ids(class_names, cat_ids)
    images: list[dict] = []
    anns: list[dict] = []
    seen: dict[int, str] = {}
    for rec in records:
        img_id, file = int(rec.image_id), str(rec.file)
        if img_id in seen:
            raise ValueError(f"duplicate image_id {img_id}: {seen[img_id]!r} and {file!r}")
        seen[img_id] = file
        h, w = (int(v) for v in rec.img_hw)
        images.append({"id": img_id, "file_name": os.path.basename(file), "height": h, "width": w})
        labels = np.asarray(rec.labels, dtype=np.int64).reshape(-1)
        bad = labels[(labels < 0) | (labels >= len(ids))]
        if bad.size:
            raise ValueError(f"{file}: label {int(bad[0])} not in [0, {len(ids) - 1}] "
                             f"(class_names has {len(ids)} names)")
        for xywh, lab in zip(_check_boxes(rec.boxes, file, "boxes"), labels):
            anns.append(_ann(len(anns) + 1, img_id, ids[lab], xywh, crowd=0))
        for xywh in _check_boxes(rec.ignore, file, "ignore"):
            for cid in ids:
                anns.append(_ann(len(anns) + 1, img_id, cid, xywh, crowd=1))
    return {
        "info": {"description": "ground truth converted from dataset records"},
        "images": images,
        "annotations": anns,
        "categories": [{"id": cid, "name": str(n)} for cid, n in zip(ids, class_names)],
    }


def with_source_image_ids(gt: dict, results: CocoResults, image_ids: np.ndarray,
                          source_ids: np.ndarray) -> tuple[dict, CocoResults] | None:
    """``gt`` and ``results`` with every image id replaced by the dataset's own id of the image
    (``RecordTable.source_ids``), so predictions.json scores against the original annotation file
    (e.g. instances_val2017.json) and can be submitted as it is.

    None when some image has no id of its own (VOC and YOLO-txt data: -1) or two images share one
    (several json files with overlapping ids): the files then keep the split positions 1..N.
    Raises ValueError when a result names an image that is not among ``image_ids``.
    """
    image_ids, source_ids = np.asarray(image_ids, np.int64), np.asarray(source_ids, np.int64)
    if not len(source_ids) or (source_ids < 0).any() or len(np.unique(source_ids)) != len(source_ids):
        return None
    order = np.argsort(image_ids, kind="stable")
    known, own = image_ids[order], source_ids[order]
    pos = np.searchsorted(known, results.image_id).clip(max=len(known) - 1)
    if len(pos) and not np.array_equal(known[pos], results.image_id):
        bad = int(results.image_id[np.flatnonzero(known[pos] != results.image_id)[0]])
        raise ValueError(f"a result has image_id {bad}, which is not an image of the ground truth")
    lookup = dict(zip(image_ids.tolist(), source_ids.tolist()))
    mapped_gt = {**gt, "images": [{**im, "id": lookup[im["id"]]} for im in gt["images"]],
                 "annotations": [{**a, "image_id": lookup[a["image_id"]]} for a in gt["annotations"]]}
    return mapped_gt, CocoResults(own[pos], results.category_id, results.bbox, results.score)


def _check_boxes(boxes_xyxy: np.ndarray, file: str, field: str) -> np.ndarray:
    """[N, 4] xyxy -> [N, 4] xywh; a non-finite or empty box is a clear error (bad val data)."""
    xywh = _xyxy_to_xywh(boxes_xyxy)
    bad = ~np.isfinite(xywh).all(1) | (xywh[:, 2] <= 0) | (xywh[:, 3] <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{file}: {field}[{i}] = {np.asarray(boxes_xyxy).reshape(-1, 4)[i].tolist()} "
                         "is not a finite xyxy box with x2 > x1 and y2 > y1; fix the dataset parser")
    return xywh


def _ann(ann_id: int, img_id: int, cat_id: int, xywh: np.ndarray, crowd: int) -> dict:
    x, y, w, h = (float(v) for v in xywh)
    return {"id": ann_id, "image_id": img_id, "category_id": int(cat_id), "bbox": [x, y, w, h],
            "area": w * h, "iscrowd": crowd}


def detections_to_coco_results(dets: Sequence[dict], cat_ids: Sequence[int]) -> list[dict]:
    """Per-image detections -> COCO results list.

    dets: dicts {"image_id": int, "boxes": [k, 4] xyxy original-image pixels, "scores": [k],
        "labels": [k] contiguous}. cat_ids: COCO category id of each contiguous label.
    Returns [{"image_id", "category_id", "bbox": [x, y, w, h] full float precision, "score"}].
    """
    out: list[dict] = []
    for d in dets:
        img_id = int(d["image_id"])
        xywh = _xyxy_to_xywh(d["boxes"])
        scores = np.asarray(d["scores"], dtype=np.float64).reshape(-1)
        labels = np.asarray(d["labels"]).astype(np.int64).reshape(-1)
        if not len(xywh) == len(scores) == len(labels):
            raise ValueError(f"image_id {img_id}: boxes/scores/labels lengths differ "
                             f"({len(xywh)}, {len(scores)}, {len(labels)})")
        bad = labels[(labels < 0) | (labels >= len(cat_ids))]
        if bad.size:
            raise ValueError(f"image_id {img_id}: predicted label {int(bad[0])} has no category id "
                             f"(cat_ids covers labels 0..{len(cat_ids) - 1}); model nc vs dataset classes?")
        for b, s, lab in zip(xywh.tolist(), scores.tolist(), labels.tolist()):
            out.append({"image_id": img_id, "category_id": int(cat_ids[lab]), "bbox": b, "score": s})
    return out


def _quiet(*args: Any, **kwargs: Any) -> None:
    """print_function for faster_coco_eval: its progress lines are replaced by our table."""


class _FasterCocoEval:
    """faster-coco-eval 1.8: COCO(dict) indexes a shallow copy; COCOeval_faster takes print_function."""

    def __init__(self) -> None:
        from faster_coco_eval import COCO, COCOeval_faster
        self.coco_cls, self.eval_cls = COCO, COCOeval_faster

    def make_eval(self, coco_gt: Any, coco_dt: Any) -> Any:
        return self.eval_cls(coco_gt, coco_dt, iouType="bbox", print_function=_quiet)


class _Pycocotools:
    """pycocotools: COCO() then assign .dataset; everything prints to stdout."""

    def __init__(self) -> None:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        self.coco_cls, self.eval_cls = COCO, COCOeval

    def make_eval(self, coco_gt: Any, coco_dt: Any) -> Any:
        return self.eval_cls(coco_gt, coco_dt, "bbox")


BACKENDS = {"faster_coco_eval": _FasterCocoEval, "pycocotools": _Pycocotools}


def _index(coco_cls: type, dataset: dict) -> Any:
    coco = coco_cls()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _check_inputs(gt: dict, results: CocoResults, img_ids: Sequence[int] | None) -> list[int]:
    """Validate ids before the backends see them (their own checks are bare asserts)."""
    gt_imgs = np.array(sorted({int(im["id"]) for im in gt["images"]}), np.int64)
    valid_cats = sorted(int(c["id"]) for c in gt["categories"])
    bad = np.flatnonzero(~np.isin(results.category_id, valid_cats))
    if len(bad):
        k = int(bad[0])
        raise ValueError(f"detection on image_id {int(results.image_id[k])} has category_id "
                         f"{int(results.category_id[k])}, not a GT category; valid ids: {valid_cats}")
    bad = np.flatnonzero(~np.isin(results.image_id, gt_imgs))
    if len(bad):
        raise ValueError(f"detection has image_id {int(results.image_id[bad[0]])}, which is not in the GT images")
    if img_ids is None:
        return gt_imgs.tolist()
    missing = sorted({int(i) for i in img_ids} - set(gt_imgs.tolist()))
    if missing:
        raise ValueError(f"img_ids {missing[:10]} are not in the GT images")
    return sorted({int(i) for i in img_ids})


def _results_dataset(gt: dict, results: CocoResults) -> dict:
    """The result set the backends' ``loadRes`` would build from ``results``, built directly: the
    GT's image list, a copy of its categories and one annotation dict per detection."""
    return {"images": list(gt["images"]), "categories": copy.deepcopy(gt["categories"]),
            "annotations": results.annotations()}


def coco_evaluate(gt: dict, results: CocoResults | Sequence[dict], class_names: Sequence[str],
                  backend: str = "faster_coco_eval", img_ids: Sequence[int] | None = None) -> dict:
    """Score COCO bbox results against a COCO GT dict, in memory.

    gt: dict from ``records_to_coco_gt``; results: ``CocoResults`` (arrays) or a results list
    (e.g. from ``detections_to_coco_results``), scored alike.
    img_ids: score only these images (detections on other images are not counted).
    Returns {mAP, mAP50, mAP75, mAP_small, mAP_medium, mAP_large, AR1, AR10, AR100} (COCO
    stats[0..8]; -1.0 = no GT to score, see module docstring), "per_class" [{name,
    category_id, AP, AP50, AP75, AP_small, AP_medium, AP_large, AR100, num_gt, num_det}],
    "backend", "num_images". Inputs are not modified. The table is logged at DEBUG: callers
    present the numbers (the evaluation dashboard, utils/dashboard.py).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown eval backend {backend!r}; valid: {sorted(BACKENDS)}")
    if not isinstance(results, CocoResults):
        results = CocoResults.from_dicts(results)
    eval_ids = _check_inputs(gt, results, img_ids)
    be = BACKENDS[backend]()
    # Backends write into the dicts they index (ignore flags, ids, areas): copy one level.
    gt_copy = {**gt, "images": [dict(im) for im in gt["images"]],
               "annotations": [dict(a) for a in gt["annotations"]]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = _index(be.coco_cls, gt_copy)
        coco_dt = _index(be.coco_cls, _results_dataset(gt_copy, results))
        ev = be.make_eval(coco_gt, coco_dt)
        ev.params.imgIds = eval_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics: dict[str, Any] = {k: float(v) for k, v in zip(METRIC_KEYS, ev.stats[:9])}
    metrics["per_class"] = _per_class(ev, gt, results, class_names, eval_ids)
    metrics["backend"] = backend
    metrics["num_images"] = len(eval_ids)
    if not len(results):
        logger.warning("coco_evaluate: no detections to score; every AP/AR with GT is 0.0")
    logger.debug("COCO bbox evaluation ({}, {} images)\n{}", backend, len(eval_ids), format_metrics(metrics))
    return metrics


PER_CLASS_AREAS = {"AP_small": 1, "AP_medium": 2, "AP_large": 3}  # area index in COCOeval's arrays


def _mean_valid(x: np.ndarray) -> float:
    """Mean of the entries that are not -1 (COCO's "no GT"), or -1.0 when there are none."""
    ok = x > -1
    return float(x[ok].mean()) if ok.any() else -1.0


def _per_class(ev: Any, gt: dict, results: CocoResults, class_names: Sequence[str],
               eval_ids: list[int]) -> list[dict]:
    """Per category, from precision [T, R, K, A, M] and recall [T, K, A, M] at 100 detections:
    AP (IoU .50:.95), AP50, AP75, AP_small/medium/large and AR100, plus GT and detection counts."""
    prec, rec = np.asarray(ev.eval["precision"]), np.asarray(ev.eval["recall"])
    cat_order = [int(c) for c in ev.params.catIds]
    ids = set(eval_ids)
    num_gt = Counter(a["category_id"] for a in gt["annotations"] if not a.get("iscrowd", 0) and a["image_id"] in ids)
    cats, counts = np.unique(results.category_id[np.isin(results.image_id, eval_ids)], return_counts=True)
    num_det = dict(zip(cats.tolist(), counts.tolist()))
    name_of = {int(c["id"]): c["name"] for c in gt["categories"]}
    if len(class_names) == len(gt["categories"]):  # caller's names win (same order as categories)
        name_of = {int(c["id"]): str(n) for c, n in zip(gt["categories"], class_names)}
    rows = []
    for k, cid in enumerate(cat_order):
        rows.append({"name": name_of[cid], "category_id": cid, "AP": _mean_valid(prec[:, :, k, 0, -1]),
                     "AP50": _mean_valid(prec[0, :, k, 0, -1]), "AP75": _mean_valid(prec[5, :, k, 0, -1]),
                     **{key: _mean_valid(prec[:, :, k, a, -1]) for key, a in PER_CLASS_AREAS.items()},
                     "AR100": _mean_valid(rec[:, k, 0, -1]),
                     "num_gt": int(num_gt[cid]), "num_det": int(num_det.get(cid, 0))})
    return rows


def format_metrics(metrics: dict) -> str:
    """A compact text table of ``coco_evaluate`` output; -1 (no GT to score) is shown as '-'."""
    def f(v: float) -> str:
        return "    -" if v < 0 else f"{v:.3f}"

    head = "  ".join(f"{k:>10s}" for k in METRIC_KEYS)
    vals = "  ".join(f"{f(metrics[k]):>10s}" for k in METRIC_KEYS)
    lines = [head, vals]
    rows = metrics.get("per_class", [])
    if rows:
        width = max(8, *(len(r["name"]) for r in rows))
        cols = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100")
        heads = "  ".join(f"{c.removeprefix('AP_'):>6s}" for c in cols)
        lines.append(f"{'class':<{width}s}  {'id':>4s}  {heads}  {'gt':>6s}  {'det':>7s}")
        for r in rows:
            vals = "  ".join(f"{f(r[c]):>6s}" for c in cols)
            lines.append(f"{r['name']:<{width}s}  {r['category_id']:>4d}  {vals}  {r['num_gt']:>6d}  "
                         f"{r['num_det']:>7d}")
    return "\n".join(lines)
