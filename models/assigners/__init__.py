"""Assigner registry. Adding a method = one file (see ``base.Assigner``) + one entry here."""
from __future__ import annotations

import dataclasses
import difflib

from configs.base_config import ConfigError
from models.assigners.all_grid import AllGridAssigner
from models.assigners.atss import ATSSAssigner
from models.assigners.base import Assigner, AssignResult, Predictions, blank_predictions
from models.assigners.nearby_grid import NearbyGridAssigner
from models.assigners.ratio_grid import RatioGridAssigner
from models.assigners.simota import SimOTAAssigner
from models.assigners.single_grid import SingleGridAssigner
from models.assigners.task_aligned import TaskAlignedAssigner

ASSIGNERS: dict[str, type[Assigner]] = {
    "single_grid": SingleGridAssigner,
    "nearby_grid": NearbyGridAssigner,
    "all_grid": AllGridAssigner,
    "ratio_grid": RatioGridAssigner,
    "task_aligned": TaskAlignedAssigner,
    "simota": SimOTAAssigner,
    "atss": ATSSAssigner,
}


def assigner_class(method: str) -> type[Assigner]:
    """The registered class of ``method``; a ConfigError lists the valid names."""
    if method not in ASSIGNERS:
        raise ConfigError(f"unknown assign.method {method!r}; valid: {sorted(ASSIGNERS)}")
    return ASSIGNERS[method]


def build_assigner(method: str, options: dict) -> Assigner:
    """``method`` with ``options`` (``assign.options``: names of its Options, unset ones keep their
    defaults). Unknown names, wrong types and invalid values are ConfigErrors naming the method."""
    cls = assigner_class(method)
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    for key, value in options.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"assign.options: {method} has no option {key!r}{hint} (its options: "
                              f"{sorted(fields) or 'none'})")
        if not _fits(value, fields[key].default):
            default = fields[key].default
            raise ConfigError(f"assign.options[{key!r}] of {method}: expected {type(default).__name__} (like "
                              f"{default!r}), got {value!r}")
    values = {k: float(v) if isinstance(fields[k].default, float) else v for k, v in options.items()}
    try:
        return cls(**values)
    except ValueError as e:
        raise ConfigError(f"assign.options of {method}: {e}") from None


def _fits(value, default) -> bool:
    """Whether ``value`` may set an option whose default is ``default`` (an int may set a float)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


__all__ = ["ASSIGNERS", "AssignResult", "Assigner", "Predictions", "assigner_class", "blank_predictions",
           "build_assigner"]
