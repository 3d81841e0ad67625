"""Memory stability of a long run: 20 short epochs on a tiny synthetic dataset, resident memory of
the training process after each epoch (the value the trainer logs as memory/rss_mb).

    python benchmarks/memory.py [group.field=value ...]

The dataset (coloured rectangles on noise, VOC layout) is written to a temporary directory; the
run trains the simple YOLO at 64 px with DataLoader workers, validating (metrics, plots, JSON) every
epoch. Growth is measured against the end of the first epoch, which holds the one-time
allocations (caches, allocator pools, imported plotting code): rss_growth = (max RSS of epochs
2..N - RSS of epoch 1) / RSS of epoch 1. The acceptance bar is growth < 5%.

Last line: RESULT {"rss_growth": .., "rss_first_mb": .., "rss_last_mb": .., "slope_mb_per_epoch": ..,
"epochs": N}
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from loguru import logger
from PIL import Image

from configs import load_config
from core.train import Trainer
from utils.dist import DistInfo, set_cpu_threads

EPOCHS = 20
CLASSES = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230)}
PROTOCOL = ["data.img_size=64", "model.channel_sparsity=0.25", "train.batch_size=4", "eval.batch_size=4",
            f"train.epochs={EPOCHS}", "sched.warmup_epochs=1.0", "data.num_workers=2", "eval.dashboard=False",
            "train.num_threads=1"]


def write_dataset(root: Path, n_train: int = 16, n_val: int = 4, size: int = 96, seed: int = 0) -> Path:
    """VOC layout: JPEGImages, Annotations (1-3 boxes per image) and ImageSets/Main/{train,val}.txt."""
    rng = np.random.default_rng(seed)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = list(CLASSES)
    ids = [f"img{i:03d}" for i in range(n_train + n_val)]
    for image_id in ids:
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        objects = []
        for _ in range(int(rng.integers(1, 4))):
            w, h = (int(v) for v in rng.integers(16, 48, 2))
            x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            name = names[int(rng.integers(len(names)))]
            img[y:y + h, x:x + w] = CLASSES[name]
            objects.append(f"<object><name>{escape(name)}</name><difficult>0</difficult><bndbox>"
                           f"<xmin>{x + 1}</xmin><ymin>{y + 1}</ymin><xmax>{x + w}</xmax><ymax>{y + h}</ymax>"
                           "</bndbox></object>")
        Image.fromarray(img).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>{size}</width>"
            f"<height>{size}</height><depth>3</depth></size>{''.join(objects)}</annotation>")
    (root / "ImageSets/Main/train.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (root / "ImageSets/Main/val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    return root


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
    work = Path(tempfile.mkdtemp(prefix="memory_bench_"))
    root = write_dataset(work / "data")
    data = [f"data.root={str(root)!r}", f"data.class_names={list(CLASSES)!r}"]
    cfg = load_config("bccd_yolo_r18", PROTOCOL + data + argv)
    set_cpu_threads(cfg.train.num_threads)
    logger.remove()  # the run's log goes to a file; this script prints only the table
    logger.add(work / "run" / "train.log", level="INFO")
    cpu = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    trainer = Trainer(cfg, cpu, work / "run")
    recorder = RssRecorder()
    trainer.report.tb.attach_wandb(recorder)
    trainer.fit()
    rss = recorder.rss_mb
    if len(rss) < 2:
        sys.exit(f"only {len(rss)} epochs recorded memory (is /proc available?)")
    growth = (max(rss[1:]) - rss[0]) / rss[0]
    slope = float(np.polyfit(np.arange(len(rss) - 1), rss[1:], 1)[0]) if len(rss) > 2 else 0.0
    print(f"\n{'epoch':>5}  {'RSS MB':>8}  {'vs epoch 1':>10}")
    for e, v in enumerate(rss, start=1):
        print(f"{e:>5}  {v:>8.1f}  {(v - rss[0]) / rss[0]:>+10.2%}")
    print(f"\n{len(rss)} epochs, {cfg.data.num_workers} workers, run dir {work / 'run'}: growth after "
          f"epoch 1 {growth:+.2%} (limit 5%), trend {slope:+.2f} MB/epoch over epochs 2..{len(rss)}")
    print("RESULT " + json.dumps({"rss_growth": round(growth, 4), "rss_first_mb": round(rss[0], 1),
                                  "rss_last_mb": round(rss[-1], 1), "slope_mb_per_epoch": round(slope, 3),
                                  "epochs": len(rss)}))


if __name__ == "__main__":
    main(sys.argv[1:])
