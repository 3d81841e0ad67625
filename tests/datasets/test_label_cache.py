"""Label cache: reused while valid; rebuilt (and the log says why) when files, sizes, mtimes,
class names or parsing settings change."""
import os
from pathlib import Path

import numpy as np
import pytest

from datasets import build_records
from datasets.label_cache import split_cache_dir
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
