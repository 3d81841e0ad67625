"""Training throughput of a full step next to a bare forward+backward of the same model.

    python benchmarks/train_speed.py v9-t [--tiny] [group.field=value ...]

Full step = what the trainer does per batch: take the batch from the DataLoader (workers,
mosaic and the other augmentations), forward, assignment, loss, backward, optimizer, EMA.
Bare = forward + backward of the same model (training mode, auxiliary branch included) on a
random tensor of the same shape, nothing else. Both run in this process, alternating in
rounds so machine noise hits both alike. The defaults are the issue's protocol: bundled
BCCD data, 416 px, batch 16, CPU.

--tiny (or BENCH_TINY=1, benchmarks/common.py): the same run at 64 px, batch 2, one thread, on ~10
train images (data.data_fraction=0.04), one warm-up step and one round of one step; its figures only
show that the script works.

Last line: RESULT {"full_img_per_s": .., "bare_img_per_s": .., "ratio": ..}
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import pick, print_result, tiny_mode
from configs import load_config
from core.train import Trainer
from utils.dist import DistInfo, set_cpu_threads
from utils.logging import setup_logging

CONFIG = "configs/bccd_v9t.py"
PROTOCOL = ["data.img_size=416", "train.batch_size=16", "train.epochs=1"]
TINY_PROTOCOL = ["data.img_size=64", "train.batch_size=2", "train.epochs=1", "data.data_fraction=0.04",
                 "train.num_threads=1"]
WARMUP, STEPS, ROUNDS = 2, 6, 2


def full_steps(trainer: Trainer, batches, n: int) -> float:
    """Seconds for n full steps, DataLoader wait included."""
    t0 = time.perf_counter()
    for _ in range(n):
        images, targets, _ = next(batches)
        trainer.train_step(images, targets)
    return time.perf_counter() - t0


def bare_steps(model: torch.nn.Module, shape: tuple, n: int, memory_format) -> float:
    """Seconds for n forward+backward passes on random input (no data, loss or optimizer)."""
    x = torch.rand(shape).contiguous(memory_format=memory_format)
    t0 = time.perf_counter()
    for _ in range(n):
        out = model(x)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        sum(o.float().mean() for o in outs).backward()
        model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def endless(loader):
    while True:
        yield from loader


def main(argv: list[str]) -> None:
    tiny = tiny_mode(argv)
    if not argv:
        sys.exit(__doc__)
    warmup, steps, rounds = pick(tiny, (WARMUP, STEPS, ROUNDS), (1, 1, 1))
    cfg = load_config(CONFIG, pick(tiny, PROTOCOL, TINY_PROTOCOL) + [f"model.name={argv[0]}"] + argv[1:])
    set_cpu_threads(cfg.train.num_threads)
    run_dir = Path(tempfile.mkdtemp(prefix="train_speed_"))
    setup_logging(run_dir, 0, "train")
    trainer = Trainer(cfg, DistInfo.single(), run_dir)
    trainer.model.train()
    trainer.train_loader.dataset.set_epoch(0)
    batches = endless(trainer.train_loader)
    bs, size = cfg.train.batch_size, cfg.data.img_size
    shape = (bs, 3, size, size)
    memory_format = trainer.stepper.memory_format  # the layout the step feeds the model (train.channels_last)
    full_steps(trainer, batches, warmup)
    bare_steps(trainer.model, shape, warmup, memory_format)
    full_t = bare_t = 0.0
    for r in range(rounds):
        full_t += full_steps(trainer, batches, steps)
        bare_t += bare_steps(trainer.model, shape, steps, memory_format)
        print(f"round {r + 1}/{rounds}: full {full_t / ((r + 1) * steps):.2f} s/step, "
              f"bare {bare_t / ((r + 1) * steps):.2f} s/step", flush=True)
    n_img = rounds * steps * bs
    full, bare = n_img / full_t, n_img / bare_t
    print(f"\n{cfg.model.name} at {size} px, batch {bs}, {torch.get_num_threads()} threads, "
          f"{cfg.data.num_workers} workers")
    print(f"{'full training step':<24}{full:8.2f} img/s")
    print(f"{'bare forward+backward':<24}{bare:8.2f} img/s")
    print(f"{'ratio':<24}{full / bare:8.3f}")
    print_result({"full_img_per_s": round(full, 3), "bare_img_per_s": round(bare, 3), "ratio": round(full / bare, 3)})


if __name__ == "__main__":
    main(sys.argv[1:])
