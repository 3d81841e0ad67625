"""Training throughput of a full step next to a bare forward+backward of the same model.

    python benchmarks/train_speed.py v9-t [group.field=value ...]

Full step = what the trainer does per batch: take the batch from the DataLoader (workers,
mosaic and the other augmentations), forward, assignment, loss, backward, optimizer, EMA.
Bare = forward + backward of the same model (training mode, auxiliary branch included) on a
random tensor of the same shape, nothing else. Both run in this process, alternating in
rounds so machine noise hits both alike. The defaults are the issue's protocol: bundled
BCCD data, 416 px, batch 16, CPU.

Last line: RESULT {"full_img_per_s": .., "bare_img_per_s": .., "ratio": ..}
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from configs import load_config
from core.train import Trainer
from utils.dist import DistInfo, set_cpu_threads
from utils.logging import setup_logging

CONFIG = "configs/bccd_v9t.py"
PROTOCOL = ["data.img_size=416", "train.batch_size=16", "train.epochs=1"]
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
    if not argv:
        sys.exit(__doc__)
    cfg = load_config(CONFIG, PROTOCOL + [f"model.name={argv[0]}"] + argv[1:])
    set_cpu_threads(cfg.train.num_threads)
    run_dir = Path(tempfile.mkdtemp(prefix="train_speed_"))
    setup_logging(run_dir, 0, "train")
    trainer = Trainer(cfg, DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu")), run_dir)
    trainer.model.train()
    trainer.train_loader.dataset.set_epoch(0)
    batches = endless(trainer.train_loader)
    bs, size = cfg.train.batch_size, cfg.data.img_size
    shape = (bs, 3, size, size)
    full_steps(trainer, batches, WARMUP)
    bare_steps(trainer.model, shape, WARMUP, trainer.memory_format)
    full_t = bare_t = 0.0
    for r in range(ROUNDS):
        full_t += full_steps(trainer, batches, STEPS)
        bare_t += bare_steps(trainer.model, shape, STEPS, trainer.memory_format)
        print(f"round {r + 1}/{ROUNDS}: full {full_t / ((r + 1) * STEPS):.2f} s/step, "
              f"bare {bare_t / ((r + 1) * STEPS):.2f} s/step", flush=True)
    n_img = ROUNDS * STEPS * bs
    full, bare = n_img / full_t, n_img / bare_t
    print(f"\n{cfg.model.name} at {size} px, batch {bs}, {torch.get_num_threads()} threads, "
          f"{cfg.data.num_workers} workers")
    print(f"{'full training step':<24}{full:8.2f} img/s")
    print(f"{'bare forward+backward':<24}{bare:8.2f} img/s")
    print(f"{'ratio':<24}{full / bare:8.3f}")
    print("RESULT " + json.dumps({"full_img_per_s": round(full, 3), "bare_img_per_s": round(bare, 3),
                                  "ratio": round(full / bare, 3)}))


if __name__ == "__main__":
    main(sys.argv[1:])
