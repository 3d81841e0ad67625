"""simota: the SimOTA assignment of YOLOX (Ge et al., 2021), for the anchor and the DFL heads.

Candidates (the centre prior): priors whose centre lies inside a GT box or within
``center_radius`` strides of a GT centre (on both axes), for any GT of the image. For each
(GT, candidate) pair:

    cost = cls_cost + iou_weight * (-log(IoU + 1e-8)) + 1e5 * (not (inside the box and near the centre))

with IoU between the GT and the candidate's predicted box, and cls_cost the binary cross-entropy
of the candidate's predicted scores against the GT's one-hot class, summed over classes. Each GT
takes its ``dynamic_k`` cheapest candidates, dynamic_k = max(1, floor(sum of its ``candidate_topk``
largest IoUs)); a prior taken by several GTs keeps the cheapest. The target score of a positive is
its IoU (YOLOX's class target).

The class cost uses the head's detection scores as given (obj * cls for the anchor head; YOLOX
takes sqrt(obj * cls)). Vectorised over the batch on a [B, G, P] layout (GTs padded per image): every
GT of an image weighs every candidate prior of the image, and the k cheapest of a GT may lie anywhere
among them, so the pairs are dense; the class cost is a per-prior sum plus the GT's class column
(see ``_class_cost``), never a [pairs x classes] tensor, and nothing waits for the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.assigners.base import Assigner, AssignResult, PaddedGTs, Predictions, centres_inside, result_of_winners
from models.priors import Priors
from utils.boxes import bbox_iou, coordinate_planes

OUTSIDE_COST = 1e5  # added to candidates not both inside the box and near its centre
PROB_EPS = 1e-7  # scores are clamped to [eps, 1 - eps] inside the logarithms


@dataclass(frozen=True)
class SimOTAOptions:
    center_radius: float = 2.5  # the centre region: this many strides around a GT centre
    candidate_topk: int = 10  # dynamic k of a GT = floor(sum of its this-many largest candidate IoUs)
    iou_weight: float = 3.0  # weight of the IoU cost against the class cost

    def __post_init__(self) -> None:
        if self.center_radius <= 0 or self.iou_weight < 0:
            raise ValueError(f"center_radius={self.center_radius} must be positive and iou_weight="
                             f"{self.iou_weight} not negative")
        if self.candidate_topk < 1:
            raise ValueError(f"candidate_topk={self.candidate_topk} must be >= 1")


class SimOTAAssigner(Assigner):
    """assign(targets, priors, Predictions(boxes [B, P, 4] xyxy px, scores [B, P, nc]), max_gt)."""

    Options = SimOTAOptions
    coders = {"anchor": "linear", "dfl": "distance"}  # positives may lie centre_radius cells from the GT
    uses_predictions = True

    def assign_padded(self, gts: PaddedGTs, priors: Priors, preds: Predictions) -> AssignResult:
        rows, boxes, labels, valid = gts
        pred_boxes, scores = coordinate_planes(preds.boxes.float()), preds.scores.float()
        num_p, device = len(priors), boxes.device
        in_box, near = centres_inside(priors, boxes, valid), self._near_centre(priors, boxes, valid)  # [B, G, P]
        geometric = in_box & near  # inside the box and near its centre
        cand = (in_box | near).any(1, keepdim=True) & valid[..., None]  # the image's centre prior
        del in_box, near

        # IoU and cost of every (GT, prior) pair; a prior off the image's centre prior is never taken.
        iou = bbox_iou(boxes[:, :, None], pred_boxes[:, None], "iou").clamp_(0, 1)  # [B, G, P]
        cost = self._class_cost(scores, labels)
        cost += (iou + 1e-8).log_().mul_(-self.opt.iou_weight)
        cost.add_(~geometric, alpha=OUTSIDE_COST)  # exact: the added values are 0 and OUTSIDE_COST
        del geometric
        iou.masked_fill_(~cand, 0.0)
        cost.masked_fill_(~cand, float("inf"))

        k = min(self.opt.candidate_topk, num_p)
        dynamic_k = iou.topk(k, dim=-1).values.sum(-1).int().clamp(min=1)  # [B, G]
        order = cost.topk(k, dim=-1, largest=False)  # the k cheapest priors of each GT
        take = (torch.arange(k, device=device) < dynamic_k[..., None]) & torch.isfinite(order.values)
        matched = torch.zeros_like(cand).scatter_(-1, order.indices, take)  # [B, G, P]

        # Conflicts: a prior taken by several GTs keeps the cheapest (the first GT on ties).
        g_best = cost.masked_fill_(~matched, float("inf")).argmin(1)  # [B, P]
        fg = matched.any(1)
        result = result_of_winners(rows, boxes, labels, torch.where(fg, g_best, -1))
        result.target_scores = iou.gather(1, g_best[:, None]).squeeze(1) * fg
        return result

    def _near_centre(self, priors: Priors, boxes: Tensor, valid: Tensor) -> Tensor:
        """[B, G, P]: prior centre within center_radius strides of the GT centre, on both axes."""
        gt_c = (boxes[..., :2] + boxes[..., 2:]) / 2  # [B, G, 2]
        reach = self.opt.center_radius * priors.stride  # [P]
        c = priors.centers
        near_x = (c[:, 0] - gt_c[..., 0, None]).abs() < reach
        return near_x & ((c[:, 1] - gt_c[..., 1, None]).abs() < reach) & valid[..., None]

    @staticmethod
    def _class_cost(scores: Tensor, labels: Tensor) -> Tensor:
        """scores [B, P, nc], labels [B, G] -> [B, G, P]: BCE of a prior's scores against the GT's
        one-hot class, summed over classes = (sum over all classes of -log(1 - s_c)) - (-log(1 - s_y))
        - log(s_y): a per-prior sum and two gathered terms of the GT's class y, so the memory is that
        of the [B, G, P] pairs, not of [pairs x classes]."""
        negative = scores.clamp(PROB_EPS, 1 - PROB_EPS).neg_().log1p_().neg_()  # [B, P, nc] each class as a negative
        column = labels[:, :, None].expand(-1, -1, scores.shape[1])  # [B, G, P]: the GT's class at every prior
        cost = negative.transpose(1, 2).gather(1, column).neg_().add_(negative.sum(-1)[:, None])
        own = scores.transpose(1, 2).gather(1, column).clamp_(PROB_EPS, 1 - PROB_EPS)
        return cost.sub_(own.log_())
