"""Candidate cells of the grid methods, listed per GT: a few cells per level instead of a mask over
every prior. Cell arithmetic uses each level's shape as host ints, so it reads nothing from the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.priors import Priors


@dataclass
class Level:
    """One head level of ``priors``: priors [first, first + rows * cols * anchors), stride [1] (a view)."""

    first: int
    rows: int
    cols: int
    anchors: int
    stride: Tensor


def levels(priors: Priors) -> list[Level]:
    """The levels of ``priors``, in prior order."""
    return [Level(first, h, w, priors.num_anchors, priors.stride[first:first + 1])
            for (first, _), (h, w) in zip(priors.level_ranges(), priors.level_hw)]


def scaled_centres(boxes: Tensor, level: Level) -> Tensor:
    """boxes [B, G, 4] xyxy px -> [B, G, 2] their centres in cells of ``level`` (x, y)."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2 / level.stride


def centre_cell(boxes: Tensor, level: Level) -> Tensor:
    """boxes [B, G, 4] -> [B, G, 2] float (column, row) of the cell holding each centre, clamped to the map."""
    cell = torch.floor(scaled_centres(boxes, level))
    return torch.stack((cell[..., 0].clamp(0, level.cols - 1), cell[..., 1].clamp(0, level.rows - 1)), -1)


def block_offsets(radius: int, like: Tensor) -> Tensor:
    """[(2r + 1)^2, 2] (dx, dy) offsets of the square block of cells around a cell."""
    d = torch.arange(-radius, radius + 1, dtype=like.dtype, device=like.device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    return torch.stack((dx, dy), -1).reshape(-1, 2)


def cell_priors(cells: Tensor, usable: Tensor | None, level: Level) -> tuple[Tensor, Tensor]:
    """cells [B, G, C, 2] float (column, row), usable [B, G, C] bool or None -> (prior indices
    [B, G, C * A] long, usable [B, G, C * A]): every anchor of each cell; a cell off the map is unusable."""
    x, y = cells[..., 0], cells[..., 1]
    on_map = (x >= 0) & (x < level.cols) & (y >= 0) & (y < level.rows)
    usable = on_map if usable is None else on_map & usable
    cell = (y.clamp(0, level.rows - 1) * level.cols + x.clamp(0, level.cols - 1)).long()
    anchor = torch.arange(level.anchors, device=cells.device)
    idx = level.first + cell[..., None] * level.anchors + anchor  # [B, G, C, A]
    return idx.flatten(2), usable[..., None].expand(idx.shape).flatten(2)


def level_candidates(boxes: Tensor, priors: Priors, cells_of) -> tuple[Tensor, Tensor]:
    """Candidates on every level: ``cells_of(boxes, level) -> (cells [B, G, C, 2], usable [B, G, C] or
    None)`` gives each GT's cells on one level; returns (idx [B, G, K], usable [B, G, K])."""
    found = [cell_priors(*cells_of(boxes, level), level) for level in levels(priors)]
    return torch.cat([f[0] for f in found], -1), torch.cat([f[1] for f in found], -1)
