"""single_grid: only the cell holding the GT centre, on every level (YOLOv3 style)."""
from __future__ import annotations

from torch import Tensor

from models.assigners.base import GridIoUAssigner
from models.assigners.cells import Level, centre_cell, level_candidates
from models.priors import Priors


class SingleGridAssigner(GridIoUAssigner):
    """Candidates: the cell holding the GT centre; its slots decode their centre inside that cell."""

    coders = {"anchor": "cell"}

    def pair_width(self, priors: Priors) -> int:
        return len(priors.level_hw) * priors.num_anchors  # one cell per level

    def candidates(self, boxes: Tensor, priors: Priors) -> tuple[Tensor, Tensor]:
        return level_candidates(boxes, priors, self._cells)

    @staticmethod
    def _cells(boxes: Tensor, level: Level) -> tuple[Tensor, None]:
        """[B, G, 1, 2]: the centre cell (always on the map: clamped)."""
        return centre_cell(boxes, level)[:, :, None], None
