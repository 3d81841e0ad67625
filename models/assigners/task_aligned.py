"""task_aligned: the Task-Aligned assigner (TOOD) exactly as the YOLOv9 paper code uses it.

For each GT, every anchor point strictly inside the box is a candidate. The alignment of a
(GT, anchor) pair is t = s^alpha * u^beta, with s the predicted probability of the GT's class
and u = CIoU(GT, predicted box) clamped at 0. Each GT takes the top-k anchors by t among its
candidates; an anchor taken by several GTs keeps the GT whose box its prediction overlaps
most (argmax of u over all GTs of the image). The soft target of a positive anchor is
t * max_u / max_t, both maxima over that GT's positives, so every GT's best anchor is pushed
towards that GT's best achieved IoU.

Kept quirks of the reference: top-k may pick candidates whose t is 0 (they become positives
with a soft score of 0), and the conflict argmax may hand an anchor to a GT that did not
select it. Everything runs on a [B, Gmax, P] layout (GTs padded per image), without loops.
"""
from __future__ import annotations

import torch
from torch import Tensor

from models.assigners.base import AssignResult, BaseAssigner, _empty_result
from models.priors import Priors
from utils.boxes import bbox_iou

INSIDE_EPS = 1e-9  # an anchor point is a candidate when its smallest distance to a GT side exceeds this


class TaskAlignedAssigner(BaseAssigner):
    """assign(targets, priors, batch_size, preds=(pred_boxes [B, P, 4] xyxy px, pred_scores [B, P, nc]))."""

    coder_mode = "distance"
    needs_predictions = True

    def __init__(self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9,
                 num_classes: int | None = None) -> None:
        if topk < 1:
            raise ValueError(f"assign.topk must be >= 1, got {topk}")
        self.topk, self.alpha, self.beta, self.eps = topk, alpha, beta, eps
        self.num_classes = num_classes

    @torch.no_grad()
    def assign(self, targets: Tensor, priors: Priors, batch_size: int,
               preds: tuple[Tensor, Tensor] | None = None) -> AssignResult:
        if preds is None:
            raise ValueError("TaskAlignedAssigner needs preds=(pred_boxes, pred_scores) of the model")
        pred_boxes, pred_scores = preds[0].float(), preds[1].float()
        nc = pred_scores.shape[-1]
        if self.num_classes is not None and nc != self.num_classes:
            raise ValueError(f"pred_scores has {nc} classes, the assigner was built for {self.num_classes}")
        device, num_p = targets.device, len(priors)
        result = _empty_result(batch_size, num_p, device)
        gt_rows = torch.nonzero(targets[:, 1] >= 0).squeeze(1)  # ignore regions are not GTs
        if gt_rows.numel() == 0 or num_p == 0:
            return result
        labels = targets[gt_rows, 1].long()
        if int(labels.max()) >= nc:
            raise ValueError(f"target class {int(labels.max())} is out of range for {nc} classes")
        rows, boxes, labels, valid = _pad_per_image(targets, gt_rows, batch_size)  # [B, G, ...]

        # Candidates: anchor points strictly inside the GT box.
        c = priors.centers[None, None]  # [1, 1, P, 2]
        gap = torch.cat((c - boxes[:, :, None, :2], boxes[:, :, None, 2:] - c), -1).amin(-1)
        in_gt = (gap > INSIDE_EPS) & valid[..., None]  # [B, G, P]

        overlaps = bbox_iou(boxes[:, :, None], pred_boxes[:, None], "ciou").clamp(min=0)
        overlaps = overlaps * valid[..., None]  # [B, G, P]
        cls_scores = pred_scores.transpose(1, 2).gather(1, labels[..., None].expand(-1, -1, num_p))
        align = cls_scores.pow(self.alpha) * overlaps.pow(self.beta)  # [B, G, P]

        k = min(self.topk, num_p)
        topk_idx = (align * in_gt).topk(k, dim=-1).indices
        in_topk = torch.zeros_like(in_gt).scatter_(-1, topk_idx, True)
        pos = in_topk & in_gt  # [B, G, P]; in_gt already excludes padding GTs

        # Conflicts: the anchor goes to the GT its prediction overlaps most (padding never wins).
        contested = pos.sum(1) > 1  # [B, P]
        best_gt = overlaps.masked_fill(~valid[..., None], -1.0).argmax(1)  # [B, P]
        best = torch.zeros_like(pos).scatter_(1, best_gt[:, None], True)
        pos = torch.where(contested[:, None], best, pos)

        fg = pos.any(1)  # [B, P]
        gt_idx = pos.byte().argmax(1)  # the one GT of each positive anchor (0 on background)

        # Soft score: t scaled so each GT's best-aligned anchor gets that GT's best overlap.
        align_pos = align * pos
        max_t = align_pos.amax(-1, keepdim=True)
        max_u = (overlaps * pos).amax(-1, keepdim=True)
        soft = (align_pos * max_u / (max_t + self.eps)).amax(1)  # [B, P]

        result.fg_mask = fg
        result.gt_index = torch.where(fg, rows.gather(1, gt_idx), -1)
        result.target_boxes = boxes.gather(1, gt_idx[..., None].expand(-1, -1, 4)) * fg[..., None]
        result.target_labels = torch.where(fg, labels.gather(1, gt_idx), -1)
        result.target_scores = soft * fg
        return result


def _pad_per_image(targets: Tensor, gt_rows: Tensor, batch_size: int
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Scatter the GT rows into per-image slots padded to the largest GT count of the batch.

    Returns (rows [B, G] long, -1 on padding; boxes [B, G, 4]; labels [B, G] long, 0 on
    padding; valid [B, G] bool). GTs keep their order in ``targets`` within each image.
    """
    img = targets[gt_rows, 0].long()
    if int(img.min()) < 0 or int(img.max()) >= batch_size:
        raise ValueError(f"target batch index out of range [0, {batch_size - 1}]")
    order = torch.sort(img, stable=True).indices
    gt_rows, img = gt_rows[order], img[order]
    counts = torch.bincount(img, minlength=batch_size)
    first = torch.cumsum(counts, 0) - counts  # index of each image's first GT in sorted order
    slot = torch.arange(img.numel(), device=img.device) - first[img]
    g = int(counts.max())
    device = targets.device
    rows = torch.full((batch_size, g), -1, dtype=torch.long, device=device)
    boxes = torch.zeros(batch_size, g, 4, dtype=torch.float32, device=device)
    labels = torch.zeros(batch_size, g, dtype=torch.long, device=device)
    rows[img, slot] = gt_rows
    boxes[img, slot] = targets[gt_rows, 2:6].float()
    labels[img, slot] = targets[gt_rows, 1].long()
    return rows, boxes, labels, rows >= 0
