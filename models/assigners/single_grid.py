"""single_grid: only the cell holding the GT centre, on every level (YOLOv3 style)."""
from __future__ import annotations

import torch
from torch import Tensor

from models.assigners.base import GridIoUAssigner
from models.priors import Priors


def centre_cells(gt_xyxy: Tensor, priors: Priors) -> Tensor:
    """[G, 4] -> [G, P, 2] (column, row) of each GT centre on each prior's level, clamped to the map."""
    centre = (gt_xyxy[:, None, :2] + gt_xyxy[:, None, 2:]) / 2
    cell = torch.floor(centre / priors.stride[None, :, None])
    hw = torch.tensor(priors.level_hw, device=gt_xyxy.device, dtype=cell.dtype)[priors.level]  # [P, 2] rows, cols
    return torch.minimum(cell.clamp(min=0), hw.flip(-1)[None] - 1)


class SingleGridAssigner(GridIoUAssigner):
    """Candidates: the cell holding the GT centre; its slots decode their centre inside that cell."""

    coders = {"anchor": "cell"}

    def candidates(self, gt_xyxy: Tensor, priors: Priors) -> Tensor:
        return (centre_cells(gt_xyxy, priors) == priors.grid_xy[None]).all(-1)
