"""Label cache: reused while valid; rebuilt (and the log says why) when files, sizes, mtimes,
class names or parsing settings change."""
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest

from datasets import RecordTable, build_records
from datasets.file_stats import FileStats
from datasets.label_cache import CACHE_VERSION, split_cache_dir
from datasets.yolo import YoloParser
from tests.datasets.three_formats import (
    NAMES,
    cfg_for,
    default_items,
    rect_image,
    write_voc,
    write_yolo,
)


@pytest.fixture
def yolo(tmp_path):
    return write_yolo(tmp_path / "y", default_items()), tmp_path / "cache"


def _cfg(root, cache, **kw):
    return cfg_for(root, "yolo", cache, cache_labels=True, **{"class_names": list(NAMES), **kw})


def _scan(cfg, logs, split="train"):
    """(records, report, the cache log line of this call)."""
    logs.clear()
    records, report = build_records(cfg, split)
    line = next(m for m in logs if "from the cache" in m or m.startswith("scanning split"))
    return records, report, line


def _same(a, b):
    return [(r.file, r.img_hw, r.boxes.tolist(), r.labels.tolist()) for r in a] == \
        [(r.file, r.img_hw, r.boxes.tolist(), r.labels.tolist()) for r in b]


def _bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_second_scan_comes_from_the_cache(yolo, caplog_loguru):
    root, cache = yolo
    first, rep1, line = _scan(_cfg(root, cache), caplog_loguru)
    assert "(no cache yet)" in line
    second, rep2, line = _scan(_cfg(root, cache), caplog_loguru)
    assert "from the cache" in line and _same(first, second)
    assert rep1.counts() == rep2.counts() and rep1.summary() == rep2.summary()
    assert all(r.boxes.dtype == np.float32 and r.labels.dtype == np.int64 for r in second)
    directory = split_cache_dir(_cfg(root, cache), "yolo", root.resolve(), ["images/train"], "train")
    assert (directory / "labels.npz").is_file() and not list(directory.glob("*.tmp"))


def test_label_edit_invalidates(yolo, caplog_loguru):
    root, cache = yolo
    _scan(_cfg(root, cache), caplog_loguru)
    label = root / "labels" / "train" / "train000.txt"
    label.write_text("1 0.5 0.5 0.25 0.25\n")
    records, _, line = _scan(_cfg(root, cache), caplog_loguru)
    assert "files changed: 1 modified" in line and "train000.txt" in line
    assert records[0].labels.tolist() == [1] and len(records[0].boxes) == 1


def test_mtime_only_change_invalidates(yolo, caplog_loguru):
    root, cache = yolo
    _scan(_cfg(root, cache), caplog_loguru)
    _bump_mtime(root / "images" / "train" / "train001.jpg")
    _, _, line = _scan(_cfg(root, cache), caplog_loguru)
    assert "1 modified" in line and "train001.jpg" in line


def test_added_image_and_label_are_seen(yolo, caplog_loguru):
    root, cache = yolo
    first, _, _ = _scan(_cfg(root, cache), caplog_loguru)
    from PIL import Image
    Image.fromarray(rect_image((40, 40), [])).save(root / "images" / "train" / "train009.jpg")
    records, _, line = _scan(_cfg(root, cache), caplog_loguru)
    assert "files changed" in line and "images/train" in line  # the folder listing changed
    assert len(records) == len(first) + 1
    # a label appears for an image that had none (a recorded missing file now exists)
    (root / "labels" / "train" / "train009.txt").write_text("2 0.5 0.5 0.5 0.5\n")
    records, _, line = _scan(_cfg(root, cache), caplog_loguru)
    assert "1 added" in line and "train009.txt" in line and records[-1].labels.tolist() == [2]
    (root / "labels" / "train" / "train009.txt").unlink()
    _, rep, line = _scan(_cfg(root, cache), caplog_loguru)
    assert "1 removed" in line and rep.missing_annotations == 1


def test_class_names_change_invalidates(yolo, caplog_loguru):
    """A stale cache must never hand out class indices of an old class list."""
    root, cache = yolo
    _scan(_cfg(root, cache), caplog_loguru)
    records, _, line = _scan(_cfg(root, cache, class_names=["bird", "dog", "cat"]), caplog_loguru)
    assert "settings changed: class_names" in line
    assert records[0].labels.tolist() == [0, 1]  # same ids (YOLO stores ids), names follow the list


def test_parsing_settings_change_invalidates(tmp_path, caplog_loguru):
    root = write_voc(tmp_path / "v", {"train": [("a", rect_image((40, 40), [(0, 2, 2, 20, 20)]),
                                                  [(0, 2, 2, 20, 20), (1, 22, 22, 38, 38, 1)])]})
    base = cfg_for(root, "voc", tmp_path / "cache", cache_labels=True, class_names=list(NAMES))
    records, _, _ = _scan(base, caplog_loguru)
    assert len(records[0].ignore) == 1
    records, _, line = _scan(cfg_for(root, "voc", tmp_path / "cache", cache_labels=True,
                                     class_names=list(NAMES), difficult_as_ignore=False), caplog_loguru)
    assert "settings changed: difficult_as_ignore: True -> False" in line
    assert len(records[0].boxes) == 2 and len(records[0].ignore) == 0
    _, _, line = _scan(cfg_for(root, "voc", tmp_path / "cache", cache_labels=True, class_names=list(NAMES),
                               difficult_as_ignore=False, strict=True), caplog_loguru)
    assert "strict: False -> True" in line


def test_refresh_and_unreadable_cache_rebuild(yolo, caplog_loguru):
    root, cache = yolo
    _scan(_cfg(root, cache), caplog_loguru)
    (path,) = cache.rglob("labels.npz")
    _, _, line = _scan(_cfg(root, cache, cache_refresh=True), caplog_loguru)
    assert "from the cache" in line  # already rebuilt by this run (e.g. by another rank)
    os.utime(path, ns=(0, 0))  # written by an earlier run
    _, _, line = _scan(_cfg(root, cache, cache_refresh=True), caplog_loguru)
    assert "(data.cache_refresh=True)" in line
    path.write_bytes(b"garbage")
    records, _, line = _scan(_cfg(root, cache), caplog_loguru)
    assert "unreadable cache" in line and len(records) == 4
    _, _, line = _scan(_cfg(root, cache), caplog_loguru)
    assert "from the cache" in line


def test_val_split_has_its_own_cache(yolo, caplog_loguru):
    root, cache = yolo
    _scan(_cfg(root, cache), caplog_loguru)
    val, _, line = _scan(_cfg(root, cache), caplog_loguru, split="val")
    assert "no cache yet" in line and [Path(r.file).stem for r in val] == ["val000", "val001"]


def test_unwritable_cache_location_warns_and_scans(yolo, caplog_loguru):
    root, cache = yolo
    cache.write_text("a file, not a folder")
    records, _ = build_records(_cfg(root, cache), "train")
    assert len(records) == 4
    assert any("cache disabled: cannot write" in m for m in caplog_loguru)


def test_cache_file_is_plain_arrays_and_loads_a_record_table(yolo, caplog_loguru):
    root, cache = yolo
    first, _, _ = _scan(_cfg(root, cache), caplog_loguru)
    second, _, _ = _scan(_cfg(root, cache), caplog_loguru)
    assert isinstance(second, RecordTable) and second == first
    (path,) = cache.rglob("labels.npz")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert all(a.dtype != object for a in arrays.values())
    assert sorted(k for k in arrays if not k.startswith("rec_")) == ["meta", "stat_names", "stat_stats"]
    names = arrays["stat_names"].tobytes().split(b"\0")
    stats = arrays["stat_stats"]
    assert stats.dtype == np.int64 and stats.shape == (len(names), 2) and names == sorted(names)
    label = str(root.resolve() / "labels" / "train" / "train000.txt").encode()
    st = os.stat(label)
    assert stats[names.index(label)].tolist() == [st.st_size, st.st_mtime_ns]
    assert "files" not in json.loads(str(arrays["meta"]))  # no per-file JSON entries any more


def test_cache_of_an_older_version_is_rebuilt_with_a_log_line(yolo, caplog_loguru):
    root, cache = yolo
    _scan(_cfg(root, cache), caplog_loguru)
    (path,) = cache.rglob("labels.npz")
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    meta["settings"]["version"] = 1  # version 1 kept {path: [size, mtime]} in the meta, no table
    meta["files"] = {str(root / "data.yaml"): [1, 2]}
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), files=np.array(["a.jpg"]), n_boxes=np.zeros(1, np.int64))
    records, _, line = _scan(_cfg(root, cache), caplog_loguru)
    assert line.strip() == f"scanning split 'train' (settings changed: version: 1 -> {CACHE_VERSION})"
    assert len(records) == 4
    _, _, line = _scan(_cfg(root, cache), caplog_loguru)
    assert "from the cache" in line


def _build_in_child(cfg, log: Path, barrier) -> None:
    """A forked process (a DDP rank) building the train records; its log goes to ``log``."""
    from loguru import logger
    logger.remove()
    logger.add(log, level="INFO", format="{message}")
    barrier.wait()
    records, _ = build_records(cfg, "train")
    logger.info(f"got {len(records)} records")


WAITING = "waiting for another process building the label cache of split 'train'"


def test_one_process_scans_while_the_other_waits_and_loads(yolo, tmp_path, monkeypatch, caplog_loguru):
    """Scan once: of two processes building the same cache, one scans; the other logs that it
    waits on the lock, then loads the cache just written without stat-ing every file again."""
    root, cache = yolo
    scan, now = YoloParser.scan, FileStats.now
    logs = [tmp_path / f"rank{i}.log" for i in range(2)]

    def scan_once_the_other_waits(self, *args):
        # The scanning process holds the lock until the other one has logged that it waits on it.
        t0 = time.monotonic()
        while not any(log.is_file() and WAITING in log.read_text() for log in logs):
            assert time.monotonic() - t0 < 120, "the other process never waited on the lock"
            time.sleep(0.01)
        return scan(self, *args)

    def logged_now(self):
        from loguru import logger
        logger.info("stat check of the cached files")
        return now(self)

    monkeypatch.setattr(YoloParser, "scan", scan_once_the_other_waits)
    monkeypatch.setattr(FileStats, "now", logged_now)
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_build_in_child, args=(_cfg(root, cache), log, barrier)) for log in logs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)  # hang guard (quiet: about a second)
    assert [p.exitcode for p in procs] == [0, 0], [log.read_text() for log in logs if log.is_file()]
    texts = [log.read_text() for log in logs]
    scanned = [t for t in texts if "scanning split 'train' (no cache yet)" in t]
    waited = [t for t in texts if WAITING in t]
    assert len(scanned) == 1 and len(waited) == 1 and scanned != waited
    assert "(just built by the process this one waited for)" in waited[0] and "from the cache" in waited[0]
    assert all("got 4 records" in t and "stat check" not in t for t in texts)
    _, _, line = _scan(_cfg(root, cache), caplog_loguru)  # a later process checks the files as usual
    assert "from the cache" in line and "just built" not in line
    assert any("stat check of the cached files" in m for m in caplog_loguru)
