"""VOC parsing and the scan policy on BCCD and on synthetic bad inputs."""
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs.bccd_yolo_r18 import BccdYoloR18
from datasets import DATASETS, build_parser, build_records
from datasets.scan import DatasetError
from datasets.voc import REPO_ROOT
from tests.datasets.synth import (
    add_item,
    append_to_set,
    image_with_rect,
    make_cfg,
    make_voc,
    voc_objects_for,
    write_set,
)

BCCD = REPO_ROOT / "data" / "BCCD"


def _xml_object_count(split: str) -> int:
    ids = (BCCD / "ImageSets/Main" / f"{split}.txt").read_text().split()
    return sum(len(ET.parse(BCCD / "Annotations" / f"{i}.xml").getroot().findall("object")) for i in ids)


@pytest.mark.parametrize("split,n_images,point_file", [
    ("train", 205, "BloodImage_00343"), ("val", 87, "BloodImage_00338")])
def test_bccd_scan_counts(split, n_images, point_file):
    records, rep = build_records(BccdYoloR18(), split)  # speed: benchmarks/scale.py, not a timed assert
    assert rep.images_found == rep.images_ok == len(records) == n_images
    assert rep.images_skipped == rep.corrupt_images == rep.size_mismatch == 0
    assert rep.boxes_degenerate_dropped == 1  # the one zero-area point box of this split
    assert rep.boxes == _xml_object_count(split) - 1 == sum(len(r.boxes) for r in records)
    assert [r.image_id for r in records] == list(range(1, n_images + 1))
    rec = next(r for r in records if point_file in r.file)
    assert rec.img_hw == (480, 640) and Path(rec.file).is_absolute()
    assert rec.boxes.dtype == np.float32 and rec.labels.dtype == np.int64
    assert (rec.boxes[:, 2:] > rec.boxes[:, :2]).all()
    assert "1 degenerate" in rep.summary() and f"{n_images} images found" in rep.summary()


def test_bccd_discovered_class_names_and_voc_offset():
    cfg = BccdYoloR18()
    cfg.data.class_names = []
    assert build_parser(cfg).class_names() == ["Platelets", "RBC", "WBC"]
    records, _ = build_records(BccdYoloR18(), "train")
    first = records[0]  # BloodImage_00001: WBC xmin=68 ymin=315 xmax=286 ymax=480
    assert first.labels[0] == 1
    np.testing.assert_array_equal(first.boxes[0], [67, 314, 286, 480])


def test_unknown_format_lists_valid(tmp_path):
    cfg = make_cfg(make_voc(tmp_path))
    cfg.data.format = "yolo_txt"
    with pytest.raises(DatasetError, match=r"unknown data.format 'yolo_txt'.*voc"):
        build_records(cfg, "train")
    assert "voc" in DATASETS


def test_clean_synthetic_dataset(tmp_path):
    root = make_voc(tmp_path)
    records, rep = build_records(make_cfg(root), "train")
    assert rep.images_ok == 4 and rep.boxes == 4
    np.testing.assert_array_equal(records[0].boxes[0], [10, 8, 40, 35])  # exact pixel edges


@pytest.mark.parametrize("kind,reason", [
    ("truncated", "corrupt/truncated"), ("zero", "zero-byte"), ("text", "not an image"),
    ("malformed", "malformed xml"), ("far_outside", "outside the 80x60 image"),
])
def test_bad_item_train_skips_val_raises(tmp_path, kind, reason, caplog_loguru):
    root = make_voc(tmp_path)
    img_path = add_item(root, "bad", image_with_rect(), voc_objects_for((10, 10, 30, 30)))
    if kind == "truncated":
        data = img_path.read_bytes()
        img_path.write_bytes(data[: len(data) // 2])
    elif kind == "zero":
        img_path.write_bytes(b"")
    elif kind == "text":
        img_path.write_text("hello")
    elif kind == "malformed":
        xml = root / "Annotations" / "bad.xml"
        xml.write_text(xml.read_text()[:60])
    elif kind == "far_outside":
        add_item(root, "bad", None, [("cat", 10, 10, 200, 30)], size_wh=(80, 60))
    bad_file = "bad.xml" if kind in ("malformed", "far_outside") else "bad.jpg"
    append_to_set(root, "train", "bad")
    records, rep = build_records(make_cfg(root), "train")
    assert rep.images_found == 5 and rep.images_ok == 4 and rep.images_skipped == 1
    assert rep.corrupt_images == (1 if bad_file == "bad.jpg" else 0)
    assert rep.skipped[0][0].endswith(bad_file) and reason in rep.skipped[0][1]
    assert all(Path(r.file).stem != "bad" for r in records)
    assert any(bad_file in m and reason in m for m in caplog_loguru)
    assert reason in rep.summary()
    with pytest.raises(DatasetError, match="strict"):
        build_records(make_cfg(root, strict=True), "train")
    append_to_set(root, "val", "bad")
    with pytest.raises(DatasetError) as ei:
        build_records(make_cfg(root), "val")
    assert bad_file in str(ei.value) and reason in str(ei.value)


def test_box_fixes_are_counted_in_every_split(tmp_path):
    root = make_voc(tmp_path, n_train=1, n_val=1)
    objs = [("cat", 30, 20, 10, 5),          # inverted -> swapped
            ("dog", 1, 1, 80.5, 30),        # 0.5 px beyond the right edge -> clipped
            ("dog", 5, 5, 20, 20), ("dog", 5, 5, 20, 20),  # duplicate
            ("cat", 12, 12, 12, 40),        # zero width -> degenerate
            ("cat", 3, 3, 9, 9, 1)]         # difficult -> ignore region
    add_item(root, "fix", image_with_rect(), objs)
    for split in ("train", "val"):
        append_to_set(root, split, "fix")
        records, rep = build_records(make_cfg(root), split)
        rec = records[-1]
        assert (rep.boxes_inverted_fixed, rep.boxes_clipped, rep.boxes_duplicate_removed,
                rep.boxes_degenerate_dropped, rep.ignore_regions) == (1, 1, 1, 1, 1)
        np.testing.assert_array_equal(rec.boxes, [[9, 4, 30, 20], [0, 0, 80, 30], [4, 4, 20, 20]])
        assert rec.labels.tolist() == [0, 1, 1]
        np.testing.assert_array_equal(rec.ignore, [[2, 2, 9, 9]])
    records, _ = build_records(make_cfg(root, difficult_as_ignore=False), "val")
    assert len(records[-1].boxes) == 4 and len(records[-1].ignore) == 0


def test_background_missing_xml_and_size_mismatch(tmp_path, caplog_loguru):
    root = make_voc(tmp_path)
    add_item(root, "noxml", image_with_rect(), None)
    add_item(root, "noobj", image_with_rect(), [])
    add_item(root, "wrongsize", image_with_rect(), voc_objects_for((5, 5, 20, 20)), size_wh=(60, 80))
    for i in ("noxml", "noobj", "wrongsize"):
        append_to_set(root, "val", i)
    records, rep = build_records(make_cfg(root), "val")
    assert rep.images_ok == 5 and rep.background_images == 2 and rep.missing_annotations == 1
    assert rep.size_mismatch == 1 and records[-1].img_hw == (60, 80)
    assert any("wrongsize.xml" in m and "decoded size" in m for m in caplog_loguru)


def test_unknown_class_lists_names_counts_and_valid(tmp_path):
    root = make_voc(tmp_path)
    add_item(root, "u", image_with_rect(), [("bird", 2, 2, 9, 9), ("bird", 3, 3, 9, 9), ("cow", 2, 2, 5, 5)])
    append_to_set(root, "train", "u")
    with pytest.raises(DatasetError) as ei:
        build_records(make_cfg(root), "train")
    msg = str(ei.value)
    assert "'bird' x2" in msg and "'cow' x1" in msg and "['cat', 'dog']" in msg and "u.xml" in msg


def test_no_labels_found(tmp_path):
    root = make_voc(tmp_path, n_train=2)
    for f in (root / "Annotations").glob("tr*.xml"):
        f.unlink()
    with pytest.raises(DatasetError, match=r"no labels found.*Annotations/tr0\.xml"):
        build_records(make_cfg(root), "train")


def test_billion_laughs_fails_fast(tmp_path):
    root = make_voc(tmp_path)
    lol = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    xml = (f'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol0 "lol">{lol}]>'
           "<annotation><object><name>&lol9;</name></object></annotation>")
    (root / "Annotations" / "tr1.xml").write_text(xml)
    # Refused at the DTD, before any expansion (10^9 "lol"s would take minutes and gigabytes): the
    # message says so, which no wall-clock limit on a loaded machine needs to confirm.
    with pytest.raises(DatasetError, match=r"tr1\.xml.*DTD/entity"):
        build_records(make_cfg(root), "train")


@pytest.mark.parametrize("bad_id", ["../x", "sub/../../x", "/etc/passwd"])
def test_path_traversal_id_rejected(tmp_path, bad_id):
    root = make_voc(tmp_path / "voc")
    Image.fromarray(image_with_rect()).save(tmp_path / "voc" / "x.jpg")
    append_to_set(root, "train", bad_id)
    with pytest.raises(DatasetError) as ei:
        build_records(make_cfg(root), "train")
    assert repr(bad_id) in str(ei.value) and "train.txt:5" in str(ei.value)


def test_symlink_escaping_root_rejected_unless_allowed(tmp_path):
    root = make_voc(tmp_path / "voc")
    outside = tmp_path / "outside.jpg"
    Image.fromarray(image_with_rect()).save(outside)
    (root / "JPEGImages" / "tr0.jpg").unlink()
    (root / "JPEGImages" / "tr0.jpg").symlink_to(outside)
    with pytest.raises(DatasetError, match="outside the dataset root"):
        build_records(make_cfg(root), "train")
    records, _ = build_records(make_cfg(root, allow_outside_root=True), "train")
    assert records[0].file == str(outside.resolve())


def test_year_dir_sets_and_png_fallback(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    make_voc(devkit / "VOC2007", n_train=2)
    make_voc(devkit / "VOC2012", n_train=3)
    y12 = devkit / "VOC2012"
    # image stored as PNG: the xml <filename> extension is used when the .jpg is missing
    add_item(y12, "pngimg", None, voc_objects_for((5, 5, 20, 20)), size_wh=(80, 60))
    xml = y12 / "Annotations" / "pngimg.xml"
    xml.write_text(xml.read_text().replace("<filename></filename>", "<filename>pngimg.png</filename>"))
    Image.fromarray(image_with_rect()).save(y12 / "JPEGImages" / "pngimg.png")
    append_to_set(y12, "train", "pngimg")
    cfg = make_cfg(devkit, train_sets=["VOC2007/train", "VOC2012/train"])
    records, rep = build_records(cfg, "train")
    assert rep.images_ok == 6 and records[-1].file.endswith("pngimg.png")
    assert [r.image_id for r in records] == [1, 2, 3, 4, 5, 6]
    cfg.data.train_sets = ["VOC2007/nosuchset"]
    with pytest.raises(DatasetError, match=r"nosuchset.*available sets.*train"):
        build_records(cfg, "train")


def test_exif_rotated_image_box_lands_on_object(tmp_path):
    """Boxes are in the upright (EXIF-applied) frame: the record's box covers the red object."""
    root = make_voc(tmp_path)
    box = (40, 5, 75, 25)  # in the upright 60x80 image
    upright = image_with_rect((60, 80), box)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(upright, 1).copy()).save(root / "JPEGImages" / "rot.jpg", exif=exif, quality=95)
    add_item(root, "rot", None, voc_objects_for(box), size_wh=(80, 60))
    write_set(root, "val", ["rot"])
    records, rep = build_records(make_cfg(root), "val")
    assert records[0].img_hw == (60, 80) and rep.size_mismatch == 0
    from datasets.image_io import load_image
    img = load_image(records[0].file)
    x1, y1, x2, y2 = records[0].boxes[0].astype(int)
    inner = img[y1 + 2:y2 - 2, x1 + 2:x2 - 2].astype(float)
    assert inner[..., 0].mean() > 180 and inner[..., 1].mean() < 80
