"""Checkpoint: atomic writes, refusal of non-plain values, safe loading, RNG, partial loads."""
from __future__ import annotations

import errno
import os
import pickle
import random

import numpy as np
import pytest
import torch
from loguru import logger
from torch import nn

from utils.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_matching,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _state() -> dict:
    return {"model": {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)},
            "epoch": 4, "best": 0.5, "names": ["rbc", "wbc"], "cfg": {"a": (1, 2), "b": None, "c": True}}


def _no_tmp(d) -> bool:
    return not [p for p in os.listdir(d) if ".tmp" in p]


def test_round_trip(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint(_state(), path)
    out = load_checkpoint(path, required=("model", "epoch"))
    assert torch.equal(out["model"]["w"], _state()["model"]["w"])
    assert torch.equal(out["model"]["n"], torch.tensor(3))
    assert {k: out[k] for k in ("epoch", "best", "names", "cfg")} == {
        "epoch": 4, "best": 0.5, "names": ["rbc", "wbc"], "cfg": {"a": (1, 2), "b": None, "c": True}}
    assert _no_tmp(tmp_path)


def test_numpy_scalar_refused_with_key_path(tmp_path):
    state = _state()
    state["train"] = {"metrics": [0.1, np.float64(0.3)]}
    with pytest.raises(CheckpointError, match=r"train\.metrics\[1\].*numpy\.float64"):
        save_checkpoint(state, tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists() and _no_tmp(tmp_path)


def test_enospc_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint(_state(), path)
    before = path.read_bytes()

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")  # a half-written tmp file must be cleaned up too
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint({"model": {"w": torch.zeros(2)}}, path)
    assert str(info.value) == f"could not write {path}: No space left on device"
    assert path.read_bytes() == before
    assert _no_tmp(tmp_path)


@pytest.mark.parametrize("kind,cause", [
    ("truncated", "truncated or corrupt"), ("random", "not a plain checkpoint"),
    ("empty", "empty or truncated"), ("list", "not a checkpoint"), ("missing", "not found"),
])
def test_bad_files(tmp_path, kind, cause):
    path = tmp_path / "bad.pth"
    if kind == "truncated":
        save_checkpoint(_state(), path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "list":
        torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match=cause) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_key_named(tmp_path):
    path = tmp_path / "a.pth"
    save_checkpoint(_state(), path)
    with pytest.raises(CheckpointError, match=r"missing key 'ema'"):
        load_checkpoint(path, required=("model", "ema"))


class _Evil:
    """Would create a marker file if unpickled with the full pickle machinery."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch_save", "raw_pickle"])
def test_malicious_pickle_rejected(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"model": {}, "x": _Evil(str(marker))}
    if writer == "torch_save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match="not a plain checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_rng_round_trip(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    random.gauss(0, 1), np.random.randn()  # leave cached gaussians in both states
    path = tmp_path / "rng.pth"
    save_checkpoint({"model": {}, "rng": rng_state()}, path)
    def draws():  # the gaussians first: they come from the cached halves of the pairs drawn above
        return random.gauss(0, 1), np.random.randn(), random.random(), np.random.rand(3).tolist(), torch.rand(3)
    expected = draws()
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    random.gauss(0, 1), np.random.randn()  # other cached gaussians, to be replaced
    set_rng_state(load_checkpoint(path)["rng"])
    got = draws()
    assert got[:4] == expected[:4] and torch.equal(got[4], expected[4])


def test_load_matching_changed_head():
    src = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 80, 1))
    dst = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 20, 1))
    messages: list[str] = []
    sink = logger.add(messages.append, level="WARNING", format="{message}")
    try:
        loaded, skipped = load_matching(dst, src.state_dict())
    finally:
        logger.remove(sink)
    assert sorted(skipped) == ["2.bias", "2.weight"]
    assert "0.weight" in loaded and "1.running_var" in loaded and len(loaded) == 7
    assert torch.equal(dst[0].weight, src[0].weight)
    assert not torch.equal(dst[2].weight[:1], src[2].weight[:1])  # untouched fresh init
    assert len(messages) == 1 and "2.weight: checkpoint [80, 4, 1, 1] vs model [20, 4, 1, 1]" in messages[0]
