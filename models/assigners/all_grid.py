"""all_grid: every cell of every level is a candidate; the IoU threshold alone decides."""
from __future__ import annotations

import torch
from torch import Tensor

from models.assigners.base import GridIoUAssigner
from models.priors import Priors


class AllGridAssigner(GridIoUAssigner):
    """Candidates: every slot; unbounded centre offsets (scaled by the anchor) reach any GT."""

    coders = {"anchor": "linear"}

    def candidates(self, gt_xyxy: Tensor, priors: Priors) -> Tensor:
        return torch.ones(gt_xyxy.shape[0], len(priors), dtype=torch.bool, device=gt_xyxy.device)
