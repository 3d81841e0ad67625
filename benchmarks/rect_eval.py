"""Rectangular against square-letterbox validation of one checkpoint, side by side.

    python benchmarks/rect_eval.py runs/bench_bccd_v9t/last.pth [--repeats 3] [--tiny] [group.field=value ...]

Scores the checkpoint's val split (its stored config, overrides applied) with ``eval.rect=False``
(every image letterboxed to the data.img_size square) and ``eval.rect=True`` (batches of similar
aspect ratio, each padded only to the next multiple of the largest stride), alternately
``--repeats`` times each, on the CPU with 0 loader workers so both pay the same image decoding.
The time is the whole prediction pass (decode, letterbox, forward, NMS, boxes back to original
pixels); the metrics are faster-coco-eval's on the same COCO ground truth. "speedup" is the ratio of
the best times (noise on a shared machine only ever adds time).
Last line: RESULT {"square": {...}, "rect": {...}, "mAP_diff": rect - square, "speedup": ...}.

--tiny (or BENCH_TINY=1, benchmarks/common.py): the first 4 val images (eval.max_images=4), --repeats 1
by default, one torch thread; its times only show that the script works.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import pick, print_result, quiet_logging, tiny_mode
from configs import apply_overrides
from core.checks import validate
from core.evaluation.evaluator import Evaluator
from core.loaders import build_eval_loader
from core.tasks import config_from_data
from core.weights import load_weights
from datasets import resolve_class_names
from utils.checkpoint import load_checkpoint
from utils.dist import DistInfo, set_cpu_threads

KEYS = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")
TINY_OVERRIDES = ["eval.max_images=4", "train.num_threads=1"]


def measure(cfg, model, dist: DistInfo, rect: bool) -> dict:
    """Predict the val split (timed) and score it: {"seconds", "img_per_s", "canvases", metrics...}."""
    loader = build_eval_loader(cfg, dist, "val", max_images=cfg.eval.max_images, rect=rect)
    evaluator = Evaluator(cfg, loader.dataset.records, dist, num_images_total=loader.dataset.split_size)
    t0 = time.perf_counter()
    preds = evaluator.predict(model, loader)
    seconds = time.perf_counter() - t0
    metrics = evaluator.score(preds)
    canvas = getattr(loader.dataset, "canvas_hw", None)
    shapes = sorted({tuple(map(int, hw)) for hw in canvas}) if canvas is not None else [(cfg.data.img_size,) * 2]
    return {"seconds": round(seconds, 3), "img_per_s": round(len(preds) / seconds, 2),
            "canvases": [f"{h}x{w}" for h, w in shapes], **{k: round(float(metrics[k]), 4) for k in KEYS}}


def main(argv: list[str]) -> None:
    tiny = tiny_mode(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt")
    p.add_argument("--repeats", type=int, default=pick(tiny, 3, 1))
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args(argv)
    quiet_logging()
    stored = load_checkpoint(args.ckpt, required=("config",))["config"]
    cfg = validate(apply_overrides(config_from_data(stored, args.ckpt), ["data.num_workers=0", "eval.plots=False",
                                                                         *pick(tiny, [], TINY_OVERRIDES),
                                                                         *args.overrides]))
    set_cpu_threads(cfg.train.num_threads)
    resolve_class_names(cfg)
    dist = DistInfo.single()
    model = load_weights(cfg, args.ckpt, dist.device)
    runs: dict[str, list[dict]] = {"square": [], "rect": []}
    for _ in range(args.repeats):
        for name in runs:
            runs[name].append(measure(cfg, model, dist, rect=name == "rect"))
    best = {name: min(r, key=lambda x: x["seconds"]) for name, r in runs.items()}
    print(f"{'':8}{'mAP':>8}{'mAP50':>8}{'mAP75':>8}{'best s':>9}{'img/s':>8}  canvases")
    for name, b in best.items():
        print(f"{name:8}{b['mAP']:>8.4f}{b['mAP50']:>8.4f}{b['mAP75']:>8.4f}{b['seconds']:>9.2f}"
              f"{b['img_per_s']:>8.2f}  {', '.join(b['canvases'])}")
    out = {"ckpt": args.ckpt, "images": cfg.eval.max_images or None, "square": best["square"], "rect": best["rect"],
           "mAP_diff": round(best["rect"]["mAP"] - best["square"]["mAP"], 4),
           "speedup": round(best["square"]["seconds"] / best["rect"]["seconds"], 3),
           "seconds_all": {name: [r["seconds"] for r in rs] for name, rs in runs.items()}}
    print_result(out)


if __name__ == "__main__":
    main(sys.argv[1:])
