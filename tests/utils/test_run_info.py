"""utils/run_info: run_info.json and epochs.jsonl as the trainer writes them, and how a reader makes
sense of them (cut lines, resumed runs, wall time over sessions, the status of a running run)."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import time

import pytest

from utils.run_info import (
    CRASHED,
    FAILED,
    FINISHED,
    IN_PROGRESS,
    INTERRUPTED,
    STOPPED_EARLY,
    UNKNOWN,
    RunRecord,
    end_status,
    failure_status,
    flatten_config,
    hparam_metrics,
    now_iso,
    parse_iso,
    read_epochs,
    read_run_info,
    run_status,
    stale_after_s,
    wall_seconds,
)

HOST = socket.gethostname()


def _epoch(rec: RunRecord, epoch: int, images: int, train_s: float, lr: float = 0.01, metrics=None) -> None:
    rec.epoch(epoch=epoch, losses={"box": 1.0, "total": 2.5}, lr=lr, seconds=train_s + 1, images_total=images,
              train_seconds_total=train_s, metrics=metrics)


def test_record_start_epochs_finish(tmp_path):
    rec = RunRecord(tmp_path)
    rec.start(epochs_planned=3, epochs_done=0, parameters=1234, gflops=1.23456, world_size=2)
    info = read_run_info(tmp_path)
    assert (info["status"], info["pid"], info["host"], info["ended"]) == ("running", os.getpid(), HOST, None)
    assert (info["parameters"], info["gflops"], info["epochs_planned"], info["epochs_done"]) == (1234, 1.235, 3, 0)
    assert (info["wall_s_before"], info["world_size"]) == (0.0, 2)
    assert run_status(tmp_path, info) == IN_PROGRESS  # this very process trains it
    _epoch(rec, 1, images=8, train_s=2.0, metrics={"mAP": 0.1, "mAP50": 0.2, "mAP75": 0.05, "f1": 0.7})
    _epoch(rec, 2, images=20, train_s=5.0)  # cumulative counters: this epoch trained 12 images in 3 s
    lines = read_epochs(tmp_path)
    assert [(e["epoch"], e["images"], e["train_seconds"], e["images_per_s"]) for e in lines] == [
        (1, 8, 2.0, 4.0), (2, 12, 3.0, 4.0)]
    assert (lines[0]["mAP"], lines[0]["mAP50"], lines[0]["mAP75"]) == (0.1, 0.2, 0.05) and "f1" not in lines[0]
    assert "mAP" not in lines[1] and lines[1]["losses"] == {"box": 1.0, "total": 2.5} and lines[1]["seconds"] == 6.0
    assert read_run_info(tmp_path)["epochs_done"] == 2
    rec.finish(STOPPED_EARLY, "mAP has not improved")
    info = read_run_info(tmp_path)
    assert (info["status"], info["reason"], info["ended"] is not None) == ("stopped early", "mAP has not improved", True)
    assert run_status(tmp_path, info) == STOPPED_EARLY


def test_rank_without_run_dir_writes_nothing(tmp_path):
    rec = RunRecord(None)
    rec.start(epochs_planned=1, epochs_done=0, parameters=1, gflops=0.0)
    _epoch(rec, 1, 4, 1.0)
    rec.finish(FINISHED)
    assert list(tmp_path.iterdir()) == []
    RunRecord(tmp_path).finish(FAILED, "x")  # finish before start: nothing to record
    assert read_run_info(tmp_path) is None and read_epochs(tmp_path) == []


def test_line_cut_by_a_kill_is_skipped_and_the_resumed_run_starts_a_new_line(tmp_path):
    rec = RunRecord(tmp_path)
    rec.start(epochs_planned=4, epochs_done=0, parameters=1, gflops=0.0)
    _epoch(rec, 1, 4, 1.0)
    _epoch(rec, 2, 8, 2.0)
    with open(tmp_path / "epochs.jsonl", "a") as f:
        f.write('{"epoch": 3, "time": "2026-')  # SIGKILL in the middle of the write
    assert [e["epoch"] for e in read_epochs(tmp_path)] == [1, 2]
    resumed = RunRecord(tmp_path)  # resume from last.pth of epoch 2
    resumed.start(epochs_planned=4, epochs_done=2, parameters=1, gflops=0.0, resumed_from="last.pth")
    _epoch(resumed, 3, 4, 1.0, lr=0.003)
    assert [(e["epoch"], e["lr"]) for e in read_epochs(tmp_path)] == [(1, 0.01), (2, 0.01), (3, 0.003)]
    assert (tmp_path / "epochs.jsonl").read_text().count("\n") == 4  # the cut line stays, on a line of its own
    with open(tmp_path / "epochs.jsonl", "a") as f:  # lines that are json but not an epoch line
        f.write('12\n["epoch"]\n{"epoch": null}\n{"lr": 1}\n\n')
    assert [e["epoch"] for e in read_epochs(tmp_path)] == [1, 2, 3]


def test_resumed_run_replaces_lines_from_a_repeated_epoch_on(tmp_path):
    rec = RunRecord(tmp_path)
    rec.start(epochs_planned=5, epochs_done=0, parameters=1, gflops=0.0)
    for e in (1, 2, 3, 4):
        _epoch(rec, e, 4 * e, float(e))
    resumed = RunRecord(tmp_path)  # resumed from the checkpoint of epoch 1 (e.g. best.pth)
    resumed.start(epochs_planned=5, epochs_done=1, parameters=1, gflops=0.0, resumed_from="best.pth")
    _epoch(resumed, 2, 4, 0.5, lr=0.002)
    assert [(e["epoch"], e["lr"]) for e in read_epochs(tmp_path)] == [(1, 0.01), (2, 0.002)]
    _epoch(resumed, 3, 8, 1.0, lr=0.001)
    assert [(e["epoch"], e["lr"], e["images"]) for e in read_epochs(tmp_path)] == [
        (1, 0.01, 4), (2, 0.002, 4), (3, 0.001, 4)]  # counters restart with the session
    assert read_run_info(tmp_path)["epochs_done"] == 3


def _info(**kw) -> dict:
    return {"status": "running", "pid": os.getpid(), "host": HOST, "wall_s_before": 0.0, **kw}


def test_wall_time_accumulates_across_sessions(tmp_path):
    t0 = time.time() - 1000
    ended = _info(status="interrupted", started=now_iso(t0), updated=now_iso(t0 + 100), ended=now_iso(t0 + 100),
                  wall_s_before=50.0)
    assert wall_seconds(ended) == 150.0
    (tmp_path / "run_info.json").write_text(json.dumps(ended))
    rec = RunRecord(tmp_path)
    rec.start(epochs_planned=3, epochs_done=1, parameters=1, gflops=0.0)
    info = read_run_info(tmp_path)
    assert info["wall_s_before"] == 150.0
    started = parse_iso(info["started"])
    assert wall_seconds(info, now=started + 30) == 180.0  # a live run: up to now
    assert wall_seconds(info) == 150.0 + parse_iso(info["updated"]) - started  # else up to its heartbeat
    # A session killed without a word: it counts up to its last heartbeat.
    killed = _info(started=now_iso(t0), updated=now_iso(t0 + 40), wall_s_before=150.0)
    (tmp_path / "run_info.json").write_text(json.dumps(killed))
    RunRecord(tmp_path).start(epochs_planned=3, epochs_done=2, parameters=1, gflops=0.0)
    assert read_run_info(tmp_path)["wall_s_before"] == 190.0
    assert wall_seconds({"wall_s_before": 12.5}) == 12.5  # no start time: the earlier sessions only


def test_now_iso_round_trip():
    t = 1_800_000_000.0
    assert parse_iso(now_iso(t)) == t and parse_iso(now_iso(t + 0.7)) == t
    assert parse_iso(None) is None and parse_iso("yesterday") is None


def test_status_of_a_running_run_on_this_host(tmp_path):
    now = time.time()
    assert run_status(tmp_path, None) == UNKNOWN
    assert run_status(tmp_path, _info(status="finished")) == FINISHED
    assert run_status(tmp_path, _info(started=now_iso(now))) == IN_PROGRESS
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert run_status(tmp_path, _info(pid=dead.pid, started=now_iso(now))) == CRASHED
    assert run_status(tmp_path, _info(pid=None, started=now_iso(now))) == CRASHED  # no pid recorded
    assert run_status(tmp_path, _info(pid=0, started=now_iso(now))) == CRASHED
    later = subprocess.Popen(["sleep", "30"])  # a process that got the number after the run started
    try:
        assert run_status(tmp_path, _info(pid=later.pid, started=now_iso(now - 3600))) == CRASHED
        assert run_status(tmp_path, _info(pid=later.pid, started=now_iso(now + 1))) == IN_PROGRESS
    finally:
        later.kill()
        later.wait()


def test_status_of_a_running_run_on_another_host(tmp_path):
    info = _info(host="another-node", pid=os.getpid())
    (tmp_path / "run_info.json").write_text(json.dumps(info))
    now = time.time()
    assert run_status(tmp_path, info, [], now=now) == IN_PROGRESS
    assert run_status(tmp_path, info, [], now=now + 2 * 3600 + 60) == CRASHED  # 2 h without a change
    slow = [{"epoch": 1, "seconds": 3600.0}, {"epoch": 2, "seconds": 5000.0}]  # epochs of over an hour
    assert stale_after_s(slow) == 15000.0 and stale_after_s([]) == 2 * 3600
    assert run_status(tmp_path, info, slow, now=now + 4 * 3600) == IN_PROGRESS
    (tmp_path / "train.log").write_text("x")
    os.utime(tmp_path / "run_info.json", (now - 5 * 3600, now - 5 * 3600))
    assert run_status(tmp_path, info, [], now=now + 60) == IN_PROGRESS  # the log still grows
    os.utime(tmp_path / "train.log", (now - 5 * 3600, now - 5 * 3600))
    assert run_status(tmp_path, info, [], now=now) == CRASHED


def test_end_and_failure_status():
    assert end_status(10, 10, None, False, "") == (FINISHED, "")
    assert end_status(4, 10, None, False, "no improvement") == (STOPPED_EARLY, "no improvement")
    assert end_status(4, 10, signal.SIGTERM, True, "") == (INTERRUPTED, "signal SIGTERM")
    assert end_status(4, 10, None, True, "") == (INTERRUPTED, "stop requested")
    assert end_status(4, 10, None, False, "") == (INTERRUPTED, "the caller stopped it after epoch 4 of 10")
    assert failure_status(KeyboardInterrupt()) == (INTERRUPTED, "signal SIGINT (a second Ctrl-C)")
    assert failure_status(RuntimeError("CUDA out of memory")) == (FAILED, "RuntimeError: CUDA out of memory")
    assert len(failure_status(ValueError("x" * 1000))[1]) == 500


def test_unreadable_run_info_is_none(tmp_path):
    (tmp_path / "run_info.json").write_text('{"status": "runn')
    assert read_run_info(tmp_path) is None
    (tmp_path / "run_info.json").write_text("[1, 2]")
    assert read_run_info(tmp_path) is None


def test_flatten_config_and_hparam_metrics():
    config = {"version": 3, "name": "r18", "train": {"epochs": 5, "multi_scale": [0.5, 1.5]},
              "assign": {"method": "atss", "options": {"topk": 9}, "extra": {}}}
    assert flatten_config(config) == {"name": "r18", "train.epochs": 5, "train.multi_scale": [0.5, 1.5],
                                      "assign.method": "atss", "assign.options.topk": 9, "assign.extra": {}}
    final = {"mAP": 0.25, "mAP50": -1.0, "mAP75": math.nan, "f1": 0.5}
    assert hparam_metrics("mAP50", 0.6, 3, final, 4) == {"hparams/best_mAP50": 0.6, "hparams/best_epoch": 3.0,
                                                         "hparams/final_mAP": 0.25, "hparams/epochs_done": 4.0}
    assert hparam_metrics("mAP", -1.0, 0, {}, 0) == {"hparams/best_epoch": 0.0, "hparams/epochs_done": 0.0}


@pytest.mark.parametrize("content", ["", "\n"])
def test_first_line_of_a_new_or_empty_file(tmp_path, content):
    (tmp_path / "epochs.jsonl").write_text(content)
    rec = RunRecord(tmp_path)
    rec.start(epochs_planned=1, epochs_done=0, parameters=1, gflops=0.0)
    _epoch(rec, 1, 4, 1.0)
    assert (tmp_path / "epochs.jsonl").read_text().startswith(content + '{"epoch": 1,')
