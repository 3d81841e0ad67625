"""Peak live tensor bytes and time of every assigner's ``assign``, per head, at batch 16 and 20, 100 and
250 GTs per image; optionally side by side with another checkout.

    python benchmarks/assigner_memory.py [--baseline DIR] [--gts 20,100,250] [--repeats N] [--limit-gib X] [--tiny]

Protocol (issue 20): 640 px input, strides 8, 16, 32: the anchor head has 3 anchors per cell (the
COCO anchors of the config defaults) = 25,200 priors, the DFL head one point per cell = 8,400. Every
method runs on every head it trains (``Assigner.coders``). Per image, G GT boxes of 80 classes with
uniform centres and sides log-uniform in 4..320 px (clipped to the image); predictions: a box around
each prior centre (offset by a normal of one stride, sides log-uniform in 4..320 px) and class scores
u^3 for u uniform in [0, 1]. Scenes are drawn from fixed seeds, so both checkouts see the same tensors.

- peak: the largest sum of live tensor storages created inside ``assign`` (``utils.memory_track``:
  every operator's new outputs, freed storages subtracted), measured on the CPU; on a GPU it is what
  the caching allocator must hold. Deterministic for given code and inputs. The assigners work on
  chunks of images bounded in (GT, candidate) pairs (``models.assigners.padding``), smaller on the CPU
  (for its caches) than elsewhere: the peak is measured with the chunks a GPU uses.
- time: the best of ``--repeats`` calls after the measured one, one torch thread, the CPU's chunks.

Each checkout runs in a child process whose sys.path starts at its directory (the tracker is loaded
from this checkout by file path, so the baseline needs none of this checkout's code). A call whose live
bytes pass ``--limit-gib`` (default 8) is stopped there (the tracker raises; the child's address space
is capped a few GiB above, so one huge allocation fails instead of swapping) and shown as "> limit".
``max_gt`` (the training step's host-side bound on GTs per image) is passed when the checkout's
``assign`` takes it.

--tiny (or BENCH_TINY=1): batch 2, 128 px, 2, 5 and 12 GTs, one repeat; its figures show only that the
script works.

Last line: RESULT {"batch", "img_size", "gts", "priors": {head: P}, "peak_mib": {"<method>/<head>":
{"<G>": MiB or null}}, "ms": (same layout), "worst_peak_mib": {"<G>": largest peak of any case}} and with
--baseline the same figures as "baseline_peak_mib", "baseline_ms", "baseline_worst_peak_mib".
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRACKER = REPO / "utils" / "memory_track.py"
STRIDES = (8, 16, 32)
NUM_CLASSES = 80
FULL = {"batch": 16, "img_size": 640, "gts": [20, 100, 250], "repeats": 2}
TINY = {"batch": 2, "img_size": 128, "gts": [2, 5, 12], "repeats": 1}


# -- the child: one checkout's code ----------------------------------------------------------------
def scene(head: str, batch: int, num_gt: int, img: int, seed: int):
    """(targets [B * G, 6], priors, Predictions) of the protocol; ``head`` "anchor" or "dfl"."""
    import torch

    from configs.base_config import BaseConfig
    from models import scaled_anchors
    from models.assigners import Predictions
    from models.priors import make_priors
    g = torch.Generator().manual_seed(seed)
    anchors = scaled_anchors(BaseConfig().model, img) if head == "anchor" else None
    priors = make_priors((img, img), list(STRIDES), anchors)
    log_side = (math.log(4.0), math.log(img / 2))

    def sides(*shape):
        return torch.empty(*shape).uniform_(*log_side, generator=g).exp()

    centre = torch.rand(batch, num_gt, 2, generator=g) * img
    wh = sides(batch, num_gt, 2)
    boxes = torch.cat((centre - wh / 2, centre + wh / 2), -1).clamp(0, img)
    boxes[..., 2:] = torch.maximum(boxes[..., 2:], boxes[..., :2] + 1)
    image = torch.arange(batch, dtype=torch.float32)[:, None, None].expand(batch, num_gt, 1)
    cls = torch.randint(0, NUM_CLASSES, (batch, num_gt, 1), generator=g).float()
    targets = torch.cat((image, cls, boxes), -1).reshape(-1, 6)
    p = len(priors)
    c = priors.centers + torch.randn(batch, p, 2, generator=g) * priors.stride[:, None]
    half = sides(batch, p, 2) / 2
    preds = Predictions(torch.cat((c - half, c + half), -1), torch.rand(batch, p, NUM_CLASSES, generator=g) ** 3)
    return targets, priors, preds


def measure_case(assigner, head: str, num_gt: int, sizes: dict, limit: int, live_bytes) -> dict:
    """{"peak": bytes, "ms": best call} of one case; {"peak": None, "ms": None} past the limit."""
    targets, priors, preds = scene(head, sizes["batch"], num_gt, sizes["img_size"], seed=num_gt)
    kwargs = {"max_gt": num_gt} if "max_gt" in inspect.signature(assigner.assign).parameters else {}
    try:
        with accelerator_chunks(), live_bytes(limit) as mem:
            assigner.assign(targets, priors, preds, **kwargs)
    except (MemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError) and "alloc" not in str(e):
            raise
        return {"peak": None, "ms": None}
    best = math.inf
    for _ in range(sizes["repeats"]):
        t0 = time.perf_counter()
        assigner.assign(targets, priors, preds, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return {"peak": mem.peak, "ms": best * 1e3}


@contextlib.contextmanager
def accelerator_chunks():
    """The image chunks a GPU would use (``models.assigners.padding``: the CPU takes smaller ones, for its
    caches), so that the peak is the one the issue's 2 GiB bound is about; a checkout without chunks
    runs unchanged."""
    try:
        from models.assigners import padding
    except ImportError:
        yield
        return
    saved = dict(padding.CHUNK_PAIRS)
    padding.CHUNK_PAIRS["cpu"] = padding.DEFAULT_CHUNK_PAIRS
    try:
        yield
    finally:
        padding.CHUNK_PAIRS.clear()
        padding.CHUNK_PAIRS.update(saved)


def measure(code: Path, sizes: dict, limit: int) -> dict:
    """Every (method, head) case at every G with the code in ``code``: {"<method>/<head>": {G: figures}}."""
    spec = importlib.util.spec_from_file_location("memory_track_bench", TRACKER)
    tracker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tracker)  # before ``code`` joins sys.path: its ``utils`` may be another's
    sys.path.insert(0, str(code))
    import torch
    from loguru import logger

    from models.assigners import ASSIGNERS
    logger.remove()
    torch.set_num_threads(1)
    out = {}
    for method, cls in ASSIGNERS.items():
        for head in sorted(cls.coders):
            out[f"{method}/{head}"] = {str(n): measure_case(cls(), head, n, sizes, limit, tracker.LiveBytes)
                                       for n in sizes["gts"]}
            print(method, head, out[f"{method}/{head}"], file=sys.stderr, flush=True)
    return out


def child(code: Path, sizes: dict, limit_gib: float) -> dict:
    """``measure`` in a fresh process whose sys.path starts at ``code``, its address space capped."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", str(code), "--sizes", json.dumps(sizes),
           "--limit-gib", str(limit_gib)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(code))
    if proc.returncode:
        sys.exit(f"measuring the assigners of {code} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the report ------------------------------------------------------------------------------------
def mib(figures: dict, key: str) -> dict:
    """{case: {G: figure}} with peaks in MiB (2 decimals) and times in ms (1 decimal); None stays."""
    scale, digits = (2**20, 2) if key == "peak" else (1, 1)
    return {case: {n: (None if f[key] is None else round(f[key] / scale, digits)) for n, f in per_g.items()}
            for case, per_g in figures.items()}


def worst(peaks: dict, gts: list[int], limit_mib: float) -> dict:
    """{G: the largest peak of any case} (the limit when a case passed it)."""
    return {str(n): max(limit_mib if v[str(n)] is None else v[str(n)] for v in peaks.values()) for n in gts}


def cell(value, limit_mib: float) -> str:
    return f"> {limit_mib:.0f}" if value is None else f"{value:.1f}"


def report(sizes: dict, new: dict, base: dict | None, limit_gib: float) -> dict:
    limit_mib = limit_gib * 1024
    peaks, times = mib(new, "peak"), mib(new, "ms")
    head = f"{'method/head':<20} {'G':>4} {'peak MiB':>10} {'ms':>9}"
    if base is not None:
        base_peaks, base_times = mib(base, "peak"), mib(base, "ms")
        head += f" {'base MiB':>10} {'base ms':>9} {'MiB ratio':>9}"
    print(head)
    for case, per_g in peaks.items():
        for n, peak in per_g.items():
            row = f"{case:<20} {n:>4} {cell(peak, limit_mib):>10} {cell(times[case][n], 0):>9}"
            if base is not None:
                old = base_peaks.get(case, {}).get(n)
                ratio = f"{old / peak:.1f}x" if old and peak else ("-" if old else f"> {limit_mib / peak:.0f}x")
                old_ms = base_times.get(case, {}).get(n)
                row += f" {cell(old, limit_mib):>10} {'-' if old_ms is None else cell(old_ms, 0):>9} {ratio:>9}"
            print(row)
    gts = sizes["gts"]
    result = {"batch": sizes["batch"], "img_size": sizes["img_size"], "gts": gts,
              "priors": {"anchor": 3 * sum((sizes["img_size"] // s) ** 2 for s in STRIDES),
                         "dfl": sum((sizes["img_size"] // s) ** 2 for s in STRIDES)},
              "peak_mib": peaks, "ms": times, "worst_peak_mib": worst(peaks, gts, limit_mib)}
    if base is not None:
        result |= {"baseline_peak_mib": base_peaks, "baseline_ms": base_times,
                   "baseline_worst_peak_mib": worst(base_peaks, gts, limit_mib)}
    return result


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.common import print_result, tiny_mode
    tiny = tiny_mode(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", type=Path, help="another checkout, measured the same way")
    ap.add_argument("--gts", help="GTs per image, comma-separated (default 20,100,250)")
    ap.add_argument("--repeats", type=int, help="timed calls per case; the best counts (default 2)")
    ap.add_argument("--limit-gib", type=float, default=8.0, help="stop a call past this many live GiB")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # child mode: the code to measure
    ap.add_argument("--sizes", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    limit = int(a.limit_gib * 2**30)
    if a.measure:
        cap = limit + 4 * 2**30  # the tracker stops first; this catches one allocation far past the limit
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        print(json.dumps(measure(a.measure.resolve(), json.loads(a.sizes), limit)))
        return
    sizes = dict(TINY if tiny else FULL)
    if a.gts:
        sizes["gts"] = [int(n) for n in a.gts.split(",")]
    if a.repeats:
        sizes["repeats"] = a.repeats
    print(f"assign() at batch {sizes['batch']}, {sizes['img_size']} px, {NUM_CLASSES} classes, G = {sizes['gts']}"
          f" GTs per image; peak live tensor MiB, best of {sizes['repeats']} calls in ms, 1 thread", flush=True)
    new = child(REPO, sizes, a.limit_gib)
    base = child(a.baseline.resolve(), sizes, a.limit_gib) if a.baseline else None
    print_result(report(sizes, new, base, a.limit_gib))


if __name__ == "__main__":
    main(sys.argv[1:])
