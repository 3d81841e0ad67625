"""utils.dist: single-process fallbacks and a real 2-process gloo group on CPU."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import nn

from tests.core.tiny_data import free_port
from utils import dist as D


def test_single_process_fallbacks(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = D.init_distributed()
    assert (info.rank, info.world_size, info.is_main) == (0, 1, True) and not D.is_dist()
    assert D.all_gather_object({"a": 1}) == [{"a": 1}]
    assert D.broadcast_object("x") == "x"
    assert D.any_rank(True, False) == (True, False)
    D.barrier(), D.cleanup()  # no-ops without a group


def test_seed_everything_and_unwrap():
    D.seed_everything(3, rank=1)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    D.seed_everything(4, rank=0)  # seed + rank: same stream as above
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    D.seed_everything(3, rank=0, deterministic=True)
    try:
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    finally:
        D.seed_everything(0, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()
    inner = nn.Linear(2, 2)
    assert D.unwrap(nn.DataParallel(inner)) is inner and D.unwrap(inner) is inner


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    info = D.init_distributed(timeout_s=30)
    try:
        gathered = D.all_gather_object({"rank": info.rank})
        flags = D.any_rank(rank == 1, False)  # rank 1 alone raises the first flag: every rank sees it
        token = D.broadcast_object(f"from{rank}", src=1)
        bn = nn.BatchNorm2d(2)  # each rank's running statistics of its own batches
        with torch.no_grad():
            bn.running_mean.fill_(rank + 0.5), bn.running_var.fill_(rank + 2.0), bn.weight.fill_(rank + 3.0)
        bn.num_batches_tracked.fill_(10 + rank)
        D.broadcast_buffers(bn)
        D.barrier()
        result = {"gathered": gathered, "flags": list(flags), "token": token, "is_main": info.is_main,
                  "device": str(info.device), "ws": D.world_size(),
                  "bn": [bn.running_mean.tolist(), bn.running_var.tolist(), int(bn.num_batches_tracked),
                         bn.weight.tolist()]}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        D.cleanup()


def test_two_process_gloo(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(results):
        assert res["gathered"] == [{"rank": 0}, {"rank": 1}]
        assert res["flags"] == [True, False]
        assert res["token"] == "from1"
        assert res["is_main"] == (r == 0) and res["device"] == "cpu" and res["ws"] == 2
        # buffers: rank 0's everywhere (mean 0.5, var 2.0, 10 batches); parameters: each rank's own
        assert res["bn"] == [[0.5, 0.5], [2.0, 2.0], 10, [r + 3.0, r + 3.0]]


def _gather_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    D.init_distributed(timeout_s=30)
    try:
        to0 = D.gather_object({"rank": rank, "data": np.arange(rank + 2).tolist()})
        to1 = D.gather_object(f"r{rank}", dst=1)
        with open(os.path.join(out_dir, f"gather{rank}.json"), "w") as f:
            json.dump({"to0": to0, "to1": to1}, f)
    finally:
        D.cleanup()


def test_gather_object_reaches_only_the_destination(tmp_path):
    assert D.gather_object({"a": 1}) == [{"a": 1}]  # no group: the single-process answer
    mp.spawn(_gather_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"gather{r}.json").read_text()) for r in range(2))
    assert r0["to0"] == [{"rank": 0, "data": [0, 1]}, {"rank": 1, "data": [0, 1, 2]}] and r1["to0"] is None
    assert r0["to1"] is None and r1["to1"] == ["r0", "r1"]
