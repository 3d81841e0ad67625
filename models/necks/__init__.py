"""Neck registry: a neck maps backbone maps ``[C3, C4, C5]`` to head inputs ``[P3, P4, P5]``."""
from __future__ import annotations

from torch import nn

from models.necks.spp_pan import SPPPAN

NECKS = {"spp_pan": SPPPAN}


def build_neck(name: str, in_channels: list[int], out_channels: list[int],
               activation: str) -> nn.Module:
    """Build neck ``name`` (config ``model.neck``); ``out_channels`` are already width-scaled."""
    if name not in NECKS:
        raise ValueError(f"model.neck: unknown neck {name!r}; valid: {sorted(NECKS)}")
    return NECKS[name](in_channels, out_channels, activation)
