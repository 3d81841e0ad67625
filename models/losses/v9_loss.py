"""Loss of the anchor-free DFL heads (YOLOv9 / GELAN): class BCE + IoU-family box + DFL.

Follows the YOLOv9 paper code per branch: the assigner (task_aligned) runs on that branch's
detached decoded boxes and sigmoid scores; every term is weighted by the soft target score
of its anchor and divided by S = max(sum of soft targets, 1).

- class: BCE-with-logits against one_hot(class) * soft score, summed over all anchors and classes;
- box:   sum over positives of (1 - IoU(pred, gt)) * w, w = the anchor's soft score (loss.box, ciou
         by default, computed in stride units as the reference does);
- DFL:   target ltrb distance d in stride units clamped to [0, reg_max - 1 - 0.01]; two-bin cross
         entropy CE(floor d) * (floor d + 1 - d) + CE(floor d + 1) * (d - floor d), mean over the
         four sides, times w.

Total = box_weight * box + cls_weight * cls + dfl_weight * dfl, with each term the main branch's
plus aux_weight times the auxiliary branch's when the model returns (main_raw, aux_raw).

The reference multiplies the total by the per-GPU batch size; this loss does not, because
the trainer's learning rate is tuned for a per-batch mean: that factor is absorbed into the
learning rate. Runs in fp32 even under AMP. Nothing waits for the device: the box and DFL terms are
sums over every anchor weighted by w (0 on background), never ``x[fg]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.assigners.base import Assigner, Predictions
from models.priors import Priors
from utils.boxes import bbox_iou


class V9Loss:
    """__call__(raw [B, P, 4 * reg_max + nc] or (main_raw, aux_raw), targets [N, 6], priors, max_gt=None)
    -> (total, {"box", "cls", "dfl"} of the main branch [+ "aux": the aux branch's weighted total]).

    max_gt: a host-side bound on the target rows of any one image, passed to the assigner (see
    ``Assigner.assign``); with it the loss never waits for the device.
    """

    def __init__(self, loss_cfg, assigner: Assigner, coder, num_classes: int) -> None:
        self.cfg = loss_cfg
        self.assigner = assigner
        self.coder = coder
        self.num_classes = num_classes

    def __call__(self, raw: Tensor | tuple, targets: Tensor, priors: Priors, max_gt: int | None = None
                 ) -> tuple[Tensor, dict]:
        main, aux = (raw[0], raw[1]) if isinstance(raw, (tuple, list)) else (raw, None)
        box, cls, dfl = self._branch(main.float(), targets, priors, max_gt)
        total = self._weighted(box, cls, dfl)
        parts = {"box": box.detach(), "cls": cls.detach(), "dfl": dfl.detach()}
        if aux is not None:
            aux_total = self._weighted(*self._branch(aux.float(), targets, priors, max_gt))
            total = total + self.cfg.aux_weight * aux_total
            parts["aux"] = aux_total.detach()
        return total, parts

    def _weighted(self, box: Tensor, cls: Tensor, dfl: Tensor) -> Tensor:
        c = self.cfg
        return c.box_weight * box + c.cls_weight * cls + c.dfl_weight * dfl

    def _branch(self, raw: Tensor, targets: Tensor, priors: Priors, max_gt: int | None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """Unweighted (box, cls, dfl) of one branch, each already divided by its S."""
        boxes = self.coder.decode_boxes(raw, priors)  # [B, P, 4] pixels
        cls_logits = self.coder.class_logits(raw)  # [B, P, nc]
        res = self.assigner.assign(targets, priors, Predictions(boxes.detach(), cls_logits.detach().sigmoid()),
                                   max_gt=max_gt)
        w = res.target_scores  # [B, P], 0 on background
        norm = w.sum().clamp(min=1.0)

        cls_t = torch.zeros_like(cls_logits).scatter_(-1, res.target_labels.clamp(min=0)[..., None], w[..., None])
        loss_cls = F.binary_cross_entropy_with_logits(cls_logits, cls_t, reduction="sum") / norm

        stride = priors.stride[:, None]  # [P, 1]
        iou = bbox_iou(boxes / stride, res.target_boxes / stride, self.cfg.box)  # [B, P]
        loss_box = ((1.0 - iou) * w).sum() / norm

        centres, gt = priors.centers, res.target_boxes
        dist = torch.cat((centres - gt[..., :2], gt[..., 2:] - centres), -1) / stride  # [B, P, 4] ltrb
        per_anchor = self._dfl(self.coder.bin_logits(raw), dist).mean(-1)
        loss_dfl = (per_anchor * w).sum() / norm
        return loss_box, loss_cls, loss_dfl

    def _dfl(self, bin_logits: Tensor, dist: Tensor) -> Tensor:
        """bin_logits [..., 4, R], dist [..., 4] stride units -> [..., 4] two-bin cross entropy."""
        reg_max = bin_logits.shape[-1]
        d = dist.clamp(0, reg_max - 1 - 0.01)
        left = d.floor().long()
        logp = bin_logits.log_softmax(-1)
        lp_left = logp.gather(-1, left[..., None]).squeeze(-1)
        lp_right = logp.gather(-1, (left + 1)[..., None]).squeeze(-1)
        return -(lp_left * (left + 1 - d) + lp_right * (d - left))
