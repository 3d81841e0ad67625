"""Detections of a whole split in flat arrays, grouped by image.

A COCO-sized validation holds 5,000 images x up to 300 detections. As one dict of three arrays
per image they pickle, gather and concatenate cheaply; as one Python object per detection they
would not. ``Detections`` is what ranks send to rank 0 and what the metrics read.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def _offsets(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    return out


@dataclass(eq=False)
class Detections:
    """n images, D detections; image i owns rows offsets[i]:offsets[i + 1].

    Attributes:
        image_ids: [n] int64, distinct.
        offsets: [n + 1] int64.
        boxes: [D, 4] xyxy original-image pixels (float32 as the model gives them, or float64).
        scores: [D] float. labels: [D] int64 contiguous class indices.
        num_nms: [n] int64 boxes NMS kept per image before the max_det cap (``models.postprocess``),
            or None when unknown.
    """

    image_ids: np.ndarray
    offsets: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    num_nms: np.ndarray | None = None

    @classmethod
    def from_dict(cls, dets: Mapping[int, Mapping[str, np.ndarray]]) -> Detections:
        """From {image_id: {"boxes" [k, 4], "scores" [k], "labels" [k]}, optionally "num_nms"} (insertion
        order kept; num_nms only when every image has it)."""
        ids = np.array([int(i) for i in dets], np.int64)
        parts = list(dets.values())
        boxes = [np.asarray(d["boxes"]).reshape(-1, 4) for d in parts]
        scores = [np.asarray(d["scores"]).reshape(-1) for d in parts]
        labels = [np.asarray(d["labels"]).astype(np.int64).reshape(-1) for d in parts]
        for i, b, s, lab in zip(ids, boxes, scores, labels):
            if not len(b) == len(s) == len(lab):
                raise ValueError(f"image_id {i}: boxes/scores/labels lengths differ ({len(b)}, {len(s)}, {len(lab)})")
        num_nms = (np.array([int(d["num_nms"]) for d in parts], np.int64)
                   if parts and all("num_nms" in d for d in parts) else None)
        return cls(ids, _offsets(np.array([len(s) for s in scores], np.int64)),
                   np.concatenate([np.zeros((0, 4), np.float32), *boxes]),
                   np.concatenate([np.zeros(0, np.float32), *scores]), np.concatenate([np.zeros(0, np.int64), *labels]),
                   num_nms)

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        """All images of ``parts``; an image id seen before is dropped (DistributedSampler pads
        a split with repeated images, and their predictions are the same)."""
        ids = np.concatenate([np.zeros(0, np.int64), *(p.image_ids for p in parts)])
        counts = np.concatenate([np.zeros(0, np.int64), *(np.diff(p.offsets) for p in parts)])
        _, first = np.unique(ids, return_index=True)
        keep = np.zeros(len(ids), bool)
        keep[first] = True
        rows = np.repeat(keep, counts)
        whole = [np.concatenate([np.zeros(shape, dtype), *(getattr(p, name) for p in parts)])[rows]
                 for name, shape, dtype in (("boxes", (0, 4), np.float32), ("scores", 0, np.float32),
                                            ("labels", 0, np.int64))]
        nms = None
        if parts and all(p.num_nms is not None for p in parts):
            nms = np.concatenate([p.num_nms for p in parts])[keep]
        return cls(ids[keep], _offsets(counts[keep]), *whole, nms)

    def select(self, image_ids: Sequence[int] | np.ndarray) -> Detections:
        """The images ``image_ids`` in that order; a ValueError names ids that have no entry."""
        want = np.asarray(image_ids, np.int64).reshape(-1)
        position = {int(i): k for k, i in enumerate(self.image_ids.tolist())}
        missing = sorted({int(i) for i in want.tolist()} - position.keys())
        if missing:
            raise ValueError(f"no predictions were produced for {len(missing)} images (e.g. image ids "
                             f"{missing[:5]})")
        idx = np.array([position[i] for i in want.tolist()], np.int64)
        counts = np.diff(self.offsets)[idx]
        new = _offsets(counts)
        rows = np.repeat(self.offsets[idx] - new[:-1], counts) + np.arange(new[-1], dtype=np.int64)
        return Detections(want, new, self.boxes[rows], self.scores[rows], self.labels[rows],
                          None if self.num_nms is None else self.num_nms[idx])

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_dets(self) -> int:
        return int(self.offsets[-1])

    def det_image_ids(self) -> np.ndarray:
        """[D] image id of every detection."""
        return np.repeat(self.image_ids, np.diff(self.offsets))

    def image(self, i: int) -> dict[str, np.ndarray]:
        """{"boxes", "scores", "labels"} of the i-th image (views)."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return {"boxes": self.boxes[a:b], "scores": self.scores[a:b], "labels": self.labels[a:b]}

    def per_image(self) -> list[dict[str, np.ndarray]]:
        """``image(i)`` of every image, in order (n small dicts of views)."""
        return [self.image(i) for i in range(len(self))]
