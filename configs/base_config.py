"""BaseConfig: every knob of an experiment, grouped in small sections.

An experiment is a subclass that changes only what differs, in ``__init__``::

    class BccdYoloR18(BaseConfig):
        def __init__(self):
            super().__init__()
            self.model.backbone = "resnet18"

A config file is Python and is executed when loaded: only run configs you trust.
Checkpoints store ``to_dict()`` (plain data), never the class, so val/predict/export
from a checkpoint do not import the config module.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from configs.errors import ConfigError
from configs.sections import (
    COCO_ANCHORS,
    SECTIONS,
    AssignCfg,
    AugCfg,
    DataCfg,
    DebugCfg,
    EvalCfg,
    ExportCfg,
    LossCfg,
    ModelCfg,
    OptimCfg,
    PredictCfg,
    QatCfg,
    SchedCfg,
    TrainCfg,
)
from configs.validation import BENCH_DEVICES, EXPORT_FORMATS, METRIC_KEYS, TASKS, validate_config

__all__ = ["BENCH_DEVICES", "COCO_ANCHORS", "CONFIG_VERSION", "EXPORT_FORMATS", "METRIC_KEYS", "SECTIONS", "TASKS",
           "AssignCfg", "AugCfg", "BaseConfig", "ConfigError", "DataCfg", "DebugCfg", "EvalCfg", "ExportCfg",
           "LossCfg", "ModelCfg", "OptimCfg", "PredictCfg", "QatCfg", "SchedCfg", "TrainCfg"]

CONFIG_VERSION = 2  # 2: assign.options replaced the flat assign.* option fields of version 1
# Version-1 assign fields and their defaults: a stored value that differs moves into assign.options.
_V1_ASSIGN = {"match_iou_thres": 0.0625, "filter_by_max_iou": True, "ensure_one_match": True, "topk": 10,
              "alpha": 0.5, "beta": 6.0, "anchor_t": 4.0}
TOP_LEVEL = ("name", "task")  # config fields outside the sections
ALSO_ACCEPTS = {"model.anchors": ("auto",)}  # values a field takes besides those of its default's type


class BaseConfig:
    """All sections with their defaults. Subclass it and change fields in ``__init__``."""

    name: str = "base"  # experiment name; run directories are named after it (a plain name, no path)
    task: str = "train"  # what main.py runs: one of TASKS (--task overrides it)

    def __init__(self) -> None:
        for sec, cls in SECTIONS.items():
            setattr(self, sec, cls())

    # -- plain data ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": CONFIG_VERSION, **{k: getattr(self, k) for k in TOP_LEVEL}}
        for sec in SECTIONS:
            out[sec] = _plain(dataclasses.asdict(getattr(self, sec)))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], strict: bool = True) -> BaseConfig:
        """Rebuild a config from ``to_dict()`` output (e.g. from a checkpoint).

        strict=False (checkpoints written by an older version of the repo): keys that no
        longer exist are skipped and listed in one warning; fields added since keep their
        defaults. A version-1 dict (no "version" key) is migrated first (``_migrate_v1``).
        """
        version = d.get("version", 1)
        if not isinstance(version, int) or version > CONFIG_VERSION:
            raise ConfigError(f"the config was written by a newer version of this repo (config version "
                              f"{version!r}; this one reads up to {CONFIG_VERSION}): update the repo")
        d = _migrate_v1(d) if version == 1 else d
        cfg = cls()
        dropped = []
        for sec, values in d.items():
            if sec == "version":
                continue
            if sec in TOP_LEVEL:
                cfg.set(sec, values)
                continue
            if sec not in SECTIONS:
                if strict:
                    raise ConfigError(f"unknown config section {sec!r}; valid: {sorted(SECTIONS)}")
                dropped.append(sec)
                continue
            known = {f.name for f in dataclasses.fields(SECTIONS[sec])}
            for k, v in values.items():
                if k not in known and not strict:
                    dropped.append(f"{sec}.{k}")
                    continue
                cfg.set(f"{sec}.{k}", v)
        if dropped:
            from loguru import logger
            logger.warning(f"config keys no longer known to this version were ignored: {dropped}")
        return cfg

    # -- overrides ----------------------------------------------------------------
    def keys(self) -> list[str]:
        return [*TOP_LEVEL, *(f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(SECTIONS[s]))]

    def get(self, key: str) -> Any:
        if key in TOP_LEVEL:
            return getattr(self, key)
        sec, fld = self._split(key)
        return getattr(getattr(self, sec), fld)

    def set(self, key: str, value: Any) -> None:
        """Set ``section.field`` (or a top-level field: name, task); the value must have the type of
        the current value."""
        if key in TOP_LEVEL:
            setattr(self, key, _coerce(key, getattr(self, key), value))
            return
        sec, fld = self._split(key)
        if value in ALSO_ACCEPTS.get(key, ()):
            setattr(getattr(self, sec), fld, value)
            return
        current = getattr(SECTIONS[sec](), fld)  # the type comes from the field's default
        setattr(getattr(self, sec), fld, _coerce(key, current, value))

    def _split(self, key: str) -> tuple[str, str]:
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in SECTIONS or parts[1] not in {
                f.name for f in dataclasses.fields(SECTIONS[parts[0]])}:
            import difflib
            close = difflib.get_close_matches(key, self.keys(), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see configs/sections.py"
            raise ConfigError(f"unknown config key {key!r}{hint}")
        return parts[0], parts[1]

    # -- checks -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.data.class_names)

    def coco_category_ids(self) -> list[int]:
        """COCO category id of each class: ``data.category_ids`` (a COCO dataset's own ids) or 1..nc."""
        return [int(c) for c in self.data.category_ids] or list(range(1, self.num_classes + 1))

    def validate(self, *checks: Callable[[BaseConfig], None]) -> BaseConfig:
        """The config gate: every rule of configs/validation.py, then ``checks``, the rules of the
        packages that own registries (core.checks passes models.check_config and
        datasets.check_config: configs import nothing of them). Raises ConfigError naming the key."""
        validate_config(self)
        for check in checks:
            check(self)
        return self

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}(name={self.name!r}, task={self.task!r})"]
        for sec in SECTIONS:
            lines.append(f"  {sec}: {dataclasses.asdict(getattr(self, sec))}")
        return "\n".join(lines)


def _migrate_v1(d: dict[str, Any]) -> dict[str, Any]:
    """A version-1 config dict in the version-2 layout: the flat assign option fields whose values
    differ from their version-1 defaults become ``assign.options``."""
    d = dict(d)
    old = dict(d.get("assign", {}))
    options = {k: old.pop(k) for k in list(old) if k in _V1_ASSIGN and old[k] != _V1_ASSIGN[k]}
    d["assign"] = {k: v for k, v in old.items() if k not in _V1_ASSIGN} | {"options": options}
    return d


def _plain(x: Any) -> Any:
    """Tuples to lists, recursively: a checkpoint holds only plain Python values."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _coerce(key: str, current: Any, value: Any) -> Any:
    """Return ``value`` in the type of ``current``, or raise ConfigError."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, str):
        if isinstance(value, str):
            return value
    elif isinstance(current, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(current)(value)
    elif isinstance(current, dict):
        if isinstance(value, dict):
            return dict(value)
    else:
        return value
    raise ConfigError(f"{key}: expected {type(current).__name__} (like {current!r}), got {value!r}")
