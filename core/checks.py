"""The whole config gate: the config's own rules plus the rules of the packages that own registries."""
from __future__ import annotations

from configs.base_config import BaseConfig
from datasets import check_config as check_data
from models import check_config as check_model

CHECKS = (check_data, check_model)


def validate(cfg: BaseConfig) -> BaseConfig:
    """``cfg.validate`` with every package's checks; returns cfg."""
    return cfg.validate(*CHECKS)
