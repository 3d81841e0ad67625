"""data.loader_timeout_s: a stalled DataLoader worker is an error that names the setting, not a hang;
the workers outlive a SIGTERM that is not their parent's."""
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from datasets.dataset import build_dataloader
from datasets.workers import LoaderStallError

FORK = multiprocessing.get_context("fork")  # the DataLoader forks its workers: they share these events


class Stalling(Dataset):
    """Item 2 (image id 3) is a read that hangs: it sets ``stalled`` and blocks until ``release`` is set
    (at most 120 s, so a failed test leaves no worker behind)."""

    def __init__(self) -> None:
        self.stalled, self.release = FORK.Event(), FORK.Event()

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        if i == 2:
            self.stalled.set()
            self.release.wait(120)
        return torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(0, 5), {"image_id": i + 1}


class Slow(Stalling):
    """Item 2 takes ``delay_s`` (a slow read on network storage) and then comes."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def __getitem__(self, i: int):
        if i == 2:
            time.sleep(self.delay_s)
        return torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(0, 5), {"image_id": i + 1}


def test_a_stalled_worker_raises_naming_the_setting():
    data = Stalling()
    # prefetch 4: the one worker gets every index at once, so items 1 and 2 are made before the hang
    loader, _ = build_dataloader(data, 1, train=False, num_workers=1, timeout_s=1.0, prefetch_factor=4,
                                 persistent_workers=False)
    batches = iter(loader)
    try:
        # The worker's start-up is not timed: the 1 s runs from here, with items 1 and 2 already made.
        assert data.stalled.wait(120)
        seen = []
        with pytest.raises(LoaderStallError, match=r"no batch from the 1 DataLoader workers in 1 s "
                                                   r"\(data.loader_timeout_s\): a worker is stalled"):
            for _, _, metas in batches:
                seen.append(metas[0]["image_id"])
        assert seen == [1, 2]  # raised while item 3 hung
    finally:
        data.release.set()  # the worker can finish: the loader's shutdown does not wait on it


def test_slow_but_timely_batches_pass():
    loader, _ = build_dataloader(Slow(0.2), 1, train=False, num_workers=1, timeout_s=30.0,
                                 persistent_workers=False)
    assert [m[0]["image_id"] for _, _, m in loader] == [1, 2, 3, 4]  # 0.2 s < 30 s: no error
    assert len(loader) == 4 and loader.timeout == 30.0


EXIT_SCRIPT = """
import sys, time
sys.path.insert(0, {repo!r})
import torch
from torch.utils.data import Dataset
from datasets.dataset import build_dataloader

class D(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(0, 5), {{"image_id": i + 1}}

loader, _ = build_dataloader(D(), 2, train=True, num_workers=2, persistent_workers=True)
it = iter(loader)
next(it)
print(" ".join(str(w.pid) for w in it._it._workers), flush=True)
sys.stdin.readline()  # the test signals the workers meanwhile
rest = list(it)  # this epoch's other batches (some may have been made before the signal)
again = list(loader)  # a new epoch from the same persistent workers: made after the signal, by both
print("alive", len(rest), len(again), flush=True)
"""  # exits with the loader and its persistent workers still referenced


def test_workers_outlive_a_stranger_sigterm_and_the_process_exits_with_them(tmp_path):
    """SIGTERM sent to a worker by anyone but its parent (a scheduler, torchrun, kill -TERM -PGID) is
    ignored; the parent's own shutdown still ends the workers, so the process exits (no hang)."""
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT.format(repo=str(Path(__file__).resolve().parents[2])))
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    for pid in pids:
        # Ctrl-C reaches the whole foreground process group: the workers ignore SIGINT outright
        assert proc_status(pid)["SigIgn"] >> (signal.SIGINT - 1) & 1, f"worker {pid} does not ignore SIGINT"
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)  # from this test process: not the workers' parent
    for pid in pids:  # until each worker has taken its SIGTERM: consumed it, or died of it
        t0 = time.monotonic()
        while (state := sigterm_state(pid)) == "pending":
            assert time.monotonic() - t0 < 120, f"worker {pid} never took its SIGTERM"
            time.sleep(0.01)
        assert state == "running", f"worker {pid}: {state} after a stranger's SIGTERM"
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "alive 3 4"  # a dead worker would fail the new epoch
    assert proc.wait(timeout=120) == 0
    for pid in pids:  # ended by their parent at its exit
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def sigterm_state(pid: int) -> str:
    """"pending" (a SIGTERM sent to it is not taken yet), "running", or "ended" (gone or a zombie)."""
    try:
        fields = proc_status(pid)
    except FileNotFoundError:
        return "ended"
    if fields["State"].startswith(("Z", "X")):
        return "ended"
    pending = fields["ShdPnd"] | fields["SigPnd"]  # process- and thread-directed
    return "pending" if pending >> (signal.SIGTERM - 1) & 1 else "running"


def proc_status(pid: int) -> dict:
    """/proc/<pid>/status as {field: text}, its signal masks (Sig*, ShdPnd) as ints."""
    fields = {k: v.strip() for k, v in (line.split(":", 1) for line in
                                        Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)}
    masks = ("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
    return {k: int(v, 16) if k in masks else v for k, v in fields.items()}
