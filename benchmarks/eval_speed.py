"""Validation metric speed: faster-coco-eval (the default) against pycocotools, side by side.

    python benchmarks/eval_speed.py [--repeats 5] [--seed 0] [--tiny] [group.field=value ...]

Times the whole metric computation of one validation (``core.evaluation.evaluator.compute_metrics``:
COCO results, COCO evaluation and the operative metrics) on the bundled BCCD val split
(87 images). No checkpoint is needed: the predictions are the ground truth made realistic,
seeded: each box found with probability 0.92, corners jittered by 6% of its size, 4% of the
labels swapped, 15% of the boxes detected twice, and false positives of GT-like sizes filling
every image up to eval.max_det (100) detections, as an untuned model at conf 0.001 produces.
The backends run alternately, --repeats times each. "speedup" is the ratio of the best
times (as timeit advises: on a shared machine noise only ever adds time); the ratio of the
medians is printed too. Last line:
RESULT {"identical": bool, "speedup": pycocotools time / faster-coco-eval time, ...}.

--tiny (or BENCH_TINY=1, benchmarks/common.py): the first 24 val images and --repeats 1 by default;
its times only show that the script works.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import pick, print_result, quiet_logging, tiny_mode
from configs import load_config
from core.evaluation.evaluator import compute_metrics
from datasets import RecordTable, build_records
from utils.coco_eval import records_to_coco_gt

BACKENDS = ("faster_coco_eval", "pycocotools")
TINY_IMAGES = 24


def fake_predictions(records: RecordTable, nc: int, max_det: int, seed: int) -> dict[int, dict]:
    """{image_id: {"boxes" [k, 4] xyxy pixels, "scores" [k], "labels" [k]}}, k <= max_det (see docstring)."""
    rng = np.random.default_rng(seed)
    return {int(r.image_id): _image_predictions(r, nc, max_det, rng) for r in records}


def _image_predictions(r, nc: int, max_det: int, rng: np.random.Generator) -> dict:
    h, w = r.img_hw
    gt = r.boxes.astype(np.float64)
    wh = np.tile(np.maximum(gt[:, 2:] - gt[:, :2], 1.0), 2)  # [n, 4] box (w, h, w, h)
    found = rng.random(len(gt)) < 0.92
    dup = found & (rng.random(len(gt)) < 0.15)
    nf, nd = int(found.sum()), int(dup.sum())
    swapped = np.where(rng.random(nf) < 0.04, rng.integers(0, nc, nf), r.labels[found])
    n_fp = max(max_det - nf - nd, 0)
    gt_sizes = wh[:, :2] if len(wh) else np.full((1, 2), 40.0)
    sizes = gt_sizes[rng.integers(0, len(gt_sizes), n_fp)] * rng.lognormal(0, 0.4, (n_fp, 2))
    xy = rng.uniform(0, 1, (n_fp, 2)) * np.array([w, h])
    b = np.concatenate([gt[found] + rng.normal(0, 0.06, (nf, 4)) * wh[found],
                        gt[dup] + rng.normal(0, 0.15, (nd, 4)) * wh[dup],
                        np.concatenate([xy, xy + sizes], 1)])
    b = np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], 1)
    b = b.clip(0, [w, h, w, h])
    scores = np.concatenate([rng.beta(6, 2, nf), 0.5 * rng.beta(6, 2, nd), rng.beta(1, 12, n_fp)])
    labels = np.concatenate([swapped, r.labels[dup], rng.integers(0, nc, n_fp)])
    keep = np.flatnonzero(((b[:, 2] - b[:, 0]) >= 1) & ((b[:, 3] - b[:, 1]) >= 1))
    keep = keep[np.argsort(-scores[keep], kind="stable")][:max_det]
    return {"boxes": b[keep].astype(np.float32), "scores": scores[keep],
            "labels": labels[keep].astype(np.int64)}


def numbers(x, key: str = "") -> dict[str, float]:
    """Every number in a nested metrics structure, keyed by its path (strings and booleans skipped)."""
    if isinstance(x, dict):
        return {k: v for name, item in x.items() for k, v in numbers(item, f"{key}.{name}").items()}
    if isinstance(x, list):
        return {k: v for i, item in enumerate(x) for k, v in numbers(item, f"{key}.{i}").items()}
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return {key: float(x)}
    return {}


def main(argv: list[str]) -> None:
    tiny = tiny_mode(argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=pick(tiny, 5, 1), help="timed runs per backend (alternating)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the fake predictions")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. data.cache_dir=/tmp/cache")
    args = ap.parse_args(argv)
    quiet_logging()
    cfg = load_config("bccd_yolo_r18", args.overrides)
    names = list(cfg.data.class_names)
    records, _ = build_records(cfg, "val")
    if tiny:
        records = records.subset(np.arange(min(TINY_IMAGES, len(records))))
    dets = fake_predictions(records, len(names), cfg.eval.max_det, args.seed)
    gt = records_to_coco_gt(records, names)  # built once per run by the Evaluator too, so not timed
    times: dict[str, list[float]] = {b: [] for b in BACKENDS}
    results: dict[str, dict] = {}
    compute_metrics(gt, records, dets, names, cfg.eval, backend=BACKENDS[0])  # imports and caches warm
    for _ in range(args.repeats):
        for b in BACKENDS:
            t0 = time.perf_counter()
            results[b], _, _ = compute_metrics(gt, records, dets, names, cfg.eval, backend=b)
            times[b].append(time.perf_counter() - t0)
    a, b = (numbers({k: v for k, v in results[x].items() if k != "backend"}) for x in BACKENDS)
    diff = max(abs(a[k] - b[k]) for k in a) if a.keys() == b.keys() else float("inf")
    med = {x: statistics.median(times[x]) for x in BACKENDS}
    best = {x: min(times[x]) for x in BACKENDS}
    n_det = sum(len(d["scores"]) for d in dets.values())
    m = results[BACKENDS[0]]
    n_gt = sum(len(r.boxes) for r in records)
    print(f"BCCD val: {len(records)} images, {n_gt} GT boxes, {n_det} detections; "
          f"{args.repeats} runs per backend")
    print(f"{'backend':<18}{'best s':>10}{'median s':>10}{'mAP':>9}{'AP50':>9}{'F1@.25':>9}")
    for x in BACKENDS:
        r = results[x]
        print(f"{x:<18}{best[x]:>10.3f}{med[x]:>10.3f}{r['mAP']:>9.4f}{r['mAP50']:>9.4f}"
              f"{r['operative']['f1']:>9.4f}")
    speedup = best["pycocotools"] / best["faster_coco_eval"]
    speedup_med = med["pycocotools"] / med["faster_coco_eval"]
    print(f"{len(a)} numbers compared, max |difference| {diff:.3g}; speedup {speedup:.2f}x "
          f"(medians {speedup_med:.2f}x)")
    print_result({"identical": diff <= 1e-12, "speedup": round(speedup, 2), "speedup_median": round(speedup_med, 2),
                  "faster_coco_eval_s": round(best["faster_coco_eval"], 6),
                  "pycocotools_s": round(best["pycocotools"], 6), "max_abs_diff": diff,
                  "numbers_compared": len(a), "images": len(records), "detections": n_det,
                  "mAP": round(m["mAP"], 4)})


if __name__ == "__main__":
    main(sys.argv[1:])
