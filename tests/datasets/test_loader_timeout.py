"""data.loader_timeout_s: a stalled DataLoader worker is an error that names the setting, not a hang."""
import time

import pytest
import torch
from torch.utils.data import Dataset

from datasets.dataset import LoaderStallError, build_dataloader


class Stalling(Dataset):
    """Item 2 takes ``stall_s`` seconds (a hung read on network storage)."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        if i == 2:
            time.sleep(self.stall_s)
        return torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(0, 5), {"image_id": i + 1}


def test_a_stalled_worker_raises_naming_the_setting():
    loader, _ = build_dataloader(Stalling(4.0), 1, train=False, num_workers=1, timeout_s=1.0,
                                 persistent_workers=False)
    seen = []
    with pytest.raises(LoaderStallError, match=r"no batch from the 1 DataLoader workers in 1 s "
                                               r"\(data.loader_timeout_s\): a worker is stalled"):
        for _, _, metas in loader:
            seen.append(metas[0]["image_id"])
    assert seen == [1, 2]  # raised while item 3 was stalled, 1 s into a 4 s stall


def test_slow_but_timely_batches_pass():
    loader, _ = build_dataloader(Stalling(0.2), 1, train=False, num_workers=1, timeout_s=5.0,
                                 persistent_workers=False)
    assert [m[0]["image_id"] for _, _, m in loader] == [1, 2, 3, 4]
    assert len(loader) == 4 and loader.timeout == 5.0


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
next(it)
print("alive", flush=True)
"""  # exits with the loader and its persistent workers still referenced


def test_workers_outlive_a_stranger_sigterm_and_the_process_exits_with_them(tmp_path):
    """SIGTERM sent to a worker by anyone but its parent (a scheduler, torchrun, kill -TERM -PGID) is
    ignored; the parent's own shutdown still ends the workers, so the process exits (no hang)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT.format(repo=str(Path(__file__).resolve().parents[2])))
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)  # from this test process: not the workers' parent
    time.sleep(0.5)
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "alive"
    assert proc.wait(timeout=60) == 0
    for pid in pids:  # ended by their parent at its exit
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
