"""Fixtures shared by the tests of core/: one training whose val scores are worth comparing."""
from __future__ import annotations

import pytest
from tiny_data import easy_overrides, make_easy_voc


@pytest.fixture(scope="session")
def easy_run(tmp_path_factory):
    """(data root, run dir) of a bccd_yolo_r18 training on make_easy_voc data with the EASY recipe
    (1 process, 0 workers): run/last.pth, and run/val the in-training validation of its last epoch."""
    from main import main
    tmp = tmp_path_factory.mktemp("easy")
    root = make_easy_voc(tmp / "data")
    assert main(["--config", "bccd_yolo_r18", "--task", "train", "--out", str(tmp / "run")] + easy_overrides(root)) == 0
    return root, tmp / "run"
