"""Runs main.py's main() in this process with fault-injection hooks, for tests/core/test_survival.py.

    python tests/core/survival_child.py '<hooks json>' --config ... --task train ...

Hooks (all optional):
- "progress": file that gets one line per finished training step ("<step>"), so a test knows
  how far the run is before it sends a signal;
- "pause_after_step": that step, once its forward and backward are done and just before the ranks
  agree on stop requests (its optimizer step), marks its progress and waits until a stop is
  requested, so a test can signal or kill it at a known position (however long the test takes to
  get there: the wait ends on the request, or after PAUSE_S, only so that a child its test
  abandoned still ends);
- "hold_after_step": as pause_after_step, then, once the stop was requested, it creates
  "<run dir>/stop_seen" and keeps waiting (up to PAUSE_S): only a second signal or a kill ends it;
- "stall_last_write": the first rewrite of an existing last.pth writes half its bytes to the
  tmp file, creates "<run dir>/stalled" and then sleeps (a test SIGKILLs it there);
- "raise_rank" / "raise_step": that rank raises a RuntimeError at the start of that step;
- "nan_rank" / "nan_step": that rank's loss is NaN at that step (the other ranks' stays finite);
- "exit_file": each rank appends "<rank> <exit code>" to it when main() returns or exits (under
  torchrun the launcher's own exit code does not tell the ranks' codes).
"""
from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from core.train import trainer as trainer_module
from main import main

HOOKS = json.loads(sys.argv[1])
PAUSE_S = 900.0  # far beyond any test's own limit: a wait here never decides a test, it only ends
_train_step = trainer_module.Trainer.train_step
_torch_save = torch.save


def train_step(self, images, targets, flush=False):
    if HOOKS.get("raise_rank") == self.dist.rank and self.step + 1 == HOOKS.get("raise_step"):
        raise RuntimeError(f"injected failure on rank {self.dist.rank} at step {self.step + 1}")
    if HOOKS.get("nan_rank") == self.dist.rank and not hasattr(self, "_real_criterion"):
        self._real_criterion = self.criterion

        def criterion(raw, targets_, priors, **kw):
            loss, parts = self._real_criterion(raw, targets_, priors, **kw)
            return (loss * float("nan") if self.step + 1 == HOOKS["nan_step"] else loss), parts
        self.criterion = criterion
    if not hasattr(self, "_hooked_flags"):  # the pauses happen where the step reads its stop request
        self._hooked_flags = self.stepper.host_flags
        self.stepper.host_flags = lambda: paused_flags(self)
    out = _train_step(self, images, targets, flush)
    if self.step not in (HOOKS.get("pause_after_step"), HOOKS.get("hold_after_step")):
        mark_progress(self.step)
    return out


def paused_flags(self):
    """The step's own host flags, read at its optimizer step: at the pause (hold) step, first mark the
    progress and wait there for the stop request, as a signal arriving while that step runs would."""
    step = self.step  # already counts the step being finished
    if step in (HOOKS.get("pause_after_step"), HOOKS.get("hold_after_step")):
        mark_progress(step)
        wait_for(lambda: self.stop_signal is not None)
    if step == HOOKS.get("hold_after_step"):
        (self.run_dir / "stop_seen").touch()
        wait_for(lambda: False)  # a second SIGINT raises KeyboardInterrupt in here
    return self._hooked_flags()


def mark_progress(step: int) -> None:
    if HOOKS.get("progress"):
        with open(HOOKS["progress"], "a") as f:
            f.write(f"{step}\n")


def wait_for(condition) -> None:
    """Until ``condition()`` holds, at most PAUSE_S (signal handlers run between the short sleeps)."""
    t0 = time.monotonic()
    while not condition() and time.monotonic() - t0 < PAUSE_S:
        time.sleep(0.02)


def stalling_save(obj, f, *args, **kwargs):
    name = Path(getattr(f, "name", ""))
    if name.name.startswith("last.pth.tmp") and (name.parent / "last.pth").is_file():
        buf = io.BytesIO()
        _torch_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        (name.parent / "stalled").touch()
        time.sleep(PAUSE_S)
    return _torch_save(obj, f, *args, **kwargs)


trainer_module.Trainer.train_step = train_step
if HOOKS.get("stall_last_write"):
    torch.save = stalling_save

if __name__ == "__main__":
    try:
        code = main(sys.argv[2:])
    except SystemExit as e:
        code = e.code
    if HOOKS.get("exit_file"):
        with open(HOOKS["exit_file"], "a") as f:
            f.write(f"{os.environ.get('RANK', '0')} {code}\n")
    sys.exit(code)
