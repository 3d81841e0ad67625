"""Pascal VOC parser (hardened XML, path containment) feeding ``datasets.scan``.

Layout: ``<year_dir>/{Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/<set>.txt}``.
``cfg.data.root`` is either one year dir (set entries "SET", e.g. data/BCCD) or a VOCdevkit dir
(entries "YEAR_DIR/SET", e.g. "VOC2007/trainval").

Coordinates: VOC boxes are 1-based inclusive pixel indices. They become 0-based pixel edges
with x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax (so a box covering the whole W x H
image is 0, 0, W, H).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.etree.ElementTree import ParseError

import defusedxml
import defusedxml.ElementTree as DET

from datasets.parser import Parser
from datasets.paths import REPO_ROOT, resolve_root, with_enc_fallback
from datasets.scan import DatasetError, RawItem, RawObject

__all__ = ["REPO_ROOT", "VOC_OFFSET", "VocParser", "resolve_root"]

VOC_OFFSET = 1.0  # VOC xmin/ymin are 1-based; subtracted to get 0-based pixel edges


class VocParser(Parser):
    """Reads the VOC sets named in ``cfg.data`` (``train_sets`` / ``val_sets``)."""

    name = "voc"
    offset = VOC_OFFSET

    # -- format hooks -------------------------------------------------------------------
    def items(self, split: str, class_names: list[str] | None = None) -> list[RawItem]:
        """Parsed (not yet checked) items of ``split`` ("train" -> train_sets, else val_sets)."""
        out: list[RawItem] = []
        for entry in self.sets(split):
            out.extend(self._parse_item(year_dir, img_id) for year_dir, img_id in self._read_set(entry))
        return out

    def index_files(self, split: str) -> list[Path]:
        return [self._set_file(entry)[1] for entry in self.sets(split)]

    def example_annotation(self, split: str, items: list[RawItem]) -> str:
        return str(items[0].ann_file) if items else str(self.root / "Annotations" / "<id>.xml")

    def class_names(self) -> list[str]:
        """Sorted object names found in the train split's readable annotations."""
        names = {o.name for it in self.items("train", []) if it.error is None for o in it.objects}
        if not names:
            raise DatasetError(f"no object names found in the train sets {self.data.train_sets} "
                               f"under {self.root}; set data.class_names or check the Annotations")
        return sorted(names)

    # -- sets and paths -----------------------------------------------------------------
    def _set_file(self, entry: str) -> tuple[Path, Path]:
        """(year_dir, ImageSets/Main/<set>.txt) of one set entry."""
        parts = entry.strip("/").split("/")
        if len(parts) not in (1, 2) or not all(parts) or ".." in parts:
            raise DatasetError(f"image set entry {entry!r}: expected 'SET' or 'YEAR_DIR/SET'")
        year_dir = self.root / parts[0] if len(parts) == 2 else self.root
        return year_dir, year_dir / "ImageSets" / "Main" / f"{parts[-1]}.txt"

    def _read_set(self, entry: str) -> list[tuple[Path, str]]:
        """(year_dir, id) pairs listed in ImageSets/Main/<set>.txt of one set entry."""
        year_dir, set_file = self._set_file(entry)
        if not set_file.is_file():
            avail = sorted(p.stem for p in set_file.parent.glob("*.txt")) if set_file.parent.is_dir() else []
            raise DatasetError(f"image set {entry!r}: {set_file} not found; available sets in "
                               f"{set_file.parent}: {avail or 'none'}")
        pairs = []
        for lineno, line in enumerate(set_file.read_text(encoding="utf-8").splitlines(), 1):
            tokens = line.split()
            if tokens:
                self._check_id(tokens[0], set_file, lineno)
                pairs.append((year_dir, tokens[0]))
        return pairs

    def _check_id(self, img_id: str, set_file: Path, lineno: int) -> None:
        """An id must be a plain file stem, so its files stay in Annotations/ and JPEGImages/."""
        if self.data.allow_outside_root:
            return
        if "/" in img_id or "\\" in img_id or img_id in (".", "..") or Path(img_id).is_absolute():
            raise DatasetError(f"{set_file}:{lineno}: image id {img_id!r} is a path, not a file "
                               "stem; it would leave Annotations/ and JPEGImages/ (set "
                               "data.allow_outside_root=True only for trusted data)")

    # -- one item -----------------------------------------------------------------------
    def _parse_item(self, year_dir: Path, img_id: str) -> RawItem:
        ann = self.contained(year_dir / "Annotations" / f"{img_id}.xml", f"annotation of id {img_id!r}")
        img = with_enc_fallback(year_dir / "JPEGImages" / f"{img_id}.jpg")
        if not ann.is_file():
            return RawItem(file=self.contained(img, f"image of id {img_id!r}"), ann_file=ann,
                           missing_annotation=True)
        item = RawItem(file=img, ann_file=ann)
        try:
            _fill_from_xml(item, ann)
        except (defusedxml.DTDForbidden, defusedxml.EntitiesForbidden,
                defusedxml.ExternalReferenceForbidden) as e:
            # A security problem, not a data glitch: refused in every split.
            raise DatasetError(f"{ann}: refused XML with DTD/entity declarations ({e}); VOC "
                               "annotations never need them") from e
        item.file = self.contained(item.file, f"image of id {img_id!r}")
        return item


def _fill_from_xml(item: RawItem, ann: Path) -> None:
    """Fill size, objects and (fallback) image path of ``item`` from a VOC xml."""
    try:
        root = DET.parse(str(ann), forbid_dtd=True).getroot()
    except ParseError as e:
        item.error = f"malformed xml: {e}"
        return
    fname = (root.findtext("filename") or "").strip()
    if not item.file.exists() and Path(fname).suffix:
        item.file = with_enc_fallback(item.file.with_suffix(Path(fname).suffix))
    try:
        w, h = int(float(root.findtext("size/width", "0"))), int(float(root.findtext("size/height", "0")))
        item.declared_hw = (h, w) if w > 0 and h > 0 else None
    except ValueError:
        item.declared_hw = None
    for i, obj in enumerate(root.iter("object")):
        try:
            item.objects.append(_parse_object(obj, i))
        except (ValueError, TypeError) as e:
            item.error = f"object {i}: {e}"
            return


def _parse_object(obj: Any, index: int) -> RawObject:
    """One <object>: name, bndbox (floats allowed) and difficult flag."""
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise ValueError("missing <name>")
    bb = obj.find("bndbox")
    if bb is None:
        raise ValueError(f"{name!r} has no <bndbox>")
    coords = []
    for k in ("xmin", "ymin", "xmax", "ymax"):
        text = bb.findtext(k)
        if text is None:
            raise ValueError(f"{name!r} <bndbox> lacks <{k}>")
        try:
            coords.append(float(text))
        except ValueError:
            raise ValueError(f"{name!r} <{k}> is not a number: {text.strip()!r}") from None
    difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "", "false", "False")
    return RawObject(name=name, xyxy_raw=tuple(coords), difficult=difficult, where=f"object {index} ({name})")
