"""COCO-sized data: scan and label cache, training loader memory (warm and first runs), evaluation at COCO size.

    python benchmarks/scale.py [--train-images 118287] [--val-images 5000] [--seconds 180] [--dir DIR] [--tiny]

1. Writes (once; reused while its manifest matches) a synthetic YOLO-txt dataset under --dir
   (default runs/scale): the bundled BCCD JPEGs copied once into ``<dir>/coco_synth/source`` and
   every image a relative symlink to one of them (inside the root), about --boxes-per-image
   seeded random boxes over 80 classes per image, and a data.yaml with the 80 names.
2. Scans the train split cold (label cache removed) and then warm, timed.
3. Builds the YOLOv9-T training loader as the trainer does (core.loaders.build_train_loader,
   configs/bccd_v9t.py with data.format=yolo, --workers workers, the config's 416 px), iterates
   it for --seconds after its first batch and reads the PSS of the process and its workers from
   /proc/<pid>/smaps_rollup at the end; the time to first batch counts from the loader build
   (label-cache load, or scan, included). Three runs: the synthetic set with its label cache
   (warm), the synthetic set again as a first run (its label cache removed: the scan, in the
   child process of datasets.scan.run_scan, and the cache write are part of the build), and the
   bundled BCCD train split (VOC, 205 images; a first run too: the cache folder is emptied first).
   pss_ratio = warm synthetic / BCCD, pss_ratio_cold = first-run synthetic / BCCD (both from
   the rounded totals): 1.0 means the memory of the training process and its workers does not
   grow with the dataset (target <= 1.15 for both).
4. Scores --val-images images x --dets-per-image random detections over 80 classes with
   faster-coco-eval through ``Evaluator.score`` (COCO and operative metrics, plots, JSON
   files), timed, with the peak RSS of the process doing it.

Each measurement runs in a fresh child process (this script with --stage), so none inherits
another's heap. Last line: RESULT {"images", "scan_cold_s", "scan_warm_s", "first_batch_s",
"pss_total_mb", "pss_total_mb_bccd", "pss_ratio", "pss_total_mb_cold", "pss_ratio_cold",
"record_bytes_per_image", "eval_5k_s", "eval_5k_peak_rss_mb"}.

--tiny (or BENCH_TINY=1, benchmarks/common.py; the stages inherit it): the same stages with defaults
40 train and 8 val images, 20 detections per image, loaders at 64 px and batch 4 iterated for 1 s, one
torch thread, in runs/scale_tiny; its figures only show that the script works.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import pick, print_result, quiet_logging, tiny_mode

NC = 80
NAMES = [f"class{i:02d}" for i in range(NC)]
BCCD = REPO / "data" / "BCCD"


# -- the synthetic dataset ------------------------------------------------------------------
def _labels(rng: np.random.Generator, boxes_per_image: float, class_p: np.ndarray) -> str:
    """YOLO lines ``class cx cy w h`` (fractions) of one image: box sides log-normal around 15%
    of the image, centres keeping the box inside it."""
    n = int(rng.poisson(boxes_per_image))
    wh = np.clip(rng.lognormal(np.log(0.15), 0.8, (n, 2)), 0.01, 0.9)
    c = rng.uniform(wh / 2, 1 - wh / 2)
    cls = rng.choice(NC, size=n, p=class_p)
    return "".join(f"{k} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for k, (x, y), (w, h) in zip(cls, c, wh))


def write_dataset(root: Path, counts: dict[str, int], boxes_per_image: float, seed: int) -> None:
    """The synthetic set under ``root`` (see the module doc); skipped when its manifest matches."""
    manifest = {"counts": counts, "boxes_per_image": boxes_per_image, "seed": seed, "version": 1}
    if (root / "manifest.json").is_file() and json.loads((root / "manifest.json").read_text()) == manifest:
        return
    shutil.rmtree(root, ignore_errors=True)
    (root / "source").mkdir(parents=True)
    sources = sorted((BCCD / "JPEGImages").glob("*.jpg"))
    for src in sources:
        shutil.copyfile(src, root / "source" / src.name)
    rng = np.random.default_rng(seed)
    class_p = rng.dirichlet(np.full(NC, 2.0))  # unequal class frequencies, as in COCO
    for split, n in counts.items():
        images, labels = root / "images" / split, root / "labels" / split
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for i in range(n):
            stem = f"{split}{i:012d}"
            (images / f"{stem}.jpg").symlink_to(f"../../source/{sources[i % len(sources)].name}")
            (labels / f"{stem}.txt").write_text(_labels(rng, boxes_per_image, class_p))
    (root / "data.yaml").write_text(json.dumps({"names": NAMES}))  # JSON is valid YAML
    (root / "manifest.json").write_text(json.dumps(manifest))


def make_cfg(args: argparse.Namespace, which: str):
    """configs/bccd_v9t.py on the synthetic set (data.format=yolo) or on BCCD itself."""
    from configs.bccd_v9t import BccdV9T
    cfg = BccdV9T()
    d = cfg.data
    d.num_workers, d.cache_dir, d.cache_labels = args.workers, str(Path(args.dir) / "cache"), True
    if args.tiny:
        cfg.train.num_threads, cfg.data.img_size, cfg.train.batch_size = 1, 64, 4
    if which == "synth":
        d.format, d.root, d.train_sets, d.val_sets = "yolo", str(Path(args.dir) / "coco_synth"), \
            ["images/train"], ["images/val"]
        d.class_names = list(NAMES)
    return cfg


# -- stages (each in its own process) -------------------------------------------------------
def stage_scan(args: argparse.Namespace) -> dict:
    from datasets import build_records
    t0 = time.perf_counter()
    records, _ = build_records(make_cfg(args, "synth"), "train")
    return {"seconds": time.perf_counter() - t0, "images": len(records), "boxes": len(records.boxes),
            "record_bytes": records.nbytes}


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()]


def _pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss line in /proc/{pid}/smaps_rollup")


def _remove_label_cache(cfg, split: str) -> None:
    """The label cache of ``split`` (its folder), so the next build scans."""
    from datasets import build_parser
    from datasets.label_cache import split_cache_dir
    parser = build_parser(cfg)
    shutil.rmtree(split_cache_dir(cfg, parser.name, parser.root, parser.sets(split), split), ignore_errors=True)


def stage_loader(args: argparse.Namespace) -> dict:
    """Iterate the training loader for args.seconds; PSS of this process and its workers at the end.
    A ``_cold`` stage removes the split's label cache first: its build scans (a first run)."""
    import torch

    from core.loaders import build_train_loader
    from datasets import resolve_class_names
    from utils.dist import DistInfo, set_cpu_threads
    cfg = make_cfg(args, args.stage.removeprefix("loader_").removesuffix("_cold"))
    if args.stage.endswith("_cold"):
        _remove_label_cache(cfg, "train")
    resolve_class_names(cfg)
    cfg.validate()
    set_cpu_threads(cfg.train.num_threads)
    t0 = time.perf_counter()
    loader, sampler = build_train_loader(cfg, DistInfo(0, 0, 1, torch.device("cpu")))
    built = time.perf_counter() - t0
    first, images, epoch = None, 0, 0  # images: delivered after the first batch, whose wait is first_batch_s
    while True:
        sampler.set_epoch(epoch)
        loader.dataset.set_epoch(epoch)
        for batch, _, _ in loader:
            now = time.perf_counter() - t0
            if first is None:
                first = now
                continue
            images += len(batch)
            if now - first >= args.seconds:  # from the first batch: a first run's build (its scan) is not iteration
                return {"build_s": built, "first_batch_s": first, "images": images, "dataset": len(loader.dataset),
                        "img_per_s": images / (now - first), "pss_main_mb": _pss_mb(os.getpid()),
                        "pss_workers_mb": [_pss_mb(p) for p in _children(os.getpid())]}
        epoch += 1


def stage_eval(args: argparse.Namespace) -> dict:
    """Evaluator.score of random detections on the synthetic val split, timed; peak RSS."""
    import torch

    from core.evaluation.evaluator import Evaluator
    from datasets import build_records
    from utils.detections import Detections
    from utils.dist import DistInfo
    cfg = make_cfg(args, "synth")
    cfg.eval.max_det = args.dets_per_image
    records, _ = build_records(cfg, "val")
    n, k = len(records), args.dets_per_image
    rng = np.random.default_rng(args.seed)
    hw = np.repeat(records.img_hw[:, ::-1].astype(np.float64), k, axis=0)  # [n*k, 2] (w, h)
    wh = np.minimum(rng.lognormal(np.log(0.15), 0.8, (n * k, 2)), 0.9) * hw
    xy = rng.uniform(0, 1, (n * k, 2)) * (hw - wh)
    dets = Detections(records.image_ids, np.arange(n + 1, dtype=np.int64) * k,
                      np.concatenate([xy, xy + wh], 1).astype(np.float32), rng.random(n * k).astype(np.float32),
                      rng.integers(0, NC, n * k))
    evaluator = Evaluator(cfg, records, DistInfo(0, 0, 1, torch.device("cpu")))
    t0 = time.perf_counter()
    metrics = evaluator.score(dets, Path(args.dir) / "eval_out")
    return {"seconds": time.perf_counter() - t0, "images": n, "detections": n * k, "gt_boxes": len(records.boxes),
            "mAP": metrics["mAP"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


STAGES = {"scan": stage_scan, "loader_synth": stage_loader, "loader_synth_cold": stage_loader,
          "loader_bccd": stage_loader, "eval": stage_eval}


def run_stage(name: str, argv: list[str]) -> dict:
    """Run stage ``name`` in a fresh process; its last stdout line is ``STAGE {json}``."""
    proc = subprocess.run([sys.executable, __file__, "--stage", name, *argv], stdout=subprocess.PIPE, text=True,
                          cwd=REPO)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines or not lines[-1].startswith("STAGE "):
        sys.exit(f"stage {name} failed (exit code {proc.returncode})")
    return json.loads(lines[-1].removeprefix("STAGE "))


def parse_args(argv: list[str], tiny: bool) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-images", type=int, default=pick(tiny, 118_287, 40),
                   help="synthetic train images (COCO: 118,287)")
    p.add_argument("--val-images", type=int, default=pick(tiny, 5_000, 8), help="synthetic val images (COCO: 5,000)")
    p.add_argument("--boxes-per-image", type=float, default=7.3, help="mean boxes per image (Poisson; COCO ~7.3)")
    p.add_argument("--dets-per-image", type=int, default=pick(tiny, 300, 20), help="random detections per val image")
    p.add_argument("--seconds", type=float, default=pick(tiny, 180.0, 1.0),
                   help="how long each training loader is iterated")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the training loaders")
    p.add_argument("--dir", default=str(REPO / "runs" / pick(tiny, "scale", "scale_tiny")),
                   help="dataset, caches and eval output go here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)  # internal: one measurement
    return p.parse_args(argv, argparse.Namespace(tiny=tiny))


def main() -> None:
    argv = sys.argv[1:]  # the stages get the same options (and BENCH_TINY, set by tiny_mode)
    args = parse_args(argv, tiny_mode(argv))
    if args.stage:
        quiet_logging()  # warnings only: the table below is the output
        print("STAGE " + json.dumps(STAGES[args.stage](args)), flush=True)
        return
    root = Path(args.dir) / "coco_synth"
    t0 = time.perf_counter()
    write_dataset(root, {"train": args.train_images, "val": args.val_images}, args.boxes_per_image, args.seed)
    written = time.perf_counter() - t0
    print(f"dataset ready in {written:.1f} s; measuring (about {3 * args.seconds / 60 + 5:.0f} min)", flush=True)
    shutil.rmtree(Path(args.dir) / "cache", ignore_errors=True)  # the first scan is cold (BCCD's too)
    cold, warm = run_stage("scan", argv), run_stage("scan", argv)
    synth, synth_cold = run_stage("loader_synth", argv), run_stage("loader_synth_cold", argv)
    bccd = run_stage("loader_bccd", argv)
    ev = run_stage("eval", argv)
    # the totals as printed (0.1 MB), and the ratios of those
    pss, pss_cold, pss_bccd = (round(x["pss_main_mb"] + sum(x["pss_workers_mb"]), 1) for x in (synth, synth_cold, bccd))
    n = cold["images"]
    print(f"\nsynthetic YOLO set {root} ({n} train images, {cold['boxes']} boxes, {NC} classes; written or "
          f"checked in {written:.1f} s)")
    print(f"train scan: cold {cold['seconds']:.1f} s, warm (label cache) {warm['seconds']:.1f} s; records "
          f"{cold['record_bytes'] / 2**20:.1f} MiB = {cold['record_bytes'] / n:.0f} bytes/image")
    print(f"\ntraining loader, {args.workers} workers, {args.seconds:g} s each (warm: label cache loaded; cold: a "
          "first run, its build scans and writes the cache):")
    print(f"{'dataset':>16} {'images':>8} {'build s':>8} {'1st batch s':>12} {'img/s':>6} {'PSS main':>9} "
          f"{'PSS workers':>18} {'PSS total':>10}")
    for name, x, total in (("synthetic, warm", synth, pss), ("synthetic, cold", synth_cold, pss_cold),
                           ("BCCD, cold", bccd, pss_bccd)):
        workers = " + ".join(f"{w:.0f}" for w in x["pss_workers_mb"])
        print(f"{name:>16} {x['dataset']:>8} {x['build_s']:>8.1f} {x['first_batch_s']:>12.1f} {x['img_per_s']:>6.1f} "
              f"{x['pss_main_mb']:>9.0f} {workers:>18} {total:>10.0f}")
    print(f"PSS ratio synthetic / BCCD: warm {pss / pss_bccd:.3f}, cold {pss_cold / pss_bccd:.3f} (target <= 1.15)")
    print(f"\nevaluation: {ev['images']} images, {ev['gt_boxes']} GT boxes, {ev['detections']} random detections, "
          f"faster-coco-eval + operative metrics + plots + JSON: {ev['seconds']:.1f} s (target <= 60), "
          f"peak RSS {ev['peak_rss_mb']:.0f} MB")
    result = {"images": n, "scan_cold_s": round(cold["seconds"], 2), "scan_warm_s": round(warm["seconds"], 2),
              "first_batch_s": round(synth["first_batch_s"], 2), "pss_total_mb": pss, "pss_total_mb_bccd": pss_bccd,
              "pss_ratio": round(pss / pss_bccd, 3), "pss_total_mb_cold": pss_cold,
              "pss_ratio_cold": round(pss_cold / pss_bccd, 3),
              "record_bytes_per_image": round(cold["record_bytes"] / n, 1), "eval_5k_s": round(ev["seconds"], 2),
              "eval_5k_peak_rss_mb": round(ev["peak_rss_mb"], 1)}
    print_result(result)


if __name__ == "__main__":
    main()
