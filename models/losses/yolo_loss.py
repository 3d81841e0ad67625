"""Loss of the anchor-based YOLO: objectness + class BCE (optionally focal) + IoU-family box loss.

Every term is normalised by the number of positive slots, so the weights mean the same for
any batch size, image size and assignment method. Runs in fp32 even under AMP.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.assigners.base import Assigner, AssignResult, Predictions
from models.detector import main_output
from models.priors import Priors
from utils.boxes import bbox_iou, box_iou


def focal_bce(logits: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """Element-wise BCE with logits, scaled by |target - p|^gamma (gamma 0 = plain BCE).

    The modulating factor uses the distance to a soft target, so IoU-valued objectness
    targets are supported (quality-focal style).
    """
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma > 0:
        loss = loss * (targets - logits.sigmoid()).abs().pow(gamma)
    return loss


class YoloAnchorLoss:
    """__call__(raw [B, P, D], targets [N, 6], priors) -> (total, {name: detached scalar})."""

    def __init__(self, loss_cfg, assigner: Assigner, coder, num_classes: int) -> None:
        self.cfg = loss_cfg
        self.assigner = assigner
        self.coder = coder
        self.num_classes = num_classes

    def __call__(self, raw: Tensor, targets: Tensor, priors: Priors) -> tuple[Tensor, dict]:
        raw = main_output(raw).float()
        boxes = self.coder.decode_boxes(raw, priors)  # [B, P, 4]
        res = self.assigner.assign(targets, priors, Predictions(boxes.detach(), self.coder.scores(raw).detach()))
        fg = res.fg_mask
        norm = max(res.num_fg, 1)
        iou = bbox_iou(boxes[fg], res.target_boxes[fg], self.cfg.box)  # [F]
        loss_box = (1.0 - iou).sum() / norm
        loss_obj = self._objectness(raw, boxes, res, targets, priors, iou) / norm
        loss_cls = self._classes(raw[fg][:, 5:], res.target_labels[fg]) / norm
        c = self.cfg
        total = c.box_weight * loss_box + loss_obj + c.cls_weight * loss_cls
        parts = {"box": loss_box.detach(), "obj": loss_obj.detach(), "cls": loss_cls.detach()}
        return total, parts

    def _objectness(self, raw: Tensor, boxes: Tensor, res: AssignResult, targets: Tensor,
                    priors: Priors, fg_iou: Tensor) -> Tensor:
        c = self.cfg
        fg = res.fg_mask
        obj_t = torch.zeros_like(fg, dtype=raw.dtype)
        if c.obj_target == "iou":
            obj_t[fg] = fg_iou.detach().clamp(0, 1).to(raw.dtype)
        else:
            obj_t[fg] = 1.0
        per_slot = focal_bce(self.coder.objectness_logits(raw), obj_t, c.focal_gamma)
        weight = torch.where(fg, c.obj_weight, c.noobj_weight).to(raw.dtype)
        weight = weight * raw.new_tensor(c.level_weights)[priors.level][None]
        weight = weight * ~self._ignored(boxes, targets, fg)
        return (per_slot * weight).sum()

    def _ignored(self, boxes: Tensor, targets: Tensor, fg: Tensor) -> Tensor:
        """[B, P] bool: negatives whose decoded box overlaps an ignore region (cls < 0)."""
        ign = targets[targets[:, 1] < 0]
        out = torch.zeros_like(fg)
        if ign.numel() == 0:
            return out
        with torch.no_grad():
            for b in ign[:, 0].unique().long().tolist():  # loop over images that have ignore regions
                regions = ign[ign[:, 0] == b, 2:6]
                out[b] = box_iou(boxes[b].detach(), regions).amax(1) > self.cfg.ignore_iou
        return out & ~fg

    def _classes(self, cls_logits: Tensor, labels: Tensor) -> Tensor:
        if cls_logits.numel() == 0:
            return cls_logits.sum()
        eps = self.cfg.label_smoothing
        t = F.one_hot(labels, self.num_classes).to(cls_logits.dtype)
        t = t * (1 - eps) + eps / self.num_classes
        return focal_bce(cls_logits, t, self.cfg.focal_gamma).sum()
