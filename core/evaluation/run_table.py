"""Training runs as rows of a comparison (the data of --task compare, core/evaluation/compare.py).

``load_run`` reads a run directory (config.json, run_info.json, epochs.jsonl, val/history.json,
val/metrics.json; see utils/run_info.py) into a ``RunSummary``; ``differing_keys`` finds the config
fields whose values differ between runs; ``group_runs`` folds runs that differ only in
``train.seed`` into one ``Row`` whose numbers are the mean and sample standard deviation over its
runs. A run in progress, crashed or failed keeps its status and the numbers it has so far.
"""
from __future__ import annotations

import glob
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from utils.run_info import (
    flatten_config,
    improves,
    read_epochs,
    read_run_info,
    run_status,
    wall_seconds,
)

SEED_KEY = "train.seed"  # runs differing only here are repeats of one configuration
NOT_SETTINGS = ("name",)  # config keys that label a run without changing it: never columns
HEADLINE = ("mAP", "mAP50", "mAP75")  # COCO numbers shown at the best and at the last validation
COST = ("params_M", "GFLOPs", "train_img_per_s", "wall_s")
_MISSING = object()  # a config key that an older run does not have


@dataclass
class RunSummary:
    """One training run as the table reads it."""

    path: Path
    config: dict[str, Any]  # flattened config.json: "section.field" -> value
    status: str  # utils.run_info: finished, stopped early, interrupted, failed, in progress, crashed, unknown
    epochs_done: int
    epochs_planned: int
    history: list[dict]  # val/history.json: the scalars of every evaluated epoch
    epochs: list[dict]  # epochs.jsonl: one line per trained epoch
    values: dict[str, float | None]  # the numeric columns (``numeric_columns``); None = not measured

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Stat:
    """A column over a row's runs: mean, sample std (None for one value) and how many runs had a value."""

    mean: float
    std: float | None
    count: int


@dataclass
class Row:
    """Runs whose configs are equal but for the seed."""

    runs: list[RunSummary]
    config: dict[str, Any]  # value of each differing field (``_MISSING`` where the run lacks it)
    stats: dict[str, Stat | None] = field(default_factory=dict)

    @property
    def seeds(self) -> list[Any]:
        return [r.config.get(SEED_KEY) for r in self.runs]

    @property
    def status(self) -> str:
        """The status, or the distinct ones with their counts when the runs differ."""
        found = [r.status for r in self.runs]
        distinct = list(dict.fromkeys(found))
        return distinct[0] if len(distinct) == 1 else ", ".join(f"{s} ×{found.count(s)}" for s in distinct)

    @property
    def epochs(self) -> str:
        """``done/planned``; the distinct values when the runs differ."""
        return ", ".join(dict.fromkeys(f"{r.epochs_done}/{r.epochs_planned}" for r in self.runs))


def expand_run_dirs(patterns: list[str]) -> list[Path]:
    """The directories named by ``patterns``: paths, or globs the shell did not expand (quoted).

    Raises FileNotFoundError for a path that does not exist or a glob that matches nothing.
    """
    found: list[Path] = []
    for pattern in patterns:
        if Path(pattern).exists():  # before the glob: a folder may have "[" or "*" in its name
            found.append(Path(pattern))
        elif glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise FileNotFoundError(f"--task compare: {pattern!r} matches nothing")
            found += [Path(m) for m in matches]
        else:
            raise FileNotFoundError(f"--task compare: {pattern} does not exist")
    seen: set[Path] = set()  # a run named twice counts once, in its first place
    return [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]


def is_run_dir(path: Path) -> bool:
    """A training run directory: it holds config.json (written when --task train starts)."""
    return (Path(path) / "config.json").is_file()


def load_run(path: Path) -> RunSummary:
    """Read one run directory (``is_run_dir(path)`` must hold)."""
    path = Path(path)
    config = flatten_config(json.loads((path / "config.json").read_text(encoding="utf-8")))
    info, epochs = read_run_info(path), read_epochs(path)
    history = _read_json(path / "val" / "history.json", [])
    done = (info or {}).get("epochs_done") or max((e["epoch"] for e in [*epochs, *history]), default=0)
    planned = int((info or {}).get("epochs_planned") or config.get("train.epochs", 0))
    status = run_status(path, info, epochs)
    if info is None and done and done >= planned:
        status = "finished"  # a run made before run_info.json existed that trained all its epochs
    values = _headline_values(history, str(config.get("train.monitor", "mAP")),
                              float(config.get("train.min_delta") or 0.0))
    values |= _class_values(_read_json(path / "val" / "metrics.json", {}))
    values |= _cost_values(info, epochs)
    return RunSummary(path, config, status, int(done), planned, history, epochs, values)


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def _measured(x: Any) -> float | None:
    """A number, or None for a missing value, NaN or -1 ("not measurable", utils/coco_eval.py)."""
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 else None


def _headline_values(history: list[dict], monitor: str, min_delta: float = 0.0) -> dict[str, float | None]:
    """best_* (the epoch best.pth holds: ``utils.run_info.improves``, the rule of core/train/selection.py) and
    final_* (the last evaluated epoch) of HEADLINE, and best_epoch."""
    best, best_score = {}, -1.0
    for h in history:
        score = _measured(h.get(monitor))
        if improves(score, best_score, min_delta):
            best, best_score = h, score
    final = history[-1] if history else {}
    out: dict[str, float | None] = {"best_epoch": _measured(best.get("epoch"))}
    out |= {f"best_{k}": _measured(best.get(k)) for k in HEADLINE}
    return out | {f"final_{k}": _measured(final.get(k)) for k in HEADLINE}


def _class_values(metrics: dict) -> dict[str, float | None]:
    """AP_<class> of the last validation (val/metrics.json)."""
    return {f"AP_{c['name']}": _measured(c.get("AP")) for c in metrics.get("per_class", []) if "name" in c}


def _cost_values(info: dict | None, epochs: list[dict]) -> dict[str, float | None]:
    """Model size and cost (run_info.json), training throughput over all epochs and the wall time."""
    info = info or {}
    images = sum(int(e.get("images") or 0) for e in epochs)
    seconds = sum(float(e.get("train_seconds") or 0.0) for e in epochs)
    params = info.get("parameters")
    return {"params_M": params / 1e6 if isinstance(params, (int, float)) else None,
            "GFLOPs": _measured(info.get("gflops")),
            "train_img_per_s": images / seconds if seconds > 0 else None,
            "wall_s": wall_seconds(info) if info else None}


def load_runs(paths: list[Path]) -> tuple[list[RunSummary], list[Path]]:
    """(the training runs among ``paths``, the paths that are not training runs)."""
    runs, skipped = [], []
    for p in paths:
        if not is_run_dir(p):
            skipped.append(p)
            continue
        try:
            runs.append(load_run(p))
        except (OSError, ValueError, TypeError, AttributeError) as e:  # config.json cut or not a config
            logger.warning(f"{p}: config.json unreadable ({type(e).__name__}: {e}), skipped")
            skipped.append(p)
    return runs, skipped


def differing_keys(runs: list[RunSummary]) -> list[str]:
    """Config keys (not the seed, nor ``NOT_SETTINGS``) whose value is not the same in every run, in
    config order."""
    keys = list(dict.fromkeys(k for r in runs for k in r.config))
    return [k for k in keys if k != SEED_KEY and k not in NOT_SETTINGS
            and len({_canonical(r.config.get(k, _MISSING)) for r in runs}) > 1]


def _canonical(value: Any) -> str:
    """A hashable stand-in for a config value (lists, dicts; 1 and 1.0 are the same setting)."""
    if value is _MISSING:
        return "<missing>"
    return json.dumps(_plain_number(value), sort_keys=True, default=str)


def _plain_number(value: Any) -> Any:
    """``value`` with whole floats as ints, inside lists and dicts too (1.0 -> 1; True stays True)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return [_plain_number(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain_number(v) for k, v in value.items()}
    return value


def group_runs(runs: list[RunSummary], keys: list[str]) -> list[Row]:
    """One Row per distinct value tuple of ``keys`` (equal configs but for the seed), in first-seen
    order, with the mean ± std of every numeric column."""
    rows: dict[tuple, Row] = {}
    for run in runs:
        config = {k: run.config.get(k, _MISSING) for k in keys}
        rows.setdefault(tuple(_canonical(v) for v in config.values()), Row([], config)).runs.append(run)
    for row in rows.values():
        row.stats = {col: stat([r.values.get(col) for r in row.runs]) for col in numeric_columns(runs)}
    return list(rows.values())


def stat(values: list[float | None]) -> Stat | None:
    """Mean and sample standard deviation (n - 1) of the measured values; None when there is none."""
    ok = [v for v in values if v is not None]
    if not ok:
        return None
    return Stat(statistics.fmean(ok), statistics.stdev(ok) if len(ok) > 1 else None, len(ok))


def numeric_columns(runs: list[RunSummary]) -> list[str]:
    """The numeric columns in table order: best_*, final_*, AP_<class> (union over the runs), cost."""
    classes = list(dict.fromkeys(k for r in runs for k in r.values if k.startswith("AP_")))
    return (["best_epoch", *(f"best_{k}" for k in HEADLINE), *(f"final_{k}" for k in HEADLINE)]
            + classes + list(COST))


def value_text(value: Any) -> str:
    """A config value as a table cell: strings bare, other values as json (lists, bools as true/false)."""
    if value is _MISSING:
        return "(absent)"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def short_text(value: Any, limit: int = 24) -> str:
    """``value_text`` cut to ``limit`` characters with "…" (a list of anchors would fill a table or a legend)."""
    text = value_text(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def row_label(row: Row, keys: list[str]) -> str:
    """What tells the row apart: ``key=value`` of the differing fields (the run names without any)."""
    return ", ".join(f"{k}={value_text(row.config[k])}" for k in keys) or ", ".join(r.name for r in row.runs)


def run_label(row: Row, run: RunSummary, keys: list[str]) -> str:
    """A run's label in the plot: its row label, its seed when the row holds repeats, and its folder."""
    seed = f" seed={run.config.get(SEED_KEY)}" if len(row.runs) > 1 else ""
    label = ", ".join(f"{k}={short_text(row.config[k])}" for k in keys)
    return f"{label}{seed} ({run.name})" if label else f"{run.name}{seed}"
