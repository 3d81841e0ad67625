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
takes sqrt(obj * cls)). Vectorised over the batch on a [B, Gmax, P] layout (GTs padded per image).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.assigners.base import Assigner, AssignResult, Predictions, centres_inside, empty_result, pad_per_image
from models.priors import Priors
from utils.boxes import bbox_iou

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
    """assign(targets, priors, Predictions(boxes [B, P, 4] xyxy px, scores [B, P, nc]))."""

    Options = SimOTAOptions
    coders = {"anchor": "linear", "dfl": "distance"}  # positives may lie centre_radius cells from the GT
    uses_predictions = True

    @torch.no_grad()
    def assign(self, targets: Tensor, priors: Priors, preds: Predictions) -> AssignResult:
        pred_boxes, scores = preds.boxes.float(), preds.scores.float()
        batch_size, num_p, device = preds.batch_size, len(priors), targets.device
        result = empty_result(batch_size, num_p, device)
        gt_rows = torch.nonzero(targets[:, 1] >= 0).squeeze(1)  # ignore regions are not GTs
        if gt_rows.numel() == 0 or num_p == 0:
            return result
        if int(targets[gt_rows, 1].max()) >= scores.shape[-1]:
            raise ValueError(f"target class {int(targets[gt_rows, 1].max())} is out of range for "
                             f"{scores.shape[-1]} classes")
        rows, boxes, labels, valid = pad_per_image(targets, gt_rows, batch_size)  # [B, G, ...]
        in_box = centres_inside(priors, boxes, valid)  # [B, G, P]
        in_ctr = self._near_centre(priors, boxes, valid)
        cand = (in_box | in_ctr).any(1, keepdim=True) & valid[..., None]  # centre prior of the image

        # IoU and cost at the candidate pairs only; +inf elsewhere so they are never taken.
        b, g, p = torch.nonzero(cand, as_tuple=True)
        iou_pairs = bbox_iou(boxes[b, g], pred_boxes[b, p], "iou").clamp(0, 1)
        cost_pairs = (self._class_cost(scores[b, p], labels[b, g])
                      + self.opt.iou_weight * -torch.log(iou_pairs + 1e-8)
                      + OUTSIDE_COST * ~(in_box[b, g, p] & in_ctr[b, g, p]))
        iou = torch.zeros(cand.shape, device=device).index_put_((b, g, p), iou_pairs)
        cost = torch.full(cand.shape, float("inf"), device=device).index_put_((b, g, p), cost_pairs)

        k = min(self.opt.candidate_topk, num_p)
        dynamic_k = iou.topk(k, dim=-1).values.sum(-1).int().clamp(min=1)  # [B, G]
        order = cost.topk(k, dim=-1, largest=False)  # the k cheapest priors of each GT
        take = (torch.arange(k, device=device) < dynamic_k[..., None]) & torch.isfinite(order.values)
        matched = torch.zeros_like(cand).scatter_(-1, order.indices, take)  # [B, G, P]

        # Conflicts: a prior taken by several GTs keeps the cheapest.
        cost = cost.masked_fill(~matched, float("inf"))
        g_best = cost.argmin(1)  # [B, P]
        fg = matched.any(1)
        gb = g_best.clamp(min=0)
        result.fg_mask = fg
        result.gt_index = torch.where(fg, rows.gather(1, gb), -1)
        result.target_boxes = boxes.gather(1, gb[..., None].expand(-1, -1, 4)) * fg[..., None]
        result.target_labels = torch.where(fg, labels.gather(1, gb), -1)
        result.target_scores = iou.gather(1, gb[:, None]).squeeze(1) * fg
        return result

    def _near_centre(self, priors: Priors, boxes: Tensor, valid: Tensor) -> Tensor:
        """[B, G, P]: prior centre within center_radius strides of the GT centre, on both axes."""
        gt_c = (boxes[..., :2] + boxes[..., 2:]) / 2  # [B, G, 2]
        reach = self.opt.center_radius * priors.stride[:, None]  # [P, 1]
        return ((priors.centers[None, None] - gt_c[:, :, None]).abs() < reach).all(-1) & valid[..., None]

    @staticmethod
    def _class_cost(scores: Tensor, labels: Tensor) -> Tensor:
        """scores [n, nc], labels [n] -> [n]: BCE of scores against one_hot(labels), summed over classes."""
        s = scores.clamp(PROB_EPS, 1 - PROB_EPS)
        negative = -torch.log1p(-s)  # cost of each class as a negative
        own = s.gather(1, labels[:, None]).squeeze(1)
        return negative.sum(1) - negative.gather(1, labels[:, None]).squeeze(1) - torch.log(own)
