"""YOLO images reached through symlinks: the label follows the listed name, both the image's and
the label's targets must stay under the root (unless data.allow_outside_root), and the record
keeps the listed path."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets import DatasetError, build_records
from tests.datasets.three_formats import NAMES, cfg_for, default_items, rect_image, write_yolo

BOX = (1, 10, 10, 50, 40)  # class dog


@pytest.fixture
def yolo(tmp_path):
    return write_yolo(tmp_path / "y", default_items())


def _train(root: Path, **kw):
    return build_records(cfg_for(root, "yolo", class_names=list(NAMES), **kw), "train")[0]


def _image_outside(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere" / "secret.jpg"
    path.parent.mkdir()
    Image.fromarray(rect_image((60, 80), [BOX])).save(path)
    return path


def test_image_symlink_escaping_the_root_is_an_error_naming_it(yolo, tmp_path):
    link = yolo / "images" / "train" / "escape.jpg"
    link.symlink_to(_image_outside(tmp_path))
    with pytest.raises(DatasetError) as err:
        _train(yolo)
    msg = str(err.value)
    assert "set entry 'images/train': image" in msg and "outside the dataset root" in msg
    assert str(yolo.resolve() / "images" / "train" / "escape.jpg") in msg


def test_symlink_inside_the_root_takes_the_label_of_its_own_name(yolo):
    # two links to one image: two images, each labelled by its link's name, listed as the links
    shared = yolo / "shared" / "pic.jpg"
    shared.parent.mkdir()
    Image.fromarray(rect_image((60, 80), [BOX])).save(shared)
    for name, line in (("one", "1 0.375 0.416667 0.5 0.5\n"), ("two", "2 0.375 0.416667 0.5 0.5\n")):
        (yolo / "images" / "train" / f"{name}.jpg").symlink_to(Path("../../shared/pic.jpg"))
        (yolo / "labels" / "train" / f"{name}.txt").write_text(line)
    records = _train(yolo)
    by_name = {Path(r.file).stem: r for r in records}
    assert by_name["one"].file == str(yolo.resolve() / "images" / "train" / "one.jpg")  # the link, not pic.jpg
    assert by_name["one"].labels.tolist() == [1] and by_name["two"].labels.tolist() == [2]
    np.testing.assert_allclose(by_name["two"].boxes, [[10, 10, 50, 40]], atol=1e-3)
    assert len(records) == 6 and not any(Path(r.file).name == "pic.jpg" for r in records)


def test_list_file_line_through_a_link_uses_the_links_label(yolo):
    (yolo / "images" / "train" / "alias.jpg").symlink_to("train001.jpg")
    (yolo / "labels" / "train" / "alias.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (yolo / "list.txt").write_text("images/train/alias.jpg\n")
    (rec,) = _train(yolo, train_sets=["list.txt"])
    assert rec.file == str(yolo.resolve() / "images" / "train" / "alias.jpg") and rec.labels.tolist() == [0]


def test_label_file_symlink_escaping_the_root_is_an_error(yolo, tmp_path):
    outside = tmp_path / "stolen.txt"
    outside.write_text("0 0.5 0.5 0.5 0.5\n")
    label = yolo / "labels" / "train" / "train001.txt"
    label.unlink()
    label.symlink_to(outside)
    with pytest.raises(DatasetError, match=r"set entry 'images/train': label file .*train001\.txt resolves to "
                                           r".*stolen\.txt, outside the dataset root"):
        _train(yolo)


def test_allow_outside_root_accepts_both_and_keeps_the_link(yolo, tmp_path):
    link = yolo / "images" / "train" / "escape.jpg"
    link.symlink_to(_image_outside(tmp_path))
    outside_label = tmp_path / "escape.txt"
    outside_label.write_text("2 0.375 0.416667 0.5 0.5\n")
    (yolo / "labels" / "train" / "escape.txt").symlink_to(outside_label)
    records = _train(yolo, allow_outside_root=True)
    rec = next(r for r in records if Path(r.file).name == "escape.jpg")
    assert rec.file == str(yolo.resolve() / "images" / "train" / "escape.jpg") and rec.labels.tolist() == [2]
