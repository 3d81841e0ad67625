"""ratio_grid: the YOLOv5 / YOLOv7 assignment (the YOLOv7 lead head, without the OTA refinement).

On every level, a GT matches an anchor when their shapes are close, max(w_gt / w_a, w_a / w_gt,
h_gt / h_a, h_a / h_gt) < anchor_t; IoU plays no part in matching. The matched anchor is used
at the cell holding the GT centre and at the two neighbouring cells nearest to the centre: the
left or right cell when the centre lies in the left or right half of its cell, and the upper or
lower cell likewise. The v7 decode (centre offset in (-0.5, 1.5) cells, size up to 4x the anchor)
reaches the GT from all three cells, which is why anchor_t = 4 pairs with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.assigners.base import GridIoUAssigner
from models.assigners.cells import Level, centre_cell, level_candidates, scaled_centres
from models.priors import Priors


@dataclass(frozen=True)
class RatioGridOptions:
    anchor_t: float = 4.0  # an anchor matches a GT when every side ratio (both ways) is below this

    def __post_init__(self) -> None:
        if self.anchor_t <= 1.0:
            raise ValueError(f"anchor_t={self.anchor_t} must be > 1 (a ratio bound)")


class RatioGridAssigner(GridIoUAssigner):
    """Shape-ratio matching on the centre cell and its two nearest neighbours.

    A slot claimed by several GTs keeps the GT of highest IoU with the slot's anchor box (placed
    at its cell centre); the target score of a positive is that IoU.
    """

    Options = RatioGridOptions
    coders = {"anchor": "v7"}

    def matching(self) -> tuple[float, bool, bool]:
        # Every candidate matches (IoU >= 0), conflicts keep the highest IoU, and a GT whose shape
        # fits no anchor stays unassigned.
        return 0.0, True, False

    def pair_width(self, priors: Priors) -> int:
        return len(priors.level_hw) * 3 * priors.num_anchors  # 3 cells per level

    def candidates(self, boxes: Tensor, priors: Priors) -> tuple[Tensor, Tensor]:
        idx, usable = level_candidates(boxes, priors, self._cells)  # [B, G, 3 cells x A anchors per level]
        wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=1e-6)
        ratio = wh[:, :, None] / priors.anchor_wh[idx]  # [B, G, K, 2]
        shape_ok = torch.maximum(ratio, 1.0 / ratio).amax(-1) < self.opt.anchor_t
        return idx, usable & shape_ok

    @staticmethod
    def _cells(boxes: Tensor, level: Level) -> tuple[Tensor, Tensor]:
        """[B, G, 3, 2] cells: the centre cell, its left or right and its upper or lower neighbour
        (the nearer one per axis; none when the centre is exactly mid-cell on that axis)."""
        centre = scaled_centres(boxes, level)
        frac = centre - centre.floor()  # position inside the centre cell, per axis
        toward = (frac > 0.5).float() - (frac < 0.5).float()  # -1 / +1: side of the nearer neighbour
        cell = centre_cell(boxes, level)
        zero = torch.zeros_like(toward[..., 0])
        step_x = torch.stack((toward[..., 0], zero), -1)
        step_y = torch.stack((zero, toward[..., 1]), -1)
        cells = torch.stack((cell, cell + step_x, cell + step_y), 2)
        usable = torch.stack((torch.ones_like(zero, dtype=torch.bool), toward[..., 0] != 0, toward[..., 1] != 0), 2)
        return cells, usable
