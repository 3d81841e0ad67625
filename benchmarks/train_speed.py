"""Training throughput of a full step next to a bare forward+backward of the same model.

    python benchmarks/train_speed.py v9-t [--threads 1,2] [--baseline DIR] [--tiny] [group.field=value ...]

Full step = what the trainer does per batch: take the batch from the DataLoader (workers,
mosaic and the other augmentations), forward, assignment, loss, backward, optimizer, EMA.
Bare = forward + backward of the same model (training mode, auxiliary branch included) on a
random tensor of the same shape, nothing else. The defaults are the issue's protocol: bundled
BCCD data, 416 px, batch 16, CPU.

Each (code, thread count) runs in a fresh child process whose sys.path starts at the code under
test, timing WARMUP untimed then STEPS full steps and STEPS bare passes; the children alternate in
ROUNDS rounds (this checkout, then --baseline DIR's, for each --threads value), so machine noise hits
both alike; a configuration's figure is its best round. ratio = full / bare: 1.0 means the step adds
nothing to the model's own compute.

--tiny (or BENCH_TINY=1, benchmarks/common.py): the same run at 64 px, batch 2, on ~10 train images
(data.data_fraction=0.04), one warm-up step and one round of one step; its figures only show that the
script works.

Last line: RESULT {"full_img_per_s", "bare_img_per_s", "ratio"} (this checkout, the first --threads
value) and "runs": {"<code>/<threads>": {"full_img_per_s", "bare_img_per_s", "ratio"}}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import pick, print_result, run_json_child, tiny_mode  # noqa: E402

CONFIG = "configs/bccd_v9t.py"
PROTOCOL = ["data.img_size=416", "train.batch_size=16", "train.epochs=1"]
TINY_PROTOCOL = ["data.img_size=64", "train.batch_size=2", "train.epochs=1", "data.data_fraction=0.04"]
WARMUP, STEPS, ROUNDS = 2, 6, 2


def full_steps(trainer, batches, n: int) -> float:
    """Seconds for n full steps, DataLoader wait included."""
    t0 = time.perf_counter()
    for _ in range(n):
        images, targets, _ = next(batches)
        trainer.train_step(images, targets)
    return time.perf_counter() - t0


def bare_steps(model, shape: tuple, n: int, memory_format) -> float:
    """Seconds for n forward+backward passes on random input (no data, loss or optimizer)."""
    import torch
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


def measure(code: Path, overrides: list[str], threads: int, warmup: int, steps: int) -> dict:
    """One child's figures, with the code in ``code``: seconds per full step and per bare pass."""
    sys.path.insert(0, str(code))
    from configs import load_config
    from core.train import Trainer
    from utils.dist import DistInfo, set_cpu_threads
    from utils.logging import setup_logging
    cfg = load_config(CONFIG, overrides + [f"train.num_threads={threads}"])
    set_cpu_threads(threads)
    run_dir = Path(tempfile.mkdtemp(prefix="train_speed_"))
    setup_logging(run_dir, 0, "train")
    trainer = Trainer(cfg, DistInfo.single(), run_dir)
    if hasattr(trainer, "_wrap"):  # the module fit() would run (train.compile), where the code has it
        trainer.stepper.ddp_model = trainer._wrap()
    trainer.model.train()
    trainer.train_loader.dataset.set_epoch(0)
    batches = endless(trainer.train_loader)
    size = cfg.data.img_size
    shape = (cfg.train.batch_size, 3, size, size)
    memory_format = trainer.stepper.memory_format  # the layout the step feeds the model (train.channels_last)
    full_steps(trainer, batches, warmup)
    bare_steps(trainer.model, shape, warmup, memory_format)
    full = full_steps(trainer, batches, steps) / steps
    bare = bare_steps(trainer.model, shape, steps, memory_format) / steps
    return {"full_s": full, "bare_s": bare, "batch": cfg.train.batch_size, "size": size,
            "workers": cfg.data.num_workers, "model": cfg.model.name}


def _child(code: Path, overrides: list[str], threads: int, warmup: int, steps: int) -> dict:
    args = ["--child", str(code), "--threads", str(threads), "--warmup", str(warmup), "--steps", str(steps),
            "--overrides", json.dumps(overrides)]
    return run_json_child(str(Path(__file__).resolve()), args, code, f"{threads} threads", threads)


def main(argv: list[str]) -> None:
    tiny = tiny_mode(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", help="model.name, e.g. v9-t")
    p.add_argument("--threads", default="", help="torch threads per run, comma-separated (default: 1 with --tiny, "
                                                  "else the machine's cores)")
    p.add_argument("--baseline", default="", help="another checkout, timed the same way in alternating rounds")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--overrides", default="[]", help=argparse.SUPPRESS)
    args, extra = p.parse_known_args(argv)
    if args.child:
        overrides = json.loads(args.overrides)
        print(json.dumps(measure(Path(args.child), overrides, int(args.threads), args.warmup, args.steps)))
        return
    if not args.model:
        sys.exit(__doc__)
    warmup, steps, rounds = pick(tiny, (WARMUP, STEPS, ROUNDS), (1, 1, 1))
    overrides = pick(tiny, PROTOCOL, TINY_PROTOCOL) + [f"model.name={args.model}"] + extra
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [pick(tiny, os.cpu_count() or 1, 1)]
    codes = {"this code": REPO} | ({"baseline": Path(args.baseline).resolve()} if args.baseline else {})
    best: dict[tuple[str, int], dict] = {}
    for r in range(rounds):
        for t in threads:
            for name, code in codes.items():
                x = _child(code, overrides, t, warmup, steps)
                old = best.get((name, t))
                best[(name, t)] = {"full_s": min(x["full_s"], old["full_s"]) if old else x["full_s"],
                                   "bare_s": min(x["bare_s"], old["bare_s"]) if old else x["bare_s"], **{
                                       k: x[k] for k in ("batch", "size", "workers", "model")}}
                print(f"round {r + 1}/{rounds}: {name:<10} {t} threads: full {x['full_s']:.2f} s/step, "
                      f"bare {x['bare_s']:.2f} s/step", flush=True)
    runs = {}
    for (name, t), x in best.items():
        full, bare = x["batch"] / x["full_s"], x["batch"] / x["bare_s"]
        runs[f"{name}/{t}"] = {"full_img_per_s": round(full, 3), "bare_img_per_s": round(bare, 3),
                               "ratio": round(round(full, 3) / round(bare, 3), 3)}
    first = best[("this code", threads[0])]
    print(f"\n{first['model']} at {first['size']} px, batch {first['batch']}, {first['workers']} workers; "
          f"best of {rounds} rounds of {steps} steps")
    print(f"{'':<22}{'full img/s':>12}{'bare img/s':>12}{'full/bare':>11}")
    for key, x in runs.items():
        name, t = key.rsplit("/", 1)
        print(f"{name + ', ' + t + ' threads':<22}{x['full_img_per_s']:>12.2f}{x['bare_img_per_s']:>12.2f}"
              f"{x['ratio']:>11.3f}")
    print_result({**runs[f"this code/{threads[0]}"], "runs": runs})


if __name__ == "__main__":
    main(sys.argv[1:])
