"""atss: Adaptive Training Sample Selection (Zhang et al., 2020), for the anchor and the DFL heads.

For each GT: on every level, the ``topk`` priors whose centres are closest to the GT centre are
candidates; the IoU threshold of the GT is the mean plus the standard deviation of the IoUs
between the GT and its candidates' prior boxes; a candidate is positive when its IoU reaches that
threshold and its centre lies strictly inside the GT box. A prior positive for several GTs keeps
the GT of highest IoU. The prior box is the anchor at its cell centre; on an anchor-free head it
is a square of ``anchor_scale`` strides (the paper's 8S). The target score of a positive is the
IoU of its predicted box with the GT (0 when given blank predictions), a quality target for the
class branch; the assignment itself does not depend on the predictions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.assigners.base import Assigner, AssignResult, Predictions, centres_inside, empty_result, pad_per_image
from models.priors import Priors
from utils.boxes import bbox_iou, box_iou


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
    """assign(targets, priors, preds): preds only give the positives' target scores."""

    Options = ATSSOptions
    coders = {"anchor": "linear", "dfl": "distance"}  # a positive's centre may be far from the GT centre

    @torch.no_grad()
    def assign(self, targets: Tensor, priors: Priors, preds: Predictions) -> AssignResult:
        batch_size, num_p, device = preds.batch_size, len(priors), targets.device
        result = empty_result(batch_size, num_p, device)
        gt_rows = torch.nonzero(targets[:, 1] >= 0).squeeze(1)  # ignore regions are not GTs
        if gt_rows.numel() == 0 or num_p == 0:
            return result
        rows, boxes, labels, valid = pad_per_image(targets, gt_rows, batch_size)  # [B, G, ...]
        cand = self._closest_per_level(priors, boxes, valid)  # [B, G, P]
        iou = box_iou(boxes.reshape(-1, 4), self._prior_boxes(priors)).view(cand.shape)  # [B, G, P]

        n = cand.sum(-1).clamp(min=1)
        mean = (iou * cand).sum(-1) / n
        std = (((iou - mean[..., None]) ** 2 * cand).sum(-1) / (n - 1).clamp(min=1)).sqrt()  # unbiased
        pos = cand & (iou >= (mean + std)[..., None]) & centres_inside(priors, boxes, valid)

        # A prior positive for several GTs keeps the GT of highest IoU.
        g_best = iou.masked_fill(~pos, -1.0).argmax(1)  # [B, P]
        fg = pos.any(1)
        result.fg_mask = fg
        result.gt_index = torch.where(fg, rows.gather(1, g_best), -1)
        result.target_boxes = boxes.gather(1, g_best[..., None].expand(-1, -1, 4)) * fg[..., None]
        result.target_labels = torch.where(fg, labels.gather(1, g_best), -1)
        quality = bbox_iou(result.target_boxes[fg], preds.boxes.float()[fg], "iou").clamp(0, 1)
        result.target_scores[fg] = quality
        return result

    def _closest_per_level(self, priors: Priors, boxes: Tensor, valid: Tensor) -> Tensor:
        """[B, G, P] bool: on each level, the topk priors closest to the GT centre."""
        gt_c = (boxes[..., :2] + boxes[..., 2:]) / 2  # [B, G, 2]
        dist = (gt_c[:, :, None] - priors.centers[None, None]).norm(dim=-1)  # [B, G, P]
        cand = torch.zeros_like(dist, dtype=torch.bool)
        for lv in range(len(priors.level_hw)):
            idx = torch.nonzero(priors.level == lv).squeeze(1)
            k = min(self.opt.topk, idx.numel())
            nearest = dist[..., idx].topk(k, dim=-1, largest=False).indices
            cand[..., idx] = torch.zeros_like(cand[..., idx]).scatter_(-1, nearest, True)
        return cand & valid[..., None]

    def _prior_boxes(self, priors: Priors) -> Tensor:
        """[P, 4] xyxy: the anchor boxes, or anchor_scale-stride squares for an anchor-free head."""
        if not priors.anchor_free:
            return priors.boxes()
        half = self.opt.anchor_scale * priors.stride[:, None] / 2
        return torch.cat((priors.centers - half, priors.centers + half), -1)
