"""Operative detection metrics: what a deployed detector does at one confidence threshold.

The COCO numbers (utils/coco_eval.py) average over thresholds; these answer "shipped at
confidence ``conf``, how many objects does it find and how many alarms are false". They are
computed from the same predictions as the COCO scores and never replace them.

Matching (one rule for every number here)
    Per image, detections are visited by descending score (ties keep their order). A
    detection is a true positive (TP) when a not-yet-matched ground-truth (GT) box of its own
    class has IoU >= ``match_iou``; it takes the one with the highest IoU. An unmatched
    detection on an ignore region (intersection over the detection's area >= ``match_iou``,
    COCO's crowd rule) is ignored: neither TP nor FP. Any other detection is a false positive
    (FP); every unmatched GT is a false negative (FN). The visit order is by score, so the
    matching at a threshold t is the first part of this one: one matching serves the sweep,
    the curves and the best-F1 search. It is COCO's matching at one IoU threshold, so the
    per-class ``ap50`` here (101-point interpolation, as COCO) equals COCO's per-class AP50
    (given at most 100 detections per image and class, COCO's maxDets).

Confusion matrix (at ``conf``)
    Rows are the true class, columns the predicted class, the last row and column
    "background". TPs fill the diagonal. Then the FPs and the still-unmatched GTs are paired
    class-agnostically, greedily by score, at IoU >= ``match_iou``: such a pair is a confusion
    (true c predicted as c'). Leftover FPs go to the background row (false alarms), leftover
    GTs to the background column (missed). Row sums are GT counts, column sums non-ignored
    detection counts, so precision and recall read off the matrix equal the reported ones.

FP kinds: "confused" (a pair above), "duplicate" (an own-class GT at IoU >= match_iou was
already taken by a higher-scoring detection), "localization" (best own-class IoU in
[LOC_IOU, match_iou)), "background" (the rest). FN kinds: "confused" and "missed".

A ratio with a zero denominator is -1.0 ("not measurable", as in utils/coco_eval.py):
precision without detections, recall of a class without GT. F1 = 2TP / (2TP + FP + FN).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LOC_IOU = 0.1  # an FP whose best own-class IoU is in [LOC_IOU, match_iou) is "localization"
CURVE_CONFS = np.linspace(0.0, 1.0, 101)  # confidence grid of the P / R / F1 curves
RECALL_GRID = np.linspace(0.0, 1.0, 101)  # COCO's recall thresholds for the PR curve and ap50
TP, FP, IGNORED = 1, 0, -1


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of a [N, 4] and b [M, 4] xyxy pixels -> [N, M] float64 (0 for empty unions)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    inter = _intersection(a, b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    wh = np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2])
    return wh.clip(min=0).prod(-1)


def _ioa(det: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Intersection over the detection's area, [N, M] (COCO's IoU with a crowd region)."""
    det, regions = np.asarray(det, np.float64).reshape(-1, 4), np.asarray(regions, np.float64).reshape(-1, 4)
    area = ((det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1]))[:, None]
    inter = _intersection(det, regions)
    return np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)


@dataclass
class ImageMatch:
    """Matching result of one image; detections in descending score order.

    order: [D] indices into the image's detections, by descending score.
    status: [D] TP / FP / IGNORED; iou: [D] IoU with the matched GT (TP) or the best own-class
    IoU; duplicate: [D] FP on an own-class GT already taken; gt_det: [G] position in ``order``
    of the detection that took each GT (-1 = never matched).
    """

    order: np.ndarray
    status: np.ndarray
    iou: np.ndarray
    duplicate: np.ndarray
    gt_det: np.ndarray


def match_image(det: dict, gt: dict, match_iou: float) -> ImageMatch:
    """Greedy class-aware matching of one image (see the module docstring).

    det: {"boxes" [D, 4] xyxy, "scores" [D], "labels" [D]}; gt: {"boxes" [G, 4], "labels" [G],
    optional "ignore" [M, 4]}, same pixel frame.
    """
    scores = np.asarray(det["scores"], np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    boxes = np.asarray(det["boxes"], np.float64).reshape(-1, 4)[order]
    labels = np.asarray(det["labels"]).astype(np.int64).reshape(-1)[order]
    gt_labels = np.asarray(gt["labels"]).astype(np.int64).reshape(-1)
    iou = box_iou_np(boxes, gt["boxes"])
    iou[labels[:, None] != gt_labels[None, :]] = 0.0  # class-aware: other classes never match
    status, best = np.full(len(order), FP, np.int8), iou.max(1, initial=0.0)
    duplicate = np.zeros(len(order), bool)
    gt_det = np.full(len(gt_labels), -1, np.int64)
    for d in np.flatnonzero(best >= match_iou):  # only these can match; the loop is short
        row = np.where(gt_det < 0, iou[d], -1.0)
        g = int(row.argmax())
        if row[g] >= match_iou:
            status[d], best[d], gt_det[g] = TP, row[g], d
        else:
            duplicate[d] = True
    ignore = gt.get("ignore")
    if ignore is not None and len(ignore):
        on_region = _ioa(boxes, ignore).max(1) >= match_iou
        status[(status == FP) & on_region] = IGNORED
        duplicate &= status == FP
    return ImageMatch(order, status, best, duplicate, gt_det)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else -1.0


def _prf(tp: int, fp: int, fn: int) -> dict:
    return {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn), "tp": int(tp), "fp": int(fp), "fn": int(fn)}


class _Pool:
    """All non-ignored detections of all images, pooled per class, for threshold queries."""

    def __init__(self, matches: list[ImageMatch], dets: Sequence[dict], num_gt: np.ndarray) -> None:
        nc = len(num_gt)
        scores, labels, tps = [], [], []
        for m, d in zip(matches, dets):
            keep = m.status != IGNORED
            scores.append(np.asarray(d["scores"], np.float64).reshape(-1)[m.order][keep])
            labels.append(np.asarray(d["labels"]).astype(np.int64).reshape(-1)[m.order][keep])
            tps.append(m.status[keep] == TP)
        self.num_gt = num_gt
        s, lab, tp = (np.concatenate(x) if x else np.zeros(0) for x in (scores, labels, tps))
        # COCO's order: images in sequence, then a stable sort by descending score.
        order = np.argsort(-s, kind="mergesort")
        self.scores, self.labels, self.tp = s[order], lab[order].astype(np.int64), tp[order].astype(bool)
        # rows of each class, ascending (so still by descending score): index arrays, not nc masks
        by_label = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[by_label], np.arange(nc + 1))
        self.by_class = [by_label[bounds[c]:bounds[c + 1]] for c in range(nc)]

    def counts(self, conf: float, cls: int | None = None) -> tuple[int, int, int]:
        """(TP, FP, FN) of the detections scoring >= conf, for one class or all."""
        rows = self.by_class[cls] if cls is not None else slice(None)
        # scores are sorted descending: the detections scoring >= conf are a prefix
        k = int(np.searchsorted(-self.scores[rows], -conf, side="right"))
        tp = int(self.tp[rows][:k].sum())
        n_gt = int(self.num_gt.sum() if cls is None else self.num_gt[cls])
        return tp, k - tp, n_gt - tp

    def curve(self, rows: np.ndarray | slice, n_gt: int) -> dict:
        """P, R, F1 on CURVE_CONFS (NaN where not measurable), best F1 and its confidence, PR curve, AP,
        of the detections ``rows`` (a class's index array, or every row)."""
        s, tp = self.scores[rows], self.tp[rows]
        ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
        kept = np.searchsorted(-s, -CURVE_CONFS, side="right")  # detections scoring >= each conf
        t = np.concatenate([[0], ctp])[kept]
        f = np.concatenate([[0], cfp])[kept]
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = np.where(t + f > 0, t / (t + f), np.nan)
            rec = np.where(n_gt > 0, t / max(n_gt, 1), np.nan)
            f1 = np.where(t + f + n_gt > 0, 2 * t / (t + f + n_gt), np.nan)
        if n_gt == 0:
            best_f1, best_conf = -1.0, -1.0
        elif not len(s):
            best_f1, best_conf = 0.0, -1.0
        else:
            best_f1, best_conf = _best_f1(ctp, cfp, n_gt, s)
        pr = _pr_envelope(ctp, cfp, n_gt)
        ap = float(pr.mean()) if n_gt > 0 else -1.0
        return {"precision": prec, "recall": rec, "f1": f1, "best_f1": best_f1, "best_conf": best_conf,
                "pr": pr, "ap50": ap}


def _best_f1(ctp: np.ndarray, cfp: np.ndarray, n_gt: int, s: np.ndarray) -> tuple[float, float]:
    """Exact best F1 over every threshold (a threshold keeps whole groups of equal scores)."""
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # end of each group of equal scores
    f1 = 2 * ctp[last] / (ctp[last] + cfp[last] + n_gt)
    i = int(np.argmax(f1))  # first maximum = highest threshold reaching it
    if f1[i] == 0:
        return 0.0, -1.0  # no TP at any threshold: none is best
    return float(f1[i]), float(s[last[i]])


def _pr_envelope(ctp: np.ndarray, cfp: np.ndarray, n_gt: int) -> np.ndarray:
    """Precision at RECALL_GRID as COCOeval.accumulate computes it (monotone envelope, 0 past the end)."""
    out = np.zeros(len(RECALL_GRID))
    if n_gt == 0 or not len(ctp):
        return out
    rc = ctp / n_gt
    pr = np.maximum.accumulate((ctp / (ctp + cfp))[::-1])[::-1]
    idx = np.searchsorted(rc, RECALL_GRID, side="left")
    ok = idx < len(pr)
    out[ok] = pr[idx[ok]]
    return out


@dataclass
class _ImageErrors:
    """Counts of one image at the production threshold."""

    dets: int  # detections scoring >= conf, ignored ones included (what a user would see)
    fp: int
    fn: int


def _confusion_image(det: dict, gt: dict, m: ImageMatch, conf: float, match_iou: float, matrix: np.ndarray,
                     kinds: dict) -> _ImageErrors:
    """Add one image to ``matrix`` and ``kinds`` (FP/FN kinds) at ``conf``."""
    nc = matrix.shape[0] - 1
    scores = np.asarray(det["scores"], np.float64).reshape(-1)[m.order]
    k = int((scores >= conf).sum())  # scores are sorted: the first k detections are kept
    labels = np.asarray(det["labels"]).astype(np.int64).reshape(-1)[m.order][:k]
    status = m.status[:k]
    gt_labels = np.asarray(gt["labels"]).astype(np.int64).reshape(-1)
    np.add.at(matrix, (labels[status == TP], labels[status == TP]), 1)
    fp = np.flatnonzero(status == FP)
    free = np.flatnonzero((m.gt_det < 0) | (m.gt_det >= k))  # GTs not taken at this threshold
    iou = box_iou_np(np.asarray(det["boxes"], np.float64).reshape(-1, 4)[m.order][fp],
                     np.asarray(gt["boxes"], np.float64).reshape(-1, 4)[free])
    confused = np.zeros(len(fp), bool)
    taken = np.zeros(len(free), bool)
    for i in np.flatnonzero(iou.max(1, initial=0.0) >= match_iou):  # class-agnostic, by score
        row = np.where(taken, -1.0, iou[i])
        g = int(row.argmax())
        if row[g] >= match_iou:
            confused[i], taken[g] = True, True
            matrix[gt_labels[free[g]], labels[fp[i]]] += 1
    np.add.at(matrix, (nc, labels[fp[~confused]]), 1)
    np.add.at(matrix, (gt_labels[free[~taken]], nc), 1)
    rest = fp[~confused]
    dup = m.duplicate[rest]
    loc = ~dup & (m.iou[rest] >= LOC_IOU)
    for name, n in (("confused", confused.sum()), ("duplicate", dup.sum()), ("localization", loc.sum()),
                    ("background", (~dup & ~loc).sum())):
        kinds["fp"][name] += int(n)
    kinds["fn"]["confused"] += int(taken.sum())
    kinds["fn"]["missed"] += int((~taken).sum())
    return _ImageErrors(dets=k, fp=len(fp), fn=len(free))


def operative_metrics(dets: Sequence[dict], gts: Sequence[dict], class_names: Sequence[str],
                      conf: float = 0.25, match_iou: float = 0.5,
                      sweep_confs: Sequence[float] = (0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9),
                      max_det: int | None = None, top_k: int = 5) -> tuple[dict, dict]:
    """P / R / F1, sweep, confusion and error counts of detections against GT (module docstring).

    dets: per image {"boxes" [k, 4] xyxy pixels, "scores" [k], "labels" [k] in 0..nc-1};
    gts: aligned per image {"boxes" [g, 4], "labels" [g], optional "ignore" [m, 4], optional
    "file"}. conf: the production threshold; max_det: the post-processing cap (counts images
    that reached it, i.e. may have lost detections). The sweep holds ``sweep_confs``, ``conf``
    and the best-F1 confidence.
    Returns (report, curves): report is plain JSON-able data; curves holds numpy arrays for
    plots: "conf" [101], "precision"/"recall"/"f1" [nc + 1, 101] (last row = all classes,
    NaN = not measurable), "pr" [nc, 101] precision at recall "recall_grid" [101].
    """
    if len(dets) != len(gts):
        raise ValueError(f"operative_metrics: {len(dets)} detection lists but {len(gts)} GT lists")
    if not 0.0 <= conf <= 1.0 or not 0.0 < match_iou <= 1.0:
        raise ValueError(f"operative_metrics: conf={conf} must be in [0, 1] and match_iou={match_iou} "
                         "in (0, 1]")
    nc = len(class_names)
    num_gt = np.zeros(nc, np.int64)
    for g in gts:
        num_gt += np.bincount(np.asarray(g["labels"]).astype(np.int64).reshape(-1), minlength=nc)[:nc]
    matches = [match_image(d, g, match_iou) for d, g in zip(dets, gts)]
    pool = _Pool(matches, dets, num_gt)
    matrix = np.zeros((nc + 1, nc + 1), np.int64)
    kinds = {"fp": dict.fromkeys(("confused", "duplicate", "localization", "background"), 0),
             "fn": dict.fromkeys(("confused", "missed"), 0)}
    per_image = [_confusion_image(d, g, m, conf, match_iou, matrix, kinds)
                 for d, g, m in zip(dets, gts, matches)]
    by_class = [pool.curve(pool.by_class[c], int(num_gt[c])) for c in range(nc)]
    overall = pool.curve(slice(None), int(num_gt.sum()))
    report = {"conf": float(conf), "match_iou": float(match_iou), "num_images": len(dets),
              "num_gt": int(num_gt.sum()), **_prf(*pool.counts(conf)),
              **_kept_stats(dets, matches, conf, max_det),
              "best_f1": overall["best_f1"], "best_f1_conf": overall["best_conf"],
              "fp_kinds": kinds["fp"], "fn_kinds": kinds["fn"],
              "per_class": [{"name": str(class_names[c]), "num_gt": int(num_gt[c]),
                             **_prf(*pool.counts(conf, c)), "best_f1": by_class[c]["best_f1"],
                             "best_f1_conf": by_class[c]["best_conf"], "ap50": by_class[c]["ap50"]}
                            for c in range(nc)],
              "sweep": [{"conf": t, **_prf(*pool.counts(t)), "dets_per_image": _mean(_num_kept(dets, t))}
                        for t in _sweep_confs(sweep_confs, conf, overall["best_conf"])],
              "confusion": {"labels": [str(n) for n in class_names] + ["background"],
                            "matrix": matrix.tolist()},
              "top_confusions": top_confusions(matrix, class_names, top_k),
              "worst_images": _worst_images(per_image, gts, top_k)}
    curves = {"conf": CURVE_CONFS, "recall_grid": RECALL_GRID,
              **{k: np.stack([c[k] for c in by_class] + [overall[k]]) for k in ("precision", "recall", "f1")},
              "pr": np.stack([c["pr"] for c in by_class]) if nc else np.zeros((0, len(RECALL_GRID)))}
    return report, curves


def _sweep_confs(confs: Sequence[float], conf: float, best_conf: float) -> list[float]:
    """The sweep's thresholds: the requested ones, the production one and the best-F1 one (if any)."""
    best = {float(best_conf)} if best_conf >= 0 else set()
    return sorted({float(x) for x in confs} | {float(conf)} | best)


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else 0.0


def _num_kept(dets: Sequence[dict], conf: float) -> np.ndarray:
    """[N] detections per image scoring >= conf (ignored ones included: what a user would see)."""
    return np.array([int((np.asarray(d["scores"]) >= conf).sum()) for d in dets], np.int64)


def _kept_stats(dets: Sequence[dict], matches: list[ImageMatch], conf: float, max_det: int | None) -> dict:
    """Mean IoU of the TPs, ignored detections and detections-per-image figures at ``conf``."""
    tp_iou, ignored = [], 0
    for m, d in zip(matches, dets):
        kept = np.asarray(d["scores"], np.float64).reshape(-1)[m.order] >= conf
        tp_iou.append(m.iou[kept & (m.status == TP)])
        ignored += int((kept & (m.status == IGNORED)).sum())
    ious = np.concatenate(tp_iou) if tp_iou else np.zeros(0)
    n = _num_kept(dets, conf)
    return {"ignored": ignored, "mean_iou_tp": float(ious.mean()) if len(ious) else -1.0,
            "dets_per_image_mean": _mean(n),
            "dets_per_image_p95": float(np.percentile(n, 95)) if len(n) else 0.0,
            "images_without_dets": int((n == 0).sum()),
            "images_at_max_det": int(sum(len(np.asarray(d["scores"]).reshape(-1)) >= max_det for d in dets))
            if max_det else 0}


def max_det_report(num_dets: Sequence[int], max_det: int, num_nms: Sequence[int] | None = None) -> dict:
    """How many images the post-processing cap ``max_det`` cut.

    num_dets: [N] detections kept per image; num_nms: [N] boxes NMS kept before the cap
    (``models.postprocess``'s "num_nms"), or None when unknown: an image holding max_det detections
    then counts, as it may have lost some. Returns {"max_det", "num_images", "images_over" (images
    that had more than max_det boxes after NMS), "dropped" (detections the cap removed; -1 when
    unknown), "exact" (num_nms was given)}.
    """
    kept = np.asarray(num_dets, np.int64).reshape(-1)
    if num_nms is None:
        over, dropped = int((kept >= max_det).sum()), -1
    else:
        nms = np.asarray(num_nms, np.int64).reshape(-1)
        if len(nms) != len(kept):
            raise ValueError(f"max_det_report: {len(nms)} NMS counts for {len(kept)} images")
        over, dropped = int((nms > max_det).sum()), int((nms - np.minimum(nms, max_det)).sum())
    return {"max_det": int(max_det), "num_images": len(kept), "images_over": over, "dropped": dropped,
            "exact": num_nms is not None}


def top_confusions(matrix: np.ndarray, class_names: Sequence[str], k: int = 5) -> list[dict]:
    """The k largest off-diagonal class pairs (background excluded), with their share of the true
    class's GT."""
    nc = len(class_names)
    gt_per_class = np.asarray(matrix)[:nc].sum(1)  # row sums: every GT of the class
    m = np.asarray(matrix)[:nc, :nc].copy()
    np.fill_diagonal(m, 0)
    pairs = sorted(((int(m[t, p]), t, p) for t in range(nc) for p in range(nc) if m[t, p] > 0),
                   key=lambda x: (-x[0], x[1], x[2]))[:k]
    return [{"true": str(class_names[t]), "pred": str(class_names[p]), "count": n,
             "share": _ratio(n, gt_per_class[t])} for n, t, p in pairs]


def _worst_images(per_image: list[_ImageErrors], gts: Sequence[dict], k: int) -> list[dict]:
    """The k images with the most errors (FP + FN) at the production threshold."""
    ranked = sorted(range(len(per_image)), key=lambda i: (-(per_image[i].fp + per_image[i].fn), i))[:k]
    return [{"image": str(gts[i].get("file", i)), "fp": per_image[i].fp, "fn": per_image[i].fn}
            for i in ranked if per_image[i].fp + per_image[i].fn > 0]
