"""Deployment accuracy and latency: one trained checkpoint scored on its val set through every runtime.

    python benchmarks/export.py runs/bccd_v9t/best.pth [--qat-epochs 3] [--out DIR] [--tiny] [group.field=value ...]

In one run, from the checkpoint alone (its config names the data; overrides apply on top):
- mAP (0.50:0.95, faster-coco-eval, the val pipeline of --task val) of the PyTorch model, its
  ONNX export (onnxruntime), TFLite FP32, FP16 and INT8 (post-training quantisation calibrated on
  the first export.calib_count train images), and the INT8 TFLite of a quantisation-aware
  fine-tuning (``--task qat``, --qat-epochs epochs from the same checkpoint, same calibration);
- the checks: ONNX mAP equal to PyTorch's within 1e-4, FP16 within 0.5 points, and the share of
  the INT8 loss (PyTorch - PTQ) that QAT recovers ((QAT - PTQ) / (PyTorch - PTQ); null when PTQ
  loses nothing), with the pass mark QAT >= PTQ + (PyTorch - PTQ) / 2;
- CPU latency at batch 1 of the forward pass (no NMS), median of --iters calls after warm-up, for
  PyTorch eager (the deployment form: fused, no auxiliary branch), onnxruntime and LiteRT
  (FP32 and INT8), each with the torch thread count.

Needs requirements-export.txt. Last line: RESULT {"map_torch": .., "map_onnx": ..,
"map_tflite_fp32": .., "map_tflite_fp16": .., "map_int8_ptq": .., "map_int8_qat": ..,
"latency_ms": {..}, ...}

--tiny (or BENCH_TINY=1, benchmarks/common.py): the same runs with --qat-epochs 1, --iters 2 and one
warm-up call, 4 calibration images, at most 8 val images, one torch thread; its figures only show that
the script works (the checks still hold: ONNX and FP16 follow PyTorch on any checkpoint).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import pick, print_result, quiet_logging, tiny_mode
from configs import apply_overrides
from configs.base_config import BaseConfig
from core.checks import validate
from core.deploy.export import deployment_form, export_model
from core.deploy.qat import run_qat
from core.deploy.runtime import load_runtime_model
from core.evaluation.evaluator import Evaluator
from core.loaders import build_eval_loader
from core.tasks import config_from_data
from core.weights import load_weights
from utils.checkpoint import load_checkpoint
from utils.dist import DistInfo, set_cpu_threads

CPU = DistInfo.single()
FORMATS = ["onnx", "tflite_fp32", "tflite_fp16", "tflite_int8"]
TINY_OVERRIDES = ["export.calib_count=4", "eval.max_images=8", "train.num_threads=1"]


def config_of(ckpt: str, overrides: list[str]) -> BaseConfig:
    cfg = config_from_data(load_checkpoint(ckpt, required=("config",))["config"], ckpt)
    apply_overrides(cfg, ["eval.plots=False", "eval.save_json=False", "eval.dashboard=False"] + overrides)
    return validate(cfg)


def score(cfg: BaseConfig, model) -> float:
    loader = build_eval_loader(cfg, CPU, "val", max_images=cfg.eval.max_images, rect=False)  # every runtime on squares
    return float(Evaluator(cfg, loader.dataset.records, CPU).run(model, loader)["mAP"])


@torch.no_grad()
def latency_ms(model, img_size: int, warmup: int, iters: int) -> float:
    """Median milliseconds of one forward pass at batch 1 (seeded uniform input)."""
    x = torch.rand(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - t0) * 1000)
    return float(sorted(times)[len(times) // 2])


def main(argv: list[str]) -> None:
    tiny = tiny_mode(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", help="a .pth checkpoint of this repo (best.pth)")
    p.add_argument("--qat-epochs", type=int, default=pick(tiny, 3, 1), help="quantisation-aware fine-tuning epochs")
    p.add_argument("--iters", type=int, default=pick(tiny, 30, 2), help="timed batch-1 calls per runtime")
    p.add_argument("--out", default=None, help="where the exported files go (default: a temporary dir)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. export.calib_count=64")
    args = p.parse_intermixed_args(argv)  # overrides may follow the options, as the usage line shows
    args.overrides = pick(tiny, [], TINY_OVERRIDES) + args.overrides
    warmup = pick(tiny, 5, 1)
    quiet_logging()
    cfg = config_of(args.ckpt, args.overrides)
    threads = set_cpu_threads(cfg.train.num_threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="export_bench_"))
    t_start = time.time()

    model = load_weights(cfg, args.ckpt, CPU.device)
    maps = {"torch": score(cfg, model)}
    print(f"PyTorch            mAP {maps['torch']:.4f}", flush=True)
    cfg.export.formats = FORMATS
    files = export_model(cfg, model, out / "ptq")
    runtimes = {"onnx": load_runtime_model(files["onnx"])}
    for kind in ("tflite_fp32", "tflite_fp16", "tflite_int8"):
        runtimes[kind] = load_runtime_model(files[kind])
    names = {"onnx": "onnx", "tflite_fp32": "tflite_fp32", "tflite_fp16": "tflite_fp16",
             "tflite_int8": "int8_ptq"}
    for kind, rt in runtimes.items():
        maps[names[kind]] = score(cfg, rt)
        print(f"{kind:<18} mAP {maps[names[kind]]:.4f}", flush=True)

    qat_cfg = config_of(args.ckpt, args.overrides + [f"qat.epochs={args.qat_epochs}", "qat.export_int8=True"])
    summary = run_qat(qat_cfg, SimpleNamespace(ckpt=args.ckpt), CPU, out / "qat")
    qat_int8 = load_runtime_model(summary["exported"]["tflite_int8"])
    maps["int8_qat"] = score(cfg, qat_int8)
    print(f"QAT int8 ({args.qat_epochs} ep)   mAP {maps['int8_qat']:.4f}", flush=True)

    size = cfg.data.img_size
    deployed = deployment_form(model)
    lat = {"torch_eager": latency_ms(deployed, size, warmup, args.iters),
           "onnxruntime": latency_ms(runtimes["onnx"], size, warmup, args.iters),
           "litert_fp32": latency_ms(runtimes["tflite_fp32"], size, warmup, args.iters),
           "litert_fp16": latency_ms(runtimes["tflite_fp16"], size, warmup, args.iters),
           "litert_int8": latency_ms(runtimes["tflite_int8"], size, warmup, args.iters)}

    loss = maps["torch"] - maps["int8_ptq"]
    recovered = (maps["int8_qat"] - maps["int8_ptq"]) / loss if loss > 0 else None
    # QAT closes at least half the PTQ-to-float gap (when PTQ scores above float: stays above the midpoint)
    qat_ok = maps["int8_qat"] >= maps["int8_ptq"] + 0.5 * loss
    print(f"\n{cfg.model.name} at {size} px, {threads} threads, checkpoint {args.ckpt}; files in {out}")
    print(f"{'runtime':<22}{'mAP':>8}{'vs torch':>10}")
    for k, v in maps.items():
        print(f"{k:<22}{v:>8.4f}{v - maps['torch']:>+10.4f}")
    print(f"\nbatch-1 forward latency, CPU ({threads} threads), median of {args.iters}:")
    for k, v in lat.items():
        print(f"  {k:<14}{v:8.1f} ms")
    onnx_equal = abs(maps["onnx"] - maps["torch"]) <= 1e-4
    fp16_ok = abs(maps["tflite_fp16"] - maps["torch"]) <= 0.005
    share = f"QAT recovers {recovered:.0%} of it" if recovered is not None else "nothing for QAT to recover"
    print(f"\nONNX equal to PyTorch (1e-4): {onnx_equal}; FP16 within 0.5 points: {fp16_ok}; INT8 PTQ loss "
          f"{loss * 100:+.2f} points, {share}; QAT INT8 at least halfway from PTQ to float: {qat_ok} "
          f"({time.time() - t_start:.0f} s in all)")
    result = {f"map_{k}": round(v, 4) for k, v in maps.items()}
    result |= {"latency_ms": {k: round(v, 2) for k, v in lat.items()}, "onnx_equal": onnx_equal,
               "fp16_within_half_point": fp16_ok,
               "qat_recovered": None if recovered is None else round(recovered, 3), "qat_recovers_half": qat_ok,
               "qat_epochs": args.qat_epochs}
    print_result(result)


if __name__ == "__main__":
    main(sys.argv[1:])
