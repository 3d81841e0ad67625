"""Atomic writes: a reader meets the old file or the new one, never half; files get plain-open permissions."""
import json

import numpy as np
import pytest

from utils.files import atomic_write, write_bytes_atomic, write_json_atomic


def test_write_json_atomic(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    write_json_atomic(path, {"mAP": np.float64(0.5), "ids": np.arange(3)})
    assert json.loads(path.read_text()) == {"mAP": 0.5, "ids": [0, 1, 2]}
    write_json_atomic(path, {"mAP": 0.7})
    assert json.loads(path.read_text()) == {"mAP": 0.7}
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"mAP": 0.7}  # a failed write leaves the old file
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]  # no stray tmp files


def test_write_json_atomic_gives_the_permissions_of_a_plain_open(tmp_path):
    """Run files (metrics.json, an export's metadata.json) are shared: not mkstemp's private 0600."""
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    with open(tmp_path / "b.json", "w") as f:
        f.write("{}")
    modes = [(tmp_path / p).stat().st_mode & 0o777 for p in ("a.json", "b.json")]
    assert modes[0] == modes[1]


def test_a_failure_inside_the_write_keeps_the_old_bytes_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "labels.npz"
    write_bytes_atomic(path, b"old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_write(path, "wb") as f:
            f.write(b"half of the new")
            raise OSError("disk full")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["labels.npz"]
    write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"new"
