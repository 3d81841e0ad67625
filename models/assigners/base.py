"""The assigner contract and the IoU-matching core shared by the grid methods.

An assigner decides which prediction slots learn which GT box. Every method is one class in
its own file, registered by name in ``models.assigners.ASSIGNERS``. A method declares:

- ``Options``: a small dataclass of its options with their defaults; invalid values raise
  ValueError in ``__post_init__``. Configs give them as ``assign.options`` (a dict by name);
- ``coders``: the heads it can train, each with the coder its slots decode with (a name of
  ``models.coders.CODERS``): ``{"anchor": "nearby"}``, ``{"dfl": "distance"}``, or both;
- ``uses_predictions``: whether the model's own boxes and scores change the assignment;
- ``describe()``: its settings in one line, for the debug plots.

``assign(targets, priors, preds) -> AssignResult``. Every loss passes ``preds``, the detached
decoded predictions; a method may ignore them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from models.priors import Priors
from utils.boxes import box_iou


class Predictions(NamedTuple):
    """Detached decoded predictions of one branch: boxes [B, P, 4] xyxy input pixels, scores
    [B, P, nc] detection scores in [0, 1] (the head's own: obj * cls for the anchor head)."""

    boxes: Tensor
    scores: Tensor

    @property
    def batch_size(self) -> int:
        return self.boxes.shape[0]


def blank_predictions(batch_size: int, num_priors: int, num_classes: int = 1) -> Predictions:
    """All-zero predictions, for methods that do not look at them (tests, plots)."""
    return Predictions(torch.zeros(batch_size, num_priors, 4), torch.zeros(batch_size, num_priors, num_classes))


@dataclass
class AssignResult:
    """Dense per-slot assignment for a batch.

    fg_mask: [B, P] bool, slot is a positive.
    gt_index: [B, P] long, row of ``targets`` assigned to the slot (-1 where background).
    target_boxes: [B, P, 4] xyxy input pixels (zeros where background).
    target_labels: [B, P] long class (-1 where background).
    target_scores: [B, P] float, matching quality in [0, 1] (0 where background).
    """

    fg_mask: Tensor
    gt_index: Tensor
    target_boxes: Tensor
    target_labels: Tensor
    target_scores: Tensor

    @property
    def num_fg(self) -> int:
        return int(self.fg_mask.sum())


@dataclass(frozen=True)
class NoOptions:
    """A method without options."""


class Assigner:
    """Base class: ``cls(**options)`` builds ``Options(**options)`` (defaults for the rest).

    targets: [N, 6] (batch_idx, cls, x1, y1, x2, y2), input pixels; rows with cls < 0 are
    ignore regions and are never assigned.
    """

    Options: ClassVar[type] = NoOptions
    coders: ClassVar[dict[str, str]] = {}
    uses_predictions: ClassVar[bool] = False

    def __init__(self, **options) -> None:
        self.opt = self.Options(**options)

    def assign(self, targets: Tensor, priors: Priors, preds: Predictions) -> AssignResult:
        raise NotImplementedError

    def describe(self) -> str:
        """The method's settings in one short line, for the debug plot titles (after its name)."""
        return " ".join(f"{k}={v}" for k, v in dataclasses.asdict(self.opt).items())


# -- grid IoU matching -------------------------------------------------------------------------
@dataclass(frozen=True)
class GridOptions:
    """Options of the grid methods (single_grid, nearby_grid, all_grid)."""

    match_iou_thres: float = 0.0625  # a candidate prior matches a GT when IoU(its anchor box, GT) >= this
    filter_by_max_iou: bool = True  # a slot claimed by several GTs keeps the GT of highest IoU (else the last GT)
    ensure_one_match: bool = True  # a GT with no match above the threshold still gets its best candidate

    def __post_init__(self) -> None:
        if not 0.0 <= self.match_iou_thres <= 1.0:
            raise ValueError(f"match_iou_thres={self.match_iou_thres} must be in [0, 1]")


class GridIoUAssigner(Assigner):
    """IoU matching of GT boxes with anchor boxes placed at candidate cells.

    A subclass only says which cells are candidates (``candidates``). A (GT, prior) pair
    matches when the prior is a candidate and IoU(anchor box at its cell centre, GT) >=
    ``match_iou_thres``. ``ensure_one_match`` gives a GT with no match its best candidate, so
    no object is silently untrained. With ``filter_by_max_iou`` a slot claimed by several GTs
    keeps the GT of highest IoU; without it, the GT listed last in ``targets`` keeps it.
    """

    Options = GridOptions

    def matching(self) -> tuple[float, bool, bool]:
        """(match_iou_thres, filter_by_max_iou, ensure_one_match) of this method."""
        return self.opt.match_iou_thres, self.opt.filter_by_max_iou, self.opt.ensure_one_match

    def candidates(self, gt_xyxy: Tensor, priors: Priors) -> Tensor:
        """gt_xyxy: [G, 4] -> [G, P] bool, which priors may take each GT."""
        raise NotImplementedError

    @torch.no_grad()
    def assign(self, targets: Tensor, priors: Priors, preds: Predictions) -> AssignResult:
        thres, filter_by_max_iou, ensure_one_match = self.matching()
        batch_size = preds.batch_size
        device, num_p = targets.device, len(priors)
        result = empty_result(batch_size, num_p, device)
        gt_rows = torch.nonzero(targets[:, 1] >= 0).squeeze(1)
        if gt_rows.numel() == 0:
            return result
        gt = targets[gt_rows]
        iou = box_iou(gt[:, 2:6], priors.boxes())  # [G, P]
        cand = self.candidates(gt[:, 2:6], priors)
        iou = torch.where(cand, iou, torch.full_like(iou, -1.0))
        match = iou >= thres
        if ensure_one_match:
            lonely = ~match.any(1)
            best = iou.argmax(1)
            match[lonely, best[lonely]] = cand[lonely, best[lonely]]
        g_idx, p_idx = torch.nonzero(match, as_tuple=True)
        slot = gt[g_idx, 0].long() * num_p + p_idx  # flat index into [B * P]
        pair_iou = iou[g_idx, p_idx]
        win = resolve_conflicts(slot, pair_iou if filter_by_max_iou else g_idx.float(),
                                g_idx, batch_size * num_p)
        slot, g_idx, pair_iou = slot[win], g_idx[win], pair_iou[win]
        fill(result, slot, gt_rows[g_idx], gt[g_idx], pair_iou.clamp(0, 1))
        return result


INSIDE_EPS = 1e-9  # a prior centre is inside a box when its smallest distance to a side exceeds this


def centres_inside(priors: Priors, boxes: Tensor, valid: Tensor) -> Tensor:
    """[B, G, P] bool: prior centre strictly inside GT box [B, G, 4] (every side farther than
    INSIDE_EPS), for the real GTs (``valid`` [B, G]) only."""
    cx, cy = priors.centers[:, 0], priors.centers[:, 1]  # [P]
    x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))  # [B, G, 1]
    return ((cx - x1 > INSIDE_EPS) & (cy - y1 > INSIDE_EPS) & (x2 - cx > INSIDE_EPS)
            & (y2 - cy > INSIDE_EPS) & valid[..., None])


def pad_per_image(targets: Tensor, gt_rows: Tensor, batch_size: int
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Scatter the GT rows into per-image slots padded to the largest GT count of the batch.

    Returns (rows [B, G] long, -1 on padding; boxes [B, G, 4]; labels [B, G] long, 0 on
    padding; valid [B, G] bool). GTs keep their order in ``targets`` within each image.
    """
    img = targets[gt_rows, 0].long()
    if int(img.min()) < 0 or int(img.max()) >= batch_size:
        raise ValueError(f"target batch index out of range [0, {batch_size - 1}]")
    order = torch.sort(img, stable=True).indices
    gt_rows, img = gt_rows[order], img[order]
    counts = torch.bincount(img, minlength=batch_size)
    first = torch.cumsum(counts, 0) - counts  # index of each image's first GT in sorted order
    slot = torch.arange(img.numel(), device=img.device) - first[img]
    g = int(counts.max())
    device = targets.device
    rows = torch.full((batch_size, g), -1, dtype=torch.long, device=device)
    boxes = torch.zeros(batch_size, g, 4, dtype=torch.float32, device=device)
    labels = torch.zeros(batch_size, g, dtype=torch.long, device=device)
    rows[img, slot] = gt_rows
    boxes[img, slot] = targets[gt_rows, 2:6].float()
    labels[img, slot] = targets[gt_rows, 1].long()
    return rows, boxes, labels, rows >= 0


def resolve_conflicts(slot: Tensor, key: Tensor, g_idx: Tensor, num_slots: int) -> Tensor:
    """Bool mask over (GT, slot) pairs keeping, per slot, the pair of highest ``key`` (ties: the
    highest GT index)."""
    best = torch.full((num_slots,), -2.0, device=key.device).scatter_reduce(0, slot, key, "amax")
    cand = key == best[slot]
    g_key = torch.where(cand, g_idx, torch.full_like(g_idx, -1))
    best_g = torch.full((num_slots,), -1, device=key.device, dtype=g_idx.dtype).scatter_reduce(
        0, slot, g_key, "amax")
    return cand & (g_idx == best_g[slot])


def empty_result(batch_size: int, num_p: int, device: torch.device) -> AssignResult:
    """An AssignResult with no positive."""
    return AssignResult(
        fg_mask=torch.zeros(batch_size, num_p, dtype=torch.bool, device=device),
        gt_index=torch.full((batch_size, num_p), -1, dtype=torch.long, device=device),
        target_boxes=torch.zeros(batch_size, num_p, 4, device=device),
        target_labels=torch.full((batch_size, num_p), -1, dtype=torch.long, device=device),
        target_scores=torch.zeros(batch_size, num_p, device=device))


def fill(result: AssignResult, slot: Tensor, rows: Tensor, gt: Tensor, score: Tensor) -> None:
    """Write assigned pairs (unique flat slots b * P + p, their ``targets`` rows and GT rows
    [n, 6], their scores) into ``result``."""
    result.fg_mask.view(-1)[slot] = True
    result.gt_index.view(-1)[slot] = rows
    result.target_boxes.view(-1, 4)[slot] = gt[:, 2:6]
    result.target_labels.view(-1)[slot] = gt[:, 1].long()
    result.target_scores.view(-1)[slot] = score.to(result.target_scores.dtype)
