"""BCCD-416 protocol: train a config from scratch on the 205 BCCD train images (416 px, 40 epochs,
global batch 16, CPU) and score the 87 val images with faster-coco-eval and pycocotools.

    python benchmarks/bccd.py configs/bccd_yolo_r18.py [--tiny] [group.field=value ...]

Prints a table and, last, RESULT {"mAP", "mAP50", "train_img_per_s", "peak_rss_gb", "run_dir"}
(mAP and mAP50 by pycocotools; the table shows faster-coco-eval's beside them).

--tiny (or BENCH_TINY=1, benchmarks/common.py): one epoch on 10 train images at 64 px, batch 4, one
thread, the whole val split scored without plots; its figures only show that the script works.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import pick, print_result, tiny_mode
from configs import load_config
from core.train import Trainer
from utils.coco_eval import coco_evaluate
from utils.dist import DistInfo, set_cpu_threads
from utils.logging import setup_logging
from utils.run_dir import make_run_dir

PROTOCOL = ["data.img_size=416", "train.epochs=40", "train.batch_size=16", "model.pretrained=''",
            "data.train_sets=['train']", "data.val_sets=['val']", "train.eval_interval=10"]
TINY_PROTOCOL = ["data.img_size=64", "train.epochs=1", "train.batch_size=4", "model.pretrained=''",
                 "data.train_sets=['train']", "data.val_sets=['val']", "train.eval_interval=1",
                 "data.data_fraction=0.04", "train.num_threads=1", "eval.plots=False"]


def peak_rss_gb() -> float:
    """Peak resident memory of this process plus its (DataLoader worker) children, GiB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return kb / 2 ** 20


def main(argv: list[str]) -> None:
    tiny = tiny_mode(argv)
    if not argv:
        sys.exit(__doc__)
    cfg = load_config(argv[0], pick(tiny, PROTOCOL, TINY_PROTOCOL) + argv[1:])
    cfg.name = f"bench_{cfg.name}"
    set_cpu_threads(cfg.train.num_threads)
    run_dir = make_run_dir(cfg.train.save_dir, cfg.name)
    setup_logging(run_dir, 0, "train")
    dist = DistInfo.single()
    t0 = time.time()
    trainer = Trainer(cfg, dist, run_dir)
    metrics = trainer.fit()
    wall = time.time() - t0
    gt = json.loads((run_dir / "val" / "ground_truth.json").read_text())
    preds = json.loads((run_dir / "val" / "predictions.json").read_text())
    ref = coco_evaluate(gt, preds, cfg.data.class_names, backend="pycocotools")
    ips = trainer.train_images / max(trainer.train_seconds, 1e-9)
    print(f"\n{'metric':<18}{'faster-coco-eval':>18}{'pycocotools':>14}")
    for k in ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large", "AR100"):
        print(f"{k:<18}{metrics[k]:>18.4f}{ref[k]:>14.4f}")
    for c in metrics["per_class"]:
        print(f"  AP {c['name']:<14}{c['AP']:.4f}")
    print(f"train images/s {ips:.2f}, wall {wall / 60:.1f} min, peak RSS {peak_rss_gb():.2f} GiB, run dir {run_dir}")
    print_result({"mAP": round(ref["mAP"], 4), "mAP50": round(ref["mAP50"], 4), "train_img_per_s": round(ips, 2),
                  "peak_rss_gb": round(peak_rss_gb(), 2), "run_dir": str(run_dir)})


if __name__ == "__main__":
    main(sys.argv[1:])
