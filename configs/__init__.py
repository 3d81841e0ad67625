"""Config loading: ``load_config("configs/x.py")`` or ``load_config("x")`` plus overrides."""
from __future__ import annotations

import ast
import importlib.util
import inspect
from pathlib import Path

from configs.base_config import BaseConfig, ConfigError

CONFIG_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = "my_config"


def resolve_config_path(path_or_name: str | None) -> Path:
    """A file path, or a module name under configs/ (with or without .py)."""
    name = path_or_name or DEFAULT_CONFIG
    p = Path(name)
    if p.suffix == ".py" and p.is_file():
        return p.resolve()
    cand = CONFIG_DIR / (p.stem + ".py")
    if cand.is_file():
        return cand
    avail = sorted(f.stem for f in CONFIG_DIR.glob("*.py") if not f.stem.startswith("_")
                   and f.stem not in ("base_config", "validation"))
    raise ConfigError(f"config {name!r} not found (neither a file nor configs/{p.stem}.py); available: {avail}")


def load_config(path_or_name: str | None = None, overrides: list[str] | None = None) -> BaseConfig:
    """Import the config file, instantiate its config class, apply ``group.field=value`` overrides."""
    path = resolve_config_path(path_or_name)
    spec = importlib.util.spec_from_file_location(f"_cfg_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if issubclass(c, BaseConfig) and c.__module__ == module.__name__]
    if not classes:
        raise ConfigError(f"{path}: defines no subclass of BaseConfig")
    # The most derived class defined in the file is the experiment (ablations subclass it).
    cls = max(classes, key=lambda c: len(c.__mro__))
    cfg = cls()
    if "name" not in cls.__dict__ and cfg.name in ("base", getattr(cls.__mro__[1], "name", None)):
        cfg.name = path.stem
    apply_overrides(cfg, overrides or [])
    return cfg


def parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like group.field=value")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # bare words are strings: assign.method=all_grid
    return key.strip(), value


def apply_overrides(cfg: BaseConfig, overrides: list[str]) -> BaseConfig:
    for text in overrides:
        key, value = parse_override(text)
        cfg.set(key, value)
    return cfg
