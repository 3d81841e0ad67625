"""Training data pipeline throughput, uncached and RAM-cached, next to a YOLOv9-T training step.

    python benchmarks/dataloader.py [--mixup P] [--batches N] [--steps N] [--tiny]

Protocol (the issue's): the bundled BCCD train split (205 images of 640x480), 640 px, batch
16, the YOLOv9 augmentation recipe (mosaic 1.0, MixUp with probability ``--mixup``, default 1.0
so every sample is a MixUp of two mosaics: 8 images decoded; zoom 0.1..1.9, translate 0.1, HSV,
flips), for 0 and 2 DataLoader workers, without a cache and with ``data.cache_images=ram``
(resized to 640 on the long side, built once beforehand). Each configuration is timed over
``--batches`` batches after one warm-up batch, in alternating rounds so machine noise hits all
alike; the best round counts. Then a YOLOv9-T forward + backward (training mode, auxiliary
branch included, channels_last, random input) at batch 16, 640 px gives the images per second
the training step consumes; a 2-worker pipeline faster than that is not the bottleneck.

Last line: RESULT {"uncached": .., "ram_cached": .., "cache_speedup": .., "train_step_img_per_s": ..}
with the 2-worker samples per second (0-worker figures under "..._0w").

--tiny (or BENCH_TINY=1, benchmarks/common.py): the same configurations on ~20 train images at 64 px,
batch 4, one round of --batches 2 and --steps 1, one thread; its figures only show that the script works.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import pick, print_result, quiet_logging, tiny_mode
from configs.bccd_yolo_r18 import BccdYoloR18
from core.checks import validate
from core.loaders import build_train_loader
from utils.dist import DistInfo, set_cpu_threads

WORKERS = (0, 2)
CACHES = ("none", "ram")


@dataclass(frozen=True)
class Protocol:
    size: int = 640  # network input side, px
    batch: int = 16
    rounds: int = 3  # alternating timing rounds; the best counts
    fraction: float = 1.0  # data.data_fraction of the BCCD train split


TINY = Protocol(size=64, batch=4, rounds=1, fraction=0.1)


def make_config(cache: str, workers: int, cache_dir: str, mixup: float, pr: Protocol) -> BccdYoloR18:
    cfg = BccdYoloR18()
    cfg.data.img_size, cfg.train.batch_size, cfg.data.data_fraction = pr.size, pr.batch, pr.fraction
    cfg.data.num_workers, cfg.data.cache_images, cfg.data.cache_dir = workers, cache, cache_dir
    # Workers end with their iterator: persistent ones would go on filling their prefetch queue
    # while the next configuration is timed, and steal its CPU.
    cfg.data.persistent_workers = False
    a = cfg.aug
    a.mosaic_prob, a.mixup_prob, a.scale, a.translate = 1.0, mixup, (0.1, 1.9), 0.1
    a.hsv_h, a.hsv_s, a.hsv_v, a.hflip_prob, a.vflip_prob = 0.015, 0.7, 0.4, 0.5, 0.5
    return validate(cfg)


def samples_per_second(loader, batches: int) -> float:
    """Samples/s over ``batches`` batches after one warm-up batch (worker start, first decode)."""
    loader.dataset.set_epoch(0)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        images, _, _ = next(it)
        n += images.shape[0]
    rate = n / (time.perf_counter() - t0)
    del it  # shuts the workers down
    return rate


def _outputs(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        x = list(x.values())
    return [t for item in x for t in _outputs(item)]


def train_step_images_per_second(steps: int, pr: Protocol) -> float:
    """YOLOv9-T forward + backward on random input (640 px, batch 16 by the protocol), as the trainer runs it."""
    from models.nets import build_net
    model = build_net("v9-t", 3).train().to(memory_format=torch.channels_last)
    x = torch.rand(pr.batch, 3, pr.size, pr.size).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        sum(o.float().mean() for o in _outputs(model(x))).backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: allocator and kernel selection
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * pr.batch / (time.perf_counter() - t0)


def main(argv: list[str]) -> None:
    tiny = tiny_mode(argv)
    pr = pick(tiny, Protocol(), TINY)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mixup", type=float, default=1.0, help="MixUp probability on mosaic samples")
    p.add_argument("--batches", type=int, default=pick(tiny, 8, 2), help="timed batches per configuration and round")
    p.add_argument("--steps", type=int, default=pick(tiny, 3, 1), help="timed YOLOv9-T training steps")
    args = p.parse_args(argv)
    quiet_logging()
    threads = set_cpu_threads(pick(tiny, 0, 1))
    dist = DistInfo.single()
    best: dict[tuple[int, str], float] = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        loaders = {(w, c): build_train_loader(make_config(c, w, cache_dir, args.mixup, pr), dist)[0]
                   for w in WORKERS for c in CACHES}
        for _ in range(pr.rounds):
            for key, loader in loaders.items():
                best[key] = max(best.get(key, 0.0), samples_per_second(loader, args.batches))
        del loaders  # stop the workers before timing the model
    step = train_step_images_per_second(args.steps, pr)

    subset = f" ({pr.fraction:g} of it)" if pr.fraction < 1 else ""
    print(f"\nBCCD train{subset}, {pr.size} px, batch {pr.batch}, mosaic 1.0 + MixUp {args.mixup}, "
          f"{threads} torch threads; samples/s (best of {pr.rounds} rounds of {args.batches} batches)")
    print(f"{'workers':>8} {'uncached':>10} {'ram cache':>10} {'speedup':>8}")
    for w in WORKERS:
        u, r = best[(w, "none")], best[(w, "ram")]
        print(f"{w:>8} {u:>10.1f} {r:>10.1f} {r / u:>7.2f}x")
    u2, r2 = best[(2, "none")], best[(2, "ram")]
    print(f"\nYOLOv9-T forward+backward, batch {pr.batch}, {pr.size} px: {step:.2f} img/s")
    print(f"2-worker pipeline vs training step: uncached {u2:.1f} vs {step:.2f} img/s ({u2 / step:.1f}x), "
          f"ram cache {r2:.1f} vs {step:.2f} img/s ({r2 / step:.1f}x): "
          f"{'not the bottleneck' if min(u2, r2) > step else 'THE BOTTLENECK'}")
    result = {"uncached": round(u2, 2), "ram_cached": round(r2, 2), "cache_speedup": round(r2 / u2, 2),
              "train_step_img_per_s": round(step, 3), "uncached_0w": round(best[(0, "none")], 2),
              "ram_cached_0w": round(best[(0, "ram")], 2),
              "cache_speedup_0w": round(best[(0, "ram")] / best[(0, "none")], 2), "mixup_prob": args.mixup}
    print_result(result)


if __name__ == "__main__":
    main(sys.argv[1:])
