"""The record of a training run beside its checkpoints, and how a reader tells how the run is doing.

``run_info.json`` (rewritten atomically, utils.files): who trains (pid, host), since when, the model's
size, the planned epochs and the status. Global rank 0 writes it when training starts, after every
epoch (its ``updated`` time is the heartbeat) and when the run ends, with one of:

    running        the trainer is at work, or died without a word (SIGKILL, OOM, a lost node)
    finished       all planned epochs trained
    stopped early  train.patience ended it (``reason`` says why)
    interrupted    a stop request: SIGTERM/SIGINT (``reason`` names the signal) or the caller's stop
    failed         an exception (``reason``: its type and message)

``epochs.jsonl``: one json object per trained epoch (mean losses, lr, seconds, images/s and the
validation mAP when the epoch was evaluated), appended and flushed line by line, so a reader never
meets half a file; a line cut by a kill is skipped. A resumed run appends again and a repeated epoch
replaces the lines from it on.

A reader (``run_status``) calls a "running" run *crashed* when its pid is gone on this host, or, when
it runs on another host, when nothing in its directory changed for a generous heartbeat
(``stale_after_s``); otherwise it is *in progress*.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from utils.files import write_json_atomic

RUN_INFO, EPOCHS = "run_info.json", "epochs.jsonl"
RUNNING, FINISHED, STOPPED_EARLY, INTERRUPTED, FAILED = "running", "finished", "stopped early", "interrupted", "failed"
IN_PROGRESS, CRASHED, UNKNOWN = "in progress", "crashed", "unknown"  # what a reader makes of RUNNING / no file
STALE_AFTER_S = 2 * 3600.0  # a run on another host with no file touched for this long is crashed
_STALE_EPOCHS = 3  # ... or for this many of its longest epochs, when that is longer
_ALIVE_FILES = (RUN_INFO, EPOCHS, "last.pth", "train.log")  # files whose change says the run is alive


def now_iso(t: float | None = None) -> str:
    """Local time with its UTC offset, to the second: comparable across hosts and readable."""
    return datetime.fromtimestamp(time.time() if t is None else t).astimezone().isoformat(timespec="seconds")


def parse_iso(text: str | None) -> float | None:
    """Unix seconds of a ``now_iso`` string (None for None or a malformed string)."""
    try:
        return datetime.fromisoformat(text).timestamp() if text else None
    except (TypeError, ValueError):
        return None


class RunRecord:
    """Writes run_info.json and epochs.jsonl of one training session; a no-op with run_dir None (ranks > 0)."""

    def __init__(self, run_dir: Path | None) -> None:
        self.dir = Path(run_dir) if run_dir is not None else None
        self.info: dict[str, Any] = {}
        self._images, self._train_s = 0, 0.0  # cumulative counters at the last epoch line

    def start(self, *, epochs_planned: int, epochs_done: int, parameters: int, gflops: float,
              world_size: int = 1, resumed_from: str | None = None) -> None:
        """Status "running". A resumed run keeps the wall time of its earlier sessions (``wall_s_before``)."""
        if self.dir is None:
            return
        earlier = read_run_info(self.dir)
        t = now_iso()
        self.info = {"status": RUNNING, "reason": "", "pid": os.getpid(), "host": socket.gethostname(),
                     "started": t, "updated": t, "ended": None,
                     "wall_s_before": round(wall_seconds(earlier), 1) if earlier else 0.0,
                     "parameters": int(parameters), "gflops": round(float(gflops), 3),
                     "epochs_planned": int(epochs_planned), "epochs_done": int(epochs_done),
                     "world_size": int(world_size), "resumed_from": resumed_from}
        self._write()

    def epoch(self, *, epoch: int, losses: dict[str, float], lr: float, seconds: float, images_total: int,
              train_seconds_total: float, metrics: dict | None = None) -> None:
        """Append the line of a trained epoch and refresh run_info (the heartbeat).

        seconds: the epoch's wall time, validation and saving included. images_total /
        train_seconds_total: images trained by all ranks and seconds spent in the training loop since
        the session started; the line holds this epoch's share. metrics: the validation, if any.
        """
        if self.dir is None:
            return
        images, train_s = images_total - self._images, train_seconds_total - self._train_s
        self._images, self._train_s = images_total, train_seconds_total
        line = {"epoch": int(epoch), "time": now_iso(), "losses": dict(losses), "lr": float(lr),
                "seconds": round(seconds, 3), "train_seconds": round(train_s, 3), "images": int(images),
                "images_per_s": round(images / train_s, 2) if train_s > 0 else None}
        line |= {k: float(metrics[k]) for k in ("mAP", "mAP50", "mAP75") if metrics and k in metrics}
        path = self.dir / EPOCHS
        with open(path, "a", encoding="utf-8") as f:
            # After a line cut by a kill, start a new line: appended to the cut one, this epoch would be lost too.
            f.write(("\n" if _ends_mid_line(path) else "") + json.dumps(line) + "\n")
            f.flush()  # a reader (compare, tail -f) sees whole lines as they come
        self.info.update(epochs_done=int(epoch), updated=line["time"])
        self._write()

    def finish(self, status: str, reason: str = "") -> None:
        """The final status (FINISHED, STOPPED_EARLY, INTERRUPTED or FAILED) and the end time."""
        if self.dir is None or not self.info:
            return
        t = now_iso()
        self.info.update(status=status, reason=reason, updated=t, ended=t)
        self._write()

    def _write(self) -> None:
        write_json_atomic(self.dir / RUN_INFO, self.info)


def _ends_mid_line(path: Path) -> bool:
    """The file is not empty and its last byte is not a newline (its last line was cut)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except OSError:
        return False


def end_status(epochs_done: int, epochs_planned: int, stop_signal: int | None, interrupted: bool,
               stop_reason: str) -> tuple[str, str]:
    """(status, reason) of a training that returned without an exception."""
    if interrupted:
        return INTERRUPTED, f"signal {signal.Signals(stop_signal).name}" if stop_signal else "stop requested"
    if stop_reason:
        return STOPPED_EARLY, stop_reason
    if epochs_done >= epochs_planned:
        return FINISHED, ""
    return INTERRUPTED, f"the caller stopped it after epoch {epochs_done} of {epochs_planned}"


def failure_status(error: BaseException) -> tuple[str, str]:
    """(status, reason) of a training that raised ``error``: a second Ctrl-C is an interruption."""
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED, "signal SIGINT (a second Ctrl-C)"
    return FAILED, f"{type(error).__name__}: {error}"[:500]


# -- reading ------------------------------------------------------------------------------------
def read_run_info(run_dir: Path) -> dict | None:
    """run_info.json of run_dir, or None when there is none (a run made before it existed) or it is unreadable."""
    try:
        info = json.loads((Path(run_dir) / RUN_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def read_epochs(run_dir: Path) -> list[dict]:
    """The lines of epochs.jsonl, one per epoch in order; a repeated epoch (a resume from an earlier
    checkpoint) drops the lines from it on; an unreadable line (cut by a kill) is skipped."""
    out: list[dict] = []
    try:
        text = (Path(run_dir) / EPOCHS).read_text(encoding="utf-8")
    except OSError:
        return out
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
            epoch = int(line["epoch"])
        except (ValueError, TypeError, KeyError):
            continue
        out = [e for e in out if e["epoch"] < epoch] + [line]
    return out


def wall_seconds(info: dict, now: float | None = None) -> float:
    """Wall time of a run over all its sessions: the earlier ones plus this one up to its end (or its
    last heartbeat when it ended without a word, or ``now`` while it runs)."""
    start = parse_iso(info.get("started"))
    if start is None:
        return float(info.get("wall_s_before", 0.0))
    end = parse_iso(info.get("ended")) or (now if now is not None else parse_iso(info.get("updated"))) or start
    return float(info.get("wall_s_before", 0.0)) + max(end - start, 0.0)


def last_alive(run_dir: Path) -> float:
    """Unix time of the newest change to a file the run writes as it goes (0.0 when there is none)."""
    times = [p.stat().st_mtime for p in (Path(run_dir) / f for f in _ALIVE_FILES) if p.exists()]
    return max(times, default=0.0)


def stale_after_s(epochs: list[dict]) -> float:
    """How long a live run may leave its files untouched: STALE_AFTER_S, or a few of its longest epochs."""
    longest = max((float(e.get("seconds") or 0.0) for e in epochs), default=0.0)
    return max(STALE_AFTER_S, _STALE_EPOCHS * longest)


def run_status(run_dir: Path, info: dict | None, epochs: list[dict] | None = None, now: float | None = None) -> str:
    """The status to show: the recorded one, with "running" resolved to IN_PROGRESS or CRASHED; UNKNOWN
    without run_info.json."""
    if info is None:
        return UNKNOWN
    status = str(info.get("status", UNKNOWN))
    if status != RUNNING:
        return status
    now = time.time() if now is None else now
    if info.get("host") == socket.gethostname():
        pid = info.get("pid")
        alive = isinstance(pid, int) and _pid_alive(pid, parse_iso(info.get("started")) or now)
        return IN_PROGRESS if alive else CRASHED
    stale = now - last_alive(run_dir) > stale_after_s(epochs or [])
    return CRASHED if stale else IN_PROGRESS


def _pid_alive(pid: int, started: float) -> bool:
    """A process ``pid`` exists on this host and began before the run started (so it is not a later
    process that got the number again)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only the existence check
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    began = _process_start(pid)
    return began is None or began <= started + 5.0  # slack: clock ticks and rounding to the second


def _process_start(pid: int) -> float | None:
    """Unix start time of process ``pid`` from /proc (Linux); None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                    if ln.startswith("btime"))
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22 (starttime); the name may hold spaces
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def improves(score: float | None, best: float, min_delta: float = 0.0) -> bool:
    """Whether a monitored ``score`` makes a new best over ``best`` (-1 = none yet): measurable (finite,
    >= 0: COCO's -1 is "not measurable") and above the best by more than ``min_delta``; a tie keeps the
    earlier epoch. The one rule of best.pth (core/train/selection.py) and of --task compare."""
    return (score is not None and math.isfinite(score) and score >= 0
            and (best < 0 or score > best + min_delta))


# -- the config and results as flat values (compare tables, TensorBoard's HParams tab) -----------
def flatten_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"box_weight": 7.5}}`` -> ``{"loss.box_weight": 7.5}``; dict values (assign.options)
    are flattened too, lists stay lists. The format ``version`` is not a setting and is left out."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if not prefix and key == "version":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_config(value, name + "."))
        else:
            out[name] = value
    return out


def hparam_metrics(monitor: str, best: float, best_epoch: int, final: dict, epochs_done: int) -> dict[str, float]:
    """The results a run shows in TensorBoard's HParams tab, under tags of their own (``hparams/...``):
    the best monitored value and its epoch, the last validation's mAP / mAP50 / mAP75 and the epochs
    done. Values that were never measured (-1, NaN) are left out."""
    out = {f"hparams/best_{monitor}": best, "hparams/best_epoch": float(best_epoch),
           **{f"hparams/final_{k}": final[k] for k in ("mAP", "mAP50", "mAP75") if isinstance(final.get(k), (int, float))},
           "hparams/epochs_done": float(epochs_done)}
    return {k: float(v) for k, v in out.items() if math.isfinite(v) and v >= 0}
