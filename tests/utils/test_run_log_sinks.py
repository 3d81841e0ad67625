"""A run's log file holds that run only: later runs and later code of the same process (tests,
notebooks) never write into it, while the console keeps logging."""
from __future__ import annotations

import sys

import pytest
from loguru import logger

import utils.logging as ulog
from main import main
from utils.logging import close_run_log, setup_logging


@pytest.fixture(autouse=True)
def _restore_loguru():
    yield
    close_run_log()
    while ulog._handler_ids:  # drop our console sink so later tests log as before
        logger.remove(ulog._handler_ids.pop())
    logger.add(sys.stderr)  # setup_logging removed loguru's default stderr sink: put one back


def test_close_run_log_keeps_the_console(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    setup_logging(tmp_path / "a", rank=0, name="val")
    logger.info("first run")
    close_run_log()
    close_run_log()  # safe twice
    logger.info("between runs")
    setup_logging(tmp_path / "b", rank=0, name="val")
    logger.info("second run")
    first, second = (tmp_path / "a" / "val.log").read_text(), (tmp_path / "b" / "val.log").read_text()
    assert "first run" in first and "between runs" not in first and "second run" not in first
    assert "second run" in second and "first run" not in second and "between runs" not in second
    err = capsys.readouterr().err
    assert [err.count(m) for m in ("first run", "between runs", "second run")] == [1, 1, 1]


BENCH = ["--config", "bccd_yolo_r18", "--task", "benchmark", "data.class_names=['a']", "data.img_size=64",
         "model.channel_sparsity=0.25", "eval.bench_iters=1", "eval.bench_warmup=0", "eval.bench_batch=1",
         "train.num_threads=1"]


def test_later_runs_do_not_write_into_an_earlier_runs_log(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "ok")] + BENCH) == 0
    logger.info("after the run")  # e.g. a test going on in the same process
    # a config error happens before the failing run has a log: it goes to the console only
    assert main(["--out", str(tmp_path / "bad")] + BENCH + ["data.img_size=65"]) == 2
    log = (tmp_path / "ok" / "benchmark.log").read_text()
    assert "task benchmark" in log
    assert "after the run" not in log and "img_size=65" not in log
    assert "data.img_size=65 must be a positive multiple" in capsys.readouterr().err
    # a failure inside a run is logged into that run's own file
    if __import__("torch").cuda.is_available():
        return  # the failure below needs a machine without CUDA
    assert main(["--out", str(tmp_path / "bad2")] + BENCH + ["eval.bench_device='cuda'"]) == 2
    assert "eval.bench_device='cuda' but CUDA is not available" in (tmp_path / "bad2" / "benchmark.log").read_text()
    assert "bench_device" not in (tmp_path / "ok" / "benchmark.log").read_text()
