"""Speed benchmark of a detector: latency, throughput, memory, parameters, FLOPs, checkpoint size.

The detector is a PyTorch model or an exported one (core.deploy.runtime: .onnx, .tflite; CPU only, its
parameters counted from the file's weights, FLOPs not counted, "checkpoint" size = file size).

What is timed is what a deployment runs on an already letterboxed input: forward, decode and
``postprocess`` at the predict.* thresholds and NMS mode (image decoding and letterboxing are not),
the forward under the training's autocast (``utils.amp``: train.amp, train.amp_dtype; decoding and
NMS in fp32), as validation runs it; each run records its "precision" (fp32, fp16, bf16, or "file":
an exported model runs in the dtypes of its file). Inputs
are seeded uniform noise at data.img_size. Latency is per call at batch 1 after
eval.bench_warmup untimed calls; throughput is images per second at batch eval.bench_batch.
On CUDA every timing is synchronised and memory is ``torch.cuda.max_memory_allocated`` over
the benchmark; on CPU it is the process's peak resident memory (everything the process ever
held, an upper bound).
"""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from loguru import logger

from configs.base_config import ConfigError
from core.evaluation.evaluator import infer
from models.postprocess import postprocess
from utils.amp import precision_name
from utils.files import write_json_atomic


def bench_devices(choice: str, run_device: torch.device) -> list[torch.device]:
    """eval.bench_device -> the devices to measure on."""
    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        raise ConfigError("eval.bench_device='cuda' but CUDA is not available; use auto or cpu")
    gpu = run_device if run_device.type == "cuda" else torch.device("cuda", 0)
    return {"auto": [run_device], "cpu": [torch.device("cpu")], "cuda": [gpu],
            "all": [torch.device("cpu")] + ([gpu] if cuda else [])}[choice]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux names the CPU model here; platform.processor() is often empty
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process, MB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


@torch.no_grad()
def measure(model: torch.nn.Module, cfg, device: torch.device) -> dict:
    """Latency (batch 1) and throughput (batch eval.bench_batch) of forward + decode + NMS on ``device``."""
    from utils.model_info import is_runtime_model
    e, p, t, size = cfg.eval, cfg.predict, cfg.train, cfg.data.img_size
    model = model.to(device).eval()
    gen = torch.Generator().manual_seed(0)
    precision = "file" if is_runtime_model(model) else precision_name(device, t.amp, t.amp_dtype)

    def run(x: torch.Tensor) -> None:
        boxes, scores = infer(model, x, t)
        postprocess(boxes, scores, p.conf_thres, p.nms_iou, p.max_det, agnostic=p.agnostic_nms)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    x1 = torch.rand(1, 3, size, size, generator=gen).to(device)
    for _ in range(e.bench_warmup):
        run(x1)
    times = []
    for _ in range(e.bench_iters):
        _sync(device)
        t0 = time.perf_counter()
        run(x1)
        _sync(device)
        times.append(time.perf_counter() - t0)
    xb = torch.rand(e.bench_batch, 3, size, size, generator=gen).to(device)
    run(xb)  # warm-up at the new shape
    n_batches = max(2, e.bench_iters // 10)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        run(xb)
    _sync(device)
    elapsed = time.perf_counter() - t0
    ms = np.asarray(times) * 1e3
    cuda = device.type == "cuda"
    return {"device": str(device),
            "device_name": _device_name(device),
            "threads": torch.get_num_threads(), "img_size": size, "precision": precision,
            "latency_ms": {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)),
                           "p95": float(np.percentile(ms, 95)), "p99": float(np.percentile(ms, 99)),
                           "min": float(ms.min())},
            "latency_iters": e.bench_iters, "throughput_batch": e.bench_batch,
            "throughput_img_s": e.bench_batch * n_batches / elapsed,
            "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _peak_rss_mb(),
            "memory_kind": "cuda max_memory_allocated" if cuda else "process peak RSS"}


def run_benchmark(model: torch.nn.Module, cfg, run_device: torch.device, ckpt: str | None,
                  out_dir: Path | None) -> dict:
    """Measure on every eval.bench_device device; add parameters, GFLOPs and checkpoint size.

    Writes benchmark.json into out_dir and prints a table. Returns {"model": {...}, "runs": [...]}.
    """
    from utils.model_info import count_params, gflops, is_runtime_model, model_device
    home = model_device(model)
    runtime = is_runtime_model(model)
    devices = bench_devices(cfg.eval.bench_device, run_device)
    if runtime and any(d.type != "cpu" for d in devices):
        logger.warning(f"{model.path} runs on the CPU ({model.runtime}): benchmarking on cpu only")
        devices = [torch.device("cpu")]
    runs = [measure(model, cfg, d) for d in devices]
    model.to(home)  # measure() moved it; the caller keeps its model where it was
    if runtime:  # weights counted in the file; FLOPs are not counted outside PyTorch
        params, flops = getattr(model, "num_params", None), None
    else:
        params, flops = int(count_params(model)), float(gflops(model, cfg.data.img_size))
    info = {"name": cfg.name, "model": cfg.model.name, "params": params, "gflops": flops,
            "img_size": cfg.data.img_size, "runtime": model.runtime if runtime else "pytorch",
            "checkpoint": str(ckpt) if ckpt else None,
            "checkpoint_mb": _size_mb(ckpt) if ckpt else None,
            "torch": torch.__version__}
    result = {"model": info, "runs": runs}
    if out_dir is not None:
        write_json_atomic(Path(out_dir) / "benchmark.json", result)
    _print(result)
    return result


def _size_mb(path: str) -> float:
    """Size of a checkpoint or exported file (a SavedModel folder: all its files), MB."""
    p = Path(path)
    size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    return size / 2**20


def _print(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    info = result["model"]
    size = f"{info['checkpoint_mb']:.1f} MB" if info["checkpoint_mb"] is not None else "n/a (no --ckpt)"
    params = f"{info['params'] / 1e6:.2f} M params" if info["params"] is not None else "params n/a"
    flops = f"{info['gflops']:.2f} GFLOPs" if info["gflops"] is not None else "GFLOPs n/a"
    t = Table(title=f"benchmark {info['name']} ({info['model']}, {info['runtime']}): {params}, "
                    f"{flops} at {info['img_size']} px, file {size}", title_justify="left")
    for col in ("device", "latency mean", "p50", "p95", "p99", "throughput", "peak memory"):
        t.add_column(col, justify="left" if col == "device" else "right")
    for r in result["runs"]:
        lat = r["latency_ms"]
        t.add_row(f"{r['device']} ({r['device_name']}, {r['threads']} threads, {r['precision']})", f"{lat['mean']:.2f} ms",
                  f"{lat['p50']:.2f}", f"{lat['p95']:.2f}", f"{lat['p99']:.2f}",
                  f"{r['throughput_img_s']:.1f} img/s @ {r['throughput_batch']}",
                  f"{r['peak_memory_mb']:.0f} MB ({r['memory_kind']})")
    Console(stderr=True).print(t)
    logger.info("benchmark: " + "; ".join(f"{r['device']} {r['precision']} latency {r['latency_ms']['mean']:.2f} ms, "
                                          f"{r['throughput_img_s']:.1f} img/s" for r in result["runs"]))
