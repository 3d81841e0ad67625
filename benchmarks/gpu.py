"""The one command to run on a GPU node: what this repo does there, checked and timed in a few minutes.

    python benchmarks/gpu.py [--tiny] [--out DIR]

Sections (each prints its lines; the last line is ``RESULT {...}``):

1. versions: Python, torch, CUDA, cuDNN, the GPUs, whether torchvision imports, the NMS in use.
2. train steps: 10 full steps (forward, assignment, loss, backward, optimizer, EMA) each of v9-t fp16,
   v9-t bf16 and the ResNet-18 anchor head fp16, 640 px, batch 16, on random images with 8 boxes
   each; images/s and host syncs per step, counted by ``utils.syncs.SyncCounter`` (the optimizer's
   own step, whose counters stay on the CPU, aside) and, on CUDA, by
   ``torch.cuda.set_sync_debug_mode("warn")`` (its warnings counted). bf16 is skipped with a line on
   a GPU without it.
3. assigner memory: peak bytes of each assigner at batch 16 with 100 and 250 GTs per image
   (``benchmarks/assigner_memory.py``'s measurement: CUDA's allocator peak on a GPU, live tensor
   bytes on the CPU).
4. throughput: v9-c, 640 px, batch 16, full steps, with ``train.cudnn_benchmark`` off / on and
   ``train.compile`` off / on; the compile's own seconds apart.
5. NMS: 3000 boxes over 80 classes, the repo's fallback against torchvision's (when it imports): the
   same boxes kept, milliseconds each.
6. a short torchrun training on the bundled BCCD (every GPU of the node, ResNet-18, 416 px), then its
   resume for one more epoch, then validation of last.pth in fp32, fp16 and bf16 on 64 val images:
   the three mAPs within 0.005.
7. with 2 or more GPUs (2 gloo processes on the CPU in tiny mode): a torchrun training stopped by
   SIGTERM and resumed to its end, and a DDP validation equal to a 1-process one.

--tiny (or BENCH_TINY=1; what CI runs on its CPU so the script cannot rot): v9-t instead of v9-c, 64 px,
batch 2, 2 steps, 20 GTs, 300 NMS boxes, trainings of 1 epoch at 64 px on a tenth of BCCD, no
compile timing (inductor's C++ build of the graph would take minutes): its figures only show that
every section runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.common import free_port, pick, print_result, quiet_logging, tiny_mode  # noqa: E402


def device_now() -> torch.device:
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


# -- 1 ---------------------------------------------------------------------------------------------
def versions() -> dict:
    from utils.nms import nms_backend
    cuda = torch.cuda.is_available()
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if cuda else None,
           "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
           "bf16": bool(cuda and torch.cuda.is_bf16_supported()) or not cuda, "nms": nms_backend()}
    for k, v in out.items():
        print(f"  {k:<8} {v}")
    return out


# -- 2 and 4: full steps on random batches --------------------------------------------------------------
def make_step(name: str, size: int, batch: int, device: torch.device, amp_dtype: str | None, **train):
    """A TrainStep of ``name`` ("yolo" = ResNet-18 anchor head) at ``size`` px on ``device``, with the
    config's own assigner, optimizer, schedule and EMA; ``amp_dtype`` None = fp32."""
    from configs import load_config
    from core.train.step import TrainStep
    from models import build_loss, build_model
    from utils.ema import ModelEMA
    from utils.optim import build_optimizer
    from utils.scheduler import build_scheduler
    from utils.syncs import uncounted
    cfg = load_config("bccd_v9t" if name != "yolo" else "bccd_yolo_r18",
                      [f"model.name={name!r}", f"data.img_size={size}", "model.pretrained=''"])
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = build_model(cfg).to(device, memory_format=memory_format).train()
    optimizer = build_optimizer(cfg.optim, model, batch)
    optimizer.step = uncounted(optimizer.step)  # its step counters stay on the CPU: no device sync
    scheduler = build_scheduler(cfg.sched, optimizer, 1000, 10)
    step = TrainStep(model, build_loss(cfg, model), optimizer, scheduler, ModelEMA(model), device=device,
                     memory_format=memory_format, amp=amp_dtype is not None, amp_dtype=amp_dtype or "fp16")
    if train.get("compile"):
        step.ddp_model = torch.compile(model)
    return step


def random_batch(batch: int, size: int, boxes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [B, 3, S, S] (channels_last, as the loader makes them) and ``boxes`` targets per image."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    xy = torch.rand(batch * boxes, 2, generator=g) * size * 0.7
    wh = (torch.rand(batch * boxes, 2, generator=g) * 0.25 + 0.03) * size
    img = torch.arange(batch).repeat_interleave(boxes).float()[:, None]
    cls = torch.randint(0, 3, (batch * boxes, 1), generator=g).float()
    return images.contiguous(memory_format=torch.channels_last), torch.cat([img, cls, xy, xy + wh], 1)


def timed_steps(step, batches, n: int, device: torch.device) -> tuple[float, float, int]:
    """(seconds, host syncs per step by the dispatch count, CUDA sync-debug warnings) of n steps."""
    from utils.syncs import SyncCounter
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught, SyncCounter() as syncs:
        warnings.simplefilter("always")
        for i in range(n):
            step(*batches[i % len(batches)])
    if cuda:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    warned = sum("synchroniz" in str(w.message).lower() for w in caught)
    return seconds, syncs.total / n, warned


def train_steps(tiny: bool, device: torch.device) -> dict:
    size, batch, steps = pick(tiny, (640, 16, 10), (64, 2, 2))
    out = {}
    for key, name, dtype in (("v9-t fp16", "v9-t", "fp16"), ("v9-t bf16", "v9-t", "bf16"), ("r18 fp16", "yolo", "fp16")):
        if dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            print(f"  {key:<10} skipped: {torch.cuda.get_device_name(device)} has no bf16")
            continue
        step = make_step(name, size, batch, device, dtype)
        batches = [random_batch(batch, size, 8, s) for s in range(2)]
        timed_steps(step, batches, 2, device)  # warm-up: kernels chosen, memory pools filled
        seconds, syncs, warned = timed_steps(step, batches, steps, device)
        out[key] = {"img_per_s": round(steps * batch / seconds, 2), "syncs_per_step": syncs, "sync_warnings": warned}
        print(f"  {key:<10} {out[key]['img_per_s']:8.1f} img/s   syncs/step {syncs:.1f}   "
              f"CUDA sync warnings {warned}")
    return out


def throughput(tiny: bool, device: torch.device) -> dict:
    name, size, batch, steps = pick(tiny, ("v9-c", 640, 16, 10), ("v9-t", 64, 2, 2))
    amp = "fp16" if device.type == "cuda" else None
    batches = [random_batch(batch, size, 8, s) for s in range(2)]
    out = {}
    settings = [("cudnn_benchmark off", False, False), ("cudnn_benchmark on", True, False)]
    settings += [] if tiny else [("compile off", False, False), ("compile on", False, True)]
    for label, bench, compiled in settings:
        torch.backends.cudnn.benchmark = bench
        step = make_step(name, size, batch, device, amp, compile=compiled)
        t0 = time.perf_counter()
        timed_steps(step, batches, 2, device)  # warm-up (and the compile)
        warm = time.perf_counter() - t0
        seconds, _, _ = timed_steps(step, batches, steps, device)
        out[label] = {"img_per_s": round(steps * batch / seconds, 2), "warmup_s": round(warm, 1)}
        print(f"  {name} {label:<20} {out[label]['img_per_s']:8.1f} img/s   (warm-up {warm:.1f} s)")
    torch.backends.cudnn.benchmark = False
    return out


# -- 3 ------------------------------------------------------------------------------------------------------
def assigner_memory(tiny: bool, device: torch.device) -> dict:
    from benchmarks.assigner_memory import scene
    from models.assigners import ASSIGNERS, Predictions
    from utils.memory_track import LiveBytes
    batch, img, gts = pick(tiny, (16, 640, (100, 250)), (2, 128, (20,)))
    out = {}
    for method, cls in ASSIGNERS.items():
        for head in sorted(cls.coders):
            for g in gts:
                targets, priors, preds = scene(head, batch, g, img, seed=g)
                priors = priors.to(device)
                targets, preds = targets.to(device), Predictions(preds.boxes.to(device), preds.scores.to(device))
                assigner = cls()
                t0 = time.perf_counter()
                if device.type == "cuda":  # what the caching allocator had to find for the call
                    torch.cuda.synchronize()
                    base = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                    assigner.assign(targets, priors, preds, max_gt=g)
                    torch.cuda.synchronize()
                    peak = torch.cuda.max_memory_allocated() - base
                else:
                    with LiveBytes() as mem:
                        assigner.assign(targets, priors, preds, max_gt=g)
                    peak = mem.peak
                seconds = time.perf_counter() - t0
                out[f"{method}/{head}/G{g}"] = {"peak_mib": round(peak / 2**20, 1), "ms": round(seconds * 1e3, 1)}
                print(f"  {method + '/' + head:<22} G={g:<4} peak {peak / 2**20:9.1f} MiB   {seconds * 1e3:8.1f} ms")
    worst = max(v["peak_mib"] for v in out.values())
    print(f"  largest peak {worst:.1f} MiB (limit 2048 MiB at batch 16)")
    if not tiny and worst > 2048:
        sys.exit(f"an assigner peaked at {worst:.1f} MiB, over 2 GiB")
    return out


# -- 5 ------------------------------------------------------------------------------------------------------
def nms_check(tiny: bool, device: torch.device) -> dict:
    import utils.nms as nms_mod
    n = pick(tiny, 3000, 300)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(n, 2, generator=g) * 600
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 120 + 4], 1).to(device)
    scores, labels = torch.rand(n, generator=g).to(device), torch.randint(0, 80, (n,), generator=g).to(device)

    def fallback():
        offset = labels.to(boxes) * (boxes.max() + 1)
        return nms_mod.nms(boxes + offset[:, None], scores, 0.6)
    out = {"boxes": n, "fallback_ms": round(_best_ms(fallback), 2), "fallback_kept": int(len(fallback()))}
    if nms_mod._tv_batched_nms is not None:
        def tv():
            return nms_mod._tv_batched_nms(boxes, scores, labels, 0.6)
        out.update(torchvision_ms=round(_best_ms(tv), 2), torchvision_kept=int(len(tv())),
                   same_kept=sorted(tv().tolist()) == sorted(fallback().tolist()))
    print("  " + "   ".join(f"{k} {v}" for k, v in out.items()))
    if out.get("same_kept") is False:
        sys.exit("NMS: torchvision and the fallback keep different boxes")
    return out


def _best_ms(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


# -- 6 and 7: trainings under torchrun -------------------------------------------------------------------------
def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
            str(REPO / "main.py"), *args]


def run(cmd: list[str], what: str) -> None:
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if p.returncode:
        sys.exit(f"{what} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")


def overrides(tiny: bool, run_dir: Path, **extra) -> list[str]:
    base = {"data.img_size": pick(tiny, 416, 64), "data.data_fraction": pick(tiny, 1.0, 0.1), "data.num_workers": 2,
            "train.save_dir": str(run_dir.parent), "data.cache_dir": str(run_dir.parent / "cache"),
            "eval.plots": False, "eval.dashboard": False, "model.pretrained": ""}
    return [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in {**base, **extra}.items()]


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def train_resume_precision(tiny: bool, work: Path, gpus: int) -> dict:
    nproc, epochs = max(gpus, 1), pick(tiny, 12, 1)
    first = work / "short"
    t0 = time.perf_counter()
    run(torchrun(nproc, "--config", "bccd_yolo_r18", "--task", "train", "--out", str(first),
                 *overrides(tiny, first, **{"train.epochs": epochs})), "the torchrun training")
    trained = time.perf_counter() - t0
    run(torchrun(nproc, "--task", "train", "--ckpt", str(first / "last.pth"), f"train.epochs={epochs + 1}"),
        "its resume")
    lines = (first / "epochs.jsonl").read_text().splitlines()
    if json.loads(lines[-1])["epoch"] != epochs + 1:
        sys.exit(f"the resume did not train epoch {epochs + 1}: {lines[-1]}")
    out = {"processes": nproc, "epochs": epochs + 1, "train_s": round(trained, 1), "mAP": {}}
    for label, amp in (("fp32", ["train.amp=False"]), ("fp16", ["train.amp=True", "train.amp_dtype='fp16'"]),
                       ("bf16", ["train.amp=True", "train.amp_dtype='bf16'"])):
        if label == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            continue
        val = work / f"val_{label}"
        run([sys.executable, str(REPO / "main.py"), "--task", "val", "--ckpt", str(first / "last.pth"), "--out", str(val),
             "eval.max_images=64", "eval.plots=False", "eval.dashboard=False", *amp], f"val in {label}")
        out["mAP"][label] = round(metrics(val)["mAP"], 4)
    spread = max(out["mAP"].values()) - min(out["mAP"].values())
    out["mAP_spread"] = round(spread, 4)
    print(f"  {nproc} process(es), {epochs} epoch(s) in {trained:.0f} s, resumed for one more; mAP "
          + ", ".join(f"{k} {v:.4f}" for k, v in out["mAP"].items()) + f" (spread {spread:.4f}, limit 0.005)")
    if spread > 0.005:
        sys.exit(f"mAP differs by {spread:.4f} between precisions")
    return out


def sigterm_and_ddp_val(tiny: bool, work: Path, nproc: int) -> dict:
    run_dir = work / "stopped"
    cmd = torchrun(nproc, "--config", "bccd_yolo_r18", "--task", "train", "--out", str(run_dir),
                   *overrides(tiny, run_dir, **{"train.epochs": 50}))
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    t0 = time.time()
    while not (run_dir / "last.pth").is_file():  # the first epoch's save
        if proc.poll() is not None or time.time() - t0 > 1200:
            sys.exit(f"the training to stop ended early or never saved ({proc.returncode}); see {run_dir}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # to torchrun, as a scheduler does; it forwards to its ranks
    code = proc.wait(timeout=600)
    log = (run_dir / "train.log").read_text()
    if "stopped on request" not in log:
        sys.exit(f"SIGTERM did not stop the training at a step (exit {code}); see {run_dir / 'train.log'}")
    from utils.checkpoint import load_checkpoint
    ck = load_checkpoint(run_dir / "last.pth")
    stopped_at = (int(ck["epoch"]), int(ck["epoch_iter"]))
    run(torchrun(nproc, "--task", "train", "--ckpt", str(run_dir / "last.pth"), f"train.epochs={stopped_at[0] + 1}"),
        "the resume after SIGTERM")
    vals = {}
    for label, cmd in (("ddp", torchrun(nproc, "--task", "val", "--ckpt", str(run_dir / "last.pth"))),
                       ("single", [sys.executable, str(REPO / "main.py"), "--task", "val", "--ckpt",
                                   str(run_dir / "last.pth")])):
        out = work / f"val_{label}"
        run(cmd + ["--out", str(out), "eval.plots=False", "eval.dashboard=False"], f"{label} val")
        vals[label] = metrics(out)
    keys = ("mAP", "mAP50", "mAP75", "AR100")
    same = all(abs(vals["ddp"][k] - vals["single"][k]) <= 1e-6 for k in keys)
    print(f"  SIGTERM stopped {nproc} ranks at epoch {stopped_at[0] + 1}, iteration {stopped_at[1]}; resumed to "
          f"the end; DDP val mAP {vals['ddp']['mAP']:.4f} vs 1 process {vals['single']['mAP']:.4f}: "
          f"{'equal' if same else 'DIFFERENT'}")
    if not same:
        sys.exit("a DDP validation differs from the 1-process one")
    return {"processes": nproc, "stopped_at": list(stopped_at), "ddp_val_equal": same}


def main(argv: list[str]) -> None:
    tiny = tiny_mode(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="", help="keep the trainings here (default: a temporary folder)")
    args = p.parse_args(argv)
    quiet_logging()
    device, gpus = device_now(), torch.cuda.device_count()
    if not tiny and device.type != "cuda":
        print("no CUDA device: the full protocol is for a GPU node; running anyway (use --tiny on a CPU)")
    result: dict = {"tiny": tiny}
    with tempfile.TemporaryDirectory(prefix="gpu_bench_") as tmp:
        work = Path(args.out) if args.out else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sections = [("versions", lambda: versions()), ("train_steps", lambda: train_steps(tiny, device)),
                    ("assigner_memory", lambda: assigner_memory(tiny, device)),
                    ("throughput", lambda: throughput(tiny, device)), ("nms", lambda: nms_check(tiny, device)),
                    ("torchrun", lambda: train_resume_precision(tiny, work, gpus))]
        multi = gpus if gpus >= 2 else (2 if tiny else 0)
        if multi:
            sections.append(("multi_process", lambda: sigterm_and_ddp_val(tiny, work, multi)))
        for name, fn in sections:
            print(f"\n[{name}]", flush=True)
            t0 = time.perf_counter()
            result[name] = fn()
            print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
        if not multi:
            print("\n[multi_process] skipped: one GPU (a SIGTERM/resume and DDP-val check needs 2 or more)")
    print_result(result)


if __name__ == "__main__":
    main(sys.argv[1:])
