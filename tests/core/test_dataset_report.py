"""--task debug debug.mode=dataset: the numbers of the training boxes as the model sees them, and the
anchors (or strides) over the box sizes."""
import json

import numpy as np
import pytest
from tiny_data import make_tiny_voc, tiny_overrides

from core.train.dataset_report import dataset_stats
from datasets import Record, RecordTable, build_records
from main import main


def test_stats_of_hand_made_records():
    recs = RecordTable.from_records([
        Record(1, "/a.jpg", (400, 800), np.array([[0, 0, 100, 50], [10, 10, 30, 30]], np.float32), np.array([0, 1])),
        Record(2, "/b.jpg", (200, 200), np.zeros((0, 4), np.float32), np.zeros(0, np.int64)),
        Record(3, "/c.jpg", (100, 100), np.array([[0, 0, 10, 40]], np.float32), np.array([1]))])
    s = dataset_stats(recs, ["a", "b"], img_size=400)
    assert (s["images"], s["boxes"], s["background_images"]) == (3, 3, 1)
    assert s["class_counts"] == {"a": 1, "b": 2}
    assert s["boxes_per_image"] == {"mean": 1.0, "max": 2, "median": 1.0}
    # letterboxed to 400: image 1 scale 0.5 (long side 800), image 3 scale 4
    assert s["box_size_px"]["width"]["min"] == 10.0 and s["box_size_px"]["width"]["max"] == 50.0
    assert s["box_size_px"]["height"]["max"] == 160.0 and s["box_size_px"]["aspect_w_over_h"]["min"] == 0.25
    assert [m["file"] for m in s["most_boxes"]] == ["/a.jpg", "/c.jpg", "/b.jpg"]


@pytest.mark.parametrize("config, anchored, net", [("bccd_yolo_r18", True, "yolo"), ("bccd_v9t", False, "v9-t"),
                                                  ("bccd_v9t", True, "v7")])  # v7: its own anchors
def test_report_task_writes_the_figure_numbers_and_drawings(tmp_path, config, anchored, net):
    root = make_tiny_voc(tmp_path / "data", n_train=6, n_val=2)
    out = tmp_path / "report"
    extra = {"debug.mode": "dataset", "data.img_size": 128, "model.name": net}
    assert main(["--config", config, "--task", "debug", "--out", str(out)]
                + tiny_overrides(root, yolo=anchored, **extra)) == 0
    folder = out / "debug" / "dataset"
    stats = json.loads((folder / "dataset.json").read_text())
    records, _ = build_records(__import__("configs").load_config(config, tiny_overrides(root, yolo=anchored, **extra)),
                               "train")
    assert stats["images"] == 6 and stats["boxes"] == len(records.boxes)
    assert sum(stats["class_counts"].values()) == len(records.boxes)
    assert (stats["anchors_px"] is not None) == anchored
    if anchored:
        assert np.array(stats["anchors_px"]).shape == (3, 3, 2)
    assert (folder / "dataset.png").stat().st_size > 10_000
    assert len(list(folder.glob("most_boxes_*.png"))) == 4
