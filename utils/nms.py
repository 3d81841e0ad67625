"""Class-aware NMS: torchvision's whenever it imports, else a pure-PyTorch one.

torchvision is never required. Its NMS is one fused kernel; the fallback here builds the [K, K] IoU
matrix of an image's candidates (3000 x 3000 at the usual cap) and reads the device once per round
of its fixed-point loop. The first call of a process logs which one runs; the fallback on a CUDA
device also warns, once, that installing a torchvision matching torch makes it faster.
"""
from __future__ import annotations

import torch
from loguru import logger
from torch import Tensor

from utils.boxes import box_iou

try:  # optional fast path; torchvision is never required
    from torchvision.ops import batched_nms as _tv_batched_nms
except Exception:  # noqa: BLE001 - any import failure (missing, ABI mismatch) means "not available"
    _tv_batched_nms = None

_announced: set[str] = set()  # device types whose NMS choice was logged in this process


def nms_backend() -> str:
    """The NMS that ``batched_nms`` runs in this process."""
    return "torchvision.ops.batched_nms" if _tv_batched_nms is not None else "utils.nms (pure PyTorch)"


def _announce(device: torch.device) -> None:
    if device.type in _announced:
        return
    _announced.add(device.type)
    logger.info(f"NMS: {nms_backend()} on {device.type}")
    if _tv_batched_nms is None and device.type == "cuda":
        logger.warning("NMS falls back to the pure-PyTorch version on CUDA (torchvision does not import): "
                       "a [K, K] IoU matrix per image and a host sync per round; install the torchvision "
                       "built for this torch for its fused kernel")


def nms(boxes: Tensor, scores: Tensor, iou_thres: float) -> Tensor:
    """Greedy NMS. boxes: [K, 4] xyxy, scores: [K] -> kept indices sorted by score, descending.

    Exact greedy result computed without a Python loop over boxes: keep[j] holds iff no kept
    higher-scoring box suppresses j. Iterating that rule from "keep all" reaches the greedy
    fixed point in as many rounds as the longest suppression chain (a handful in practice).
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True)
    iou = box_iou(boxes[order], boxes[order])
    sup = (iou > iou_thres).triu_(diagonal=1).to(iou.dtype)  # sup[i, j]: higher-ranked i would suppress j
    keep = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    for _ in range(len(order)):
        new_keep = (keep.to(sup.dtype) @ sup) == 0  # a matrix-vector product: no Python loop over boxes
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return order[keep]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thres: float) -> Tensor:
    """NMS within each label. Offsets boxes per label so different labels never overlap."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    # The per-label offset (torchvision's trick too) keeps labels apart only for coordinates >= 0, and
    # decoded boxes may reach past the image: shift by the lowest coordinate when it is negative (a
    # shift changes no IoU; no host sync, boxes at >= 0 stay as they are).
    boxes = boxes - boxes.min().clamp(max=0)
    _announce(boxes.device)
    if _tv_batched_nms is not None:
        return _tv_batched_nms(boxes, scores, labels, iou_thres)
    offset = labels.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offset[:, None], scores, iou_thres)
