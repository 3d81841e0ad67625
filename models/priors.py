"""Priors: one record per prediction slot (level, stride, cell, anchor).

Slot order is level, then cell row y, then cell column x, then anchor a: the head reshapes its
maps to exactly this order, so slot p of the model output and prior p describe the same thing.
Anchor-free heads use one prior per cell (anchor_wh = stride, num_anchors = 1).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class Priors:
    level: Tensor  # [P] long, head level index
    stride: Tensor  # [P] float, pixels per cell
    grid_xy: Tensor  # [P, 2] float, cell column and row
    anchor_wh: Tensor  # [P, 2] float, anchor width and height, input pixels
    anchor_idx: Tensor  # [P] long, anchor index within its level
    level_hw: list  # per level (rows, cols) of the feature map
    num_anchors: int  # anchors per cell
    anchor_free: bool = False  # an anchor-free head: anchor_wh is only the stride (a cell-sized box)

    @property
    def centers(self) -> Tensor:
        """[P, 2] cell centres, input pixels."""
        return (self.grid_xy + 0.5) * self.stride[:, None]

    def boxes(self) -> Tensor:
        """[P, 4] xyxy: each anchor box centred on its cell centre (used for IoU matching)."""
        c, half = self.centers, self.anchor_wh / 2
        return torch.cat((c - half, c + half), -1)

    def cell_boxes(self) -> Tensor:
        """[P, 4] xyxy: the cell rectangle of each slot (for plots)."""
        tl = self.grid_xy * self.stride[:, None]
        return torch.cat((tl, tl + self.stride[:, None]), -1)

    def level_ranges(self) -> list[tuple[int, int]]:
        """(first prior, number of priors) of each level, as host ints (no device read)."""
        out, first = [], 0
        for h, w in self.level_hw:
            out.append((first, h * w * self.num_anchors))
            first += h * w * self.num_anchors
        return out

    def __len__(self) -> int:
        return self.level.numel()

    def to(self, device: torch.device) -> Priors:
        vals = {f.name: getattr(self, f.name) for f in fields(self)}
        return Priors(**{k: v.to(device) if isinstance(v, Tensor) else v for k, v in vals.items()})


def make_priors(img_hw: tuple[int, int], strides: list[int], anchors: list | None,
                device: torch.device | str = "cpu") -> Priors:
    """Build priors for an input of img_hw (h, w).

    anchors: per level a list of [w, h] in input pixels, or None for anchor-free heads. Every tensor is
    made on ``device`` (the anchors are its only copy from the host; models cache priors per input size).
    """
    device = torch.device(device)
    levels, strides_t, grids, whs, aidx, level_hw = [], [], [], [], [], []
    for lv, s in enumerate(strides):
        h, w = img_hw[0] // s, img_hw[1] // s
        level_hw.append((h, w))
        lv_anchors = (torch.tensor(anchors[lv], dtype=torch.float32, device=device) if anchors
                      else torch.full((1, 2), float(s), device=device))
        a = lv_anchors.shape[0]
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        grid = torch.stack((xs, ys), -1).reshape(-1, 1, 2).expand(-1, a, 2).reshape(-1, 2)
        n = grid.shape[0]
        grids.append(grid.float())
        whs.append(lv_anchors.repeat(h * w, 1))
        aidx.append(torch.arange(a, device=device).repeat(h * w))
        levels.append(torch.full((n,), lv, dtype=torch.long, device=device))
        strides_t.append(torch.full((n,), float(s), device=device))
    num_anchors = len(anchors[0]) if anchors else 1
    return Priors(torch.cat(levels), torch.cat(strides_t), torch.cat(grids), torch.cat(whs),
                  torch.cat(aidx), level_hw, num_anchors, anchors is None)
