"""Assigner registry. Adding a method = one file + one entry here."""
from __future__ import annotations

from configs.base_config import ConfigError
from models.assigners.all_grid import AllGridAssigner
from models.assigners.base import AssignResult, BaseAssigner
from models.assigners.nearby_grid import NearbyGridAssigner
from models.assigners.single_grid import SingleGridAssigner

ASSIGNERS = {
    "single_grid": SingleGridAssigner,
    "nearby_grid": NearbyGridAssigner,
    "all_grid": AllGridAssigner,
}


def assigner_class(method: str) -> type[BaseAssigner]:
    """The registered class of ``method``; a ConfigError lists the valid names."""
    if method not in ASSIGNERS:
        raise ConfigError(f"unknown assign.method {method!r}; valid: {sorted(ASSIGNERS)}")
    return ASSIGNERS[method]


def build_assigner(assign_cfg) -> BaseAssigner:
    """From configs.base_config.AssignCfg."""
    return assigner_class(assign_cfg.method)(match_iou_thres=assign_cfg.match_iou_thres,
                                        filter_by_max_iou=assign_cfg.filter_by_max_iou,
                                        ensure_one_match=assign_cfg.ensure_one_match)


__all__ = ["ASSIGNERS", "AssignResult", "BaseAssigner", "assigner_class", "build_assigner"]
