"""Anchor fitting for the anchor-based heads (``model.anchors = "auto"``).

Boxes are compared with anchors by shape only (both centred at the origin), with the measure the
assignment uses: the side-ratio measure ``min(w/a, a/w, h/b, b/h)`` of ratio_grid (a match when it
exceeds 1 / anchor_t), or the IoU of the two centred boxes for the IoU-matching methods (a match
at or above the threshold). The fit:

1. k-means on the distance 1 - IoU (centres updated to the median box of their cluster), from
   several seeded k-means++ starts (the tightest clustering wins), so the clusters follow box
   shapes rather than areas;
2. a short evolutionary search (multiplicative mutations, a mutation kept when it raises the
   fitness) on fitness = mean over boxes of the best anchor's measure where it matches, which
   rewards both best possible recall (BPR: the share of boxes some anchor matches) and overlap;
3. anchors sorted by area and dealt to the levels, smallest to the finest stride.

Everything draws from one seeded generator: the same boxes and seed give the same anchors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EVOLVE_SIGMA = 0.1  # relative size of a mutation
MUTATE_PROB = 0.9  # chance that an anchor side is mutated in a generation
KMEANS_STARTS = 8  # seeded k-means restarts


@dataclass
class AnchorFit:
    """Quality of anchors on a set of boxes: ``bpr`` (share of boxes matched by some anchor),
    ``per_gt`` (mean number of anchors matching a box), ``mean_best`` (mean best measure)."""

    bpr: float
    per_gt: float
    mean_best: float
    fitness: float

    def line(self) -> str:
        return (f"best possible recall {self.bpr:.4f}, {self.per_gt:.2f} anchors per GT above threshold, "
                f"mean best match {self.mean_best:.3f}")


def shape_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """[N, 2], [K, 2] -> [N, K] IoU of boxes and anchors centred at one point."""
    inter = np.minimum(wh[:, None], anchors[None]).prod(-1)
    return inter / (wh.prod(-1)[:, None] + anchors.prod(-1)[None] - inter)


def ratio_measure(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """[N, 2], [K, 2] -> [N, K] min over both sides of min(w/a, a/w): 1 = the same shape."""
    r = wh[:, None] / anchors[None]
    return np.minimum(r, 1.0 / r).min(-1)


def evaluate(wh: np.ndarray, anchors: np.ndarray, measure: str, threshold: float) -> AnchorFit:
    """``measure`` "ratio" (threshold = 1 / anchor_t) or "iou" (threshold = the match IoU)."""
    m = ratio_measure(wh, anchors) if measure == "ratio" else shape_iou(wh, anchors)
    best = m.max(1)
    hit = m >= threshold
    return AnchorFit(bpr=float(hit.any(1).mean()), per_gt=float(hit.sum(1).mean()), mean_best=float(best.mean()),
                     fitness=float((best * (best >= threshold)).mean()))


def kmeans_iou(wh: np.ndarray, k: int, rng: np.random.Generator, iters: int = 100) -> np.ndarray:
    """[N, 2] -> [k, 2] cluster shapes by k-means on 1 - IoU (median update), k-means++ start."""
    centres = [wh[rng.integers(len(wh))]]
    for _ in range(1, k):
        d = (1.0 - shape_iou(wh, np.array(centres))).min(1) ** 2
        centres.append(wh[rng.choice(len(wh), p=d / d.sum())] if d.sum() > 0 else wh[rng.integers(len(wh))])
    centres = np.array(centres, dtype=np.float64)
    for _ in range(iters):
        near = shape_iou(wh, centres).argmax(1)
        new = np.array([np.median(wh[near == j], 0) if (near == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return centres


def fit_anchors(wh: np.ndarray, num_levels: int, per_level: int, measure: str, threshold: float,
                seed: int = 0, generations: int = 1000, max_boxes: int = 20000) -> np.ndarray:
    """Anchors [num_levels, per_level, 2] (pixels of the same frame as ``wh``) fitted to boxes [N, 2].

    At most ``max_boxes`` boxes (a seeded sample) take part: the fit of a large dataset's shapes
    needs no more.
    """
    rng = np.random.default_rng(seed)
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    wh = wh[(wh >= 2.0).all(1)]  # sub-2-pixel boxes carry no shape
    k = num_levels * per_level
    if len(wh) < k:
        raise ValueError(f"anchor fitting needs at least {k} boxes of 2 px or more, got {len(wh)}")
    if len(wh) > max_boxes:
        wh = wh[rng.choice(len(wh), max_boxes, replace=False)]
    # k-means from several seeded starts (one start can merge two true clusters); the tightest wins.
    starts = [kmeans_iou(wh, k, rng) for _ in range(KMEANS_STARTS)]
    anchors = max(starts, key=lambda c: shape_iou(wh, c).max(1).mean())
    best = evaluate(wh, anchors, measure, threshold).fitness
    for _ in range(generations):
        step = np.where(rng.random(anchors.shape) < MUTATE_PROB,
                        rng.standard_normal(anchors.shape) * EVOLVE_SIGMA + 1.0, 1.0).clip(0.3, 3.0)
        trial = (anchors * step).clip(min=2.0)
        f = evaluate(wh, trial, measure, threshold).fitness
        if f > best:
            anchors, best = trial, f
    anchors = anchors[np.argsort(anchors.prod(1))]
    return anchors.reshape(num_levels, per_level, 2)
