"""Write one small synthetic detection dataset as VOC, COCO json and YOLO txt (for tests).

Objects are ``(class index, x1, y1, x2, y2[, ignore])`` in 0-based pixel edges; ``ignore``
becomes VOC ``difficult=1`` / COCO ``iscrowd=1`` (YOLO txt has no ignore regions: such objects
are left out of the YOLO labels). COCO category ids are deliberately not 1..nc.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from configs.base_config import BaseConfig

NAMES = ["cat", "dog", "bird"]
CAT_IDS = [3, 7, 11]
Obj = tuple  # (cls, x1, y1, x2, y2[, ignore])
Item = tuple[str, np.ndarray, list]  # (stem, image [h, w, 3] uint8, objects)


def rect_image(hw: tuple[int, int], objects: list[Obj], seed: int = 0) -> np.ndarray:
    """Noise-free grey image with each object drawn as a filled rectangle of its class colour."""
    colors = [(220, 30, 30), (30, 200, 40), (40, 60, 230)]
    img = np.full((*hw, 3), 60, np.uint8)
    img[: 2 + seed % 3, :] = 90  # makes images differ slightly
    for o in objects:
        img[o[2]:o[4], o[1]:o[3]] = colors[o[0]]
    return img


def default_items() -> dict[str, list[Item]]:
    """Train and val items: several sizes, several objects, a background image."""
    specs = {
        "train": [((60, 80), [(0, 10, 8, 40, 35), (1, 45, 20, 75, 55)]),
                  ((90, 70), [(2, 5, 5, 30, 40)]),
                  ((64, 64), []),
                  ((50, 100), [(1, 60, 10, 95, 45), (0, 2, 2, 20, 20), (2, 30, 25, 50, 48)])],
        "val": [((60, 80), [(1, 12, 10, 50, 50)]),
                ((80, 60), [(0, 4, 30, 44, 70), (2, 20, 2, 58, 20)])],
    }
    return {split: [(f"{split}{k:03d}", rect_image(hw, objs, k), objs) for k, (hw, objs) in enumerate(items)]
            for split, items in specs.items()}


def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=95)


def write_voc(root: Path, items: dict[str, list[Item]]) -> Path:
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for split, lst in items.items():
        for stem, img, objs in lst:
            _save(img, root / "JPEGImages" / f"{stem}.jpg")
            parts = [(f"<annotation><filename>{stem}.jpg</filename><size><width>{img.shape[1]}</width>"
                     f"<height>{img.shape[0]}</height><depth>3</depth></size>")]
            for o in objs:
                diff = int(len(o) > 5 and o[5])
                parts.append(f"<object><name>{NAMES[o[0]]}</name><difficult>{diff}</difficult><bndbox>"
                             f"<xmin>{o[1] + 1}</xmin><ymin>{o[2] + 1}</ymin><xmax>{o[3]}</xmax>"
                             f"<ymax>{o[4]}</ymax></bndbox></object>")
            (root / "Annotations" / f"{stem}.xml").write_text("".join(parts) + "</annotation>")
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(s for s, _, _ in lst) + "\n")
    return root


def coco_dict(lst: list[Item], split: str) -> dict:
    images, anns = [], []
    for k, (stem, img, objs) in enumerate(lst):
        images.append({"id": 100 + k, "file_name": f"{stem}.jpg", "width": img.shape[1],
                       "height": img.shape[0]})
        for o in objs:
            anns.append({"id": len(anns) + 1, "image_id": 100 + k, "category_id": CAT_IDS[o[0]],
                         "bbox": [o[1], o[2], o[3] - o[1], o[4] - o[2]],
                         "area": (o[3] - o[1]) * (o[4] - o[2]),
                         "iscrowd": int(len(o) > 5 and o[5])})
    cats = [{"id": c, "name": n} for c, n in zip(CAT_IDS, NAMES)]
    return {"images": images, "annotations": anns, "categories": cats}


def write_coco(root: Path, items: dict[str, list[Item]]) -> Path:
    """Official layout: annotations/instances_<split>.json, images in <split>/."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, lst in items.items():
        for stem, img, _ in lst:
            _save(img, root / split / f"{stem}.jpg")
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco_dict(lst, split)))
    return root


def yolo_line(o: Obj, hw: tuple[int, int]) -> str:
    h, w = hw
    cx, cy = (o[1] + o[3]) / 2 / w, (o[2] + o[4]) / 2 / h
    return f"{o[0]} {cx!r} {cy!r} {(o[3] - o[1]) / w!r} {(o[4] - o[2]) / h!r}"


def write_yolo(root: Path, items: dict[str, list[Item]], names_yaml: bool = True) -> Path:
    """images/<split>/<stem>.jpg and labels/<split>/<stem>.txt, names in data.yaml."""
    for split, lst in items.items():
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for stem, img, objs in lst:
            _save(img, root / "images" / split / f"{stem}.jpg")
            lines = [yolo_line(o, img.shape[:2]) for o in objs if not (len(o) > 5 and o[5])]
            (root / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    if names_yaml:
        (root / "data.yaml").write_text("names: [" + ", ".join(NAMES) + "]\n")
    return root


def cfg_for(root: Path, fmt: str, cache_dir: Path | None = None, **data: object) -> BaseConfig:
    """A config reading ``root`` in format ``fmt`` (class names from the data unless given)."""
    cfg = BaseConfig()
    cfg.data.format = fmt
    cfg.data.root = str(root)
    cfg.data.img_size = 64
    cfg.data.train_sets, cfg.data.val_sets = {
        "voc": (["train"], ["val"]),
        "coco": (["annotations/instances_train.json"], ["annotations/instances_val.json"]),
        "yolo": (["images/train"], ["images/val"]),
    }[fmt]
    if cache_dir is not None:
        cfg.data.cache_dir = str(cache_dir)
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg
