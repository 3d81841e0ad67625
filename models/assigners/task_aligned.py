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
select it. Masks run on a [B, Gmax, P] layout (GTs padded per image), without loops; CIoU and the
alignment are computed at the candidate pairs only (and, for contested anchors, against every GT
of the image), which gives the dense formulation's result at a fraction of its cost.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.assigners.base import Assigner, AssignResult, Predictions, centres_inside, empty_result, pad_per_image
from models.priors import Priors
from utils.boxes import bbox_iou

EPS = 1e-9  # keeps the soft-score ratio finite when a GT's best alignment is 0


@dataclass(frozen=True)
class TaskAlignedOptions:
    topk: int = 10  # anchors each GT takes: the best-aligned of those inside its box
    alpha: float = 0.5  # exponent of the class score in the alignment s^alpha * CIoU^beta
    beta: float = 6.0  # exponent of the CIoU in the alignment

    def __post_init__(self) -> None:
        if self.topk < 1:
            raise ValueError(f"topk={self.topk} must be >= 1")
        if self.alpha < 0 or self.beta < 0:
            raise ValueError(f"alpha={self.alpha} and beta={self.beta} must not be negative")


class TaskAlignedAssigner(Assigner):
    """assign(targets, priors, Predictions(boxes [B, P, 4] xyxy px, scores [B, P, nc]))."""

    Options = TaskAlignedOptions
    coders = {"dfl": "distance"}
    uses_predictions = True

    @torch.no_grad()
    def assign(self, targets: Tensor, priors: Priors, preds: Predictions) -> AssignResult:
        pred_boxes, pred_scores = preds.boxes.float(), preds.scores.float()
        nc, batch_size = pred_scores.shape[-1], preds.batch_size
        device, num_p = targets.device, len(priors)
        result = empty_result(batch_size, num_p, device)
        gt_rows = torch.nonzero(targets[:, 1] >= 0).squeeze(1)  # ignore regions are not GTs
        if gt_rows.numel() == 0 or num_p == 0:
            return result
        labels = targets[gt_rows, 1].long()
        if int(labels.max()) >= nc:
            raise ValueError(f"target class {int(labels.max())} is out of range for {nc} classes")
        rows, boxes, labels, valid = pad_per_image(targets, gt_rows, batch_size)  # [B, G, ...]
        in_gt = centres_inside(priors, boxes, valid)  # candidates: anchor points strictly inside the GT

        # Alignment t at the candidates only (a small share of the [B, G, P] pairs); 0 elsewhere.
        b, g, p = torch.nonzero(in_gt, as_tuple=True)
        u = bbox_iou(boxes[b, g], pred_boxes[b, p], "ciou").clamp(min=0)
        t = self._align(pred_scores[b, p, labels[b, g]], u)
        align = torch.zeros(in_gt.shape, dtype=torch.float32, device=device)
        align[b, g, p] = t

        k = min(self.opt.topk, num_p)
        in_topk = torch.zeros_like(in_gt).scatter_(-1, align.topk(k, dim=-1).indices, True)
        pos = in_topk & in_gt  # [B, G, P]; in_gt already excludes padding GTs
        b, g, p = torch.nonzero(pos, as_tuple=True)  # the positives, as (image, GT, anchor) triples
        u, t = u[pos[in_gt]], align[b, g, p]

        # Conflicts: an anchor taken by several GTs goes to the GT its prediction overlaps most, among
        # all GTs of the image (padding never wins): CIoU against every GT, for those anchors only.
        takers = torch.zeros(batch_size, num_p, dtype=torch.long, device=device).index_put_(
            (b, p), torch.ones_like(b), accumulate=True)
        contested = takers[b, p] > 1
        if contested.any():
            cb, cp = torch.nonzero(takers > 1, as_tuple=True)
            column = bbox_iou(boxes[cb], pred_boxes[cb, cp][:, None], "ciou").clamp(min=0) * valid[cb]
            cg = column.masked_fill(~valid[cb], -1.0).argmax(1)  # [C]
            cu = column.gather(1, cg[:, None]).squeeze(1)
            ct = self._align(pred_scores[cb, cp, labels[cb, cg]], cu)
            keep = ~contested
            b, g, p = torch.cat((b[keep], cb)), torch.cat((g[keep], cg)), torch.cat((p[keep], cp))
            u, t = torch.cat((u[keep], cu)), torch.cat((t[keep], ct))

        # Soft score: t scaled so each GT's best-aligned anchor gets that GT's best overlap.
        gt_flat = b * in_gt.shape[1] + g
        zeros = torch.zeros(in_gt.shape[0] * in_gt.shape[1], dtype=torch.float32, device=device)
        max_t = zeros.scatter_reduce(0, gt_flat, t, "amax")
        max_u = zeros.scatter_reduce(0, gt_flat, u, "amax")
        soft_pos = t * max_u[gt_flat] / (max_t[gt_flat] + EPS)

        fg = torch.zeros(batch_size, num_p, dtype=torch.bool, device=device)
        fg[b, p] = True
        gt_idx = torch.zeros(batch_size, num_p, dtype=torch.long, device=device)
        gt_idx[b, p] = g  # the one GT of each positive anchor (0 on background)
        soft = torch.zeros(batch_size, num_p, dtype=torch.float32, device=device)
        soft[b, p] = soft_pos

        result.fg_mask = fg
        result.gt_index = torch.where(fg, rows.gather(1, gt_idx), -1)
        result.target_boxes = boxes.gather(1, gt_idx[..., None].expand(-1, -1, 4)) * fg[..., None]
        result.target_labels = torch.where(fg, labels.gather(1, gt_idx), -1)
        result.target_scores = soft
        return result

    def _align(self, cls_score: Tensor, overlap: Tensor) -> Tensor:
        """Task alignment t = s^alpha * u^beta (element-wise)."""
        return cls_score.pow(self.opt.alpha) * overlap.pow(self.opt.beta)
