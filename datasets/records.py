"""One scanned, cleaned annotation record per image: the format every parser produces."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


@dataclass
class Record:
    """A checked image and its boxes, in the original (upright, EXIF-applied) image frame.

    Attributes:
        image_id: 1-based position in the split's list (stable, deterministic).
        file: absolute image path.
        img_hw: real decoded (h, w) in pixels.
        boxes: [n, 4] float32 xyxy, absolute pixels, 0-based pixel edges (0..w, 0..h).
        labels: [n] int64 class indices in 0..nc-1.
        ignore: [m, 4] float32 xyxy ignore regions (e.g. VOC difficult objects), pixels.
    """

    image_id: int
    file: str
    img_hw: tuple[int, int]
    boxes: np.ndarray = field(default_factory=_empty_boxes)
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    ignore: np.ndarray = field(default_factory=_empty_boxes)
