"""atss: Adaptive Training Sample Selection (Zhang et al., 2020), for the anchor and the DFL heads.

For each GT: on every level, the ``topk`` priors whose centres are closest to the GT centre are
candidates; the IoU threshold of the GT is the mean plus the standard deviation of the IoUs
between the GT and its candidates' prior boxes; a candidate is positive when its IoU reaches that
threshold and its centre lies strictly inside the GT box. A prior positive for several GTs keeps
the GT of highest IoU. The prior box is the anchor at its cell centre; on an anchor-free head it
is a square of ``anchor_scale`` strides (the paper's 8S). The target score of a positive is the
IoU of its predicted box with the GT (0 when given blank predictions), a quality target for the
class branch; the assignment itself does not depend on the predictions.

Each GT keeps its K = levels x topk candidates as a list of prior indices ([B, G, K]): the distances to
one level's priors are computed for the top-k (a level at a time), and everything after works on the
candidates alone, without host-device syncs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.assigners.base import Assigner, AssignResult, PaddedGTs, Predictions, points_inside, result_of_winners
from models.assigners.padding import winner_per_prior
from models.priors import Priors
from utils.boxes import bbox_iou


@dataclass(frozen=True)
class ATSSOptions:
    topk: int = 9  # candidates per level and GT: the priors with the closest centres
    anchor_scale: float = 8.0  # anchor-free heads: the prior box is a square of this many strides

    def __post_init__(self) -> None:
        if self.topk < 1:
            raise ValueError(f"topk={self.topk} must be >= 1")
        if self.anchor_scale <= 0:
            raise ValueError(f"anchor_scale={self.anchor_scale} must be positive")


class ATSSAssigner(Assigner):
    """assign(targets, priors, preds, max_gt): preds only give the positives' target scores."""

    Options = ATSSOptions
    coders = {"anchor": "linear", "dfl": "distance"}  # a positive's centre may be far from the GT centre

    def pair_width(self, priors: Priors) -> int:
        return max(count for _, count in priors.level_ranges())  # the distances to one level's priors

    def assign_padded(self, gts: PaddedGTs, priors: Priors, preds: Predictions) -> AssignResult:
        rows, boxes, labels, valid = gts
        num_p = len(priors)
        idx = self._closest_per_level(priors, boxes)  # [B, G, K] candidate prior indices
        cand = valid[..., None].expand(idx.shape)
        iou = bbox_iou(boxes[:, :, None], self._prior_boxes(priors)[idx], "iou")  # [B, G, K]

        n = cand.sum(-1).clamp(min=1)
        mean = (iou * cand).sum(-1) / n
        std = (((iou - mean[..., None]) ** 2 * cand).sum(-1) / (n - 1).clamp(min=1)).sqrt()  # unbiased
        pos = cand & (iou >= (mean + std)[..., None]) & points_inside(priors.centers[idx], boxes, valid)

        # A prior positive for several GTs keeps the GT of highest IoU (the first one on ties).
        result = result_of_winners(rows, boxes, labels, winner_per_prior(iou, idx, pos, num_p, last=False))
        quality = bbox_iou(result.target_boxes, preds.boxes.float(), "iou").clamp(0, 1)
        result.target_scores = torch.where(result.fg_mask, quality, 0.0)
        return result

    def _closest_per_level(self, priors: Priors, boxes: Tensor) -> Tensor:
        """[B, G, K] long: on each level, the topk priors closest to the GT centre (K = their sum)."""
        gt_c = (boxes[..., :2] + boxes[..., 2:]) / 2  # [B, G, 2]
        centres = priors.centers
        nearest = []
        for first, count in priors.level_ranges():
            dist = (gt_c[:, :, None] - centres[None, None, first:first + count]).norm(dim=-1)  # [B, G, count]
            k = min(self.opt.topk, count)
            nearest.append(dist.topk(k, dim=-1, largest=False).indices + first)
        return torch.cat(nearest, -1)

    def _prior_boxes(self, priors: Priors) -> Tensor:
        """[P, 4] xyxy: the anchor boxes, or anchor_scale-stride squares for an anchor-free head."""
        if not priors.anchor_free:
            return priors.boxes()
        half = self.opt.anchor_scale * priors.stride[:, None] / 2
        return torch.cat((priors.centers - half, priors.centers + half), -1)
