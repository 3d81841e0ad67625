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
select it. Everything runs on a [B, G, P] layout (GTs padded per image), without loops and without
host-device syncs: the top-k of a GT ranks all of its row (zeros outside the box included, the quirk
above), and a contested anchor looks at every GT of the image, so the CIoU and the alignment are
computed for every pair, and the per-anchor and per-GT decisions are gathers and scatter reductions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.assigners.base import Assigner, AssignResult, PaddedGTs, Predictions, centres_inside, result_of_winners
from models.priors import Priors
from utils.boxes import bbox_iou, coordinate_planes

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
    """assign(targets, priors, Predictions(boxes [B, P, 4] xyxy px, scores [B, P, nc]), max_gt)."""

    Options = TaskAlignedOptions
    coders = {"dfl": "distance"}
    uses_predictions = True

    def assign_padded(self, gts: PaddedGTs, priors: Priors, preds: Predictions) -> AssignResult:
        rows, boxes, labels, valid = gts
        pred_boxes, pred_scores = coordinate_planes(preds.boxes.float()), preds.scores.float()
        batch_size, device = preds.batch_size, boxes.device
        overlap, align, top, pos = self._top_aligned(priors, boxes, labels, valid, pred_boxes, pred_scores)
        g = self._owners(overlap, top, pos, valid)  # [B, P] GT slot of each anchor, -1 on background
        fg, at_g = g >= 0, g.clamp(min=0)[:, None]
        u, t = overlap.gather(1, at_g).squeeze(1), align.gather(1, at_g).squeeze(1)  # [B, P]

        # Soft score: t scaled so each GT's best-aligned anchor gets that GT's best overlap.
        num_g = boxes.shape[1]
        gt_flat = torch.where(fg, torch.arange(batch_size, device=device)[:, None] * num_g + g, batch_size * num_g)
        zeros = torch.zeros(batch_size * num_g + 1, dtype=torch.float32, device=device)  # the last: background
        max_t = zeros.scatter_reduce(0, gt_flat.view(-1), t.view(-1), "amax")[gt_flat]
        max_u = zeros.scatter_reduce(0, gt_flat.view(-1), u.view(-1), "amax")[gt_flat]

        result = result_of_winners(rows, boxes, labels, g)
        result.target_scores = torch.where(fg, t * max_u / (max_t + EPS), 0.0)
        return result

    def _top_aligned(self, priors: Priors, boxes: Tensor, labels: Tensor, valid: Tensor, pred_boxes: Tensor,
                     pred_scores: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Overlap u [B, G, P] (CIoU clamped at 0) and alignment t [B, G, P] of every (GT, anchor) pair, and
        each GT's top-k anchors by t inside its box (0 elsewhere): indices [B, G, k] and whether each is
        a positive [B, G, k] (the anchor lies inside the box; never for a padding GT)."""
        in_gt = centres_inside(priors, boxes, valid)  # candidates: anchor points strictly inside the GT
        overlap = bbox_iou(boxes[:, :, None], pred_boxes[:, None], "ciou").clamp_(min=0)
        column = labels[:, :, None].expand(-1, -1, pred_scores.shape[1])  # the GT's class at every anchor
        align = self._align(pred_scores.transpose(1, 2).gather(1, column), overlap)
        top = align.where(in_gt, 0.0).topk(min(self.opt.topk, pred_scores.shape[1]), dim=-1).indices
        return overlap, align, top, in_gt.gather(-1, top)

    @staticmethod
    def _owners(overlap: Tensor, top: Tensor, pos: Tensor, valid: Tensor) -> Tensor:
        """[B, P] long: the GT slot each anchor trains for (-1: none). An anchor positive for one GT keeps
        it; one positive for several goes to the GT of the image its prediction overlaps most (the first
        on ties; padding never wins). Works on the positives' list (top, pos [B, G, k]) alone."""
        b, num_g, k = top.shape
        num_p = overlap.shape[-1]
        dest = torch.where(pos, top, num_p).view(b, -1)  # [B, G * k]; the extra column collects the rest
        takers = torch.zeros(b, num_p + 1, dtype=torch.long, device=top.device).scatter_add_(
            1, dest, torch.ones_like(dest))
        # every GT's overlap with the prediction at each listed anchor: [B, G', G * k]
        columns = overlap.gather(2, top.view(b, 1, -1).expand(-1, num_g, -1))
        closest = columns.masked_fill_(~valid[..., None], -1.0).argmax(1)  # [B, G * k]
        own = torch.arange(num_g, device=top.device)[:, None].expand(-1, k).reshape(1, -1)
        g = torch.where(takers.gather(1, dest) > 1, closest, own)
        return torch.full((b, num_p + 1), -1, dtype=torch.long, device=top.device).scatter_reduce_(
            1, dest, g, "amax")[:, :num_p]

    def _align(self, cls_score: Tensor, overlap: Tensor) -> Tensor:
        """Task alignment t = s^alpha * u^beta (element-wise), written into ``cls_score`` (a fresh tensor)."""
        return cls_score.pow_(self.opt.alpha).mul_(overlap.pow(self.opt.beta))
