"""Training samples per CPU core, uncached, LMDB-cached and RAM-cached; the 2-worker pipeline next to
what a YOLOv9-T step consumes; a large-image case. Optionally side by side with another checkout.

    python benchmarks/dataloader.py [--baseline DIR] [--rounds N] [--workers-epochs N] [--train-epoch] [--tiny]

Protocol (issue 19, Ultralytics' defaults): the bundled BCCD train split (205 images of 640x480),
640 px, batch 16, mosaic 1.0, MixUp 0, zoom 0.5..1.5, translate 0.1, HSV 0.015/0.7/0.4, left-right
flip 0.5. A configuration's figure is the samples per second of one whole training epoch (epoch 1,
its start included; epoch 0 before it warms up the process), iterated through the trainer's own
loader (``core.loaders.build_train_loader``: sampler, mosaic buffer, collate).

1. Per core: 0 DataLoader workers, one torch thread and one OpenCV thread, in a fresh process per
   configuration and round: ``data.cache_images`` none, disk (the LMDB file) and ram (its shared
   copy), the caches resized to 640 and built before the timing.
2. ``--baseline DIR`` (a checkout of another commit, e.g. ``git worktree add /tmp/base main``): every
   per-core configuration also runs with DIR's code, in alternating rounds with this checkout, so
   machine noise hits both alike; the speedups are this checkout over DIR's, best round against best.
3. Two workers (this checkout, uncached, ``--workers-epochs`` epochs after a warm-up epoch) against a
   YOLOv9-T forward + backward at batch 16, 640 px, on the main process's threads: a pipeline faster
   than the step is not the bottleneck.
4. Large images: 48 synthetic 1920x1080 JPEGs written on the fly (natural-looking gradients and
   noise, quality 90), the same recipe per core uncached, where a reduced-size decode pays most.
5. ``--train-epoch``: one training epoch of ``configs/bccd_v9t.py`` at 416 px, batch 16, from scratch,
   ``train.num_threads=1 data.num_workers=0`` (data and step in one process on one core), timed by the
   trainer's own clock (``Trainer.train_seconds``: the epoch's batches, loading included), with this
   code and, with --baseline, DIR's, in alternating rounds: ``epoch_s``, ``baseline_epoch_s`` and
   ``epoch_speedup`` in RESULT. The epoch is also split into the time inside ``Trainer.train_step``
   (forward, loss, backward, optimizer) and the rest, waiting for the loader (``epoch_data_s``,
   ``baseline_epoch_data_s``); ``epoch_data_ceiling`` = epoch / (epoch - data wait) of the baseline is
   the largest epoch speedup any data pipeline could give it.
6. The decoders the choice was made from, milliseconds per decode (one thread, best of 3 passes):
   PIL (``Image.open`` + ``load``, the loader before issue 19), PIL with ``draft`` at 1/2, OpenCV
   ``imdecode`` full and at 1/2 (``IMREAD_REDUCED``), and the repo's ``load_image`` (PIL header + OpenCV),
   on the BCCD JPEGs and on the large ones.

Last line: RESULT {"uncached", "lmdb_cached", "ram_cached", "large_uncached", "workers2",
"train_step_img_per_s", "cpu_threads"} in samples/s, "decode_ms" {decoder: {"bccd", "large"}}, plus with --baseline "baseline_<key>" and
"<key>_speedup" for the four per-core keys.

--tiny (or BENCH_TINY=1, benchmarks/common.py): 64 px, batch 4, a tenth of the split, 8 large images of
192x108, one round; its figures only show that the script works.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PER_CORE = ("uncached", "lmdb_cached", "ram_cached", "large_uncached")
CACHE_OF = {"uncached": "none", "lmdb_cached": "disk", "ram_cached": "ram", "large_uncached": "none"}


@dataclass(frozen=True)
class Protocol:
    size: int = 640  # network input side, px
    batch: int = 16
    rounds: int = 3  # alternating timing rounds; the best counts
    fraction: float = 1.0  # data.data_fraction of the BCCD train split
    large_images: int = 48  # synthetic 1920x1080 JPEGs
    large_hw: tuple[int, int] = (1080, 1920)


TINY = Protocol(size=64, batch=4, rounds=1, fraction=0.1, large_images=8, large_hw=(108, 192))


def _protocol() -> Protocol:
    return TINY if os.environ.get("BENCH_TINY", "") == "1" else Protocol()


# -- one measurement, in a child process whose sys.path starts at the code under test -------------
def measure(code: Path, key: str, work: Path, large_root: Path | None, workers: int, epochs: int) -> float:
    """Samples/s of epoch(s) after one warm-up epoch, with the code in ``code`` (imported from there)."""
    sys.path.insert(0, str(code))
    import cv2
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    from configs.bccd_yolo_r18 import BccdYoloR18
    from core.checks import validate
    from core.loaders import build_train_loader
    from utils.dist import DistInfo, set_cpu_threads

    pr = _protocol()
    set_cpu_threads(1)
    cv2.setNumThreads(1)
    cfg = BccdYoloR18()
    cfg.data.root = str(code / "data" / "BCCD") if large_root is None else str(large_root)
    if large_root is not None:
        cfg.data.class_names = ["red", "green", "blue"]
    cfg.data.img_size, cfg.train.batch_size = pr.size, pr.batch
    cfg.data.data_fraction = pr.fraction if large_root is None else 1.0
    cfg.data.num_workers, cfg.data.cache_images = workers, CACHE_OF[key]
    cfg.data.cache_dir = str(work / "cache")
    a = cfg.aug
    a.mosaic_prob, a.mixup_prob, a.cutmix_prob, a.scale, a.translate = 1.0, 0.0, 0.0, (0.5, 1.5), 0.1
    a.hsv_h, a.hsv_s, a.hsv_v, a.hflip_prob, a.vflip_prob = 0.015, 0.7, 0.4, 0.5, 0.0
    loader, sampler = build_train_loader(validate(cfg), DistInfo.single())
    n, seconds = 0, 0.0
    for epoch in range(1 + epochs):  # epoch 0 warms up (imports, workers, page cache)
        sampler.set_epoch(epoch)
        loader.dataset.set_epoch(epoch)
        t0 = time.perf_counter()
        count = sum(images.shape[0] for images, _, _ in loader)
        if epoch:
            n, seconds = n + count, seconds + time.perf_counter() - t0
    return n / seconds


def measure_epoch(code: Path, work: Path) -> tuple[float, float]:
    """(seconds of one bccd_v9t training epoch (416 px, 1 thread, 0 workers), seconds of it spent outside
    ``Trainer.train_step``, i.e. waiting for batches) with the code in ``code``."""
    sys.path.insert(0, str(code))
    import cv2
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    from configs import load_config
    from core.train import Trainer
    from utils.dist import DistInfo, set_cpu_threads

    tiny = os.environ.get("BENCH_TINY", "") == "1"
    size, fraction = (64, 0.1) if tiny else (416, 1.0)
    cfg = load_config("bccd_v9t", [
        f"data.img_size={size}", "train.batch_size=16", "train.epochs=2", "model.pretrained=''",
        "train.num_threads=1", "data.num_workers=0", "train.eval_interval=10", f"data.data_fraction={fraction}",
        f"train.save_dir={str(work / 'runs')!r}", f"data.cache_dir={str(work / 'cache')!r}",
        f"data.root={str(code / 'data' / 'BCCD')!r}"])
    set_cpu_threads(1)
    cv2.setNumThreads(1)
    trainer = Trainer(cfg, DistInfo.single(), work / "runs" / f"epoch_{os.getpid()}")
    step_s = [0.0]
    step = trainer.train_step

    def timed_step(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return step(*args, **kwargs)
        finally:
            step_s[0] += time.perf_counter() - t0

    trainer.train_step = timed_step  # the epoch loop calls self.train_step per batch
    trainer.fit(stop_after_epoch=1)  # the first of 2 epochs: no validation
    return trainer.train_seconds, trainer.train_seconds - step_s[0]


def _child(code: Path, key: str, work: Path, large_root: Path | None, workers: int = 0, epochs: int = 1):
    from benchmarks.common import run_json_child
    args = ["--measure", key, "--code", str(code), "--work", str(work), "--workers", str(workers),
            "--workers-epochs", str(epochs)] + (["--large-root", str(large_root)] if large_root is not None else [])
    return run_json_child(str(Path(__file__).resolve()), args, code, key)


# -- the large-image set ----------------------------------------------------------------------------
def write_large_voc(root: Path, n: int, hw: tuple[int, int]) -> Path:
    """``n`` JPEGs of ``hw`` (smooth colour fields, noise and 3-6 rectangles) in VOC layout, all train."""
    import cv2
    import numpy as np

    from benchmarks.common import COLOURS
    rng = np.random.default_rng(0)
    h, w = hw
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    names = []
    for i in range(n):
        f = rng.uniform(2, 12, 3)
        img = np.stack([np.sin(x / w * f[0] + i), np.cos(y / h * f[1]), np.sin((x + y) / (h + w) * f[2])], 2)
        img = (img * 80 + 128 + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        objs = []
        for _ in range(int(rng.integers(3, 7))):
            name = str(rng.choice(list(COLOURS)))
            bw, bh = int(rng.uniform(0.05, 0.3) * w), int(rng.uniform(0.05, 0.3) * h)
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            img[y0:y0 + bh, x0:x0 + bw] = COLOURS[name]
            objs.append(f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin>"
                        f"<ymin>{y0}</ymin><xmax>{x0 + bw}</xmax><ymax>{y0 + bh}</ymax></bndbox></object>")
        stem = f"large_{i:04d}"
        cv2.imwrite(str(root / "JPEGImages" / f"{stem}.jpg"), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{''.join(objs)}</annotation>")
        names.append(stem)
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(names) + "\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("\n".join(names[:2]) + "\n")
    return root


# -- the decoders ---------------------------------------------------------------------------------------
def decode_ms(files: list[Path], half_hw: tuple[int, int] | None) -> dict[str, float]:
    """Milliseconds per decode of ``files`` for each candidate decoder (best of 3 passes, one thread)."""
    import io

    import cv2
    import numpy as np
    from PIL import Image

    from datasets.image_io import load_image
    cv2.setNumThreads(1)
    blobs = [f.read_bytes() for f in files]

    def pil(b: bytes, draft: tuple[int, int] | None = None) -> np.ndarray:
        with Image.open(io.BytesIO(b)) as im:
            if draft:
                im.draft("RGB", draft)
            im.load()
            return np.asarray(im)

    half = half_hw[::-1] if half_hw else None
    candidates = {
        "pil": lambda b, f: pil(b),
        "pil_draft_half": lambda b, f: pil(b, half),
        "opencv": lambda b, f: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR_RGB),
        "opencv_half": lambda b, f: cv2.imdecode(np.frombuffer(b, np.uint8),
                                                 cv2.IMREAD_COLOR_RGB | cv2.IMREAD_REDUCED_GRAYSCALE_2),
        "load_image": lambda b, f: load_image(f),
    }
    out = {}
    for name, fn in candidates.items():
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for b, f in zip(blobs, files):
                fn(b, f)
            best = min(best, (time.perf_counter() - t0) / len(files))
        out[name] = round(best * 1e3, 3)
    return out


# -- the training step --------------------------------------------------------------------------------
def _outputs(x) -> list:
    import torch
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        x = list(x.values())
    return [t for item in x for t in _outputs(item)]


def train_step_images_per_second(steps: int, pr: Protocol) -> float:
    """YOLOv9-T forward + backward on random input (batch and size of the protocol), as the trainer runs it."""
    import torch

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
    sys.path.insert(0, str(REPO))
    from benchmarks.common import pick, print_result, tiny_mode
    from utils.dist import set_cpu_threads

    tiny = tiny_mode(argv)
    pr = _protocol()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="", help="a checkout of other code to measure side by side")
    p.add_argument("--rounds", type=int, default=pr.rounds, help="alternating rounds; the best counts")
    p.add_argument("--workers-epochs", type=int, default=pick(tiny, 3, 1), help="timed epochs of the 2-worker loader")
    p.add_argument("--steps", type=int, default=pick(tiny, 3, 1), help="timed YOLOv9-T training steps")
    p.add_argument("--train-epoch", action="store_true", help="also time a bccd_v9t training epoch (416 px, 1 thread)")
    args = p.parse_args(argv)
    codes = {"new": REPO}
    if args.baseline:
        base = Path(args.baseline).resolve()
        if not (base / "core" / "loaders.py").is_file() or not (base / "data" / "BCCD").is_dir():
            sys.exit(f"--baseline {base}: not a checkout of this repo with its data/BCCD")
        codes["baseline"] = base
    best: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="dataloader_bench_") as tmp:
        work = Path(tmp)
        large = write_large_voc(work / "large", pr.large_images, pr.large_hw)
        for r in range(args.rounds):
            for key in PER_CORE:
                for name, code in codes.items():
                    rate = _child(code, key, work / name, large if key.startswith("large") else None)
                    best[(name, key)] = max(best.get((name, key), 0.0), rate)
                    print(f"round {r + 1}: {name:<8} {key:<15} {rate:8.1f} samples/s", flush=True)
        workers2 = _child(REPO, "uncached", work / "new", None, workers=2, epochs=args.workers_epochs)
        epoch_s: dict[str, tuple[float, float]] = {}  # best round: (epoch s, of which waiting for data)
        for r in range(args.rounds if args.train_epoch else 0):
            for name, code in codes.items():
                sec, wait = _child(code, "epoch", work / name, None)
                epoch_s[name] = min(epoch_s.get(name, (float("inf"), 0.0)), (sec, wait))
                print(f"round {r + 1}: {name:<8} bccd_v9t epoch   {sec:8.1f} s ({wait:.2f} s waiting for data)",
                      flush=True)
        bccd_files = sorted((REPO / "data" / "BCCD" / "JPEGImages").glob("*.jpg"))[:pick(tiny, 40, 4)]
        large_files = sorted((large / "JPEGImages").glob("*.jpg"))[:pick(tiny, 12, 2)]
        h, w = pr.large_hw
        decoders = {"bccd": decode_ms(bccd_files, (240, 320)), "large": decode_ms(large_files, (h // 2, w // 2))}
    threads = set_cpu_threads(0)
    step = train_step_images_per_second(args.steps, pr)

    subset = f" ({pr.fraction:g} of it)" if pr.fraction < 1 else ""
    print(f"\nBCCD train{subset}, {pr.size} px, batch {pr.batch}, mosaic 1.0, zoom 0.5..1.5, HSV, flips; "
          f"samples/s per core (0 workers, 1 thread), best of {args.rounds} rounds of one epoch")
    head = f"{'':<16}{'this code':>10}" + (f"{'baseline':>10}{'speedup':>9}" if args.baseline else "")
    print(head)
    result: dict[str, float | int] = {}
    for key in PER_CORE:
        new = best[("new", key)]
        result[key] = round(new, 2)
        row = f"{key:<16}{new:>10.1f}"
        if args.baseline:
            old = best[("baseline", key)]
            result[f"baseline_{key}"] = round(old, 2)
            result[f"{key}_speedup"] = round(result[key] / result[f"baseline_{key}"], 3)  # of the printed figures
            row += f"{old:>10.1f}{new / old:>8.2f}x"
        print(row)
    large_note = f"{pr.large_images} synthetic {pr.large_hw[1]}x{pr.large_hw[0]} JPEGs"
    print(f"(large_uncached: {large_note})")
    print(f"\nms per decode (one thread): {'':<6}{'BCCD 640x480':>14}{'large':>8}")
    for name in decoders["bccd"]:
        print(f"  {name:<30}{decoders['bccd'][name]:>14.2f}{decoders['large'][name]:>8.2f}")
    print(f"\n2 workers, uncached: {workers2:.1f} samples/s; YOLOv9-T forward+backward, batch {pr.batch}, "
          f"{pr.size} px, {threads} threads: {step:.2f} img/s ({workers2 / step:.1f}x: "
          f"{'not the bottleneck' if workers2 > step else 'THE BOTTLENECK'})")
    if epoch_s:
        size = pick(tiny, 416, 64)
        sec, wait = (round(x, 3) for x in epoch_s["new"])
        line = (f"\nbccd_v9t training epoch ({size} px, 1 thread, 0 workers): {sec:.1f} s, of which "
                f"{wait:.2f} s waiting for data")
        result["epoch_s"], result["epoch_data_s"] = sec, wait
        if "baseline" in epoch_s:
            old_sec, old_wait = (round(x, 3) for x in epoch_s["baseline"])
            result["baseline_epoch_s"], result["baseline_epoch_data_s"] = old_sec, old_wait
            result["epoch_speedup"] = round(old_sec / sec, 3)  # of the printed figures
            # a data pipeline that took no time at all would leave the baseline's steps
            result["epoch_data_ceiling"] = round(old_sec / max(old_sec - old_wait, 1e-9), 3)
            line += (f"; baseline {old_sec:.1f} s, of which {old_wait:.2f} s waiting for data: "
                     f"{result['epoch_speedup']:.2f}x (a loader taking no time at all: "
                     f"{result['epoch_data_ceiling']:.2f}x)")
        print(line)
    result.update({"workers2": round(workers2, 2), "train_step_img_per_s": round(step, 3), "cpu_threads": threads,
                   "decode_ms": {name: {"bccd": decoders["bccd"][name], "large": decoders["large"][name]}
                                 for name in decoders["bccd"]}})
    print_result(result)


def _measure_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--measure", required=True)
    p.add_argument("--code", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--large-root", default="")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--workers-epochs", type=int, default=1)
    a = p.parse_args(argv)
    if a.measure == "epoch":
        print(json.dumps(measure_epoch(Path(a.code), Path(a.work))))
        return
    rate = measure(Path(a.code), a.measure, Path(a.work), Path(a.large_root) if a.large_root else None,
                   a.workers, a.workers_epochs)
    print(json.dumps(rate))


if __name__ == "__main__":
    if "--measure" in sys.argv:
        _measure_main(sys.argv[1:])
    else:
        main(sys.argv[1:])
