"""RecordTable: a split's records in flat arrays; equal to the list of Records it was built from."""
import gc
import io
import os
from dataclasses import fields

import numpy as np
import pytest

from datasets.records import Record, RecordTable
from datasets.subset import main_class, main_classes, stratified_subset


def _records(n: int = 6, seed: int = 0) -> list[Record]:
    """Seeded records: 0-4 boxes, some ignore regions, non-ASCII and undecodable-byte names."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k, m = int(rng.integers(0, 5)), int(i % 3 == 0)
        name = ["a.jpg", "b é.png", os.fsdecode(b"c\xff.jpg")][i % 3]
        out.append(Record(image_id=i + 1, file=f"/data/{i}/{name}", img_hw=(int(rng.integers(10, 99)), 40 + i),
                          boxes=rng.uniform(0, 30, (k, 4)).astype(np.float32),
                          labels=rng.integers(0, 3, k).astype(np.int64),
                          ignore=rng.uniform(0, 30, (m, 4)).astype(np.float32), source_id=1000 - 7 * i))
    return out


def test_table_equals_its_records_and_indexes_like_a_list():
    recs = _records()
    table = RecordTable.from_records(recs)
    assert len(table) == 6 and table == recs and list(table) == recs
    assert table[0] == recs[0] and table[-1] == recs[-1] and table[3].file == recs[3].file
    assert table.files() == [r.file for r in recs] and table.file(2) == recs[2].file
    np.testing.assert_array_equal(table.num_boxes(), [len(r.boxes) for r in recs])
    rec = table[4]
    assert rec.boxes.dtype == np.float32 and rec.labels.dtype == np.int64 and rec.img_hw == recs[4].img_hw
    assert not rec.boxes.flags.writeable  # a view of the shared table
    assert table.index(recs[2]) == 2 and recs[5] in table
    with pytest.raises(IndexError):
        table[6]


def test_slices_and_subsets_keep_records_and_ids():
    recs = _records(8)
    table = RecordTable.from_records(recs)
    assert table[2:5] == recs[2:5] and table[::-3] == recs[::-3] and table[:0] == []
    assert table.subset([6, 1, 6]) == [recs[6], recs[1], recs[6]]
    assert table[np.array([3, 0])] == [recs[3], recs[0]]
    assert table[2:5][1] == recs[3] and table[2:5].image_ids.tolist() == [3, 4, 5]
    assert table.subset([6, 1]).source_ids.tolist() == [958, 993] and table[5].source_id == 965
    with pytest.raises(IndexError):
        table.subset([8])


def test_save_and_load_as_plain_arrays():
    table = RecordTable.from_records(_records())
    buf = io.BytesIO()
    np.savez(buf, **table.to_arrays("rec_"))
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        loaded = RecordTable.from_arrays(z, "rec_")
    assert loaded == table and list(loaded) == list(table)
    assert all(loaded.file(i) == table.file(i) for i in range(len(table)))  # undecodable bytes survive


def test_empty_table_and_bad_offsets():
    empty = RecordTable.from_records([])
    assert len(empty) == 0 and list(empty) == [] and empty.boxes.shape == (0, 4) and len(empty.subset([])) == 0
    arrays = RecordTable.from_records(_records(3)).to_arrays()
    arrays["box_offsets"] = arrays["box_offsets"][::-1]
    with pytest.raises(ValueError, match="offsets of boxes"):
        RecordTable(**arrays)
    arrays = RecordTable.from_records(_records(3)).to_arrays()
    with pytest.raises(ValueError, match="2 source ids"):
        RecordTable(**{**arrays, "source_ids": arrays["source_ids"][:2]})
    del arrays["source_ids"]  # a table without the dataset's own ids: all -1 (none)
    assert RecordTable(**arrays).source_ids.tolist() == [-1, -1, -1]
    assert RecordTable.from_records([Record(image_id=1, file="a.jpg", img_hw=(2, 2))])[0].source_id == -1


def test_table_is_a_few_arrays_the_size_of_the_data():
    """No Python object per image: ten arrays, their bytes exactly the data's, and loading a
    big table creates a fixed number of objects whatever its size."""
    n, k = 20_000, 7
    rng = np.random.default_rng(1)
    names = b"".join(b"/data/coco/images/train2017/%012d.jpg" % i for i in range(n))
    arrays = {"image_ids": np.arange(1, n + 1), "img_hw": np.full((n, 2), 480), "box_offsets": np.arange(n + 1) * k,
              "boxes": rng.random((n * k, 4)).astype(np.float32), "labels": rng.integers(0, 80, n * k),
              "ignore_offsets": np.zeros(n + 1, np.int64), "ignore": np.zeros((0, 4), np.float32),
              "file_offsets": np.arange(n + 1) * (len(names) // n),
              "file_bytes": np.frombuffer(names, np.uint8), "source_ids": np.arange(n) * 3}
    gc.collect()
    before = len(gc.get_objects())
    table = RecordTable(**arrays)
    loaded = RecordTable.from_arrays(table.to_arrays())
    created = len(gc.get_objects()) - before
    assert len(fields(table)) == 10 and created < 40
    name_len = len(names) // n  # 44 bytes per file name
    assert table.nbytes == loaded.nbytes == 2 * n * 8 + n * 16 + 3 * (n + 1) * 8 + n * k * (16 + 8) + n * name_len
    assert table.nbytes / n == pytest.approx(16 + 16 + 24 + k * 24 + name_len, abs=0.1)  # 272 bytes per image


def test_main_classes_and_subset_match_the_per_record_rule():
    recs = _records(40, seed=5)
    table = RecordTable.from_records(recs)
    assert main_classes(table).tolist() == [main_class(r) for r in recs]
    sub = stratified_subset(table, 0.3, seed=2)
    assert isinstance(sub, RecordTable) and sub == stratified_subset(recs, 0.3, seed=2)
    assert sub.image_ids.tolist() == sorted(sub.image_ids.tolist()) and 0 < len(sub) < 40
