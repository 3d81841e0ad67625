"""COCO bbox results as flat arrays, turned into Python dicts only where something needs them.

A COCO-sized validation scores 1.5M detections. Both backends (faster-coco-eval, pycocotools)
index one dict per detection, so those dicts are built exactly once, by ``annotations``, in the
form their ``loadRes`` would leave them (id, area, iscrowd added; the polygon ``segmentation``
that ``loadRes`` adds is left out: bbox evaluation never reads it). predictions.json is written
from the arrays in chunks (``json_rows``), never from a list of all of them.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from utils.detections import Detections

_JSON_ROW = '{"image_id": %d, "category_id": %d, "bbox": [%r, %r, %r, %r], "score": %r}'


@dataclass(eq=False)
class CocoResults:
    """D detections in COCO terms.

    Attributes:
        image_id: [D] int64. category_id: [D] int64 (the dataset's ids).
        bbox: [D, 4] float64 COCO xywh (top-left corner, width, height), original-image pixels.
        score: [D] float64.
    """

    image_id: np.ndarray
    category_id: np.ndarray
    bbox: np.ndarray
    score: np.ndarray

    @classmethod
    def from_detections(cls, dets: Detections, cat_ids: Sequence[int]) -> CocoResults:
        """``dets`` (labels contiguous 0..nc-1) with category ids ``cat_ids[label]``, image by image."""
        labels = np.asarray(dets.labels, np.int64).reshape(-1)
        bad = np.flatnonzero((labels < 0) | (labels >= len(cat_ids)))
        if len(bad):
            img = int(dets.det_image_ids()[bad[0]])
            raise ValueError(f"image_id {img}: predicted label {int(labels[bad[0]])} has no category id "
                             f"(cat_ids covers labels 0..{len(cat_ids) - 1}); model nc vs dataset classes?")
        b = np.asarray(dets.boxes, np.float64).reshape(-1, 4)
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
        return cls(dets.det_image_ids(), np.asarray(cat_ids, np.int64)[labels], xywh,
                   np.asarray(dets.scores, np.float64).reshape(-1))

    @classmethod
    def from_dicts(cls, results: Sequence[dict]) -> CocoResults:
        """From a COCO results list [{"image_id", "category_id", "bbox" [x, y, w, h], "score"}]."""
        return cls(np.array([int(r["image_id"]) for r in results], np.int64),
                   np.array([int(r["category_id"]) for r in results], np.int64),
                   np.array([r["bbox"] for r in results], np.float64).reshape(-1, 4),
                   np.array([r["score"] for r in results], np.float64))

    def __len__(self) -> int:
        return len(self.image_id)

    def json_rows(self, start: int = 0, stop: int | None = None) -> str:
        """Rows start..stop as the items of a COCO results json list, comma-separated: the text
        ``json.dumps`` gives for {"image_id", "category_id", "bbox", "score"} dicts (``%r`` is the
        same shortest round-trip float repr), without building the dicts."""
        sl = slice(start, stop)
        rows = zip(self.image_id[sl].tolist(), self.category_id[sl].tolist(), *self.bbox[sl].T.tolist(),
                   self.score[sl].tolist())
        return ", ".join([_JSON_ROW % row for row in rows])

    def annotations(self) -> list[dict]:
        """One dict per detection as the backends' ``loadRes`` prepares them for bbox evaluation:
        ``id`` 1-based in row order, ``area`` = w * h, ``iscrowd`` 0."""
        area = (self.bbox[:, 2] * self.bbox[:, 3]).tolist()
        return [{"image_id": i, "category_id": c, "bbox": b, "score": s, "area": a, "id": k, "iscrowd": 0}
                for k, (i, c, b, s, a) in enumerate(zip(self.image_id.tolist(), self.category_id.tolist(),
                                                        self.bbox.tolist(), self.score.tolist(), area), start=1)]
