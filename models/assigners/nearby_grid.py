"""nearby_grid: the 3x3 block of cells around the GT centre cell, on every level."""
from __future__ import annotations

from torch import Tensor

from models.assigners.base import GridIoUAssigner
from models.assigners.single_grid import centre_cells
from models.priors import Priors


class NearbyGridAssigner(GridIoUAssigner):
    """Candidates: the 3x3 cells around the centre cell; the slots decode centres within that block."""

    coders = {"anchor": "nearby"}

    def candidates(self, gt_xyxy: Tensor, priors: Priors) -> Tensor:
        return ((centre_cells(gt_xyxy, priors) - priors.grid_xy[None]).abs() <= 1).all(-1)
