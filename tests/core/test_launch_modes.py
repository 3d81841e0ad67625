"""Launch modes as users run them: torchrun with DataLoader workers and a SIGTERM to the launcher,
two "nodes" on localhost (static and c10d rendezvous), torch.distributed.launch, and the task
as a config field dispatched by main.py.

The multi-process tests are marked ``slow`` (skip locally with ``-m "not slow"``; CI runs them).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_data import assert_same_predictions, easy_overrides, free_port, make_tiny_voc, tiny_overrides

from main import main, parse_args
from utils.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("survival_child.py")
FAST = {"train.channels_last": False, "eval.plots": False, "eval.dashboard": False}


def torchrun(*flags: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *flags]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    p = subprocess.run(args, check=False, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def val_outputs(d: Path) -> tuple[dict, list]:
    """(metrics.json, predictions.json) of a validation's directory."""
    return json.loads((d / "metrics.json").read_text()), json.loads((d / "predictions.json").read_text())


def same_weights(a: dict, b: dict) -> None:
    assert (a["epoch"], a["step"], a["epoch_iter"]) == (b["epoch"], b["step"], b["epoch_iter"])
    for part in ("model",):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), k
    for k, v in a["ema"]["model"].items():
        assert torch.equal(v, b["ema"]["model"][k]), k
    assert a["ema"]["updates"] == b["ema"]["updates"] and a["scheduler"] == b["scheduler"]


# -- torchrun, workers, SIGTERM to the launcher ------------------------------------------------
@pytest.mark.slow
def test_sigterm_to_torchrun_with_workers_stops_all_ranks_at_one_step_and_resume_is_exact(tmp_path):
    """torchrun forwards SIGTERM to each rank's process group (the rank and its 2 DataLoader
    workers): the workers must survive it, both ranks stop after the same step, rank 0 writes the
    mid-epoch position, each rank exits 143, and a torchrun resume ends with the weights of an
    uninterrupted torchrun run."""
    root = make_tiny_voc(tmp_path / "data", n_train=24, n_val=3)  # 6 iterations per epoch and rank
    ov = tiny_overrides(root, **{**FAST, "data.num_workers": 2, "train.epochs": 2})
    common = ["--config", "bccd_yolo_r18", "--task", "train"] + ov
    ref = tmp_path / "reference"
    run(torchrun("--nproc_per_node=2", f"--master_port={free_port()}", "main.py", "--out", str(ref)) + common)

    run_dir, progress, exits = tmp_path / "stopped", tmp_path / "progress.txt", tmp_path / "exits.txt"
    hooks = {"progress": str(progress), "pause_after_step": 8, "exit_file": str(exits)}  # epoch 2, iteration 2
    console = tmp_path / "console.txt"
    with open(console, "w") as out:
        proc = subprocess.Popen(torchrun("--nproc_per_node=2", f"--master_port={free_port()}", str(CHILD),
                                         json.dumps(hooks), "--out", str(run_dir)) + common,
                                cwd=REPO, env=env(), stdout=out, stderr=subprocess.STDOUT)
    t0 = time.time()
    while not (progress.is_file() and progress.read_text().split()[-1:] == ["8"]):
        assert proc.poll() is None and time.time() - t0 < 300, console.read_text()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # to the launcher only, as `kill <torchrun pid>` or a scheduler
    assert proc.wait(timeout=120) != 0  # torchrun reports that it was signalled
    text = console.read_text()
    assert sorted(exits.read_text().split("\n")[:-1]) == ["0 143", "1 143"], text[-3000:]
    assert "Logging error" not in text and "killed by signal" not in text, text[-3000:]
    for log in ("train.log", "train_rank1.log"):
        lines = (run_dir / log).read_text()
        assert "SIGTERM received: finishing the current step" in lines, log
        assert "stopped on request at epoch 2, iteration 2/6 (step 8)" in lines, log
    ck = load_checkpoint(run_dir / "last.pth")
    assert (ck["epoch"], ck["epoch_iter"], ck["step"]) == (1, 2, 8) and len(ck["rng"]) == 2

    run(torchrun("--nproc_per_node=2", f"--master_port={free_port()}", "main.py", "--task", "train",
                 "--ckpt", str(run_dir / "last.pth")))
    same_weights(load_checkpoint(ref / "last.pth"), load_checkpoint(run_dir / "last.pth"))


# -- two nodes on localhost ------------------------------------------------------------------
def nodes(flags_of_node, args: list[str]) -> None:
    """Start one torchrun per "node" (``flags_of_node(r)``: its torchrun flags) and wait for all."""
    procs = [subprocess.Popen(torchrun(*flags_of_node(r), "main.py", *args), cwd=REPO, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-3000:]


@pytest.mark.slow
def test_two_nodes_train_and_validate_like_one_process(easy_run, tmp_path):
    """2 nodes x 1 process: static rendezvous (--node_rank, --master_addr/port) for training (one
    more epoch from the easy run's weights, so the scores are well inside (0, 1)), the c10d
    rendezvous for val; the scores and detections equal a 1-process val of the same checkpoint."""
    root, easy = easy_run
    train_dir = tmp_path / "train"
    port = free_port()
    nodes(lambda r: ["--nnodes=2", "--nproc_per_node=1", f"--node_rank={r}", "--master_addr=127.0.0.1",
                     f"--master_port={port}"],
          ["--config", "bccd_yolo_r18", "--task", "train", "--out", str(train_dir)]
          + easy_overrides(root, **{**FAST, "train.epochs": 1, "train.init_weights": str(easy / "last.pth")}))
    assert "world size 2" in (train_dir / "train.log").read_text()
    assert sorted(p.name for p in train_dir.glob("*.pth")) == ["best.pth", "last.pth"]  # rank 0 alone
    ckpt = str(train_dir / "last.pth")
    endpoint = f"127.0.0.1:{free_port()}"
    nodes(lambda r: ["--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}",
                     "--rdzv_id=two_nodes"], ["--task", "val", "--ckpt", ckpt, "--out", str(tmp_path / "val2")])
    run([sys.executable, "main.py", "--task", "val", "--ckpt", ckpt, "--out", str(tmp_path / "val1")])
    (m1, p1), (m2, p2), (mt, pt) = (val_outputs(tmp_path / d) for d in ("val1", "val2", "train/val"))
    assert m1["num_images"] == m2["num_images"] == 5
    assert 0.05 < m1["mAP"] < 0.95
    for k in ("mAP", "mAP50", "mAP75", "AR1", "AR10", "AR100"):
        assert m1[k] == pytest.approx(m2[k], abs=1e-9) and m1[k] == pytest.approx(mt[k], abs=1e-9), k
    assert_same_predictions(p1, p2)
    assert_same_predictions(p1, pt)


@pytest.mark.slow
def test_torchrun_with_workers_trains_multi_scale_and_validates_rect_like_one_process(easy_run, tmp_path):
    """torchrun, 2 processes x 2 DataLoader workers: multi-scale training and rectangular validation
    (5 val images in batches of 2: rank 0 takes 2 batches, rank 1 one) finish, and the in-training
    val equals a 1-process rectangular val of the same checkpoint, scores (well inside (0, 1): one
    more epoch from the easy run's weights) and detections. With model.anchors='auto' that equality
    also says rank 1 scored with the anchors rank 0 fitted and stored."""
    root, easy = easy_run
    train_dir = tmp_path / "train"
    ov = easy_overrides(root, **{**FAST, "data.num_workers": 2, "train.epochs": 1, "eval.batch_size": 2,
                                 "eval.rect": True, "train.multi_scale": [192, 320], "model.anchors": "auto", "data.img_size": 256,
                                 "train.init_weights": str(easy / "last.pth")})
    run(torchrun("--nproc_per_node=2", f"--master_port={free_port()}", "main.py", "--config", "bccd_yolo_r18",
                 "--task", "train", "--out", str(train_dir), *ov))
    assert "world size 2" in (train_dir / "train.log").read_text()
    stored = load_checkpoint(train_dir / "last.pth")["config"]["model"]["anchors"]
    assert stored != "auto" and np.array(stored).shape == (3, 3, 2)
    # rank 0's share (ranks > 0 log warnings only); rank 1 scores the third batch, or val would miss an
    # image. 64x80 images at 256 px are 205x256; with half a stride (16 px) of context, rounded up to
    # the stride 32: a 224x256 canvas.
    log = (train_dir / "train.log").read_text()
    assert "val in rectangular batches (eval.rect): 2 of 3 batches on rank 0, canvases (h x w) 224x256" in log
    run([sys.executable, "main.py", "--task", "val", "--ckpt", str(train_dir / "last.pth"), "--out",
         str(tmp_path / "val1"), "data.num_workers=2"])
    assert "3 of 3 batches on rank 0, canvases (h x w) 224x256" in (tmp_path / "val1" / "val.log").read_text()
    (m1, p1), (mt, pt) = (val_outputs(d) for d in (tmp_path / "val1", train_dir / "val"))
    assert m1["num_images"] == mt["num_images"] == 5 and m1["max_det"] == mt["max_det"]
    assert 0.05 < m1["mAP"] < 0.95
    for k in ("mAP", "mAP50", "mAP75", "AR1", "AR10", "AR100"):
        assert m1[k] == pytest.approx(mt[k], abs=1e-9), k
    assert_same_predictions(p1, pt)


@pytest.mark.slow
def test_torch_distributed_launch_passes_local_rank(easy_run, tmp_path):
    """torch.distributed.launch (the legacy launcher) with 2 processes passes --local-rank=N to each:
    both parse it, join one group and score the checkpoint like one process."""
    _, easy = easy_run
    p = run([sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2", f"--master_port={free_port()}",
             "main.py", "--task", "val", "--ckpt", str(easy / "last.pth"), "--out", str(tmp_path / "val2")])
    assert "unrecognized arguments" not in p.stderr
    assert (tmp_path / "val2" / "val_rank1.log").is_file()  # rank 1 ran as rank 1
    run([sys.executable, "main.py", "--task", "val", "--ckpt", str(easy / "last.pth"), "--out", str(tmp_path / "val1")])
    (m1, p1), (m2, p2) = (val_outputs(tmp_path / d) for d in ("val1", "val2"))
    assert 0.05 < m1["mAP"] < 0.95 and m1["mAP"] == pytest.approx(m2["mAP"], abs=1e-9)
    assert_same_predictions(p1, p2)


def test_local_rank_argument_sets_the_environment(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    args = parse_args(["--local-rank=1", "--task", "val"])
    assert args.local_rank == 1 and os.environ["LOCAL_RANK"] == "1"
    monkeypatch.delenv("LOCAL_RANK")
    assert parse_args(["--local_rank", "0"]).local_rank == 0 and os.environ["LOCAL_RANK"] == "0"


def test_device_follows_the_local_rank(monkeypatch):
    """On a GPU node each process takes the GPU of its local rank (not its global rank)."""
    import utils.dist as udist
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(d))
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "3")
    info = udist.init_distributed()
    assert info.device == torch.device("cuda", 3) and chosen == [torch.device("cuda", 3)]


# -- the task is a config field --------------------------------------------------------------
def test_flags_and_overrides_in_any_order():
    args = parse_args(["--task", "train", "train.epochs=1", "--out", "runs/x", "train.seed=1"])
    assert (args.task, args.out, args.overrides) == ("train", "runs/x", ["train.epochs=1", "train.seed=1"])
    assert parse_args([]).task is None  # the config's task decides


@pytest.fixture
def debug_config(tmp_path):
    """A config file whose class sets task = "debug" (an edited config, no --task needed)."""
    root = make_tiny_voc(tmp_path / "data", n_train=4, n_val=2)
    path = tmp_path / "my_debug.py"
    path.write_text("from configs.bccd_yolo_r18 import BccdYoloR18\n\n\n"
                    "class MyDebug(BccdYoloR18):\n    name = \"my_debug\"\n    task = \"debug\"\n")
    return path, tiny_overrides(root, **{"debug.batch_size": 1})


def test_main_dispatches_on_the_config_task(debug_config, tmp_path):
    path, ov = debug_config
    assert main(["--config", str(path), "--out", str(tmp_path / "a")] + ov) == 0
    assert len(list((tmp_path / "a" / "debug").glob("*.png"))) == 3
    assert "task debug, config my_debug" in (tmp_path / "a" / "debug.log").read_text()


def test_task_flag_and_override_replace_the_config_task(debug_config, tmp_path):
    path, ov = debug_config
    assert main(["--config", str(path), "--out", str(tmp_path / "t"), "--task", "train", "train.epochs=1"] + ov) == 0
    ck = load_checkpoint(tmp_path / "t" / "last.pth")
    assert ck["config"]["task"] == "train"  # recorded as data, like every field
    assert main(["--config", str(path), "--out", str(tmp_path / "o"), "task=train", "train.epochs=1"] + ov) == 0
    assert (tmp_path / "o" / "last.pth").is_file()
    assert main(["--config", str(path), "task=fly"] + ov) == 2  # not a task: a config error


def test_process_group_timeout_comes_from_the_config(monkeypatch):
    import core.tasks as tasks
    asked = []

    def fake_init(timeout_s):
        asked.append(timeout_s)
        raise KeyboardInterrupt  # stop before any work

    monkeypatch.setattr(tasks, "init_distributed", fake_init)
    with pytest.raises(KeyboardInterrupt):
        main(["--config", "bccd_yolo_r18", "--task", "debug", "train.dist_timeout_min=2.5"])
    assert asked == [150.0]
    assert main(["--config", "bccd_yolo_r18", "train.dist_timeout_min=0.0"]) == 2  # must be positive
