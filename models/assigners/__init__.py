"""Assigner registry. Adding a method = one file + one entry here.

``build_assigner`` gives each class the AssignCfg fields named like its constructor
parameters, so a method's options are declared once, in its own signature.
"""
from __future__ import annotations

import dataclasses
import inspect

from configs.base_config import ConfigError
from models.assigners.all_grid import AllGridAssigner
from models.assigners.base import AssignResult, BaseAssigner
from models.assigners.nearby_grid import NearbyGridAssigner
from models.assigners.ratio_grid import RatioGridAssigner
from models.assigners.single_grid import SingleGridAssigner
from models.assigners.task_aligned import TaskAlignedAssigner

ASSIGNERS = {
    "single_grid": SingleGridAssigner,
    "nearby_grid": NearbyGridAssigner,
    "all_grid": AllGridAssigner,
    "ratio_grid": RatioGridAssigner,
    "task_aligned": TaskAlignedAssigner,
}


def assigner_class(method: str) -> type[BaseAssigner]:
    """The registered class of ``method``; a ConfigError lists the valid names."""
    if method not in ASSIGNERS:
        raise ConfigError(f"unknown assign.method {method!r}; valid: {sorted(ASSIGNERS)}")
    return ASSIGNERS[method]


def build_assigner(assign_cfg) -> BaseAssigner:
    """From configs.base_config.AssignCfg: the class of ``method`` with its own fields."""
    cls = assigner_class(assign_cfg.method)
    params = inspect.signature(cls).parameters
    kwargs = {f.name: getattr(assign_cfg, f.name) for f in dataclasses.fields(assign_cfg) if f.name in params}
    try:
        return cls(**kwargs)
    except ValueError as e:  # a bad option value: name the config section
        raise ConfigError(f"assign (method {assign_cfg.method!r}): {e}") from None


__all__ = ["ASSIGNERS", "AssignResult", "BaseAssigner", "assigner_class", "build_assigner"]
