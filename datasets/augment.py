"""The training augmentation of one sample, in the order of the YOLO recipe.

1. With ``mosaic_prob``: a mosaic of 4 images (9 with ``mosaic_9_prob``) on a 2s canvas,
   warped into s x s by ``random_perspective``; then with ``mixup_prob`` blended with a second
   mosaic made the same way (MixUp).
   Otherwise: the image letterboxed to s x s and warped; then with ``cutmix_prob`` a rectangle
   of a second such sample is pasted in (CutMix).
2. HSV jitter, then the albumentations extras (blur, median blur, grey, CLAHE) and the flips.

``multi_image=False`` (the last ``close_mosaic_epochs`` epochs) turns off mosaic, MixUp and
CutMix. Every random number comes from the caller's generator and is drawn whether or not a
step fires, so a sample depends only on (seed, epoch, index) and its pool, and a closed epoch equals
the same epoch with the multi-image probabilities at 0.

Partners (the other mosaic tiles, the MixUp mosaic, the CutMix sample) are drawn uniformly from
``pool`` (the images the same DataLoader worker loaded last, ``datasets.samplers.PoolSampler``)
when it holds at least ``MIN_POOL`` images, else from the whole split.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from datasets.mosaic import Sample, cutmix, mixup, mosaic_lazy
from datasets.transforms import (
    FinishTransforms,
    hsv_jitter,
    letterbox,
    random_perspective,
)

# load(index, rng) -> (index actually used, image with long side = img_size, boxes, labels)
LoadFn = Callable[[int, np.random.Generator], tuple[int, np.ndarray, np.ndarray, np.ndarray]]
MIN_POOL = 8  # a smaller pool (a lane's first samples of an epoch) draws partners from the whole split


def draw_partners(rng: np.random.Generator, n: int, k: int, pool: tuple[int, ...] | None) -> list[int]:
    """``k`` partner indices: uniform over ``pool`` when it holds >= MIN_POOL images, else over 0..n-1."""
    if pool is not None and len(pool) >= MIN_POOL:
        return [pool[j] for j in rng.integers(len(pool), size=k)]
    return [int(j) for j in rng.integers(n, size=k)]


class TrainAugment:
    """``__call__(index, n, load, rng, multi_image)`` -> (index used, image [s, s, 3] uint8,
    boxes [m, 4] float32 inside the image, labels [m] int64)."""

    def __init__(self, aug_cfg: Any, img_size: int) -> None:
        self.aug = aug_cfg
        self.size = img_size
        self.finish = FinishTransforms(aug_cfg)

    def __call__(self, index: int, n: int, load: LoadFn, rng: np.random.Generator,
                 multi_image: bool = True, pool: tuple[int, ...] | None = None
                 ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        aug = self.aug
        use_mosaic = rng.random() < aug.mosaic_prob and multi_image
        use_mix = rng.random() < (aug.mixup_prob if use_mosaic else aug.cutmix_prob) and multi_image
        if use_mosaic:
            index, sample = self._mosaic_sample(index, n, load, rng, pool)
            if use_mix:
                _, other = self._mosaic_sample(draw_partners(rng, n, 1, pool)[0], n, load, rng, pool)
                sample = mixup(sample, other, rng, aug.mixup_beta)
        else:
            index, sample = self._single_sample(index, load, rng)
            if use_mix:
                _, other = self._single_sample(draw_partners(rng, n, 1, pool)[0], load, rng)
                sample = cutmix(sample, other, rng, aug)
        image, boxes, labels = sample
        image = hsv_jitter(image, rng, aug)
        image, boxes, labels = self.finish(image, boxes, labels, rng)
        return index, image, boxes, labels

    def _mosaic_sample(self, index: int, n: int, load: LoadFn, rng: np.random.Generator,
                       pool: tuple[int, ...] | None = None) -> tuple[int, Sample]:
        nine = rng.random() < self.aug.mosaic_9_prob
        picks = [index] + draw_partners(rng, n, 8 if nine else 3, pool)
        loaded = [load(j, rng) for j in picks]
        canvas, boxes, labels, full_wh = mosaic_lazy([x[1:] for x in loaded], self.size, rng)
        return loaded[0][0], random_perspective(canvas, boxes, labels, self.size, rng, self.aug, full_wh)

    def _single_sample(self, index: int, load: LoadFn, rng: np.random.Generator) -> tuple[int, Sample]:
        index, image, boxes, labels = load(index, rng)
        padded, _, (px, py) = letterbox(image, self.size)
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4) + np.array([px, py, px, py], np.float32)
        return index, random_perspective(padded, boxes, labels, self.size, rng, self.aug)
