"""VOC, COCO json and YOLO txt: one dataset written three ways gives identical records."""
import json
from pathlib import Path

import numpy as np
import pytest

from datasets import DATASETS, build_parser, build_records, resolve_class_names
from datasets.scan import DatasetError
from tests.datasets.three_formats import (
    CAT_IDS,
    NAMES,
    cfg_for,
    coco_dict,
    default_items,
    write_coco,
    write_voc,
    write_yolo,
)

WRITERS = {"voc": write_voc, "coco": write_coco, "yolo": write_yolo}


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    items = default_items()
    base = tmp_path_factory.mktemp("three")
    return {fmt: writer(base / fmt, items) for fmt, writer in WRITERS.items()}


def _comparable(records):
    return [(r.image_id, Path(r.file).name, r.img_hw, r.boxes.tolist(), r.labels.tolist(), r.ignore.tolist())
            for r in records]


@pytest.mark.parametrize("split", ["train", "val"])
def test_three_layouts_give_identical_records(three, split):
    results = {fmt: build_records(cfg_for(root, fmt, class_names=list(NAMES)), split)
               for fmt, root in three.items()}
    ref_records, ref_report = results["voc"]
    expected = default_items()[split]
    assert [Path(r.file).stem for r in ref_records] == [stem for stem, _, _ in expected]
    for k, (_, img, objs) in enumerate(expected):  # the reference equals the objects as drawn
        rec = ref_records[k]
        assert rec.img_hw == img.shape[:2]
        np.testing.assert_array_equal(rec.boxes, np.array([o[1:5] for o in objs], np.float32).reshape(-1, 4))
        assert rec.labels.tolist() == [o[0] for o in objs]
    for fmt in ("coco", "yolo"):
        records, report = results[fmt]
        assert _comparable(records) == _comparable(ref_records), fmt
        assert all(r.boxes.dtype == np.float32 and r.labels.dtype == np.int64 for r in records)
        assert report.counts() == ref_report.counts(), fmt


def test_class_names_discovered_per_format(three):
    assert build_parser(cfg_for(three["voc"], "voc")).class_names() == sorted(NAMES)  # VOC: sorted names
    assert build_parser(cfg_for(three["coco"], "coco")).class_names() == NAMES  # COCO: by category id
    assert build_parser(cfg_for(three["yolo"], "yolo")).class_names() == NAMES  # YOLO: data.yaml order


def test_coco_category_ids_are_kept_for_evaluation(three):
    cfg = cfg_for(three["coco"], "coco")
    resolve_class_names(cfg)
    assert cfg.data.class_names == NAMES and cfg.data.category_ids == CAT_IDS
    assert cfg.to_dict()["data"]["category_ids"] == CAT_IDS  # travels with the config into checkpoints
    reordered = cfg_for(three["coco"], "coco", class_names=["bird", "cat", "dog"])
    resolve_class_names(reordered)
    assert reordered.data.category_ids == [11, 3, 7]  # mapped by name, not by position
    voc = cfg_for(three["voc"], "voc", class_names=list(NAMES))
    resolve_class_names(voc)
    assert voc.data.category_ids == []  # not COCO data: the evaluator numbers the classes 1..nc
    with pytest.raises(DatasetError, match=r"\['fish'\] are not categories"):
        resolve_class_names(cfg_for(three["coco"], "coco", class_names=["cat", "fish"]))


def test_voc_difficult_equals_coco_crowd(tmp_path):
    grey = np.full((40, 50, 3), 60, np.uint8)
    items = {"train": [("a000", grey, [(0, 5, 5, 25, 30), (1, 30, 2, 48, 20, 1)])],
             "val": [("b000", np.full((40, 50, 3), 60, np.uint8), [(2, 1, 1, 9, 9, 1), (0, 10, 10, 30, 30)])]}
    voc = build_records(cfg_for(write_voc(tmp_path / "voc", items), "voc", class_names=list(NAMES)), "val")[0]
    coco_root = write_coco(tmp_path / "coco", items)
    coco = build_records(cfg_for(coco_root, "coco", class_names=list(NAMES)), "val")[0]
    assert _comparable(voc) == _comparable(coco)
    np.testing.assert_array_equal(coco[0].ignore, [[1, 1, 9, 9]])
    assert coco[0].labels.tolist() == [0]
    # COCO crowd stays an ignore region even when VOC difficult objects are made positives
    coco2 = build_records(cfg_for(tmp_path / "coco", "coco", class_names=list(NAMES),
                                  difficult_as_ignore=False), "val")[0]
    assert len(coco2[0].ignore) == 1


def test_coco_roboflow_layout_and_yolo_list_file(tmp_path):
    """COCO json beside its images; YOLO sets given as a list file of image paths."""
    items = default_items()
    root = tmp_path / "rf"
    write_yolo(root, items)
    for split, lst in items.items():
        coco = json.dumps(coco_dict(lst, split))
        (root / "images" / split / "_annotations.coco.json").write_text(coco)
    (root / "train.txt").write_text("\n".join(f"images/train/{s}.jpg" for s, _, _ in items["train"]) + "\n")
    cfg = cfg_for(root, "coco", class_names=list(NAMES), train_sets=["images/train/_annotations.coco.json"])
    from_json, _ = build_records(cfg, "train")
    listed = cfg_for(root, "yolo", class_names=list(NAMES), train_sets=["train.txt"])
    from_list, _ = build_records(listed, "train")
    ref, _ = build_records(cfg_for(root, "yolo", class_names=list(NAMES)), "train")
    assert _comparable(from_json) == _comparable(ref) == _comparable(from_list)


def test_unknown_format_lists_the_three(tmp_path):
    cfg = cfg_for(tmp_path, "voc")
    cfg.data.format = "yolo_txt"
    with pytest.raises(DatasetError,
                       match=r"unknown data.format 'yolo_txt'; valid: \['coco', 'voc', 'yolo'\]"):
        build_records(cfg, "train")
    assert sorted(DATASETS) == ["coco", "voc", "yolo"]
