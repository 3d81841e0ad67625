"""setup_logging sinks, TBWriter no-op paths, and run directory naming."""
from __future__ import annotations

import sys

import pytest
from loguru import logger

import utils.logging as ulog
from utils.logging import TBWriter, setup_logging
from utils.run_dir import RunDirError, make_run_dir


@pytest.fixture(autouse=True)
def _restore_loguru():
    yield
    while ulog._handler_ids:  # drop our sinks so later tests do not write into tmp dirs
        logger.remove(ulog._handler_ids.pop())
    logger.add(sys.stderr)  # setup_logging removed loguru's default stderr sink: put one back


def test_file_and_no_duplicates(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    setup_logging(tmp_path, rank=0)
    setup_logging(tmp_path, rank=0)  # idempotent
    logger.info("hello once")
    logger.debug("too verbose")
    err = capsys.readouterr().err
    assert err.count("hello once") == 1 and "too verbose" not in err
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert [ln for ln in lines if "hello once" in ln] == [lines[-1]] and len(lines) == 1
    assert "| INFO" in lines[0] and "rank" not in lines[0]


def test_non_main_rank_warnings_only(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    setup_logging(tmp_path, rank=1, name="val")
    logger.info("info from rank 1")
    logger.warning("warn from rank 1")
    err = capsys.readouterr().err
    assert "info from rank 1" not in err and "| rank 1 | warn from rank 1" in err
    text = (tmp_path / "val_rank1.log").read_text()
    assert "warn from rank 1" in text and "info from rank 1" not in text
    assert not (tmp_path / "val.log").exists()


def test_tbwriter(tmp_path):
    TBWriter(tmp_path / "tb_rank1", rank=1).add_scalars({"loss": 1.0}, 0)
    assert not (tmp_path / "tb_rank1").exists()
    tb = TBWriter(tmp_path / "tb", rank=0)
    assert tb.enabled
    tb.add_scalars({"loss/box": 0.5, "lr": 1e-3}, step=3)
    tb.close()
    tb.close()  # safe twice
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_tbwriter_without_tensorboard_warns_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    monkeypatch.setattr(ulog, "_tb_warned", False)
    messages: list[str] = []
    sink = logger.add(messages.append, level="WARNING", format="{message}")
    try:
        a, b = TBWriter(tmp_path / "a"), TBWriter(tmp_path / "b")
    finally:
        logger.remove(sink)
    assert not a.enabled and not b.enabled
    a.add_scalars({"x": 1.0}, 0), a.close()
    assert len(messages) == 1 and "TensorBoard logging disabled" in messages[0]


def test_run_dir_increments(tmp_path):
    save = str(tmp_path / "runs")
    first = make_run_dir(save, "exp")
    assert first == tmp_path / "runs" / "exp" and first.is_dir()
    (first / "last.pth").write_bytes(b"x")
    second = make_run_dir(save, "exp")
    assert second.name == "exp2"
    assert make_run_dir(save, "exp") == second  # exp2 is still empty: reused, not exp3
    (second / "train.log").write_text("x")
    assert make_run_dir(save, "exp").name == "exp3"
    assert make_run_dir(save, "exp", exist_ok=True) == first
    assert (first / "last.pth").read_bytes() == b"x"  # never overwritten


def test_run_dir_out(tmp_path):
    out = tmp_path / "a" / "b"
    assert make_run_dir("ignored", "exp", out=str(out)) == out and out.is_dir()
    (out / "last.pth").write_bytes(b"x")
    with pytest.raises(RunDirError, match=rf"--out {out} already holds files of another run \(last.pth\); "
                                          rf"choose another directory, or resume .*--ckpt {out}/last.pth"):
        make_run_dir("ignored", "exp", out=str(out))
    with pytest.raises(RunDirError, match="already holds files"):  # a checkpoint of another run
        make_run_dir("ignored", "exp", out=str(out), resume=str(tmp_path / "other" / "last.pth"))
    assert make_run_dir("ignored", "exp", out=str(out), resume=str(out / "last.pth")) == out  # resume in place
    assert (out / "last.pth").read_bytes() == b"x"
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        make_run_dir("ignored", "exp", out=str(tmp_path / "f"))


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("tensorflow") is None,
                    reason="only meaningful where TensorFlow is installed (requirements-export.txt)")
def test_tensorboard_writer_does_not_import_tensorflow(tmp_path):
    """TensorFlow (the export extra) must not be pulled into every training process by TensorBoard."""
    import subprocess
    from pathlib import Path
    code = ("import sys; from utils.logging import TBWriter; w = TBWriter(sys.argv[1]); "
            "w.add_scalars({'loss': 1.0}, 1); w.close(); print('tensorflow' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "tb")], check=False, capture_output=True,
                       text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "False"
    assert any(f.name.startswith("events.out.tfevents") and f.stat().st_size > 0
               for f in (tmp_path / "tb").iterdir())
