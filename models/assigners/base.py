"""The assigner contract and the IoU-matching core shared by the grid methods.

An assigner decides which prediction slots learn which GT box. Every method is one class in
its own file, registered by name in ``models.assigners.ASSIGNERS``. A method declares:

- ``Options``: a small dataclass of its options with their defaults; invalid values raise
  ValueError in ``__post_init__``. Configs give them as ``assign.options`` (a dict by name);
- ``coders``: the heads it can train, each with the coder its slots decode with (a name of
  ``models.coders.CODERS``): ``{"anchor": "nearby"}``, ``{"dfl": "distance"}``, or both;
- ``uses_predictions``: whether the model's own boxes and scores change the assignment;
- ``describe()``: its settings in one line, for the debug plots.

``assign(targets, priors, preds, max_gt=None) -> AssignResult``. Every loss passes ``preds``, the
detached decoded predictions (a method may ignore them), and the training step ``max_gt``, a host-side
bound on the target rows of any one image: with it, nothing in an assignment waits for the device
(no ``.item()``, ``nonzero`` or boolean-mask indexing; see ``padding``). ``Assigner.assign`` pads the
GTs per image once and hands the method a chunk of images at a time (``assign_padded``), so what a
method holds is bounded by ``padding.CHUNK_PAIRS`` (GT, candidate) pairs per chunk.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from models.assigners.padding import check_classes, image_chunks, pad_per_image, winner_per_prior
from models.priors import Priors
from utils.boxes import bbox_iou, coordinate_planes


class Predictions(NamedTuple):
    """Detached decoded predictions of one branch: boxes [B, P, 4] xyxy input pixels, scores
    [B, P, nc] detection scores in [0, 1] (the head's own: obj * cls for the anchor head)."""

    boxes: Tensor
    scores: Tensor

    @property
    def batch_size(self) -> int:
        return self.boxes.shape[0]

    def images(self, lo: int, hi: int) -> Predictions:
        """The predictions of images [lo, hi)."""
        return Predictions(self.boxes[lo:hi], self.scores[lo:hi])


class PaddedGTs(NamedTuple):
    """GTs in per-image slots (``padding.pad_per_image``): rows [B, G] long (the ``targets`` row, -1 on
    padding), boxes [B, G, 4] xyxy px (zeros on padding), labels [B, G] long, valid [B, G] bool."""

    rows: Tensor
    boxes: Tensor
    labels: Tensor
    valid: Tensor

    def images(self, lo: int, hi: int) -> PaddedGTs:
        """The GTs of images [lo, hi)."""
        return PaddedGTs(*(t[lo:hi] for t in self))


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
        """The number of positives, read from the device (plots and tests; never in training)."""
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

    @torch.no_grad()
    def assign(self, targets: Tensor, priors: Priors, preds: Predictions, max_gt: int | None = None) -> AssignResult:
        """max_gt: None, or an upper bound on the target rows of any one image (ignore rows included),
        known on the host: GTs are padded to it and the assignment never waits for the device. None
        pads to the batch's largest GT count, read from the device (plots, tests). A method that
        reads class scores checks the target classes against them."""
        batch_size, num_p = preds.batch_size, len(priors)
        if self.uses_predictions:
            check_classes(targets, preds.scores.shape[-1], max_gt)
        gts = PaddedGTs(*pad_per_image(targets, None, batch_size, max_gt))
        if gts.boxes.shape[1] == 0 or num_p == 0:
            return empty_result(batch_size, num_p, targets.device)
        spans = image_chunks(batch_size, gts.boxes.shape[1] * self.pair_width(priors), targets.device)
        parts = [self.assign_padded(gts.images(lo, hi), priors, preds.images(lo, hi)) for lo, hi in spans]
        return parts[0] if len(parts) == 1 else concat_results(parts)

    def assign_padded(self, gts: PaddedGTs, priors: Priors, preds: Predictions) -> AssignResult:
        """The method itself, on a chunk of images with at least one GT slot each."""
        raise NotImplementedError

    def pair_width(self, priors: Priors) -> int:
        """The (GT, prior) pairs per GT the method works on at once (sets the chunk size): every prior
        unless a method lists fewer candidates."""
        return len(priors)

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

    A subclass only says which priors are candidates (``candidates``). A (GT, prior) pair
    matches when the prior is a candidate and IoU(anchor box at its cell centre, GT) >=
    ``match_iou_thres``. ``ensure_one_match`` gives a GT with no match its best candidate (the
    lowest prior index on ties), so no object is silently untrained. With ``filter_by_max_iou`` a
    slot claimed by several GTs keeps the GT of highest IoU; without it, the GT listed last in
    ``targets`` keeps it. Work and memory grow with the candidates: B x G x K pairs.
    """

    Options = GridOptions

    def matching(self) -> tuple[float, bool, bool]:
        """(match_iou_thres, filter_by_max_iou, ensure_one_match) of this method."""
        return self.opt.match_iou_thres, self.opt.filter_by_max_iou, self.opt.ensure_one_match

    def candidates(self, boxes: Tensor, priors: Priors) -> tuple[Tensor | None, Tensor | None]:
        """boxes [B, G, 4] -> (idx [B, G, K] long prior indices, usable [B, G, K] bool) of each GT's
        candidates (K = ``pair_width``), or (None, None): every prior is a candidate."""
        raise NotImplementedError

    def assign_padded(self, gts: PaddedGTs, priors: Priors, preds: Predictions) -> AssignResult:
        thres, filter_by_max_iou, ensure_one_match = self.matching()
        rows, boxes, labels, valid = gts
        num_p = len(priors)
        idx, usable = self.candidates(boxes, priors)  # [B, G, K], or every prior
        usable = valid[..., None] if usable is None else usable & valid[..., None]
        anchor_boxes = coordinate_planes(priors.boxes())  # [P, 4]
        iou = bbox_iou(boxes[:, :, None], anchor_boxes if idx is None else anchor_boxes[idx], "iou")
        iou = torch.where(usable, iou, -1.0)
        match = iou >= thres
        if ensure_one_match:
            lonely = valid & ~match.any(-1)
            match |= lonely[..., None] & usable & _first_best(iou, idx, usable, num_p)
        key = iou if filter_by_max_iou else torch.arange(boxes.shape[1], device=iou.device).view(1, -1, 1).float()
        result = result_of_winners(rows, boxes, labels, winner_per_prior(key, idx, match, num_p, last=True))
        score = bbox_iou(result.target_boxes, anchor_boxes, "iou").clamp(0, 1)  # the winning pair's IoU
        result.target_scores = torch.where(result.fg_mask, score, 0.0)
        return result


def _first_best(iou: Tensor, idx: Tensor | None, usable: Tensor, num_p: int) -> Tensor:
    """[B, G, K] bool: each GT's candidate of highest IoU, the lowest prior index on ties."""
    if idx is None:
        return torch.zeros_like(iou, dtype=torch.bool).scatter_(-1, iou.argmax(-1, keepdim=True), True)
    best = iou.amax(-1, keepdim=True)
    first = torch.where(usable & (iou == best), idx, num_p).amin(-1, keepdim=True)
    return idx == first


INSIDE_EPS = 1e-9  # a prior centre is inside a box when its smallest distance to a side exceeds this


def points_inside(points: Tensor, boxes: Tensor, valid: Tensor) -> Tensor:
    """points [..., 2] broadcastable against [B, G, K] ([P, 2], or [B, G, K, 2] at listed candidates)
    -> [B, G, K] bool: strictly inside GT box [B, G, 4] (every side farther than INSIDE_EPS), for
    the real GTs (``valid`` [B, G]) only."""
    cx, cy = points[..., 0], points[..., 1]
    x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))  # [B, G, 1]
    return ((cx - x1 > INSIDE_EPS) & (cy - y1 > INSIDE_EPS) & (x2 - cx > INSIDE_EPS)
            & (y2 - cy > INSIDE_EPS) & valid[..., None])


def centres_inside(priors: Priors, boxes: Tensor, valid: Tensor) -> Tensor:
    """[B, G, P] bool: prior centre strictly inside GT box [B, G, 4], for the real GTs only."""
    return points_inside(priors.centers, boxes, valid)


def empty_result(batch_size: int, num_p: int, device: torch.device) -> AssignResult:
    """An AssignResult with no positive."""
    return AssignResult(
        fg_mask=torch.zeros(batch_size, num_p, dtype=torch.bool, device=device),
        gt_index=torch.full((batch_size, num_p), -1, dtype=torch.long, device=device),
        target_boxes=torch.zeros(batch_size, num_p, 4, device=device),
        target_labels=torch.full((batch_size, num_p), -1, dtype=torch.long, device=device),
        target_scores=torch.zeros(batch_size, num_p, device=device))


def concat_results(parts: list[AssignResult]) -> AssignResult:
    """The results of consecutive image chunks as one."""
    return AssignResult(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(AssignResult)))


def result_of_winners(rows: Tensor, boxes: Tensor, labels: Tensor, winner: Tensor) -> AssignResult:
    """The AssignResult of each prior's GT slot ``winner`` [B, P] (-1: background) in the padded layout
    (rows, boxes, labels of ``pad_per_image``); target scores 0, for the method to set."""
    fg = winner >= 0
    g = winner.clamp(min=0)
    target_boxes = torch.where(fg[..., None], boxes.gather(1, g[..., None].expand(-1, -1, 4)), 0.0)
    return AssignResult(fg_mask=fg, gt_index=torch.where(fg, rows.gather(1, g), -1), target_boxes=target_boxes,
                        target_labels=torch.where(fg, labels.gather(1, g), -1),
                        target_scores=torch.zeros(fg.shape, device=fg.device))
