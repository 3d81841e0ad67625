"""nearby_grid: the 3x3 block of cells around the GT centre cell, on every level."""
from __future__ import annotations

from torch import Tensor

from models.assigners.base import GridIoUAssigner
from models.assigners.cells import Level, block_offsets, centre_cell, level_candidates
from models.priors import Priors


class NearbyGridAssigner(GridIoUAssigner):
    """Candidates: the 3x3 cells around the centre cell; the slots decode centres within that block."""

    coders = {"anchor": "nearby"}

    def pair_width(self, priors: Priors) -> int:
        return len(priors.level_hw) * 9 * priors.num_anchors  # 3 x 3 cells per level

    def candidates(self, boxes: Tensor, priors: Priors) -> tuple[Tensor, Tensor]:
        return level_candidates(boxes, priors, self._cells)

    @staticmethod
    def _cells(boxes: Tensor, level: Level) -> tuple[Tensor, None]:
        """[B, G, 9, 2]: the block around the centre cell (cells off the map are dropped later)."""
        cell = centre_cell(boxes, level)
        return cell[:, :, None] + block_offsets(1, cell), None
