"""The whole config gate: the config's own rules plus the rules of the packages that own registries."""
from __future__ import annotations

import torch

from configs.base_config import BaseConfig
from configs.errors import ConfigError
from datasets import check_config as check_data
from models import check_config as check_model

CHECKS = (check_data, check_model)


def validate(cfg: BaseConfig) -> BaseConfig:
    """``cfg.validate`` with every package's checks; returns cfg."""
    return cfg.validate(*CHECKS)


def check_device_options(cfg: BaseConfig, device: torch.device) -> None:
    """The train options that depend on the device this process runs on (known only at launch):
    ``train.sync_bn`` needs CUDA, bf16 autocast a GPU that computes in bf16. ConfigError otherwise."""
    t = cfg.train
    if t.sync_bn and device.type != "cuda":
        raise ConfigError(f"train.sync_bn=True needs CUDA (SyncBatchNorm gathers its statistics over NCCL); "
                          f"this run is on {device.type}: set train.sync_bn=False")
    if t.amp and t.amp_dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise ConfigError(f"train.amp_dtype='bf16' but {name} does not compute in bf16 (before Ampere): "
                          f"use train.amp_dtype='fp16' (with its grad scaler) or train.amp=False")
