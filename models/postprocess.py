"""postprocess(): the single detection post-processing shared by val, predict, benchmark, export."""
from __future__ import annotations

import torch
from torch import Tensor

from utils.nms import batched_nms


def postprocess(boxes: Tensor, scores: Tensor, conf_thres: float, nms_iou: float, max_det: int,
                pre_nms_topk: int = 3000, agnostic: bool = False) -> list[dict[str, Tensor]]:
    """Per image: confidence filter, top-k, NMS, keep max_det.

    boxes: [B, P, 4] xyxy input pixels; scores: [B, P, nc] in [0, 1].
    A slot may yield several classes (multi-label), as the COCO protocol rewards. NMS is class-wise,
    or with ``agnostic`` across classes (a box then suppresses overlapping boxes of any class).
    Returns per image {"boxes": [K, 4], "scores": [K], "labels": [K] long, "num_nms": int}, sorted
    by score; ``num_nms`` counts the boxes NMS kept before the max_det cap (K = min(num_nms,
    max_det)), so a caller can tell which images lost detections to the cap.
    """
    out = []
    for b in range(boxes.shape[0]):
        s = scores[b]
        slot, cls = torch.nonzero(s > conf_thres, as_tuple=True)
        sc = s[slot, cls]
        if sc.numel() > pre_nms_topk:
            sc, top = sc.topk(pre_nms_topk)
            slot, cls = slot[top], cls[top]
        bx = boxes[b, slot]
        kept = batched_nms(bx, sc, torch.zeros_like(cls) if agnostic else cls, nms_iou)
        keep = kept[:max_det]
        out.append({"boxes": bx[keep], "scores": sc[keep], "labels": cls[keep], "num_nms": int(kept.numel())})
    return out

