"""Mosaic canvases (2x2 and 3x3 tilings) and the two-sample mixes MixUp and CutMix.

A mosaic is built as in the YOLO recipe: every tile is an image resized so its long side is
``s = img_size`` (no padding) and the tiles are laid on a ``2s x 2s`` grey canvas, which the
random perspective warp then maps to the ``s x s`` output (``datasets.transforms``).

- 2x2: a random centre ``(xc, yc) ~ U(s/2, 3s/2)``; the four tiles meet at it, each extending
  away from it (top-left, top-right, bottom-left, bottom-right), cropped by the canvas border.
- 3x3: nine ``s x s`` cells, every tile pushed against the centre cell (the centre tile is
  centred in it); a random ``2s x 2s`` window of that ``3s x 3s`` layout is the canvas.

albumentations' ``Mosaic`` is not used: it centres each tile in its cell (grey bars at the
seams) and crops to the output size before any warp, so zooming out would show grey instead of
the rest of the canvas.

Boxes are shifted with their tile and clipped to its visible part; the size they had before the
cut is returned too (``full_wh``), so the warp's filter judges a box by how much of the whole
object is left, not by how much of the already cut box is.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from datasets.transforms import PAD_VALUE

Sample = tuple[np.ndarray, np.ndarray, np.ndarray]  # image [H,W,3] uint8, boxes [n,4] xyxy px, labels [n]


def _tile_origins_2x2(shapes: list[tuple[int, int]], s: int,
                      rng: np.random.Generator) -> list[tuple[int, int]]:
    """Top-left canvas corner of each of four tiles meeting at a random centre."""
    xc, yc = (int(v) for v in rng.uniform(0.5 * s, 1.5 * s, size=2))
    out = []
    for k, (h, w) in enumerate(shapes):
        x0 = xc - w if k in (0, 2) else xc
        y0 = yc - h if k in (0, 1) else yc
        out.append((x0, y0))
    return out


def _tile_origins_3x3(shapes: list[tuple[int, int]], s: int,
                      rng: np.random.Generator) -> list[tuple[int, int]]:
    """Top-left canvas corner of each of nine tiles (row-major cells, centre tile first)."""
    ox, oy = (int(v) for v in rng.uniform(0, s, size=2))  # window of the 3s layout
    cells = [(1, 1)] + [(r, c) for r in range(3) for c in range(3) if (r, c) != (1, 1)]
    out = []
    for (h, w), (r, c) in zip(shapes, cells):
        x0 = (s - w, s + (s - w) // 2, 2 * s)[c]  # against the centre cell, or centred in it
        y0 = (s - h, s + (s - h) // 2, 2 * s)[r]
        out.append((x0 - ox, y0 - oy))
    return out


class Canvas:
    """A mosaic canvas composed on demand: ``canvas[y0:y1, x0:x1]`` lays out only that window
    (grey where no tile is), equal to the same slice of the whole canvas. The YOLOv9 recipe's warp
    (zoom and shift, ``transforms.random_perspective``) reads one window of about ``s / zoom`` pixels
    per side, so the ``2s x 2s`` canvas (4.9 MB at 640 px) is never filled or copied whole."""

    def __init__(self, images: list[np.ndarray], origins: list[tuple[int, int]], size: int) -> None:
        self.images, self.origins, self.size = images, origins, size
        self.shape = (size, size, 3)

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        ys, xs = key
        y0, y1, _ = ys.indices(self.size)
        x0, x1, _ = xs.indices(self.size)
        out = np.full((max(0, y1 - y0), max(0, x1 - x0), 3), PAD_VALUE, dtype=np.uint8)
        for img, (ox, oy) in zip(self.images, self.origins):
            h, w = img.shape[:2]
            # the tile's part inside both the canvas and the window
            vx0, vy0 = max(ox, 0, x0), max(oy, 0, y0)
            vx1, vy1 = min(ox + w, self.size, x1), min(oy + h, self.size, y1)
            if vx1 > vx0 and vy1 > vy0:
                out[vy0 - y0:vy1 - y0, vx0 - x0:vx1 - x0] = img[vy0 - oy:vy1 - oy, vx0 - ox:vx1 - ox]
        return out

    def materialize(self) -> np.ndarray:
        return self[0:self.size, 0:self.size]


def mosaic(samples: list[Sample], s: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tile 4 or 9 samples (long side already ``s``) on a 2s x 2s canvas.

    Returns:
        (canvas [2s, 2s, 3] uint8, boxes [m, 4] float32 clipped to their tile's visible part,
        labels [m] int64 (ignore regions keep -1), full_wh [m, 2] float32 size before clipping).
    """
    canvas, boxes, labels, full_wh = mosaic_lazy(samples, s, rng)
    return canvas.materialize(), boxes, labels, full_wh


def mosaic_lazy(samples: list[Sample], s: int,
                rng: np.random.Generator) -> tuple[Canvas, np.ndarray, np.ndarray, np.ndarray]:
    """``mosaic`` with the canvas as a ``Canvas`` (composed where it is read); the same draws."""
    if len(samples) not in (4, 9):
        raise ValueError(f"mosaic takes 4 or 9 samples, got {len(samples)}")
    size = 2 * s
    shapes = [img.shape[:2] for img, _, _ in samples]
    origins = (_tile_origins_2x2 if len(samples) == 4 else _tile_origins_3x3)(shapes, s, rng)
    boxes_out, labels_out, wh_out = [], [], []
    for (img, boxes, labels), (x0, y0) in zip(samples, origins):
        h, w = img.shape[:2]
        vx0, vy0, vx1, vy1 = max(x0, 0), max(y0, 0), min(x0 + w, size), min(y0 + h, size)
        if vx1 <= vx0 or vy1 <= vy0:
            continue
        b = np.asarray(boxes, np.float64).reshape(-1, 4) + [x0, y0, x0, y0]
        c = np.clip(b, [vx0, vy0, vx0, vy0], [vx1, vy1, vx1, vy1])
        visible = (c[:, 2] > c[:, 0]) & (c[:, 3] > c[:, 1])
        boxes_out.append(c[visible])
        labels_out.append(np.asarray(labels, np.int64)[visible])
        wh_out.append((b[:, 2:] - b[:, :2])[visible])
    canvas = Canvas([img for img, _, _ in samples], origins, size)
    if not boxes_out:
        return canvas, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), np.zeros((0, 2), np.float32)
    return (canvas, np.concatenate(boxes_out).astype(np.float32), np.concatenate(labels_out),
            np.concatenate(wh_out).astype(np.float32))


def mixup(a: Sample, b: Sample, rng: np.random.Generator, beta: float) -> Sample:
    """Blend two same-size samples with r ~ Beta(beta, beta); the boxes of both are kept."""
    r = float(rng.beta(beta, beta))
    image = cv2.addWeighted(a[0], r, b[0], 1.0 - r, 0.0)
    boxes = np.concatenate([a[1], b[1]]).astype(np.float32)
    return image, boxes, np.concatenate([a[2], b[2]]).astype(np.int64)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def cutmix(a: Sample, b: Sample, rng: np.random.Generator, aug: Any) -> Sample:
    """Paste a random rectangle of ``b`` into ``a`` (same size); its area fraction is
    1 - lam, lam ~ Beta(cutmix_beta, cutmix_beta).

    ``a``'s boxes are dropped when less than ``min_visibility`` of them stays uncovered; ``b``'s
    boxes are clipped to the rectangle and kept when at least ``min_visibility`` of them and
    more than ``min_box_size`` px on each side lies inside it.
    """
    h, w = a[0].shape[:2]
    lam = float(rng.beta(aug.cutmix_beta, aug.cutmix_beta))
    cw, ch = w * np.sqrt(1.0 - lam), h * np.sqrt(1.0 - lam)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    x0, x1 = int(np.clip(round(cx - cw / 2), 0, w)), int(np.clip(round(cx + cw / 2), 0, w))
    y0, y1 = int(np.clip(round(cy - ch / 2), 0, h)), int(np.clip(round(cy + ch / 2), 0, h))
    image = a[0].copy()
    image[y0:y1, x0:x1] = b[0][y0:y1, x0:x1]
    region = np.array([x0, y0, x1, y1], np.float64)

    boxes_a = np.asarray(a[1], np.float64).reshape(-1, 4)
    covered = np.clip(boxes_a, region[[0, 1, 0, 1]], region[[2, 3, 2, 3]])
    keep_a = _area(boxes_a) - _area(covered) >= aug.min_visibility * _area(boxes_a)

    boxes_b = np.asarray(b[1], np.float64).reshape(-1, 4)
    inside = np.clip(boxes_b, region[[0, 1, 0, 1]], region[[2, 3, 2, 3]])
    wh = inside[:, 2:] - inside[:, :2]
    keep_b = (_area(inside) >= aug.min_visibility * _area(boxes_b)) & (wh.min(axis=1) > aug.min_box_size)
    boxes = np.concatenate([boxes_a[keep_a], inside[keep_b]]).astype(np.float32)
    labels = np.concatenate([np.asarray(a[2], np.int64)[keep_a], np.asarray(b[2], np.int64)[keep_b]])
    return image, boxes, labels
