"""all_grid: every cell of every level is a candidate; the IoU threshold alone decides."""
from __future__ import annotations

from torch import Tensor

from models.assigners.base import GridIoUAssigner
from models.priors import Priors


class AllGridAssigner(GridIoUAssigner):
    """Candidates: every slot; unbounded centre offsets (scaled by the anchor) reach any GT. Its pairs
    are B x G x P: the candidates are all the priors."""

    coders = {"anchor": "linear"}

    def candidates(self, boxes: Tensor, priors: Priors) -> tuple[None, None]:
        return None, None
