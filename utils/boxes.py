"""Box conversions and IoU family. All boxes are float tensors in absolute pixels."""
from __future__ import annotations

import math

import torch
from torch import Tensor

EPS = 1e-7


def cxcywh_to_xyxy(b: Tensor) -> Tensor:
    """[..., 4] centre-x, centre-y, width, height -> [..., 4] xyxy."""
    cx, cy, w, h = b.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1)


def box_area(b: Tensor) -> Tensor:
    """[..., 4] xyxy -> [...] area (0 for inverted boxes)."""
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def coordinate_planes(b: Tensor) -> Tensor:
    """[..., N, 4] -> the same boxes stored coordinate by coordinate (memory [..., 4, N]), so that the
    per-coordinate views ``b[..., i]`` the IoU functions read are contiguous: a pairwise IoU broadcast
    over [..., M, N] then runs vectorised. Values and shape unchanged."""
    return b.transpose(-1, -2).contiguous().transpose(-1, -2)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU. a: [N, 4] xyxy, b: [M, 4] xyxy -> [N, M]."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter + EPS)


def bbox_iou(a: Tensor, b: Tensor, kind: str = "iou") -> Tensor:
    """Element-wise IoU family between aligned boxes.

    a, b: [..., 4] xyxy (broadcastable). kind: iou | giou | diou | ciou.
    Returns [...]; 1 for identical boxes. eps keeps zero-size boxes finite. Intermediates of the
    broadcast shape are released as soon as they are used (the assigners call it on [B, G, P] pairs).
    """
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    aw, ah = (ax2 - ax1).clamp(min=0), (ay2 - ay1).clamp(min=0)
    bw, bh = (bx2 - bx1).clamp(min=0), (by2 - by1).clamp(min=0)
    inter = ((torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
             * (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0))
    union = aw * ah + bw * bh - inter + EPS
    iou = inter / union
    del inter
    if kind == "iou":
        return iou
    cw = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)  # enclosing box
    ch = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    if kind == "giou":
        c_area = cw * ch + EPS
        return iou - (c_area - union) / c_area
    del union
    c2 = cw ** 2 + ch ** 2 + EPS  # squared diagonal of the enclosing box
    del cw, ch
    rho2 = ((bx1 + bx2 - ax1 - ax2) ** 2 + (by1 + by2 - ay1 - ay2) ** 2) / 4  # squared centre distance
    centre_term = rho2 / c2
    del rho2, c2
    if kind == "diou":
        return iou - centre_term
    if kind == "ciou":
        v = (4 / math.pi ** 2) * (torch.atan(bw / (bh + EPS)) - torch.atan(aw / (ah + EPS))) ** 2
        with torch.no_grad():  # alpha is a trade-off weight, not a path for gradients (CIoU paper)
            alpha = v / (v - iou + (1 + EPS))
        return iou - (centre_term + v * alpha)
    raise ValueError(f"unknown IoU kind {kind!r}; valid: iou, giou, diou, ciou")
