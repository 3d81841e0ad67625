"""train.dist_timeout_min: a collective that waits longer ends the job with an error instead of a hang.

Two real ranks (gloo, localhost) run main.py's main() with train.dist_timeout_min=0.05 (3 s), so the
process group gets its timeout the way every task does (core/tasks.py -> utils/dist.init_distributed).
The training is replaced by one all-reduce that rank 1 never joins: rank 0 must fail within the timeout,
with gloo's message naming it, and exit non-zero.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.core.tiny_data import free_port

REPO = Path(__file__).resolve().parents[2]
LIMIT_S = 180  # hang guard for rank 0's exit (quiet: ~5 s start-up + the 3 s timeout)

CHILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import core.tasks as tasks
from utils.dist import any_rank

sync, rank = Path({sync!r}), int({rank})
real_init = tasks.init_distributed


def init_together(timeout_s):
    # The rendezvous itself waits at most timeout_s (3 s) for the other rank: both start it together,
    # whatever their interpreter start-up took.
    (sync / f"ready{{rank}}").touch()
    t0 = time.monotonic()
    while not all((sync / f"ready{{r}}").is_file() for r in (0, 1)) and time.monotonic() - t0 < 600:
        time.sleep(0.01)
    print(f"process group timeout {{timeout_s:g}} s", flush=True)
    return real_init(timeout_s=timeout_s)


def task(cfg, args, dist, run_dir):
    if dist.rank == 1:
        (sync / "rank1_away").touch()
        time.sleep(600)  # never joins; the test ends this process
    any_rank(True)  # an all-reduce: rank 0 waits for rank 1 here


tasks.init_distributed = init_together
tasks.TASK_FUNCS["train"] = task
from main import main
sys.exit(main(["--config", "bccd_yolo_r18", "--task", "train", "--out", {out!r}, "train.dist_timeout_min=0.05"]))
"""


@pytest.mark.slow
def test_a_rank_that_never_joins_an_all_reduce_ends_the_job_after_dist_timeout_min(tmp_path):
    port, procs = free_port(), []
    try:
        for rank in (0, 1):
            script = tmp_path / f"rank{rank}.py"
            script.write_text(CHILD.format(repo=str(REPO), sync=str(tmp_path), rank=rank, out=str(tmp_path / "run")))
            env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                   "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   "OMP_NUM_THREADS": "1"}
            with open(tmp_path / f"rank{rank}.txt", "w") as out:
                procs.append(subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=env, stdout=out,
                                              stderr=subprocess.STDOUT))
        code = procs[0].wait(timeout=LIMIT_S)
        text = (tmp_path / "rank0.txt").read_text()
        assert code == 1, text[-3000:]
        assert "process group timeout 3 s" in text  # 0.05 minutes
        assert "Timed out waiting 3000ms" in text, text[-3000:]  # gloo: the all-reduce gave up after 3 s
        assert (tmp_path / "rank1_away").is_file() and procs[1].poll() is None  # rank 1 never joined
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=60)
