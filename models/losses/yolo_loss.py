"""Loss of the anchor-based YOLO: objectness + class BCE (optionally focal) + IoU-family box loss.

Every term is normalised by the number of positive slots, so the weights mean the same for
any batch size, image size and assignment method. Runs in fp32 even under AMP.

Nothing waits for the device: the box and class terms are sums over every slot weighted by the
positive mask (no ``x[fg]``), the normaliser stays a tensor, and the ignore regions are padded per
image like the GTs (``max_gt`` bounds both).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.assigners.base import Assigner, AssignResult, Predictions
from models.assigners.padding import pad_rows
from models.detector import main_output
from models.priors import Priors
from utils.boxes import bbox_iou

IGNORE_CHUNK = 2**23  # (slot, ignore region) pairs per pass of the ignore test: 32 MiB per float temporary


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
    """__call__(raw [B, P, D], targets [N, 6], priors, max_gt=None) -> (total, {name: detached 0-dim tensor}).

    max_gt: a host-side bound on the target rows of any one image, passed to the assigner (see
    ``Assigner.assign``); with it the loss never waits for the device.
    """

    def __init__(self, loss_cfg, assigner: Assigner, coder, num_classes: int) -> None:
        self.cfg = loss_cfg
        self.assigner = assigner
        self.coder = coder
        self.num_classes = num_classes

    def __call__(self, raw: Tensor, targets: Tensor, priors: Priors, max_gt: int | None = None) -> tuple[Tensor, dict]:
        raw = main_output(raw).float()
        boxes = self.coder.decode_boxes(raw, priors)  # [B, P, 4]
        res = self.assigner.assign(targets, priors, Predictions(boxes.detach(), self.coder.scores(raw).detach()),
                                   max_gt=max_gt)
        fg = res.fg_mask
        norm = fg.sum().clamp(min=1)
        iou = bbox_iou(boxes, res.target_boxes, self.cfg.box)  # [B, P], used at the positives only
        loss_box = ((1.0 - iou) * fg).sum() / norm
        loss_obj = self._objectness(raw, boxes, res, targets, priors, iou, max_gt) / norm
        loss_cls = self._classes(self.coder.class_logits(raw), res) / norm
        c = self.cfg
        total = c.box_weight * loss_box + loss_obj + c.cls_weight * loss_cls
        parts = {"box": loss_box.detach(), "obj": loss_obj.detach(), "cls": loss_cls.detach()}
        return total, parts

    def _objectness(self, raw: Tensor, boxes: Tensor, res: AssignResult, targets: Tensor,
                    priors: Priors, iou: Tensor, max_gt: int | None) -> Tensor:
        c = self.cfg
        fg = res.fg_mask
        positive = iou.detach().clamp(0, 1) if c.obj_target == "iou" else 1.0
        obj_t = torch.where(fg, positive, 0.0).to(raw.dtype)
        per_slot = focal_bce(self.coder.objectness_logits(raw), obj_t, c.focal_gamma)
        weight = torch.where(fg, c.obj_weight, c.noobj_weight).to(raw.dtype)
        weight = weight * self._level_weights(priors, raw)[None]
        weight = weight * ~self._ignored(boxes, targets, fg, max_gt)
        return (per_slot * weight).sum()

    def _level_weights(self, priors: Priors, like: Tensor) -> Tensor:
        """[P] the objectness weight of each prior's level (``loss.level_weights``), filled on the device
        from host numbers (no host-to-device copy)."""
        return torch.cat([torch.full((count,), float(self.cfg.level_weights[lv]), dtype=like.dtype, device=like.device)
                          for lv, (_, count) in enumerate(priors.level_ranges())])

    @torch.no_grad()
    def _ignored(self, boxes: Tensor, targets: Tensor, fg: Tensor, max_gt: int | None) -> Tensor:
        """[B, P] bool: negatives whose decoded box overlaps an ignore region (cls < 0) of their image
        with IoU > loss.ignore_iou. The regions are padded per image ([B, R], R = max_gt) and tested a
        block of them at a time, so the temporaries stay under IGNORE_CHUNK pairs."""
        _, regions, _, valid = pad_rows(targets, targets[:, 1] < 0, fg.shape[0], max_gt)  # [B, R, ...]
        hit = torch.zeros_like(fg)
        block = max(1, IGNORE_CHUNK // max(fg.numel(), 1))
        pred = boxes.detach()[:, :, None]  # [B, P, 1, 4]
        for r in range(0, regions.shape[1], block):
            iou = bbox_iou(pred, regions[:, None, r:r + block], "iou")  # [B, P, block]
            hit |= ((iou > self.cfg.ignore_iou) & valid[:, None, r:r + block]).any(-1)
        return hit & ~fg

    def _classes(self, cls_logits: Tensor, res: AssignResult) -> Tensor:
        """Class BCE (smoothed one-hot of the target class) summed over the positive slots and the classes."""
        eps = self.cfg.label_smoothing
        t = torch.zeros_like(cls_logits).scatter_(-1, res.target_labels.clamp(min=0)[..., None], 1.0)
        t.mul_(1 - eps).add_(eps / self.num_classes)
        per_slot = focal_bce(cls_logits, t, self.cfg.focal_gamma).sum(-1)  # [B, P]
        return (per_slot * res.fg_mask).sum()
