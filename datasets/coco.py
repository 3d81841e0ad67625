"""COCO json parser: images, annotations and categories -> ``RawItem``s for ``datasets.scan``.

Set entries (``data.train_sets`` / ``data.val_sets``) are json files relative to the root. An
image's ``file_name`` is looked up, first match wins, in: the json's folder, the root,
``<root>/images``, and ``<root>/<name>`` for a json named ``instances_<name>.json`` (the
official layout: ``annotations/instances_val2017.json`` with images in ``val2017/``). Every
resolved path must stay under the root.

Boxes are ``[x, y, w, h]`` in pixels with 0-based edges, so xyxy = (x, y, x + w, y + h).
``iscrowd=1`` annotations become ignore regions. Classes map by category *name* to
``data.class_names`` (default: the categories ordered by id); ``category_ids`` keeps the
original id of every class for evaluation and export.

Structural errors of the json raise ``DatasetError`` in every split, naming the offending id:
duplicate image or annotation ids, annotations of unknown images or categories, duplicate
category names. String image ids and missing ``area`` / ``iscrowd`` are normalised with one
warning. A malformed ``bbox`` makes the image a bad item (skipped in train, an error in val).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from loguru import logger

from datasets.parser import Parser
from datasets.paths import with_enc_fallback
from datasets.scan import DatasetError, RawItem, RawObject

ImageId = int | str


class CocoParser(Parser):
    """Reads the COCO json files named in ``cfg.data`` (``train_sets`` / ``val_sets``)."""

    name = "coco"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self._loaded: dict[Path, dict] = {}

    # -- format hooks -------------------------------------------------------------------
    def index_files(self, split: str) -> list[Path]:
        return [self._json_path(entry) for entry in self.sets(split)]

    def items(self, split: str, class_names: list[str] | None = None) -> list[RawItem]:
        out: list[RawItem] = []
        for entry in self.sets(split):
            out.extend(self._items_of(self._json_path(entry)))
        return out

    def class_names(self) -> list[str]:
        """Category names of the train json(s), ordered by category id."""
        cats = self._categories("train")
        return [cats[i] for i in sorted(cats)]

    def category_ids(self, class_names: list[str]) -> list[int]:
        """The COCO category id of every class (by name, from the train json files)."""
        by_name = {name: cid for cid, name in self._categories("train").items()}
        missing = [n for n in class_names if n not in by_name]
        if missing:
            raise DatasetError(f"class names {missing} are not categories of the train json files "
                               f"{self.data.train_sets}; categories: {sorted(by_name)}")
        return [by_name[n] for n in class_names]

    # -- json ---------------------------------------------------------------------------
    def _json_path(self, entry: str) -> Path:
        path = self.contained(self.root / entry, f"COCO json {entry!r}")
        if not path.is_file():
            raise DatasetError(f"COCO json {entry!r}: {path} not found (set entries are json files "
                               "relative to data.root)")
        return path

    def _load(self, path: Path) -> dict:
        """The json, checked for the fields every later step relies on (cached per parser)."""
        if path not in self._loaded:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DatasetError(f"{path}: not a readable COCO json ({e})") from e
            if not isinstance(data, dict) or not isinstance(data.get("images"), list):
                raise DatasetError(f"{path}: a COCO json needs an 'images' list")
            for key in ("annotations", "categories"):
                if not isinstance(data.get(key, []), list):
                    raise DatasetError(f"{path}: '{key}' must be a list")
            self._loaded[path] = data
        return self._loaded[path]

    def _categories(self, split: str) -> dict[int, str]:
        """{category id: name} over the split's json files; duplicate names or ids raise."""
        cats: dict[int, str] = {}
        for entry in self.sets(split):
            path = self._json_path(entry)
            for c in self._load(path).get("categories", []):
                if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not c.get("name"):
                    raise DatasetError(f"{path}: category {c!r} needs an integer 'id' and a 'name'")
                if cats.get(c["id"], c["name"]) != c["name"]:
                    raise DatasetError(f"{path}: category id {c['id']} is both {cats[c['id']]!r} "
                                       f"and {c['name']!r}")
                cats[c["id"]] = str(c["name"])
        dup = [n for n, k in Counter(cats.values()).items() if k > 1]
        if dup:
            raise DatasetError(f"categories of {self.sets(split)} repeat the names {dup} under "
                               "different ids; class names must be unique")
        if not cats:
            raise DatasetError(f"no categories in the COCO json files {self.sets(split)}")
        return cats

    def _items_of(self, path: Path) -> list[RawItem]:
        data = self._load(path)
        cats = {c["id"]: str(c["name"]) for c in data.get("categories", [])
                if isinstance(c, dict) and "id" in c and "name" in c}
        notes: Counter = Counter()
        images: dict[ImageId, RawItem] = {}
        names: dict[ImageId, str] = {}
        for im in data["images"]:
            if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
                raise DatasetError(f"{path}: image entry {_short(im)} needs an 'id' and a 'file_name'")
            img_id = _norm_id(im["id"], path, "image", notes)
            if img_id in images:
                raise DatasetError(f"{path}: duplicate image id {im['id']!r} ({names[img_id]!r} and "
                                   f"{im['file_name']!r})")
            names[img_id] = im["file_name"]
            images[img_id] = RawItem(file=self._image_path(path, im["file_name"]), ann_file=path,
                                     declared_hw=_declared_hw(im),
                                     source_id=img_id if isinstance(img_id, int) and img_id >= 0 else None)
        seen_ann: set = set()
        for ann in data.get("annotations", []):
            self._add_annotation(path, ann, images, cats, seen_ann, notes)
        _warn_filled(path, notes)
        return list(images.values())

    def _add_annotation(self, path: Path, ann: Any, images: dict[ImageId, RawItem], cats: dict[int, str],
                        seen: set, notes: Counter) -> None:
        if not isinstance(ann, dict) or "id" not in ann:
            raise DatasetError(f"{path}: annotation {_short(ann)} has no 'id'")
        ann_id = ann["id"]
        if ann_id in seen:
            raise DatasetError(f"{path}: annotation ids are not unique: id {ann_id!r} repeats")
        seen.add(ann_id)
        img_id = _norm_id(ann.get("image_id"), path, f"annotation {ann_id!r} image", notes)
        if img_id not in images:
            raise DatasetError(f"{path}: annotation id {ann_id!r} refers to image_id "
                               f"{ann.get('image_id')!r}, which is not in 'images'")
        if ann.get("category_id") not in cats:
            raise DatasetError(f"{path}: annotation id {ann_id!r} has category_id "
                               f"{ann.get('category_id')!r}, not one of {sorted(cats)}")
        item = images[img_id]
        notes["area"] += "area" not in ann
        notes["iscrowd"] += "iscrowd" not in ann
        box = ann.get("bbox")
        if item.error is not None:
            return
        where = f"annotation id {ann_id!r} (image {item.file.name!r})"
        if not isinstance(box, list) or len(box) != 4 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
            item.error = f"{where}: bbox {box!r} is not [x, y, w, h] numbers"
            return
        x, y, w, h = (float(v) for v in box)
        # w or h <= 0 is degenerate (dropped and counted by the scan), never an inverted box
        item.objects.append(RawObject(name=cats[ann["category_id"]], xyxy_raw=(x, y, x + max(w, 0.0),
                                      y + max(h, 0.0)), where=where, crowd=bool(ann.get("iscrowd", 0))))

    def _image_path(self, json_path: Path, file_name: str) -> Path:
        """First existing candidate location of ``file_name`` (see the module doc), contained."""
        dirs = [json_path.parent, self.root, self.root / "images"]
        if json_path.stem.startswith("instances_"):
            dirs.append(self.root / json_path.stem.removeprefix("instances_"))
        candidates = [with_enc_fallback(d / file_name) for d in dirs]
        found = next((c for c in candidates if c.exists()), candidates[0])
        return self.contained(found, f"{json_path}: file_name {file_name!r}")


def _norm_id(value: Any, path: Path, what: str, notes: Counter) -> ImageId:
    """Image ids: ints stay, digit strings become ints (noted for one warning), other strings stay."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value:
        notes["string_ids"] += 1
        return int(value) if value.isdigit() else value
    raise DatasetError(f"{path}: {what} id {value!r} must be an integer or a string")


def _declared_hw(im: dict) -> tuple[int, int] | None:
    w, h = im.get("width"), im.get("height")
    return (int(h), int(w)) if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 else None


def _warn_filled(path: Path, notes: Counter) -> None:
    """One warning per json for normalised ids and filled-in fields."""
    parts = []
    if notes["string_ids"]:
        parts.append(f"{notes['string_ids']} string ids read as given (digit strings as integers)")
    if notes["area"]:
        parts.append(f"{notes['area']} annotations without 'area' (w * h is used)")
    if notes["iscrowd"]:
        parts.append(f"{notes['iscrowd']} annotations without 'iscrowd' (0 is used)")
    if parts:
        logger.warning(f"{path}: " + "; ".join(parts))


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."
