"""One test per bad input of USERS.md section 4a (dataset side), on the YOLO, COCO and VOC parsers.

Policy under test: bad training data is skipped with a warning naming the file (and line) and
counted in the scan summary; bad validation data raises DatasetError naming it.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs.base_config import ConfigError
from datasets import DetectionDataset, build_records, collate_fn
from datasets.image_io import load_image
from datasets.scan import DatasetError
from tests.datasets.three_formats import (
    NAMES,
    cfg_for,
    default_items,
    rect_image,
    write_coco,
    write_yolo,
)

BOX = (0, 10, 8, 40, 35)  # class 0 at these pixel edges


@pytest.fixture
def yolo(tmp_path):
    return write_yolo(tmp_path / "y", default_items())


def _add_yolo(root: Path, split: str, stem: str, label: str | None, img: np.ndarray | None = None,
              suffix: str = ".jpg") -> Path:
    """Add images/<split>/<stem><suffix> (a valid 60x80 image unless ``img``) and its label text."""
    path = root / "images" / split / f"{stem}{suffix}"
    Image.fromarray(rect_image((60, 80), [BOX]) if img is None else img).save(path, quality=95)
    if label is not None:
        (root / "labels" / split / f"{stem}.txt").write_text(label)
    return path


def _good_line() -> str:
    return "0 0.3125 0.358333 0.375 0.45\n"


def _skipped_in_train_raises_in_val(root: Path, stem: str, file_part: str, reason: str, caplog, fmt="yolo"):
    """Assert the train/val policy for one bad item named ``stem`` present in both splits."""
    records, rep = build_records(cfg_for(root, fmt, class_names=list(NAMES)), "train")
    assert rep.images_skipped == 1 and rep.images_ok == rep.images_found - 1
    assert all(Path(r.file).stem != stem for r in records)
    (file, why), = rep.skipped
    assert file.endswith(file_part) and reason in why
    assert reason in rep.summary()
    assert any(file_part in m and reason in m and "skipped" in m for m in caplog)
    with pytest.raises(DatasetError) as ei:
        build_records(cfg_for(root, fmt, class_names=list(NAMES)), "val")
    assert file_part in str(ei.value) and reason in str(ei.value)
    return rep


def _bad_image_both_splits(root: Path, stem: str, write) -> None:
    for split in ("train", "val"):
        path = _add_yolo(root, split, stem, _good_line())
        write(path)


# -- images -------------------------------------------------------------------------------
def test_truncated_jpeg(yolo, caplog_loguru):
    _bad_image_both_splits(yolo, "trunc", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]))
    rep = _skipped_in_train_raises_in_val(yolo, "trunc", "trunc.jpg", "corrupt/truncated image",
                                          caplog_loguru)
    assert rep.corrupt_images == 1


def test_zero_byte_image(yolo, caplog_loguru):
    _bad_image_both_splits(yolo, "zero", lambda p: p.write_bytes(b""))
    _skipped_in_train_raises_in_val(yolo, "zero", "zero.jpg", "zero-byte image", caplog_loguru)


def test_non_image_with_image_extension(yolo, caplog_loguru):
    _bad_image_both_splits(yolo, "text", lambda p: p.write_text("not an image"))
    _skipped_in_train_raises_in_val(yolo, "text", "text.jpg", "not an image", caplog_loguru)


def test_decompression_bomb(yolo, caplog_loguru, monkeypatch):
    # A tiny limit makes PIL's own guard fire on an ordinary image; the guard is never disabled.
    _bad_image_both_splits(yolo, "bomb", lambda p: Image.new("RGB", (400, 300)).save(p))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # 400x300 > 2x limit -> DecompressionBombError
    _skipped_in_train_raises_in_val(yolo, "bomb", "bomb.jpg", "decompression bomb", caplog_loguru)


def test_png_with_alpha_equals_rgb_copy(yolo):
    rgb = rect_image((60, 80), [BOX])
    rgba = np.concatenate([rgb, np.full((60, 80, 1), 7, np.uint8)], axis=2)
    _add_yolo(yolo, "val", "alpha", _good_line(), rgba, suffix=".png")
    _add_yolo(yolo, "val", "plain", _good_line(), rgb, suffix=".png")
    records, _ = build_records(cfg_for(yolo, "yolo", class_names=list(NAMES)), "val")
    ds = DetectionDataset(records, NAMES, 64)
    by_stem = {Path(r.file).stem: i for i, r in enumerate(records)}
    a, b = ds[by_stem["alpha"]], ds[by_stem["plain"]]
    assert a[0].shape == (3, 64, 64)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()  # same pixels and targets: same predictions


@pytest.mark.parametrize("mode", ["L", "I;16", "CMYK"])
def test_grayscale_16bit_cmyk_become_rgb_uint8(tmp_path, mode):
    base = Image.fromarray(rect_image((60, 80), [BOX]))
    path = tmp_path / f"x.{'jpg' if mode == 'CMYK' else 'png'}"
    if mode == "I;16":
        Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257).save(path)
    else:
        base.convert(mode).save(path)
    img = load_image(path)
    assert img.shape == (60, 80, 3) and img.dtype == np.uint8
    grey = np.asarray(base.convert("L"))
    if mode == "CMYK":  # colours survive the round trip through CMYK
        np.testing.assert_allclose(img[20, 20], (220, 30, 30), atol=12)
        np.testing.assert_allclose(img[5, 60], (60, 60, 60), atol=12)
    else:  # grey replicated to 3 channels; 16-bit scaled back exactly
        for c in range(3):
            np.testing.assert_array_equal(img[..., c], grey)


def test_exif_rotated_jpeg_yolo_box_lands_on_object(yolo):
    box = (40, 5, 75, 25)  # in the upright 60x80 image
    upright = rect_image((60, 80), [(0, *box)])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; viewers turn it upright
    path = yolo / "images" / "val" / "rot.jpg"
    Image.fromarray(np.rot90(upright, 1).copy()).save(path, exif=exif, quality=95)
    (yolo / "labels" / "val" / "rot.txt").write_text(f"0 {57.5 / 80} {15 / 60} {35 / 80} {20 / 60}\n")
    records, _rep = build_records(cfg_for(yolo, "yolo", class_names=list(NAMES)), "val")
    rec = next(r for r in records if Path(r.file).stem == "rot")
    assert rec.img_hw == (60, 80)
    np.testing.assert_allclose(rec.boxes[0], box, atol=1e-4)
    img = load_image(rec.file)
    inner = img[box[1] + 2:box[3] - 2, box[0] + 2:box[2] - 2].astype(float)
    assert inner[..., 0].mean() > 180 and inner[..., 1].mean() < 80


def test_non_ascii_name_and_spaces(yolo):
    _add_yolo(yolo, "val", "测试 image", _good_line())
    records, rep = build_records(cfg_for(yolo, "yolo", class_names=list(NAMES)), "val")
    rec = next(r for r in records if "测试" in r.file)
    assert rep.images_skipped == 0 and len(rec.boxes) == 1
    assert DetectionDataset(records, NAMES, 64)[records.index(rec)][0].shape == (3, 64, 64)


# -- YOLO label lines -----------------------------------------------------------------------
def test_class_id_out_of_range(yolo, caplog_loguru):
    for split in ("train", "val"):
        _add_yolo(yolo, split, "cls7", _good_line() + "7 0.5 0.5 0.1 0.1\n")
    _skipped_in_train_raises_in_val(yolo, "cls7", "cls7.txt", "line 2: class 7 not in [0, 2]", caplog_loguru)


def test_class_id_out_of_range_in_most_files_means_wrong_class_list(yolo):
    with pytest.raises(DatasetError,
                       match=r"label files use class ids outside \[0, 0\].*class list mismatch"):
        build_records(cfg_for(yolo, "yolo", class_names=["cat"]), "train")


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_nan_or_inf_coordinates(yolo, caplog_loguru, value):
    for split in ("train", "val"):
        _add_yolo(yolo, split, "nan", f"0 {value} 0.5 0.1 0.1\n")
    _skipped_in_train_raises_in_val(yolo, "nan", "nan.txt", "line 1: non-finite coordinate", caplog_loguru)


def test_coordinates_out_of_bounds(yolo, caplog_loguru):
    # within tolerance: clipped and counted, in every split
    for split in ("train", "val"):
        _add_yolo(yolo, split, "edge", "0 0.0999 0.5 0.2 0.2\n")  # x1 = -0.0001 * 80 px
    records, rep = build_records(cfg_for(yolo, "yolo", class_names=list(NAMES)), "val")
    rec = next(r for r in records if Path(r.file).stem == "edge")
    assert rep.boxes_clipped == 1 and rec.boxes[0, 0] == 0.0
    # beyond it: a bad item
    for split in ("train", "val"):
        (yolo / "labels" / split / "edge.txt").write_text("0 1.2 0.5 0.3 0.3\n")
    _skipped_in_train_raises_in_val(yolo, "edge", "edge.txt", "outside the 80x60 image", caplog_loguru)


def test_zero_area_box_is_dropped_and_counted(yolo):
    _add_yolo(yolo, "train", "flat", _good_line() + "0 0.5 0.5 0 0.1\n1 0.5 0.5 -0.1 0.1\n")
    records, rep = build_records(cfg_for(yolo, "yolo", class_names=list(NAMES)), "train")
    rec = next(r for r in records if Path(r.file).stem == "flat")
    assert rep.boxes_degenerate_dropped == 2 and len(rec.boxes) == 1 and rep.images_skipped == 0


@pytest.mark.parametrize("line,cols", [("0 0.5 0.5 0.1\n", 4), ("0 0.5 0.5 0.1 0.1 0.2 0.3 0.4 0.5\n", 9)])
def test_wrong_column_count(yolo, caplog_loguru, line, cols):
    for split in ("train", "val"):
        _add_yolo(yolo, split, "cols", line)
    _skipped_in_train_raises_in_val(yolo, "cols", "cols.txt",
                                    f"expected 5 columns (class cx cy w h), got {cols}", caplog_loguru)


def test_duplicate_boxes_are_removed_and_counted(yolo):
    _add_yolo(yolo, "train", "dup", _good_line() * 2)
    records, rep = build_records(cfg_for(yolo, "yolo", class_names=list(NAMES)), "train")
    rec = next(r for r in records if Path(r.file).stem == "dup")
    assert rep.boxes_duplicate_removed == 1 and len(rec.boxes) == 1


def test_missing_label_file_is_background_and_all_missing_is_an_error(yolo):
    _add_yolo(yolo, "train", "nolabel", None)
    records, rep = build_records(cfg_for(yolo, "yolo", class_names=list(NAMES)), "train")
    assert rep.missing_annotations == 1 and rep.images_skipped == 0
    assert len(next(r for r in records if Path(r.file).stem == "nolabel").boxes) == 0
    for f in (yolo / "labels" / "train").glob("*.txt"):
        f.unlink()
    with pytest.raises(DatasetError,
                       match=r"no labels found.*labels/train/train000\.txt.*rule: the last 'images'"):
        build_records(cfg_for(yolo, "yolo", class_names=list(NAMES)), "train")


def test_empty_label_file_is_background_and_collates(yolo):
    records, rep = build_records(cfg_for(yolo, "yolo", class_names=list(NAMES)), "train")
    assert rep.background_images == 1 and rep.missing_annotations == 0  # train002.txt is empty
    ds = DetectionDataset(records, NAMES, 64)
    images, targets, _ = collate_fn([ds[2], ds[2]])
    assert images.shape == (2, 3, 64, 64) and targets.shape == (0, 6)


# -- VOC ----------------------------------------------------------------------------------
def _voc(tmp_path):
    from tests.datasets.three_formats import write_voc
    return write_voc(tmp_path / "v", default_items())


def _voc_add(root: Path, split: str, stem: str, xml: str, img_hw=(60, 80)) -> None:
    Image.fromarray(rect_image(img_hw, [BOX])).save(root / "JPEGImages" / f"{stem}.jpg")
    (root / "Annotations" / f"{stem}.xml").write_text(xml)
    with open(root / "ImageSets" / "Main" / f"{split}.txt", "a") as f:
        f.write(stem + "\n")


def _obj(name, xmin, ymin, xmax, ymax, difficult=0):
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
            f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def test_voc_xml_without_objects_is_background(tmp_path):
    root = _voc(tmp_path)
    _voc_add(root, "val", "empty",
             "<annotation><size><width>80</width><height>60</height></size></annotation>")
    records, rep = build_records(cfg_for(root, "voc", class_names=list(NAMES)), "val")
    assert rep.background_images == 1 and len(records[-1].boxes) == 0


def test_malformed_voc_xml(tmp_path, caplog_loguru):
    root = _voc(tmp_path)
    for split in ("train", "val"):
        _voc_add(root, split, "broken", "<annotation><object><name>cat</na")
    _skipped_in_train_raises_in_val(root, "broken", "broken.xml", "malformed xml", caplog_loguru, fmt="voc")


def test_voc_unknown_class_difficult_float_and_inverted_boxes(tmp_path):
    root = _voc(tmp_path)
    _voc_add(root, "val", "mix", "<annotation>" + _obj("cat", 30.5, 20, 10, 5) + _obj("dog", 2, 2, 9, 9, 1)
             + "</annotation>")
    records, rep = build_records(cfg_for(root, "voc", class_names=list(NAMES)), "val")
    rec = records[-1]
    np.testing.assert_array_equal(rec.boxes, [[9, 4, 30.5, 20]])  # inverted float box swapped
    np.testing.assert_array_equal(rec.ignore, [[1, 1, 9, 9]])  # difficult -> ignore region
    assert rep.boxes_inverted_fixed == 1 and rep.ignore_regions == 1
    _voc_add(root, "val", "unk", "<annotation>" + _obj("zebra", 2, 2, 9, 9) + "</annotation>")
    with pytest.raises(DatasetError, match=r"unknown class names: 'zebra' x1.*unk\.xml.*valid names"):
        build_records(cfg_for(root, "voc", class_names=list(NAMES)), "val")


def test_voc_size_disagrees_with_image(tmp_path, caplog_loguru):
    root = _voc(tmp_path)
    _voc_add(root, "val", "swapped", "<annotation><size><width>60</width><height>80</height></size>"
             + _obj("cat", 2, 2, 9, 9) + "</annotation>")
    records, rep = build_records(cfg_for(root, "voc", class_names=list(NAMES)), "val")
    assert rep.size_mismatch == 1 and records[-1].img_hw == (60, 80)
    assert any("swapped.xml" in m and "using the decoded size" in m for m in caplog_loguru)


# -- COCO ---------------------------------------------------------------------------------
@pytest.fixture
def coco(tmp_path):
    return write_coco(tmp_path / "c", default_items())


def _edit_val(root: Path, edit) -> None:
    path = root / "annotations" / "instances_val.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _val_error(root: Path) -> str:
    with pytest.raises(DatasetError) as ei:
        build_records(cfg_for(root, "coco", class_names=list(NAMES)), "val")
    return str(ei.value)


def test_coco_duplicate_image_ids(coco):
    def edit(d):
        d["images"][1]["id"] = d["images"][0]["id"]
    _edit_val(coco, edit)
    msg = _val_error(coco)
    assert "duplicate image id 100" in msg and "'val000.jpg'" in msg and "'val001.jpg'" in msg


@pytest.mark.parametrize("field,value,message", [
    ("id", 1, "annotation ids are not unique: id 1 repeats"),
    ("image_id", 999, "annotation id 2 refers to image_id 999"),
    ("category_id", 42, "annotation id 2 has category_id 42"),
])
def test_coco_duplicate_annotation_id_unknown_image_or_category(coco, field, value, message):
    def edit(d):
        d["annotations"][1][field] = value
    _edit_val(coco, edit)
    assert message in _val_error(coco)


def test_coco_degenerate_bbox_dropped_and_crowd_is_ignore(coco):
    def edit(d):
        d["annotations"][0]["bbox"][2] = 0  # w = 0
        d["annotations"][2]["iscrowd"] = 1
        d["annotations"].append({"id": 99, "image_id": 101, "category_id": 3, "bbox": [1, 1, 5, -4],
                                 "area": 0, "iscrowd": 0})  # h < 0
    _edit_val(coco, edit)
    records, rep = build_records(cfg_for(coco, "coco", class_names=list(NAMES)), "val")
    assert rep.boxes_degenerate_dropped == 2 and rep.ignore_regions == 1 and rep.boxes == 1
    np.testing.assert_array_equal(records[1].ignore, [[20, 2, 58, 20]])


def test_coco_string_ids_and_missing_fields_are_normalised_with_one_warning(coco, caplog_loguru):
    def edit(d):
        for im in d["images"]:
            im["id"] = str(im["id"])
        for a in d["annotations"]:
            a["image_id"] = str(a["image_id"])
            del a["area"], a["iscrowd"]
    _edit_val(coco, edit)
    records, _ = build_records(cfg_for(coco, "coco", class_names=list(NAMES)), "val")
    assert [len(r.boxes) for r in records] == [1, 2]
    warnings = [m for m in caplog_loguru if "instances_val.json" in m and "string ids" in m]
    assert len(warnings) == 1
    for part in ("string ids", "without 'area'", "without 'iscrowd'"):
        assert part in warnings[0]


def test_coco_image_missing_on_disk(coco, caplog_loguru):
    for split in ("train", "val"):
        (coco / split / f"{split}001.jpg").unlink()
    _records, rep = build_records(cfg_for(coco, "coco", class_names=list(NAMES)), "train")
    assert rep.images_skipped == 1 and "train001.jpg" in rep.skipped[0][0]
    assert "cannot read image file" in rep.skipped[0][1]
    with pytest.raises(DatasetError, match=r"val001\.jpg.*cannot read image file"):
        build_records(cfg_for(coco, "coco", class_names=list(NAMES)), "val")


def test_coco_malformed_bbox_is_a_bad_item(coco, caplog_loguru):
    for split in ("train", "val"):
        path = coco / "annotations" / f"instances_{split}.json"
        d = json.loads(path.read_text())
        d["annotations"][0]["bbox"] = [1, 2, "x"]
        path.write_text(json.dumps(d))
    _skipped_in_train_raises_in_val(coco, "train000", ".json", "is not [x, y, w, h] numbers", caplog_loguru,
                                    fmt="coco")
    with pytest.raises(DatasetError,
                       match=r"instances_val\.json: annotation id 1 \(image 'val000\.jpg'\): bbox"):
        build_records(cfg_for(coco, "coco", class_names=list(NAMES)), "val")


# -- paths, class lists, caches -------------------------------------------------------------
@pytest.mark.parametrize("file_name", ["../../outside.jpg", "/etc/passwd"])
def test_coco_file_name_outside_root_is_refused(coco, file_name):
    def edit(d):
        d["images"][0]["file_name"] = file_name
    _edit_val(coco, edit)
    msg = _val_error(coco)
    assert repr(file_name) in msg and "outside the dataset root" in msg


def test_yolo_list_file_pointing_outside_root_is_refused(yolo, tmp_path):
    Image.fromarray(rect_image((60, 80), [BOX])).save(tmp_path / "outside.jpg")
    (yolo / "list.txt").write_text("images/train/train000.jpg\n../outside.jpg\n")
    with pytest.raises(DatasetError, match=r"list\.txt:2: image .*outside the dataset root"):
        build_records(cfg_for(yolo, "yolo", class_names=list(NAMES), train_sets=["list.txt"]), "train")


def test_class_names_with_duplicates_or_wrong_count_fail_at_config_load(yolo):
    cfg = cfg_for(yolo, "yolo", class_names=["cat", "dog", "cat"])
    with pytest.raises(ConfigError, match=r"duplicates: \['cat'\]"):
        cfg.validate()
    (yolo / "data.yaml").write_text("names: {0: cat, 2: dog}\n")  # ids 0..nc-1 not all named
    with pytest.raises(DatasetError, match=r"data\.yaml: 'names' must be a list"):
        build_records(cfg_for(yolo, "yolo"), "train")
