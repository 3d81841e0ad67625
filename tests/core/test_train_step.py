"""The training step's precision and input-size choices: bf16 autocast runs on the CPU without a grad
scaler, and multi-scale sizes are multiples of the stride, in range, and the same on every rank."""
import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from tiny_data import free_port

from configs import load_config
from core.train.step import TrainStep
from models import build_loss, build_model
from utils.dist import cleanup, init_distributed
from utils.optim import build_optimizer
from utils.scheduler import build_scheduler

TARGETS = torch.tensor([[0, 0, 8.0, 8, 40, 30], [1, 2, 20, 24, 60, 60]])


def make_step(device="cpu", **options) -> TrainStep:
    cfg = load_config("bccd_yolo_r18", ["data.img_size=64", "model.channel_sparsity=0.25"])
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg.optim, model, 2)
    scheduler = build_scheduler(cfg.sched, optimizer, 10, 2)
    return TrainStep(model, build_loss(cfg, model), optimizer, scheduler, device=torch.device(device), **options)


def test_bf16_steps_run_on_the_cpu_with_finite_losses_and_no_scaler():
    torch.manual_seed(0)
    step = make_step(amp=True, amp_dtype="bf16")
    dtypes = []
    step.model.head.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    losses = [step(torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8), TARGETS) for _ in range(3)]
    assert all(parts and all(torch.isfinite(v) for v in parts.values()) for parts in losses)
    assert dtypes == [torch.bfloat16] * 3 and not step.scaler.is_enabled()
    fp16 = make_step(amp=True, amp_dtype="fp16")  # fp16 autocast is CUDA-only: fp32 on the CPU
    fp16.model.head.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    fp16(torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8), TARGETS)
    assert dtypes[-1] == torch.float32 and not fp16.scaler.is_enabled()


def test_multi_scale_sides_are_stride_multiples_in_range_and_scale_the_boxes():
    step = make_step(multi_scale=[48, 130], seed=3)
    sides = [step.side_at(s) for s in range(200)]
    again, other = make_step(multi_scale=[48, 130], seed=3), make_step(multi_scale=[48, 130], seed=4)
    assert set(sides) == {64, 96, 128} and sides == [again.side_at(s) for s in range(200)]
    assert sides != [other.side_at(s) for s in range(200)]
    images = torch.rand(2, 3, 64, 64)
    out, targets = step.rescale(images, TARGETS, 128)
    assert out.shape == (2, 3, 128, 128)
    assert torch.equal(targets[:, 2:], TARGETS[:, 2:] * 2) and torch.equal(targets[:, :2], TARGETS[:, :2])
    seen = []
    step.model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[2:])))
    for _ in range(4):
        step(torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8), TARGETS)
    assert seen == [(s, s) for s in sides[:4]]


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    init_distributed(timeout_s=60)
    try:
        torch.manual_seed(rank)  # different data on each rank
        step = make_step(multi_scale=[32, 160], seed=0)
        seen = []
        step.model.register_forward_pre_hook(lambda m, args: seen.append(int(args[0].shape[-1])))
        for _ in range(5):
            step(torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8), TARGETS)
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(seen, f)
    finally:
        cleanup()


@pytest.mark.slow
def test_multi_scale_sides_are_equal_across_two_gloo_ranks(tmp_path):
    mp.spawn(_rank, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0 == r1 and len(r0) == 5 and all(s % 32 == 0 and 32 <= s <= 160 for s in r0) and len(set(r0)) > 1
