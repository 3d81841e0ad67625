"""Letterbox (eval) and albumentations-based train augmentation.

Boxes are ``[n, 4]`` float32 xyxy in absolute pixels of the image they belong to; labels are
``[n]`` int64 with ``-1`` marking ignore regions, which follow the same geometry.
"""
from __future__ import annotations

import os

# albumentations asks PyPI for a newer version on import; the repo never touches the network
# at run time. Must be set before the first import of albumentations.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from typing import Any  # noqa: E402

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

PAD_VALUE = 114  # grey used for letterbox and augmentation borders


def letterbox(image: np.ndarray, img_size: int) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping the aspect ratio (long side -> img_size) and pad to a centred square.

    Args:
        image: [H, W, 3] uint8.
        img_size: output side, pixels.
    Returns:
        (out [img_size, img_size, 3] uint8, scale, (pad_x, pad_y)) with
        ``letterbox_xy = original_xy * scale + pad``. Pads are whole pixels.
    """
    h, w = image.shape[:2]
    scale = img_size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (nw, nh), interpolation=interp)
    left, top = (img_size - nw) // 2, (img_size - nh) // 2
    out = np.full((img_size, img_size, 3), PAD_VALUE, dtype=np.uint8)
    out[top:top + nh, left:left + nw] = image
    return out, scale, (float(left), float(top))


def letterbox_params(img_hw: tuple[int, int], img_size: int) -> tuple[float, tuple[float, float]]:
    """(scale, (pad_x, pad_y)) that ``letterbox`` uses for an image of ``img_hw`` = (h, w)."""
    h, w = img_hw
    scale = img_size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    return scale, (float((img_size - nw) // 2), float((img_size - nh) // 2))


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


def _bbox_params(aug: Any) -> A.BboxParams:
    # clip=True: boxes touching the border after float rounding stay valid; min_visibility is the
    # kept fraction of the transformed box's area, min_width/height are output pixels.
    return A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True,
                        min_visibility=aug.min_visibility, min_width=aug.min_box_size,
                        min_height=aug.min_box_size)


def _finish_transforms(aug: Any) -> list:
    """Colour jitter and flips: shared by single-image and mosaic samples."""
    def around_one(v: float) -> tuple[float, float]:
        return (max(0.0, 1.0 - v), 1.0 + v)

    return [
        A.ColorJitter(brightness=around_one(aug.brightness), contrast=around_one(aug.contrast),
                      saturation=around_one(aug.saturation), hue=(-aug.hue, aug.hue),
                      p=aug.color_prob),
        A.HorizontalFlip(p=aug.hflip_prob),
        A.VerticalFlip(p=aug.vflip_prob),
    ]


def _geometric_transforms(aug: Any, img_size: int) -> list:
    """Fit the image into the square, then random scale/translate/rotate/shear/perspective."""
    t, sh = aug.translate, aug.shear
    geo = [
        A.LongestMaxSize(max_size=img_size, p=1.0),
        A.PadIfNeeded(min_height=img_size, min_width=img_size, position="center",
                      border_mode=cv2.BORDER_CONSTANT, fill=PAD_VALUE, p=1.0),
        A.Affine(scale=tuple(aug.scale), translate_percent={"x": (-t, t), "y": (-t, t)},
                 rotate=(-aug.degrees, aug.degrees), shear={"x": (-sh, sh), "y": (-sh, sh)},
                 border_mode=cv2.BORDER_CONSTANT, fill=PAD_VALUE, p=1.0),
    ]
    if aug.perspective > 0:
        geo.append(A.Perspective(scale=(0.0, aug.perspective), keep_size=True,
                                 border_mode=cv2.BORDER_CONSTANT, fill=PAD_VALUE, p=1.0))
    return geo


def _seed_compose(compose: A.Compose, seed: int) -> None:
    """Give every transform its own stream: albumentations' ``set_random_seed`` hands all of them
    the same seed, which would make e.g. the horizontal and vertical flips always fire together."""
    compose.set_random_seed(seed)
    states = np.random.SeedSequence(seed).generate_state(len(compose.transforms))
    for t, s in zip(compose.transforms, states):
        t.set_random_seed(int(s))


class TrainAugment:
    """Random train augmentation built from ``cfg.aug``; output is img_size x img_size.

    ``__call__(image, boxes, labels, seed, geometric=True)``: image [H, W, 3] uint8, boxes
    [n, 4] xyxy pixels, labels [n] int64 (-1 = ignore region). Returns the same triple in the
    output frame; boxes clipped inside the image, boxes under ``min_box_size`` px or keeping
    less than ``min_visibility`` of their area dropped. ``geometric=False`` applies only colour
    and flips (used after mosaic, whose input is already img_size square).
    """

    def __init__(self, aug_cfg: Any, img_size: int) -> None:
        self.img_size = img_size
        self.full = A.Compose(_geometric_transforms(aug_cfg, img_size) + _finish_transforms(aug_cfg),
                              bbox_params=_bbox_params(aug_cfg))
        self.finish = A.Compose(_finish_transforms(aug_cfg), bbox_params=_bbox_params(aug_cfg))

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, seed: int,
                 geometric: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        compose = self.full if geometric else self.finish
        _seed_compose(compose, seed)
        out = compose(image=image, bboxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                      labels=np.asarray(labels, np.int64).tolist())
        img = out["image"]
        assert img.shape[:2] == (self.img_size, self.img_size), img.shape
        b = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        b = np.clip(b, 0, self.img_size)
        return np.ascontiguousarray(img), b, np.asarray(out["labels"], dtype=np.int64).reshape(-1)
