"""2x2 mosaic of four samples into one img_size x img_size image.

A random centre splits the square into four quadrants; sample k is resized (long side =
img_size / 2 times a factor from ``aug.scale``) and placed with one corner on the centre, so
the tiles never overlap and extend away from the centre, cropped at the canvas border. Boxes
are shifted, clipped to their tile's visible part and filtered like the single-image path
(``min_box_size`` px, ``min_visibility`` of the area). Colour and flips follow in the dataset.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from datasets.transforms import PAD_VALUE

Sample = tuple[np.ndarray, np.ndarray, np.ndarray]  # image [H,W,3] uint8, boxes [n,4] xyxy px, labels [n]


def _place(k: int, xc: int, yc: int, tw: int, th: int) -> tuple[int, int]:
    """Top-left corner of tile k (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right)."""
    x0 = xc - tw if k in (0, 2) else xc
    y0 = yc - th if k in (0, 1) else yc
    return x0, y0


def _filter_boxes(boxes: np.ndarray, clipped: np.ndarray, min_box_size: float,
                  min_visibility: float) -> np.ndarray:
    """Keep mask: clipped side >= min_box_size px and clipped/original area >= min_visibility."""
    wh = clipped[:, 2:] - clipped[:, :2]
    area0 = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    area1 = np.prod(np.clip(wh, 0, None), axis=1)
    return (wh.min(axis=1) >= min_box_size) & (area1 >= min_visibility * np.maximum(area0, 1e-9))


def mosaic4(samples: list[Sample], img_size: int, rng: np.random.Generator,
            aug_cfg: Any) -> Sample:
    """Combine four (image, boxes, labels) samples into one mosaic.

    Args:
        samples: four samples; boxes [n, 4] xyxy pixels of their own image, labels [n] int64
            (-1 = ignore region, carried through unchanged).
        img_size: output side, pixels.
        rng: the caller's per-sample generator (reproducible augmentation).
        aug_cfg: uses scale, min_box_size, min_visibility.
    Returns:
        (image [img_size, img_size, 3] uint8, boxes [m, 4] float32 inside the image, labels [m]).
    """
    s = img_size
    canvas = np.full((s, s, 3), PAD_VALUE, dtype=np.uint8)
    xc, yc = (int(v) for v in rng.uniform(0.25 * s, 0.75 * s, size=2))
    lo, hi = aug_cfg.scale
    all_boxes, all_labels = [], []
    for k, (img, boxes, labels) in enumerate(samples):
        h, w = img.shape[:2]
        f = (s / 2) * float(rng.uniform(lo, hi)) / max(h, w)
        tw, th = max(1, round(w * f)), max(1, round(h * f))
        tile = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
        x0, y0 = _place(k, xc, yc, tw, th)
        # visible part of the tile on the canvas, in canvas coordinates
        vx0, vy0, vx1, vy1 = max(x0, 0), max(y0, 0), min(x0 + tw, s), min(y0 + th, s)
        if vx1 <= vx0 or vy1 <= vy0:
            continue
        canvas[vy0:vy1, vx0:vx1] = tile[vy0 - y0:vy1 - y0, vx0 - x0:vx1 - x0]
        if len(boxes) == 0:
            continue
        # exact per-axis factors, so boxes follow the rounded tile size
        sx, sy = tw / w, th / h
        b = np.asarray(boxes, np.float64) * [sx, sy, sx, sy] + [x0, y0, x0, y0]
        c = np.clip(b, [vx0, vy0, vx0, vy0], [vx1, vy1, vx1, vy1])
        keep = _filter_boxes(b, c, aug_cfg.min_box_size, aug_cfg.min_visibility)
        all_boxes.append(c[keep])
        all_labels.append(np.asarray(labels, np.int64)[keep])
    if not all_boxes:
        return canvas, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    return (canvas, np.concatenate(all_boxes).astype(np.float32),
            np.concatenate(all_labels).astype(np.int64))
