"""The assigner interface and the IoU-matching core shared by the grid methods."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.priors import Priors
from utils.boxes import box_iou


@dataclass
class AssignResult:
    """Dense per-slot assignment for a batch.

    fg_mask: [B, P] bool, slot is a positive.
    gt_index: [B, P] long, row of ``targets`` assigned to the slot (-1 where background).
    target_boxes: [B, P, 4] xyxy input pixels (zeros where background).
    target_labels: [B, P] long class (-1 where background).
    target_scores: [B, P] float, matching quality in [0, 1] (the prior IoU for grid methods).
    """

    fg_mask: Tensor
    gt_index: Tensor
    target_boxes: Tensor
    target_labels: Tensor
    target_scores: Tensor

    @property
    def num_fg(self) -> int:
        return int(self.fg_mask.sum())


class BaseAssigner:
    """assign(targets, priors, batch_size, preds=None) -> AssignResult.

    targets: [N, 6] (batch_idx, cls, x1, y1, x2, y2), input pixels; rows with cls < 0 are
    ignore regions and are never assigned. ``coder_mode`` names the decoding the method needs.
    """

    coder_mode: str = ""
    needs_predictions: bool = False

    def assign(self, targets: Tensor, priors: Priors, batch_size: int,
               preds: Tensor | None = None) -> AssignResult:
        raise NotImplementedError


class GridIoUAssigner(BaseAssigner):
    """IoU matching of GT boxes with anchor boxes placed at candidate cells.

    A subclass only says which cells are candidates (``candidates``). A (GT, prior) pair
    matches when the prior is a candidate and IoU(anchor box at its cell centre, GT) >=
    ``match_iou_thres``. ``ensure_one_match`` gives a GT with no match its best candidate, so
    no object is silently untrained. With ``filter_by_max_iou`` a slot claimed by several GTs
    keeps the GT of highest IoU; without it, the GT listed last in ``targets`` keeps it.
    """

    def __init__(self, match_iou_thres: float = 0.0625, filter_by_max_iou: bool = True,
                 ensure_one_match: bool = True) -> None:
        self.match_iou_thres = match_iou_thres
        self.filter_by_max_iou = filter_by_max_iou
        self.ensure_one_match = ensure_one_match

    def candidates(self, gt_xyxy: Tensor, priors: Priors) -> Tensor:
        """gt_xyxy: [G, 4] -> [G, P] bool, which priors may take each GT."""
        raise NotImplementedError

    @torch.no_grad()
    def assign(self, targets: Tensor, priors: Priors, batch_size: int,
               preds: Tensor | None = None) -> AssignResult:
        device, num_p = targets.device, len(priors)
        result = _empty_result(batch_size, num_p, device)
        gt_rows = torch.nonzero(targets[:, 1] >= 0).squeeze(1)
        if gt_rows.numel() == 0:
            return result
        gt = targets[gt_rows]
        iou = box_iou(gt[:, 2:6], priors.boxes())  # [G, P]
        cand = self.candidates(gt[:, 2:6], priors)
        iou = torch.where(cand, iou, torch.full_like(iou, -1.0))
        match = iou >= self.match_iou_thres
        if self.ensure_one_match:
            lonely = ~match.any(1)
            best = iou.argmax(1)
            match[lonely, best[lonely]] = cand[lonely, best[lonely]]
        g_idx, p_idx = torch.nonzero(match, as_tuple=True)
        slot = gt[g_idx, 0].long() * num_p + p_idx  # flat index into [B * P]
        pair_iou = iou[g_idx, p_idx]
        win = _resolve_conflicts(slot, pair_iou if self.filter_by_max_iou else g_idx.float(),
                                 g_idx, batch_size * num_p)
        slot, g_idx, pair_iou = slot[win], g_idx[win], pair_iou[win]
        _fill(result, slot, gt_rows[g_idx], gt[g_idx], pair_iou.clamp(0, 1))
        return result


def _resolve_conflicts(slot: Tensor, key: Tensor, g_idx: Tensor, num_slots: int) -> Tensor:
    """Bool mask over pairs keeping, per slot, the pair of highest key (ties: highest GT index)."""
    best = torch.full((num_slots,), -2.0, device=key.device).scatter_reduce(0, slot, key, "amax")
    cand = key == best[slot]
    g_key = torch.where(cand, g_idx, torch.full_like(g_idx, -1))
    best_g = torch.full((num_slots,), -1, device=key.device, dtype=g_idx.dtype).scatter_reduce(
        0, slot, g_key, "amax")
    return cand & (g_idx == best_g[slot])


def _empty_result(batch_size: int, num_p: int, device: torch.device) -> AssignResult:
    return AssignResult(
        fg_mask=torch.zeros(batch_size, num_p, dtype=torch.bool, device=device),
        gt_index=torch.full((batch_size, num_p), -1, dtype=torch.long, device=device),
        target_boxes=torch.zeros(batch_size, num_p, 4, device=device),
        target_labels=torch.full((batch_size, num_p), -1, dtype=torch.long, device=device),
        target_scores=torch.zeros(batch_size, num_p, device=device))


def _fill(result: AssignResult, slot: Tensor, rows: Tensor, gt: Tensor, score: Tensor) -> None:
    """Write assigned pairs (unique slots) into the flat views of ``result``."""
    result.fg_mask.view(-1)[slot] = True
    result.gt_index.view(-1)[slot] = rows
    result.target_boxes.view(-1, 4)[slot] = gt[:, 2:6]
    result.target_labels.view(-1)[slot] = gt[:, 1].long()
    result.target_scores.view(-1)[slot] = score.to(result.target_scores.dtype)
