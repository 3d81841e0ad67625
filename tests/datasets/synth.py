"""Tiny synthetic VOC datasets for tests (written into pytest's tmp_path)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from configs.base_config import BaseConfig

CLASSES = ["cat", "dog"]
RED = (220, 30, 30)
BG = 60


def image_with_rect(hw: tuple[int, int] = (60, 80), box: tuple[int, int, int, int] = (20, 10, 50, 40),
                    color: tuple[int, int, int] = RED) -> np.ndarray:
    """[h, w, 3] uint8 grey image with one filled rectangle covering pixels box = (x1, y1, x2, y2)."""
    img = np.full((*hw, 3), BG, np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = color
    return img


def voc_xml(objects: list[tuple], size_wh: tuple[int, int] | None = (80, 60), filename: str = "") -> str:
    """A VOC annotation; objects = (name, xmin, ymin, xmax, ymax[, difficult]) in VOC 1-based units."""
    parts = ["<annotation>", f"<filename>{filename}</filename>"]
    if size_wh:
        parts.append(f"<size><width>{size_wh[0]}</width><height>{size_wh[1]}</height><depth>3</depth></size>")
    for o in objects:
        diff = o[5] if len(o) > 5 else 0
        parts.append(f"<object><name>{o[0]}</name><difficult>{diff}</difficult><bndbox>"
                     f"<xmin>{o[1]}</xmin><ymin>{o[2]}</ymin><xmax>{o[3]}</xmax><ymax>{o[4]}</ymax>"
                     "</bndbox></object>")
    parts.append("</annotation>")
    return "\n".join(parts)


def voc_objects_for(box: tuple[int, int, int, int], name: str = "cat") -> list[tuple]:
    """The VOC object that exactly covers the 0-based pixel-edge box (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = box
    return [(name, x1 + 1, y1 + 1, x2, y2)]


def make_voc(root: Path, n_train: int = 4, n_val: int = 2, hw: tuple[int, int] = (60, 80)) -> Path:
    """A valid VOC year dir: every image has one red rectangle labelled 'cat' or 'dog'."""
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    ids = {"train": [f"tr{i}" for i in range(n_train)], "val": [f"va{i}" for i in range(n_val)]}
    for k, img_id in enumerate(ids["train"] + ids["val"]):
        box = (10 + k % 5, 8 + k % 3, 40 + k % 7, 35 + k % 4)
        add_item(root, img_id, image_with_rect(hw, box), voc_objects_for(box, CLASSES[k % 2]))
    for split, lst in ids.items():
        write_set(root, split, lst)
    return root


def add_item(root: Path, img_id: str, img: np.ndarray | None, objects: list[tuple] | None,
             size_wh: tuple[int, int] | None = None, fmt: str = "JPEG") -> Path:
    """Write JPEGImages/<id>.jpg (PNG data when fmt='PNG') and Annotations/<id>.xml (None = no xml)."""
    path = root / "JPEGImages" / f"{img_id}.jpg"
    if img is not None:
        Image.fromarray(img).save(path, format=fmt, quality=95)
        size_wh = size_wh or (img.shape[1], img.shape[0])
    if objects is not None:
        (root / "Annotations" / f"{img_id}.xml").write_text(voc_xml(objects, size_wh))
    return path


def write_set(root: Path, name: str, ids: list[str]) -> None:
    (root / "ImageSets" / "Main" / f"{name}.txt").write_text("\n".join(ids) + "\n")


def append_to_set(root: Path, name: str, img_id: str) -> None:
    with open(root / "ImageSets" / "Main" / f"{name}.txt", "a") as f:
        f.write(img_id + "\n")


def make_cfg(root: Path, **data: object) -> BaseConfig:
    """A BaseConfig reading the synthetic dataset at ``root`` (absolute path)."""
    cfg = BaseConfig()
    cfg.data.root = str(root)
    cfg.data.class_names = list(CLASSES)
    cfg.data.img_size = 64
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg
