"""Single-image geometry and colour: letterbox, long-side resize, the random perspective warp,
HSV jitter, and the finishing transforms (albumentations blur, grey, CLAHE; flips).

Boxes are ``[n, 4]`` float32 xyxy in absolute pixels of the image they belong to; labels are
``[n]`` int64 with ``-1`` marking ignore regions, which follow the same geometry and filters.

The warp is written here rather than with ``albumentations.Affine``: the YOLO recipe warps the
``2 * img_size`` mosaic canvas straight into the ``img_size`` output (one warp, and zooming out
shows more of the canvas instead of grey), and albumentations keeps the input size. HSV uses
multiplicative gains on OpenCV's HSV channels (the YOLO recipe); albumentations'
``HueSaturationValue`` shifts additively, so that is written here too.
"""
from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np

PAD_VALUE = 114  # grey used for letterbox and augmentation borders


def letterbox(image: np.ndarray, img_size: int,
              canvas_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping the aspect ratio (long side -> img_size) and pad, centred, to the canvas.

    Args:
        image: [H, W, 3] uint8.
        img_size: long side after the resize, pixels.
        canvas_hw: (h, w) of the output, each >= the resized side; None = img_size x img_size (the
            square letterbox). Rectangular evaluation passes its batch's canvas
            (``datasets.samplers.rect_batches``).
    Returns:
        (out [h, w, 3] uint8, scale, (pad_x, pad_y)) with
        ``letterbox_xy = original_xy * scale + pad``. Pads are whole pixels.
    """
    scale, (left, top) = letterbox_params(image.shape[:2], img_size, canvas_hw)
    ch, cw = canvas_hw if canvas_hw is not None else (img_size, img_size)
    image = resize_long_side(image, img_size)
    nh, nw = image.shape[:2]
    out = np.full((ch, cw, 3), PAD_VALUE, dtype=np.uint8)
    out[int(top):int(top) + nh, int(left):int(left) + nw] = image
    return out, scale, (left, top)


def resize_long_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize keeping the aspect ratio so the long side is ``size`` (the letterbox resize, without
    padding). Sides are ``round(side * size / long side)``; area interpolation when shrinking."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) == (w, h):
        return image
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def resized_hw(img_hw: tuple[int, int], img_size: int) -> tuple[int, int]:
    """(h, w) of an ``img_hw`` image after ``resize_long_side(.., img_size)``, pixels."""
    h, w = img_hw
    scale = img_size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def letterbox_params(img_hw: tuple[int, int], img_size: int,
                     canvas_hw: tuple[int, int] | None = None) -> tuple[float, tuple[float, float]]:
    """(scale, (pad_x, pad_y)) that ``letterbox`` uses for an image of ``img_hw`` = (h, w) on a
    canvas of ``canvas_hw`` (None = img_size x img_size)."""
    h, w = img_hw
    ch, cw = canvas_hw if canvas_hw is not None else (img_size, img_size)
    nh, nw = resized_hw(img_hw, img_size)
    if nh > ch or nw > cw:
        raise ValueError(f"letterbox: an image of {h}x{w} resized to {nh}x{nw} does not fit a {ch}x{cw} canvas")
    return img_size / max(h, w), (float((cw - nw) // 2), float((ch - nh) // 2))


def boxes_to_letterbox(boxes: np.ndarray, scale: float, pad: tuple[float, float]) -> np.ndarray:
    """[n, 4] xyxy original pixels -> [n, 4] float32 xyxy letterboxed pixels."""
    offset = np.array([pad[0], pad[1], pad[0], pad[1]], dtype=np.float64)
    return (np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale + offset).astype(np.float32)


def boxes_from_letterbox(boxes: np.ndarray, scale: float, pad: tuple[float, float],
                         orig_hw: tuple[int, int]) -> np.ndarray:
    """Inverse of ``boxes_to_letterbox``: [n, 4] letterboxed -> original pixels, clipped to orig_hw."""
    offset = np.array([pad[0], pad[1], pad[0], pad[1]], dtype=np.float64)
    out = (np.asarray(boxes, dtype=np.float64).reshape(-1, 4) - offset) / scale
    h, w = orig_hw
    return np.clip(out, 0, [w, h, w, h]).astype(np.float32)


def box_candidates(before_wh: np.ndarray, after: np.ndarray, aug: Any) -> np.ndarray:
    """Keep mask after a warp: both sides > ``min_box_size`` px, area > ``min_visibility`` of the
    expected area ``before_wh`` (the uncut box times the zoom), aspect ratio < ``max_aspect_ratio``."""
    w, h = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    expected = np.maximum(before_wh[:, 0] * before_wh[:, 1], 1e-9)
    aspect = np.maximum(w / (h + 1e-9), h / (w + 1e-9))
    return ((w > aug.min_box_size) & (h > aug.min_box_size) & (w * h > aug.min_visibility * expected)
            & (aspect < aug.max_aspect_ratio))


def _warp_matrix(in_hw: tuple[int, int], out_size: int, rng: np.random.Generator,
                 aug: Any) -> tuple[np.ndarray, float]:
    """3x3 matrix taking the input centre to the output centre with random perspective, rotation,
    zoom, shear and translation (applied in that order); returns (matrix, zoom)."""
    h, w = in_hw
    centre = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]], dtype=np.float64)
    persp = np.eye(3)
    persp[2, :2] = rng.uniform(-aug.perspective, aug.perspective, 2)
    angle, zoom = rng.uniform(-aug.degrees, aug.degrees), rng.uniform(*aug.scale)
    rot = np.eye(3)
    rot[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=angle, scale=zoom)
    shear = np.eye(3)
    shear[0, 1], shear[1, 0] = np.tan(np.deg2rad(rng.uniform(-aug.shear, aug.shear, 2)))
    move = np.eye(3)
    move[:2, 2] = rng.uniform(0.5 - aug.translate, 0.5 + aug.translate, 2) * out_size
    return move @ shear @ rot @ persp @ centre, float(zoom)


def _scale_shift(image: np.ndarray, m: np.ndarray, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply a zoom + shift matrix ``m`` as crop, resize and paste (several times faster than a
    general warp). Returns the output and the matrix actually applied, in pixel-edge coordinates
    (the pasted window has whole-pixel size and position, so it differs from ``m`` by < 1 px)."""
    z, tx, ty = m[0, 0], m[0, 2], m[1, 2]
    h, w = image.shape[:2]
    out = np.full((out_size, out_size, 3), PAD_VALUE, dtype=np.uint8)
    # the part of the input that lands in the output, and where its edges land
    x0, x1 = max(0, int(np.floor(-tx / z))), min(w, int(np.ceil((out_size - tx) / z)))
    y0, y1 = max(0, int(np.floor(-ty / z))), min(h, int(np.ceil((out_size - ty) / z)))
    u0, v0 = round(z * x0 + tx), round(z * y0 + ty)
    dw, dh = max(1, round(z * x1 + tx) - u0), max(1, round(z * y1 + ty) - v0)
    applied = np.array([[dw / max(x1 - x0, 1), 0, 0], [0, dh / max(y1 - y0, 1), 0], [0, 0, 1]])
    applied[:2, 2] = [u0 - applied[0, 0] * x0, v0 - applied[1, 1] * y0]
    if x1 <= x0 or y1 <= y0:
        return out, applied
    crop = image[y0:y1, x0:x1]
    same = (dw, dh) == (x1 - x0, y1 - y0)
    tile = crop if same else cv2.resize(crop, (dw, dh), interpolation=cv2.INTER_LINEAR)
    # paste the tile's part inside the output
    a, b = max(u0, 0), min(u0 + dw, out_size)
    c, d = max(v0, 0), min(v0 + dh, out_size)
    if b > a and d > c:
        out[c:d, a:b] = tile[c - v0:d - v0, a - u0:b - u0]
    return out, applied


def random_perspective(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, out_size: int,
                       rng: np.random.Generator, aug: Any,
                       full_wh: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp ``image`` (any size; its centre maps to the output centre) into out_size x out_size.

    Boxes follow their four corners (the enclosing box of the warped corners), are clipped to
    the output and filtered by ``box_candidates`` against ``full_wh`` x zoom, where ``full_wh``
    [n, 2] is each box's size before any earlier cut (mosaic tiling); default: the boxes' own size.
    Without rotation, shear and perspective (the YOLOv9 recipe) the warp is a crop + resize.
    ``image`` may also be a ``datasets.mosaic.Canvas``, which composes only the crop it is asked for.
    """
    m, zoom = _warp_matrix(image.shape[:2], out_size, rng, aug)
    if m[0, 1] == 0 and m[1, 0] == 0 and not aug.perspective:
        out, m = _scale_shift(image, m, out_size)
    else:
        full = image if isinstance(image, np.ndarray) else image.materialize()
        out = (cv2.warpPerspective(full, m, (out_size, out_size), borderValue=(PAD_VALUE,) * 3) if aug.perspective
               else cv2.warpAffine(full, m[:2], (out_size, out_size), borderValue=(PAD_VALUE,) * 3))
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return out, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 2)  # (x1y1, x2y1, x2y2, x1y2) per box
    xyz = np.concatenate([corners, np.ones((len(corners), 1))], axis=1) @ m.T
    xy = (xyz[:, :2] / xyz[:, 2:3] if aug.perspective else xyz[:, :2]).reshape(-1, 4, 2)
    warped = np.concatenate([xy.min(axis=1), xy.max(axis=1)], axis=1).clip(0, out_size)
    before = (boxes[:, 2:] - boxes[:, :2]) if full_wh is None else np.asarray(full_wh, np.float64)
    keep = box_candidates(before * zoom, warped, aug)
    return out, warped[keep].astype(np.float32), np.asarray(labels, np.int64)[keep]


def hsv_jitter(image: np.ndarray, rng: np.random.Generator, aug: Any) -> np.ndarray:
    """Multiply hue, saturation and value by random gains in 1 +- (hsv_h, hsv_s, hsv_v)."""
    gains = rng.uniform(-1, 1, 3) * [aug.hsv_h, aug.hsv_s, aug.hsv_v] + 1
    if np.all(gains == 1):
        return image
    x = np.arange(256, dtype=np.float64)
    luts = [((x * gains[0]) % 180).astype(np.uint8),  # OpenCV hue is 0..179 and wraps around
            np.clip(x * gains[1], 0, 255).astype(np.uint8), np.clip(x * gains[2], 0, 255).astype(np.uint8)]
    # one LUT per channel: OpenCV's 3-channel LUT is several times slower than split + merge
    channels = cv2.split(cv2.cvtColor(image, cv2.COLOR_RGB2HSV))
    hsv = cv2.merge([cv2.LUT(c, lut) for c, lut in zip(channels, luts)])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


class FinishTransforms:
    """The albumentations pixel transforms Blur, MedianBlur, ToGray and CLAHE (``extras_prob``
    each), then the left-right and up-down flips (``hflip_prob``, ``vflip_prob``).

    ``__call__(image, boxes, labels, rng)`` -> the same triple; flips move boxes, nothing is
    dropped. Whether each step fires is drawn from ``rng`` first, so albumentations (and its
    per-call bookkeeping of boxes) runs only for the rare samples that get an extra; the flips,
    a mirror of the pixels and of the box coordinates, are done here.
    """

    def __init__(self, aug: Any) -> None:
        # albumentations asks PyPI for a newer version on its first import; the repo never
        # touches the network at run time, so the check is switched off before that import.
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        import albumentations as A

        self.aug = aug
        self.extras = [A.Blur(p=1.0), A.MedianBlur(p=1.0), A.ToGray(p=1.0), A.CLAHE(p=1.0)]

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fire = rng.random(len(self.extras)) < self.aug.extras_prob
        seeds = rng.integers(2**31 - 1, size=len(self.extras))
        for t, on, seed in zip(self.extras, fire, seeds):
            if on:
                t.set_random_seed(int(seed))
                image = t(image=np.ascontiguousarray(image))["image"]
        h, w = image.shape[:2]
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        hflip, vflip = rng.random(2) < [self.aug.hflip_prob, self.aug.vflip_prob]
        if hflip:
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
        if vflip:
            boxes = np.stack([boxes[:, 0], h - boxes[:, 3], boxes[:, 2], h - boxes[:, 1]], 1)
        if hflip or vflip:  # OpenCV: a negative-stride numpy copy of the mirrored pixels is 15x slower
            image = cv2.flip(image, -1 if hflip and vflip else int(hflip))
        return image, boxes.astype(np.float32), np.asarray(labels, np.int64).reshape(-1)
