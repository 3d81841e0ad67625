"""YOLO txt parser: ``class cx cy w h`` lines (fractions of the image size) -> ``RawItem``s.

Set entries are folders of images (searched recursively) or list files with one image path
per line, both relative to the root (list lines may also be absolute). The labels of
``.../images/.../a.jpg`` are ``.../labels/.../a.txt`` (the last ``images`` folder of the path
becomes ``labels``); with no ``images`` folder in the path, ``a.txt`` sits beside the image. A
missing or empty label file is a background image.

Symlinks: an image is known by its path as listed (folder entry + name, or the list line made
absolute), never by its link target: the label file is derived from that path, the record keeps
it (two links to one image are two images), and both the image's and the label file's resolved
targets must lie under the root unless ``data.allow_outside_root`` (an error names the entry).

Class names come from ``data.class_names`` or, when that is empty, from ``names`` in
``<root>/data.yaml`` (a list, or a mapping id -> name). A line with a class id outside
``[0, nc - 1]`` makes its image a bad item; when more than half of the label files do that,
the class list is wrong and the scan stops with an error instead.
"""
from __future__ import annotations

import math
from pathlib import Path

import yaml

from datasets.parser import Parser
from datasets.paths import ListedPaths, image_stem, is_image_name
from datasets.scan import DatasetError, RawItem, RawObject

_COLUMNS = 5
_MISMATCH_FRACTION = 0.5  # more label files than this with out-of-range ids: the class list is wrong


class YoloParser(Parser):
    """Reads the YOLO image folders / list files named in ``cfg.data``."""

    name = "yolo"
    version = 2  # 2: files are the listed paths, not their link targets

    # -- format hooks -------------------------------------------------------------------
    def index_files(self, split: str) -> list[Path]:
        out: list[Path] = []
        for entry in self.sets(split):
            path = self._entry_path(entry)
            # a folder's mtime changes when files are added or removed: watch every sub-folder
            out.extend([path, *sorted(p for p in path.rglob("*") if p.is_dir())] if path.is_dir() else [path])
        return out

    def items(self, split: str, class_names: list[str] | None = None) -> list[RawItem]:
        names = list(class_names or [])
        guard = ListedPaths(self.root, self.data.allow_outside_root)
        listed = [(img, where) for entry in self.sets(split) for img, where in self._images_of(entry)]
        parsed = [self._parse_item(guard.check(img, f"{where}: image"),
                                   guard.check(self.label_path(img), f"{where}: label file"), names)
                  for img, where in listed]
        self._check_class_list(parsed, names)
        return [item for item, _ in parsed]

    def class_names(self) -> list[str]:
        path = self.root / "data.yaml"
        if not path.is_file():
            raise DatasetError(f"YOLO txt labels hold class ids only: set data.class_names, or write the "
                               f"names in {path} ('names: [a, b, ...]')")
        try:
            names = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("names")
        except (yaml.YAMLError, AttributeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{path}: not a readable yaml mapping ({e})") from e
        if isinstance(names, dict) and sorted(names) == list(range(len(names))):
            names = [names[i] for i in range(len(names))]
        if not isinstance(names, list) or not names:
            raise DatasetError(f"{path}: 'names' must be a list of class names or a mapping 0..nc-1 -> name")
        return [str(n) for n in names]

    def example_annotation(self, split: str, items: list[RawItem]) -> str:
        examples = ", ".join(str(it.ann_file) for it in items[:3])
        return (f"{examples or self.root} (rule: the last 'images' folder of an image path becomes "
                "'labels' and the suffix .txt)")

    # -- files --------------------------------------------------------------------------
    def _entry_path(self, entry: str) -> Path:
        """The entry as listed under the root (links kept, so labels follow its names), checked."""
        path = self.root / entry
        self.contained(path, f"set entry {entry!r}")
        if not path.exists():
            raise DatasetError(f"set entry {entry!r}: {path} not found (an image folder or a list file "
                               "relative to data.root)")
        return path

    def _images_of(self, entry: str) -> list[tuple[Path, str]]:
        """(image path as listed, where it is listed) of one set entry, in a stable order."""
        path = self._entry_path(entry)
        if path.is_dir():
            return [(p, f"set entry {entry!r}")
                    for p in sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p.name))]
        out = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if line:
                out.append((Path(line) if Path(line).is_absolute() else self.root / line, f"{path}:{lineno}"))
        return out

    @staticmethod
    def label_path(image: Path) -> Path:
        parts = list(image.parts)
        if "images" in parts[:-1]:
            i = len(parts) - 2 - parts[-2::-1].index("images")
            parts[i] = "labels"
        return Path(*parts[:-1]) / f"{image_stem(image)}.txt"

    # -- one item -----------------------------------------------------------------------
    def _parse_item(self, image: Path, label: Path, names: list[str]) -> tuple[RawItem, bool]:
        """(item, whether a line has an out-of-range class id)."""
        item = RawItem(file=image, ann_file=label)
        if not label.is_file():
            item.missing_annotation = True
            return item, False
        try:
            lines = label.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            item.error = f"unreadable label file ({e})"
            return item, False
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item.objects.append(_parse_line(line, lineno, names))
            except ValueError as e:
                item.error = f"line {lineno}: {e}"
                return item, isinstance(e, _ClassIdError)
        return item, False

    def _check_class_list(self, parsed: list[tuple[RawItem, bool]], names: list[str]) -> None:
        bad = [it for it, class_error in parsed if class_error]
        labelled = sum(not it.missing_annotation for it, _ in parsed)
        if bad and len(bad) > _MISMATCH_FRACTION * labelled:
            raise DatasetError(f"{len(bad)} of {labelled} label files use class ids outside "
                               f"[0, {len(names) - 1}] (e.g. {bad[0].ann_file}: {bad[0].error}); the "
                               f"class list {names} does not match the labels (class list mismatch?)")


class _ClassIdError(ValueError):
    """A class id outside [0, nc - 1]."""


def _parse_line(line: str, lineno: int, names: list[str]) -> RawObject:
    """One ``class cx cy w h`` line -> RawObject with normalized xyxy; ValueError when invalid."""
    tokens = line.split()
    if len(tokens) != _COLUMNS:
        raise ValueError(f"expected {_COLUMNS} columns (class cx cy w h), got {len(tokens)}")
    try:
        cls_f = float(tokens[0])
        cx, cy, w, h = (float(t) for t in tokens[1:])
    except ValueError:
        raise ValueError(f"non-numeric value in {line.strip()!r}") from None
    if not cls_f.is_integer():
        raise ValueError(f"class {tokens[0]!r} is not an integer")
    cls = int(cls_f)
    if not 0 <= cls < len(names):
        raise _ClassIdError(f"class {cls} not in [0, {len(names) - 1}]")
    if not all(math.isfinite(v) for v in (cx, cy, w, h)):
        raise ValueError(f"non-finite coordinate in {line.strip()!r}")
    # a negative size is degenerate (dropped and counted by the scan), never an inverted box
    w, h = max(w, 0.0), max(h, 0.0)
    return RawObject(name=names[cls], xyxy_raw=(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2),
                     where=f"line {lineno}", normalized=True)
