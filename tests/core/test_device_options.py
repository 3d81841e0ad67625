"""Train options that depend on the device: refused with a message where they cannot work."""
import pytest
import torch

from configs import load_config
from configs.errors import ConfigError
from core.checks import check_device_options


def cfg(*overrides):
    return load_config("bccd_yolo_r18", list(overrides))


def test_sync_bn_is_refused_off_cuda():
    with pytest.raises(ConfigError, match=r"train.sync_bn=True needs CUDA .* this run is on cpu"):
        check_device_options(cfg("train.sync_bn=True"), torch.device("cpu"))
    check_device_options(cfg("train.sync_bn=False"), torch.device("cpu"))


def test_bf16_is_refused_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    with pytest.raises(ConfigError, match=r"train.amp_dtype='bf16' but Tesla T4 does not compute in bf16"):
        check_device_options(cfg("train.amp=True", "train.amp_dtype='bf16'"), torch.device("cuda", 0))
    check_device_options(cfg("train.amp=True", "train.amp_dtype='fp16'"), torch.device("cuda", 0))
    check_device_options(cfg("train.amp=True", "train.amp_dtype='bf16'"), torch.device("cpu"))  # CPU autocast has bf16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    check_device_options(cfg("train.amp=True", "train.amp_dtype='bf16'"), torch.device("cuda", 0))


def test_cudnn_benchmark_and_deterministic_exclude_each_other():
    with pytest.raises(ConfigError, match="train.cudnn_benchmark=True .* train.deterministic=True"):
        cfg("train.cudnn_benchmark=True", "train.deterministic=True").validate()
    assert cfg("train.cudnn_benchmark=True").validate().train.cudnn_benchmark
