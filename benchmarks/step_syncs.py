"""Host syncs per training iteration and collectives per optimizer step, this checkout next to another.

    python benchmarks/step_syncs.py [--baseline DIR] [--tiny]

On a GPU the host runs ahead of the device until it needs a value from it; every such read (a
sync) drains the queue and idles the GPU, and every collective waits for the slowest rank. A CPU
run hides both, so they are counted (utils/syncs.py: a dispatch mode that counts the operations that
sync on CUDA, loaded from this checkout by file so it also counts the baseline's code).

Protocol: the trainer's own epoch loop (``Trainer.train_one_epoch``) on a synthetic VOC set (32
train images), batch 4, ``optim.nominal_batch=8`` (2 micro-batches per optimizer step: 8
iterations, 4 optimizer steps), 128 px, one thread, 0 workers, for v9-t with task_aligned, simota
and atss and the ResNet-18 anchor head (width 0.25) with nearby_grid and simota (--tiny: 64 px, the
first and fourth of them only):

- syncs: counted inside each ``Trainer.train_step`` call, 1 process (the DataLoader and the logs'
  reads every ``train.log_interval`` iterations are outside, and so is the optimizer's own ``step``,
  whose step counters stay on the CPU on a GPU too);
- collectives: every torch.distributed call from Python during the whole epoch loop (the step, the
  stop/save agreement, DDP's per-forward buffer broadcast; not DDP's gradient buckets, which are
  its C++ reducer's), on 2 gloo ranks of 2 images each, per optimizer step.

Each measurement runs in a fresh child process whose sys.path starts at the code under test. Last
line: RESULT {"<model>/<method>": {"syncs_per_iter", "syncs_micro", "syncs_opt", "collectives_per_opt_step"},
with --baseline also "baseline" of each}.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import free_port, pick, print_result, run_json_child, tiny_mode  # noqa: E402

CASES = [("v9-t", "task_aligned"), ("v9-t", "simota"), ("v9-t", "atss"), ("yolo", "nearby_grid"),
         ("yolo", "simota")]
COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
               "barrier", "_broadcast_coalesced", "all_gather_object", "broadcast_object_list", "gather_object")


def _syncs_module():
    """utils/syncs.py of this checkout, whatever code the child imports as ``utils``."""
    spec = importlib.util.spec_from_file_location("_bench_syncs", REPO / "utils" / "syncs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trainer(code: Path, work: Path, model: str, method: str, size: int, world: int):
    sys.path.insert(0, str(code))
    from loguru import logger
    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    from configs import load_config
    from core.train import Trainer
    from utils.dist import DistInfo, init_distributed, set_cpu_threads, wrap_ddp
    cfg = load_config("bccd_yolo_r18" if model == "yolo" else "bccd_v9t", [
        f"data.root={str(work / 'data')!r}", "data.class_names=['red', 'green', 'blue']", f"model.name={model!r}",
        f"assign.method={method!r}", f"data.img_size={size}", "train.batch_size=4", "optim.nominal_batch=8",
        "sched.warmup_epochs=0.0", "sched.warmup_min_iters=0",
        "data.num_workers=0", "train.num_threads=1", "train.epochs=2",
        f"data.cache_dir={str(work / 'cache')!r}", "model.pretrained=''"]
        + (["model.channel_sparsity=0.25"] if model == "yolo" else []))
    set_cpu_threads(1)
    info = init_distributed(timeout_s=300) if world > 1 else DistInfo.single()
    run = work / "runs" / f"{model}_{method}_{world}_{os.getpid()}"
    trainer = Trainer(cfg, info, run)
    trainer.stepper.ddp_model = wrap_ddp(trainer.model, info)
    trainer.model.train()
    return trainer


def measure_syncs(code: Path, work: Path, model: str, method: str, size: int) -> dict:
    trainer = _trainer(code, work, model, method, size, 1)
    syncs = _syncs_module()
    counter, counts = syncs.SyncCounter, []
    trainer.optimizer.step = syncs.uncounted(trainer.optimizer.step)  # its step counters stay on the CPU on a GPU
    step = trainer.train_step

    def counted(*args, **kwargs):
        with counter() as c:
            out = step(*args, **kwargs)
        counts.append((c.total, trainer.step == trainer.last_opt_step))
        return out
    trainer.train_step = counted
    trainer.train_one_epoch(0)
    micro = [n for n, opt in counts if not opt]
    opt = [n for n, is_opt in counts if is_opt]
    return {"syncs_per_iter": sum(n for n, _ in counts) / len(counts), "syncs_micro": max(micro, default=0),
            "syncs_opt": max(opt, default=0), "iterations": len(counts), "optimizer_steps": len(opt)}


def measure_collectives(rank: int, code: str, work: str, model: str, method: str, size: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", OMP_NUM_THREADS="1")
    trainer = _trainer(Path(code), Path(work), model, method, size, 2)
    import torch.distributed as dist
    calls: list[str] = []
    real = {name: getattr(dist, name) for name in COLLECTIVES}
    for name in COLLECTIVES:
        setattr(dist, name, lambda *a, _name=name, **k: (calls.append(_name), real[_name](*a, **k))[1])
    opt_steps = []
    step = trainer.train_step

    def tracked(*args, **kwargs):
        out = step(*args, **kwargs)
        opt_steps.append(trainer.step == trainer.last_opt_step)
        return out
    trainer.train_step = tracked
    trainer.train_one_epoch(0)
    if rank == 0:
        Path(work, "collectives.json").write_text(json.dumps({"calls": len(calls), "opt_steps": sum(opt_steps),
                                                              "kinds": sorted(set(calls))}))
    for name, fn in real.items():  # the group's own teardown is not counted
        setattr(dist, name, fn)
    dist.destroy_process_group()


def child(args: argparse.Namespace) -> None:
    model, method = args.case.split("/")
    work = Path(args.work)
    if args.ranks == 1:
        print(json.dumps(measure_syncs(Path(args.code), work, model, method, args.size)))
        return
    import torch.multiprocessing as mp
    mp.spawn(measure_collectives, args=(args.code, str(work), model, method, args.size, free_port()), nprocs=2)
    print((work / "collectives.json").read_text())


def run_child(code: Path, case: str, work: Path, size: int, ranks: int) -> dict:
    args = ["--child", "--code", str(code), "--case", case, "--work", str(work), "--size", str(size), "--ranks", str(ranks)]
    return run_json_child(str(Path(__file__).resolve()), args, code, f"{case} ({ranks} ranks)")


def main(argv: list[str]) -> None:
    tiny = tiny_mode(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="", help="another checkout, measured the same way")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--code", default=str(REPO), help=argparse.SUPPRESS)
    p.add_argument("--case", default="", help=argparse.SUPPRESS)
    p.add_argument("--work", default="", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=pick(tiny, 128, 64), help=argparse.SUPPRESS)
    p.add_argument("--ranks", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    from benchmarks.common import write_voc_dataset
    codes = {"new": REPO} | ({"baseline": Path(args.baseline).resolve()} if args.baseline else {})
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="step_syncs_") as tmp:
        for name, code in codes.items():
            work = Path(tmp) / name
            write_voc_dataset(work / "data", n_train=32, n_val=4, img_hw=(96, 128))
            for model, method in pick(tiny, CASES, CASES[::3]):  # tiny: v9-t/task_aligned, yolo/nearby_grid
                case = f"{model}/{method}"
                syncs = run_child(code, case, work, args.size, 1)
                coll = run_child(code, case, work, args.size, 2)
                row = {k: syncs[k] for k in ("syncs_per_iter", "syncs_micro", "syncs_opt")}
                row["collectives_per_opt_step"] = coll["calls"] / max(coll["opt_steps"], 1)
                row["collective_kinds"] = coll["kinds"]
                (result.setdefault(case, {}) if name == "new" else result[case].setdefault("baseline", {})).update(row)
                print(f"{name:<9}{case:<20} syncs/iteration {row['syncs_per_iter']:6.2f} (micro-batch "
                      f"{row['syncs_micro']}, optimizer step {row['syncs_opt']}); collectives/optimizer step "
                      f"{row['collectives_per_opt_step']:.2f} {coll['kinds']}", flush=True)
    print(f"\n{'':<20}{'syncs per iteration':>22}{'collectives per optimizer step':>34}")
    print(f"{'':<20}{'before':>11}{'after':>11}{'before':>17}{'after':>17}")
    for case, row in result.items():
        old = row.get("baseline", {})
        print(f"{case:<20}{old.get('syncs_per_iter', float('nan')):>11.2f}{row['syncs_per_iter']:>11.2f}"
              f"{old.get('collectives_per_opt_step', float('nan')):>17.2f}{row['collectives_per_opt_step']:>17.2f}")
    print_result(result)


if __name__ == "__main__":
    main(sys.argv[1:])
