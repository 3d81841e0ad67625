"""The scan runs in a child process (datasets.scan.run_scan, utils.memory.call_in_child): the same
records and report as an in-process scan, its logs in this process's sinks and run log file, its
errors raised here with their type and message, and no child left behind by an interrupt or by the
death of its parent."""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from dataclasses import fields
from pathlib import Path

import pytest
from loguru import logger

from datasets import RecordTable, build_records
from datasets.scan import IN_PROCESS_ENV, DatasetError
from datasets.yolo import YoloParser
from tests.datasets.three_formats import NAMES, cfg_for, default_items, write_yolo
from utils.memory import ChildTraceback, call_in_child, can_fork_child

BAD_LINE = "0 0.5 0.5 0.2"  # 4 columns
COLUMNS_ERROR = "line 2: expected 5 columns (class cx cy w h), got 4"


@pytest.fixture
def yolo(tmp_path):
    """The three-format test set as YOLO txt, with two bad train items: a label file whose line 2
    has 4 columns and an undecodable image."""
    root = write_yolo(tmp_path / "y", default_items())
    (root / "labels" / "train" / "train001.txt").write_text("2 0.3 0.3 0.2 0.2\n" + BAD_LINE + "\n")
    (root / "images" / "train" / "train002.jpg").write_bytes(b"not a jpeg")
    return root


def _cfg(root: Path, cache: Path | None, **kw):
    return cfg_for(root, "yolo", cache, cache_labels=cache is not None, class_names=list(NAMES), **kw)


def _in_process(monkeypatch, cfg, split="train"):
    with monkeypatch.context() as m:
        m.setenv(IN_PROCESS_ENV, "1")
        return build_records(cfg, split)


def _not_running(pid: int) -> bool:
    """Gone, or a zombie waiting for its reaper (init, once its parent died)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.mark.parametrize("cache", [False, True], ids=["no_cache", "label_cache"])
def test_the_child_scan_gives_every_array_and_count_of_the_in_process_scan(yolo, tmp_path, monkeypatch, cache):
    monkeypatch.delenv(IN_PROCESS_ENV, raising=False)
    records, report = build_records(_cfg(yolo, tmp_path / "c1" if cache else None), "train")
    expected, expected_report = _in_process(monkeypatch, _cfg(yolo, tmp_path / "c2" if cache else None))
    assert isinstance(records, RecordTable) and len(records) == 2  # 4 train images, 2 skipped
    for f in fields(RecordTable):
        a, b = getattr(records, f.name), getattr(expected, f.name)
        assert a.dtype == b.dtype and a.shape == b.shape and (a == b).all(), f.name
        assert not a.flags.writeable, f.name  # the table's arrays are read-only here too
    assert report == expected_report and report.images_skipped == 2 and report.corrupt_images == 1
    if cache:  # the child wrote the cache: a second build loads the same records from it
        again, again_report = build_records(_cfg(yolo, tmp_path / "c1"), "train")
        assert again == records and again_report == report


def test_the_scan_runs_in_another_process(yolo, monkeypatch, caplog_loguru):
    """Fails if the scan ran in this process: the parser logs its pid (through the child's log)."""
    monkeypatch.delenv(IN_PROCESS_ENV, raising=False)
    items = YoloParser.items

    def items_logging_the_pid(self, *args):
        logger.info(f"items parsed in pid {os.getpid()}")
        return items(self, *args)

    monkeypatch.setattr(YoloParser, "items", items_logging_the_pid)
    for env, same in (("", False), ("1", True)):
        monkeypatch.setenv(IN_PROCESS_ENV, env)
        caplog_loguru.clear()
        build_records(_cfg(yolo, None), "train")
        pids = [int(m.split()[-1]) for m in caplog_loguru if m.startswith("items parsed in pid")]
        assert len(pids) == 1 and (pids[0] == os.getpid()) is same, (env, pids)


@pytest.fixture
def run_log(tmp_path):
    """A log file sink as setup_logging adds for a run (its format), removed afterwards (setup_logging
    itself would remove loguru's default sink for the tests that follow)."""
    path = tmp_path / "run" / "train.log"
    sink = logger.add(path, level="INFO", format="{time:YYYY-MM-DD HH:mm:ss} | {level: <7} | {message}")
    yield path
    logger.remove(sink)


def test_the_childs_warnings_reach_the_run_log_file_and_the_sinks(yolo, tmp_path, monkeypatch, run_log, caplog_loguru):
    monkeypatch.delenv(IN_PROCESS_ENV, raising=False)
    build_records(_cfg(yolo, tmp_path / "cache"), "train")
    label = yolo / "labels" / "train" / "train001.txt"
    warning = f"{label}: {COLUMNS_ERROR}; skipped (train split, counted in the scan summary)"
    log = run_log.read_text()
    # once: re-emitted here, not also written by the child through the sinks it inherited
    assert log.count(f"WARNING | {warning}") == 1 and [m.strip() for m in caplog_loguru].count(warning) == 1
    for text in (log, "\n".join(caplog_loguru)):  # the other skip, and the summary (logged here)
        assert "train002.jpg: not an image" in text and "2 skipped (1 corrupt)" in text


def test_errors_raise_again_with_their_type_and_message(yolo, tmp_path, monkeypatch):
    """Val data with a bad item (label cache or not), strict training data: the DatasetError naming
    the file and line, as an in-process scan raises it."""
    (yolo / "labels" / "val" / "val001.txt").write_text(BAD_LINE + "\n")
    monkeypatch.delenv(IN_PROCESS_ENV, raising=False)
    val_error = f"val001.txt: {COLUMNS_ERROR.replace('line 2', 'line 1')}"
    cases = [(_cfg(yolo, tmp_path / "c"), "val", val_error), (_cfg(yolo, None), "val", val_error),
             (_cfg(yolo, tmp_path / "c", strict=True), "train", f"train001.txt: {COLUMNS_ERROR}")]
    for cfg, split, expected in cases:
        with pytest.raises(DatasetError) as child:
            build_records(cfg, split)
        with pytest.raises(DatasetError) as here:
            _in_process(monkeypatch, cfg, split)
        assert type(child.value) is DatasetError and str(child.value) == str(here.value)
        assert expected in str(child.value)
        cause = child.value.__cause__  # the child's traceback, shown when a traceback is printed
        assert isinstance(cause, ChildTraceback) and "_apply_policy" in str(cause)


# -- utils.memory.call_in_child ------------------------------------------------------------
class _Unpicklable(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def _raise_unpicklable():
    raise _Unpicklable(1, 2)


def _kill_myself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_child_that_dies_or_raises_what_does_not_pickle_is_reported():
    assert call_in_child(os.getpid) != os.getpid()  # evaluated in the child
    assert call_in_child(sorted, {3, 1, 2}) == [1, 2, 3]
    with pytest.raises(ChildProcessError, match=r"ended without a result: killed by SIGKILL \(out of memory\?\)"):
        call_in_child(_kill_myself)
    with pytest.raises(ChildProcessError, match=r"ended without a result: exit code 3"):
        call_in_child(os._exit, 3)
    with pytest.raises(ChildProcessError, match=r"^_Unpicklable: 1/2$"):
        call_in_child(_raise_unpicklable)


def _sleep_in_child(pid_file: Path) -> None:
    pid_file.write_text(str(os.getpid()))
    time.sleep(120)


def _wait_for(path: Path, timeout: float = 60) -> int:
    t0 = time.monotonic()
    while not (path.is_file() and path.read_text()):
        assert time.monotonic() - t0 < timeout, f"{path} never written"
        time.sleep(0.01)
    return int(path.read_text())


def test_ctrl_c_in_the_parent_ends_the_scanning_child(tmp_path):
    pid_file = tmp_path / "child.pid"

    def interrupt_once_started():
        _wait_for(pid_file)
        os.kill(os.getpid(), signal.SIGINT)  # to this process only: the child ignores SIGINT anyway

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        call_in_child(_sleep_in_child, pid_file)
    assert time.monotonic() - t0 < 60
    assert _not_running(int(pid_file.read_text()))  # terminated and reaped, not left sleeping


def _parent_of_a_sleeping_child(pid_file: Path) -> None:
    call_in_child(_sleep_in_child, pid_file)


def test_the_child_dies_with_its_parent(tmp_path):
    """A parent killed outright (SIGKILL, or SIGTERM without a handler) runs no cleanup: the kernel
    kills the child (PR_SET_PDEATHSIG)."""
    pid_file = tmp_path / "child.pid"
    parent = multiprocessing.get_context("fork").Process(target=_parent_of_a_sleeping_child, args=(pid_file,))
    parent.start()
    try:
        child = _wait_for(pid_file)
        os.kill(parent.pid, signal.SIGKILL)
        parent.join(30)
        t0 = time.monotonic()
        while not _not_running(child):
            assert time.monotonic() - t0 < 20, f"child {child} outlived its parent"
            time.sleep(0.05)
    finally:
        if parent.is_alive():
            parent.kill()
            parent.join()


def _report_can_fork(queue) -> None:
    queue.put(can_fork_child())


def test_a_daemonic_process_scans_in_process():
    """A daemonic process (e.g. a DataLoader worker) may not have children: run_scan scans in it."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.SimpleQueue()
    proc = ctx.Process(target=_report_can_fork, args=(queue,), daemon=True)
    proc.start()
    proc.join(60)
    assert queue.get() is False and can_fork_child() is True
