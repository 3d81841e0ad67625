"""The training step as a GPU runs it, counted on the CPU: host syncs per iteration (utils.syncs), and
collectives per optimizer step on 2 gloo ranks. Budget (issue 20): an accumulated micro-batch reads
nothing from the device and talks to no rank; an optimizer step reads once (the agreed flags) and, under
DDP, makes one all-reduce besides DDP's own gradient buckets."""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_data import free_port

from configs import load_config
from core.train.step import TrainStep, max_targets_per_image
from models import build_loss, build_model
from utils.dist import cleanup, init_distributed, wrap_ddp
from utils.optim import build_optimizer
from utils.scheduler import build_scheduler
from utils.syncs import SyncCounter, uncounted

TARGETS = torch.tensor([[0, 0, 8.0, 8, 40, 30], [1, 2, 20, 24, 60, 60], [1, 1, 2, 2, 30, 14], [1, -1, 40, 40, 60, 60]])
CASES = [("v9-t", "task_aligned"), ("v9-t", "simota"), ("v9-t", "atss"), ("yolo", "nearby_grid"),
         ("yolo", "simota"), ("yolo", "single_grid")]


def make_step(name: str, method: str, accumulate: int = 2) -> TrainStep:
    cfg = load_config("bccd_yolo_r18", ["data.img_size=64", "model.channel_sparsity=0.25", f"model.name={name!r}",
                                        f"assign.method={method!r}", "train.ema=True", "sched.warmup_epochs=0.0",
                                        "sched.warmup_min_iters=0"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg.optim, model, 2)
    scheduler = build_scheduler(cfg.sched, optimizer, 10, 2, accumulate)
    from utils.ema import ModelEMA
    optimizer.step = uncounted(optimizer.step)  # its step counters stay on the CPU on a GPU too
    return TrainStep(model, build_loss(cfg, model), optimizer, scheduler, ModelEMA(model),
                     device=torch.device("cpu"), grad_clip=10.0)


def images(seed: int) -> torch.Tensor:
    return torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_max_targets_per_image_is_read_on_the_host():
    assert max_targets_per_image(TARGETS) == 3  # image 1: two boxes and an ignore region
    assert max_targets_per_image(torch.zeros(0, 6)) == 0
    assert max_targets_per_image(TARGETS.to("meta")) is None  # not on the host: the loss finds it itself


@pytest.mark.parametrize("name, method", CASES)
def test_a_micro_batch_reads_nothing_and_an_optimizer_step_reads_once(name, method):
    step = make_step(name, method, accumulate=2)
    for i in range(2):  # the second window too: the snapshot, EMA and scheduler after a real step
        with SyncCounter(trace=True) as micro:
            parts = step(images(2 * i), TARGETS)
        assert micro.total == 0, dict(micro.where)
        assert step.last_opt_step == 2 * i and all(v.dim() == 0 for v in parts.values())
        with SyncCounter(trace=True) as opt:
            parts = step(images(2 * i + 1), TARGETS)
        assert step.last_opt_step == 2 * i + 2 and parts, "the optimizer step ran"
        assert opt.total == 1 and opt.by_op == {"aten::_local_scalar_dense": 1}, dict(opt.where)


def test_non_finite_loss_of_an_earlier_micro_batch_skips_the_optimizer_step():
    """The check waits for the optimizer step (no read per micro-batch), and still drops the whole
    window: the weights and the BatchNorm statistics stay as they were."""
    step = make_step("yolo", "nearby_grid", accumulate=2)
    real = step.criterion
    before = {k: v.clone() for k, v in step.model.state_dict().items()}
    step.criterion = lambda raw, t, p, **kw: (lambda loss, parts: (loss * float("nan"), parts))(*real(raw, t, p, **kw))
    assert step(images(0), TARGETS)  # a micro-batch: nothing decided yet
    step.criterion = real
    assert step(images(1), TARGETS) == {} and step.bad_steps == 1 and step.last_opt_step == 2
    for k, v in step.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert step(images(2), TARGETS) and step(images(3), TARGETS) and step.bad_steps == 0


COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
               "barrier", "_broadcast_coalesced", "all_gather_object", "broadcast_object_list", "gather_object")


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    info = init_distributed(timeout_s=120)
    calls: list[str] = []
    try:
        step = make_step("v9-t", "task_aligned", accumulate=2)
        step.ddp_model = wrap_ddp(step.model, info)
        requests = iter([(False, False), (rank == 1, False), (False, rank == 0)])  # per optimizer step
        step.host_flags = lambda: next(requests)
        for name in COLLECTIVES:  # count what our code and DDP's Python side ask of the process group
            real = getattr(dist, name)
            setattr(dist, name, lambda *a, _real=real, _name=name, **k: (calls.append(_name), _real(*a, **k))[1])
        flags, per_step = [], []
        for i in range(6):
            with SyncCounter() as syncs:
                step(images(10 * rank + i), TARGETS)
            per_step.append([len(calls), syncs.total])
            if step.step == step.last_opt_step:
                flags.append(list(step.flags))
        ema = torch.cat([b.reshape(-1).float() for b in step.ema.ema.buffers()])
        weights = torch.cat([p.detach().reshape(-1) for p in step.model.parameters()])
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"calls": calls, "per_step": per_step, "flags": flags, "weights": weights[:50].tolist(),
                       "ema_buffers": ema[:50].tolist(), "bucket_view": step.ddp_model.gradient_as_bucket_view,
                       "broadcast_buffers": step.ddp_model.broadcast_buffers}, f)
    finally:
        cleanup()


@pytest.mark.slow
def test_one_all_reduce_per_optimizer_step_carries_every_rank_decision(tmp_path):
    """2 gloo ranks, DDP, 2 micro-batches per optimizer step, 6 iterations: 3 all-reduces (ours) and
    nothing else from Python (DDP broadcasts no buffers per forward); one read per optimizer step; a
    stop asked on rank 1 alone and a save due on rank 0 alone reach both ranks at the same step."""
    mp.spawn(_rank, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    for r in (r0, r1):
        assert r["bucket_view"] and not r["broadcast_buffers"]
        assert r["calls"] == ["all_reduce"] * 3
        assert r["per_step"] == [[0, 0], [1, 1], [1, 0], [2, 1], [2, 0], [3, 1]]  # [collectives so far, syncs]
        assert r["flags"] == [[False, False], [True, False], [False, True]]
    assert r0["weights"] == r1["weights"]  # DDP averaged the gradients: the same update on both ranks
    assert r0["ema_buffers"] != r1["ema_buffers"]  # each rank's BatchNorm statistics saw its own batches


@pytest.fixture
def meta_default():
    """Every tensor made without a device lands on "meta" and fails when it meets the CPU's."""
    torch.set_default_device("meta")
    yield
    torch.set_default_device(None)


def test_meta_default_device_catches_a_tensor_made_without_a_device(meta_default):
    with pytest.raises(RuntimeError, match="meta"):
        torch.ones(2, device="cpu") + torch.zeros(2)  # the control: what the checks below would raise


@pytest.mark.parametrize("name, method", CASES + [("v7", "ratio_grid"), ("yolo", "all_grid"), ("yolo", "atss")])
def test_train_step_makes_every_tensor_on_its_device(name, method):
    """Steps on the CPU with torch's default device set to "meta": a tensor the step, the assigner or
    the loss made without ``device=`` would be a meta tensor and fail against the CPU ones."""
    step = make_step(name, method, accumulate=2)
    batches = [images(i) for i in range(3)]
    torch.set_default_device("meta")
    try:
        for i, ims in enumerate(batches):
            parts = step(ims, TARGETS)
            assert parts and all(v.device.type == "cpu" for v in parts.values()), i
    finally:
        torch.set_default_device(None)
    assert step.last_opt_step == 2 and all(p.device.type == "cpu" for p in step.model.parameters())


@pytest.mark.parametrize("name", ["v9-t", "yolo", "v7"])
def test_decode_and_postprocess_make_every_tensor_on_its_device(name):
    """What Evaluator.predict does per batch (core.evaluation.evaluator.infer, models.postprocess, and
    the mapping back to original pixels), under a "meta" default device."""
    from core.evaluation.evaluator import _to_original, infer
    from models.postprocess import postprocess
    cfg = load_config("bccd_yolo_r18", ["data.img_size=64", f"model.name={name!r}"])
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    x = images(0).float() / 255
    meta = {"scale": 0.5, "pad": (0.0, 8.0), "orig_hw": (96, 128)}
    with torch.no_grad():
        ref = postprocess(*infer(net, x, cfg.train), 0.0, 0.6, 50)
        torch.set_default_device("meta")
        try:
            dets = postprocess(*infer(net, x, cfg.train), 0.0, 0.6, 50)
            mapped = [_to_original(d, meta) for d in dets]
        finally:
            torch.set_default_device(None)
    assert len(dets) == 2 and all(len(d["boxes"]) for d in dets)
    for d, r, m in zip(dets, ref, mapped):
        assert torch.equal(d["boxes"], r["boxes"]) and torch.equal(d["scores"], r["scores"])
        assert len(m["boxes"]) == len(d["boxes"])
