"""Memory stability of a long run: 20 short epochs on a tiny synthetic dataset, resident memory of
the training process after each epoch (the value the trainer logs as memory/rss_mb).

    python benchmarks/memory.py [--tiny] [group.field=value ...]

The dataset (coloured rectangles on noise, VOC layout) is written to a temporary directory; the
run trains the simple YOLO at 64 px with DataLoader workers, validating (metrics, plots, JSON) every
epoch. Growth is measured against the end of the first epoch, which holds the one-time
allocations (caches, allocator pools, imported plotting code): rss_growth = (max RSS of epochs
2..N - RSS of epoch 1) / RSS of epoch 1. The acceptance bar is growth < 5%.

Last line: RESULT {"rss_growth": .., "rss_first_mb": .., "rss_last_mb": .., "slope_mb_per_epoch": ..,
"epochs": N}

--tiny (or BENCH_TINY=1, benchmarks/common.py): 3 epochs on 8 train and 2 val images, validation
without plots; its growth figure only shows that the script works.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from loguru import logger

from benchmarks.common import COLOURS, pick, print_result, tiny_mode, write_voc_dataset
from configs import load_config
from core.train import Trainer
from utils.dist import DistInfo, set_cpu_threads

EPOCHS = 20
PROTOCOL = ["data.img_size=64", "model.channel_sparsity=0.25", "train.batch_size=4", "eval.batch_size=4",
            f"train.epochs={EPOCHS}", "sched.warmup_epochs=1.0", "data.num_workers=2", "eval.dashboard=False",
            "train.num_threads=1"]
TINY_PROTOCOL = [*PROTOCOL, "train.epochs=3", "eval.plots=False"]  # the later value of a key wins
IMAGES, TINY_IMAGES = (16, 4), (8, 2)  # (train, val) images of the synthetic set


class RssRecorder:
    """Receives the trainer's logged scalars (attached like a W&B writer) and keeps memory/rss_mb."""

    def __init__(self) -> None:
        self.rss_mb: list[float] = []

    def log(self, scalars: dict[str, float], step: int) -> None:
        if "memory/rss_mb" in scalars:
            self.rss_mb.append(scalars["memory/rss_mb"])

    def close(self) -> None:
        pass


def main(argv: list[str]) -> None:
    tiny = tiny_mode(argv)
    work = Path(tempfile.mkdtemp(prefix="memory_bench_"))
    n_train, n_val = pick(tiny, IMAGES, TINY_IMAGES)
    root = write_voc_dataset(work / "data", n_train, n_val)
    data = [f"data.root={str(root)!r}", f"data.class_names={list(COLOURS)!r}"]
    cfg = load_config("bccd_yolo_r18", pick(tiny, PROTOCOL, TINY_PROTOCOL) + data + argv)
    set_cpu_threads(cfg.train.num_threads)
    logger.remove()  # the run's log goes to a file; this script prints only the table
    logger.add(work / "run" / "train.log", level="INFO")
    cpu = DistInfo.single()
    trainer = Trainer(cfg, cpu, work / "run")
    recorder = RssRecorder()
    trainer.report.tb.attach_wandb(recorder)
    trainer.fit()
    rss = [round(v, 1) for v in recorder.rss_mb]  # the table's figures: growth and slope come from what it prints
    if len(rss) < 2:
        sys.exit(f"only {len(rss)} epochs recorded memory (is /proc available?)")
    growth = (max(rss[1:]) - rss[0]) / rss[0]
    slope = float(np.polyfit(np.arange(len(rss) - 1), rss[1:], 1)[0]) if len(rss) > 2 else 0.0
    print(f"\n{'epoch':>5}  {'RSS MB':>8}  {'vs epoch 1':>10}")
    for e, v in enumerate(rss, start=1):
        print(f"{e:>5}  {v:>8.1f}  {(v - rss[0]) / rss[0]:>+10.2%}")
    print(f"\n{len(rss)} epochs, {cfg.data.num_workers} workers, run dir {work / 'run'}: growth after "
          f"epoch 1 {growth:+.2%} (limit 5%), trend {slope:+.2f} MB/epoch over epochs 2..{len(rss)}")
    print_result({"rss_growth": round(growth, 4), "rss_first_mb": round(rss[0], 1), "rss_last_mb": round(rss[-1], 1),
                  "slope_mb_per_epoch": round(slope, 3), "epochs": len(rss)})


if __name__ == "__main__":
    main(sys.argv[1:])
