"""Survival of a training run (USERS.md 4b), in real processes: stop signals, kills (also inside a checkpoint write), a
full disk, bad checkpoints, non-finite losses and gradients, a crashing DDP rank, uneven DDP splits.

The kill tests run a real training process (tests/core/survival_child.py runs main.py's main()
with progress marks and pauses at a known step) and signal or kill it; the resumed run's final
weights must equal an uninterrupted run's. Resumes run in this process with one torch thread,
like the child, so the numbers match bit for bit. The subprocess runs of the module start
together (fixture ``jobs``): they are mostly interpreter start-up, which then overlaps.
"""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from loguru import logger
from test_train_resume import assert_same_values
from tiny_data import free_port, make_tiny_voc, tiny_overrides

from configs import load_config
from core.train import Trainer
from utils.checkpoint import load_checkpoint
from utils.dist import DistInfo

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("survival_child.py")
CPU = DistInfo.single()
FAST = {"train.channels_last": False, "eval.plots": False, "eval.dashboard": False, "train.epochs": 2}
WORKERS = {"data.num_workers": 2}  # the default: the kill tests run with DataLoader workers, as users do
# (the reference and the resumes too: mosaic partners come from each worker's pool, so a run depends on
# its worker count, datasets.samplers.PoolSampler)
# Limits on waits for a child: hang guards only (a passing test never reaches them), at least 10x the time
# the awaited thing takes on a quiet machine, since eight jobs share the cores (fixture ``jobs``).
STEP_S = 600  # until a child reaches a step (quiet: about 20 s)
EXIT_S = 300  # from a stop signal or a failure to the exit of the child (quiet: a few seconds)
RUN_S = 900  # a whole child run (quiet: about a minute)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory.mktemp("tiny_voc_survival"), n_train=12, n_val=2)  # 3 steps/epoch


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as in the child processes: the same kernels give the same bits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def overrides(root, **extra):
    return tiny_overrides(root, **{**FAST, **extra})


def cfg_for(root, **extra):
    return load_config("bccd_yolo_r18", overrides(root, **extra))


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """last.pth of an uninterrupted run."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference")
    Trainer(cfg_for(data_root, **WORKERS), CPU, out).fit()
    torch.set_num_threads(before)
    return load_checkpoint(out / "last.pth")


def assert_same_run(a: dict, b: dict) -> None:
    """The same training state, value by value (the RNG states are left out: a process's first validation
    draws from the Python RNG when it imports rich, so they depend on what the process ran before)."""
    assert (a["step"], a["epoch"], a["epoch_iter"]) == (b["step"], b["epoch"], b["epoch_iter"])
    for key in ("model", "ema", "optimizer", "scheduler", "scaler", "best_score", "best_epoch", "metrics"):
        assert_same_values(a[key], b[key], key)


def resume_to_end(root, run: Path) -> dict:
    Trainer(cfg_for(root, **WORKERS), CPU, run, resume=str(run / "last.pth")).fit()
    return load_checkpoint(run / "last.pth")


@dataclass
class Job:
    proc: subprocess.Popen
    run: Path  # the run directory (--out)
    progress: Path  # one line per finished step (rank 0)


def start_job(root, run: Path, hooks: dict, ranks: int = 1, **extra) -> Job:
    """main.py --task train in a child process (under torchrun for ranks > 1) with test hooks."""
    run.mkdir(parents=True)
    progress = run.parent / f"{run.name}_progress.txt"
    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
                     f"--master_port={free_port()}"]
    args = launcher + [str(CHILD), json.dumps({"progress": str(progress), **hooks}), "--config",
                       "bccd_yolo_r18", "--task", "train", "--out", str(run)] + overrides(root, **extra)
    # Output to a file: a full pipe would block the child. Its own session: a test signals the whole
    # process group (the run and its DataLoader workers), as SLURM or `kill -TERM -PGID` do.
    with open(run.parent / f"{run.name}_console.txt", "w") as out:
        proc = subprocess.Popen(args, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return Job(proc, run, progress)


@pytest.fixture(scope="module")
def jobs(data_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("jobs")
    odd = make_tiny_voc(base / "odd_data", n_train=7, n_val=3)  # 7 images over 2 ranks: the sampler pads
    started = {
        "sigterm": start_job(data_root, base / "sigterm", {"pause_after_step": 4}, **WORKERS),
        "sigkill": start_job(data_root, base / "sigkill", {"pause_after_step": 5}, **WORKERS),
        "sigkill_interval": start_job(data_root, base / "sigkill_interval", {"pause_after_step": 5}, **WORKERS,
                                      **{"train.save_interval_min": 1e-9}),  # an in-epoch save after every step
        "stall": start_job(data_root, base / "stall", {"stall_last_write": True}, **WORKERS),
        "sigint_twice": start_job(data_root, base / "sigint_twice", {"hold_after_step": 4}, **WORKERS),
        "ddp_crash": start_job(data_root, base / "ddp_crash", {"raise_rank": 1, "raise_step": 2}, ranks=2),
        "ddp_odd": start_job(odd, base / "ddp_odd", {"nan_rank": 1, "nan_step": 2}, ranks=2,
                             **{"train.freeze": ["backbone"], "train.freeze_epochs": 1}),
    }
    with open(base / "memory_console.txt", "w") as out:  # benchmarks/memory.py, shortened
        memory = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "memory.py"), "train.epochs=8"],
                                  cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=out,
                                  stderr=subprocess.DEVNULL)
    started["memory"] = Job(memory, base / "memory", base / "memory_console.txt")
    yield started
    for job in started.values():  # only what a failed test left running
        if job.proc.poll() is None:
            job.proc.terminate()
            try:
                job.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                job.proc.kill()


def console(job: Job) -> str:
    path = job.run.parent / f"{job.run.name}_console.txt"
    return path.read_text()[-3000:] if path.is_file() else ""


def wait_until(condition, job: Job, what: str, timeout: float = STEP_S) -> None:
    t0 = time.monotonic()
    while not condition():
        if job.proc.poll() is not None:
            pytest.fail(f"the training process ended (code {job.proc.returncode}) before {what}:\n"
                        f"{console(job)}")
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"timed out waiting for {what}:\n{console(job)}")
        time.sleep(0.05)


def steps_done(job: Job) -> int:
    lines = job.progress.read_text().split() if job.progress.is_file() else []
    return int(lines[-1]) if lines else 0


# -- stop signals and kills ---------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_mid_epoch_saves_last_and_resume_continues_exactly(jobs, data_root, reference):
    job = jobs["sigterm"]
    wait_until(lambda: steps_done(job) >= 4, job, "step 4")  # epoch 2, iteration 1 of 3
    os.killpg(job.proc.pid, signal.SIGTERM)  # the run and its 2 DataLoader workers, like a scheduler
    assert job.proc.wait(timeout=EXIT_S) == 128 + signal.SIGTERM, console(job)
    log = (job.run / "train.log").read_text()
    assert "SIGTERM received: finishing the current step" in log
    assert "Logging error" not in console(job) and "killed by signal" not in console(job)
    assert "stopped on request at epoch 2, iteration 1/3 (step 4)" in log
    ck = load_checkpoint(job.run / "last.pth")
    assert (ck["epoch"], ck["epoch_iter"], ck["step"]) == (1, 1, 4)
    assert steps_done(job) == 4  # no step started after the signal
    assert_same_run(reference, resume_to_end(data_root, job.run))


@pytest.mark.slow
def test_sigkill_mid_epoch_resumes_from_the_last_completed_save(data_root, reference, jobs):
    job = jobs["sigkill"]
    wait_until(lambda: steps_done(job) >= 5, job, "step 5")  # epoch 1 saved, mid epoch 2
    os.killpg(job.proc.pid, signal.SIGKILL)  # a lost node: the run and its workers
    assert job.proc.wait(timeout=EXIT_S) == -signal.SIGKILL
    ck = load_checkpoint(job.run / "last.pth")
    assert (ck["epoch"], ck["epoch_iter"], ck["step"]) == (1, 0, 3)  # no in-epoch save within 30 minutes
    assert_same_run(reference, resume_to_end(data_root, job.run))


@pytest.mark.slow
def test_a_second_sigint_stops_at_once(jobs):
    """Ctrl-C twice: the first only asks for a stop at the step's end; the second, while that step is
    still running (held there by the test hook), ends the run at once, without the stop's save."""
    job = jobs["sigint_twice"]
    wait_until(lambda: steps_done(job) >= 4, job, "step 4")  # epoch 2, iteration 1 of 3
    os.killpg(job.proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
    wait_until(lambda: (job.run / "stop_seen").is_file(), job, "the stop request of the first SIGINT")
    assert job.proc.poll() is None  # the first one only asked
    os.killpg(job.proc.pid, signal.SIGINT)
    assert job.proc.wait(timeout=EXIT_S) == -signal.SIGINT, console(job)  # KeyboardInterrupt: Python ends by SIGINT
    assert "KeyboardInterrupt" in console(job) and "Logging error" not in console(job)
    info = json.loads((job.run / "run_info.json").read_text())
    assert (info["status"], info["reason"]) == ("interrupted", "signal SIGINT (a second Ctrl-C)")
    ck = load_checkpoint(job.run / "last.pth")
    assert (ck["epoch"], ck["epoch_iter"], ck["step"]) == (1, 0, 3)  # epoch 1's save: no stop save was made
    assert steps_done(job) == 4 and "stopped on request" not in (job.run / "train.log").read_text()


@pytest.mark.slow
def test_sigkill_loses_at_most_one_save_interval(data_root, reference, jobs):
    """train.save_interval_min so short that last.pth is written after every step: a kill during
    step 5 loses that step only, and the resumed run still equals the uninterrupted one."""
    job = jobs["sigkill_interval"]
    wait_until(lambda: steps_done(job) >= 5, job, "step 5")
    os.killpg(job.proc.pid, signal.SIGKILL)
    assert job.proc.wait(timeout=EXIT_S) == -signal.SIGKILL
    ck = load_checkpoint(job.run / "last.pth")
    assert (ck["epoch"], ck["epoch_iter"], ck["step"]) == (1, 1, 4)  # written after step 4, mid epoch 2
    assert "in-epoch save: last.pth holds epoch 2, iteration 1/3" in (job.run / "train.log").read_text()
    assert_same_run(reference, resume_to_end(data_root, job.run))


@pytest.mark.slow
def test_sigkill_inside_a_checkpoint_write_keeps_the_old_file(data_root, reference, jobs):
    job = jobs["stall"]
    run = job.run
    wait_until(lambda: (run / "stalled").is_file(), job, "the stalled write of last.pth")
    before = (run / "last.pth").read_bytes()
    job.proc.kill()
    job.proc.wait(timeout=EXIT_S)
    assert (run / "last.pth").read_bytes() == before  # the half-written file never replaced it
    stray = list(run.glob("last.pth.tmp-*"))
    assert len(stray) == 1 and 0 < stray[0].stat().st_size
    assert load_checkpoint(run / "last.pth")["epoch"] == 1
    messages = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        final = resume_to_end(data_root, run)
    finally:
        logger.remove(sink)
    assert not list(run.glob("*.tmp-*"))
    assert any(f"removed {stray[0]}: an unfinished checkpoint write" in m for m in messages)
    assert_same_run(reference, final)


def test_stop_request_mid_accumulation_waits_for_the_optimizer_step(data_root, tmp_path, monkeypatch):
    """In process: accumulation to a nominal batch, stop requested inside an accumulation window;
    the resumed epoch skips the trained samples without loading them."""
    extra = {"optim.nominal_batch": 8, "sched.warmup_epochs": 0.0}  # 2 batches per optimizer step
    straight = Trainer(cfg_for(data_root, **extra), CPU, tmp_path / "a")
    straight.fit()
    first = Trainer(cfg_for(data_root, **extra), CPU, tmp_path / "b")
    real_step = first.train_step

    def step_then_stop(images, targets, flush=False):
        out = real_step(images, targets, flush)
        if first.step == 4:  # epoch 2, iteration 1: the first half of an accumulation window
            first.request_stop(signal.SIGINT)
        return out
    first.train_step = step_then_stop
    first.fit()
    assert first.interrupted and (first.epoch, first.epoch_iter, first.step) == (1, 2, 5)
    assert first.last_opt_step == 5  # stopped once the window's optimizer step was taken

    resumed = Trainer(cfg_for(data_root, **extra), CPU, tmp_path / "b",
                      resume=str(tmp_path / "b" / "last.pth"))
    train_set, loaded = resumed.train_loader.dataset, []
    cls = type(train_set)
    real_get = cls.__getitem__
    monkeypatch.setattr(cls, "__getitem__",
                        lambda ds, i: (ds is train_set and loaded.append(i)) or real_get(ds, i))
    resumed.fit(stop_after_epoch=2)
    monkeypatch.undo()
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0 + 1)).tolist()  # seed + epoch
    # only epoch 2's last batch was loaded, never the 8 samples trained on (keys: index, mosaic pool)
    assert [k[0] if isinstance(k, tuple) else k for k in loaded] == order[8:]
    resumed.fit()
    a, b = load_checkpoint(tmp_path / "a" / "last.pth"), load_checkpoint(tmp_path / "b" / "last.pth")
    assert_same_run(a, b)
    assert a["ema"]["updates"] == 4  # 2 epochs x (2 + 1 flushed at the epoch end) batches -> 2 steps each


# -- DDP -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_crashing_rank_ends_every_rank_with_its_traceback_in_the_log(jobs):
    job = jobs["ddp_crash"]
    log = job.run / "train_rank1.log"
    failure = "rank 1 of 2: training failed: RuntimeError: injected failure on rank 1 at step 2"
    wait_until(lambda: log.is_file() and failure in log.read_text(), job, "the failure of rank 1")
    assert job.proc.wait(timeout=EXIT_S) != 0  # torchrun and every rank ended, no rank left waiting
    assert "Traceback" in log.read_text()
    assert not list(job.run.glob("*.tmp-*"))
    left = subprocess.run(["pgrep", "-f", str(job.run)], capture_output=True, text=True, check=False)
    assert not left.stdout.split()  # no orphan rank


@pytest.mark.slow
def test_ddp_odd_split_rank_local_nan_and_thaw_never_hang(jobs):
    job = jobs["ddp_odd"]
    assert job.proc.wait(timeout=RUN_S) == 0, console(job)
    log0, log1 = (job.run / "train.log").read_text(), (job.run / "train_rank1.log").read_text()
    assert "non-finite loss nan at step 2" in log1  # rank 1's own loss
    assert "non-finite loss on another rank at step 2" in log0  # rank 0 skipped the same step
    assert "train.freeze thawed" in log0
    ck = load_checkpoint(job.run / "last.pth")
    assert ck["epoch"] == 2 and ck["step"] == 4 and len(ck["rng"]) == 2


# -- memory --------------------------------------------------------------------------------
@pytest.mark.slow
def test_resident_memory_stays_flat_across_epochs(jobs):
    """benchmarks/memory.py over 8 epochs (validation, plots and JSON every epoch, 2 workers)."""
    job = jobs["memory"]
    assert job.proc.wait(timeout=RUN_S) == 0, job.progress.read_text()[-3000:]
    result = json.loads(job.progress.read_text().strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["epochs"] == 8
    assert result["rss_growth"] < 0.05, job.progress.read_text()[-2000:]
