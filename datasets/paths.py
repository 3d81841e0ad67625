"""Dataset paths: the root, containment under it, and which files are images.

Every parser checks the paths written in dataset files (set lists, COCO ``file_name``, YOLO
list files and folders) with ``contained`` or ``ListedPaths``: after following symlinks the path
must lie under the dataset root unless ``data.allow_outside_root`` is set, so a crafted entry
such as ``../../etc/passwd`` or a link to a file elsewhere is refused with an error naming the
entry.

Encrypted images are stored as ``<name>.<image suffix>.enc`` (e.g. ``a.jpg.enc``); they count
as images and their label files are named after ``a`` like those of ``a.jpg``.
"""
from __future__ import annotations

import os
from pathlib import Path

from datasets.scan import DatasetError

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
ENC_SUFFIX = ".enc"


def resolve_root(root: str) -> Path:
    """``cfg.data.root`` as an absolute resolved path (relative = against the repo root)."""
    p = Path(root).expanduser()
    return (p if p.is_absolute() else REPO_ROOT / p).resolve()


def checked_root(root: str) -> Path:
    """``resolve_root`` that raises DatasetError when the root is not a directory."""
    path = resolve_root(root)
    if not path.is_dir():
        raise DatasetError(f"dataset root {path} (data.root={root!r}) is not a directory; a relative "
                           "root resolves against the repo root")
    return path


def is_under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _outside(what: str, path: Path, resolved: Path, root: Path) -> DatasetError:
    return DatasetError(f"{what} {path} resolves to {resolved}, outside the dataset root {root} "
                        "(set data.allow_outside_root=True only for trusted data)")


def contained(path: Path, root: Path, allow_outside: bool, what: str) -> Path:
    """Resolve symlinks and require the result under ``root`` (unless ``allow_outside``)."""
    resolved = path.resolve()
    if not allow_outside and not is_under(resolved, root):
        raise _outside(what, path, resolved, root)
    return resolved


class ListedPaths:
    """Checks paths as a dataset lists them (links kept) against the root.

    ``check(path, what)`` returns ``path`` itself (absolute, symlinks not resolved: two links to
    one image stay two images, and names derived from it, like a YOLO label file, follow the
    link's name) after requiring that its resolved target lies under ``root``, unless
    ``allow_outside``. Resolved folders are cached, so a split of a hundred thousand images costs
    one ``lstat`` per file rather than one per path component.
    """

    def __init__(self, root: Path, allow_outside: bool) -> None:
        self.root, self.allow_outside = root, allow_outside
        self._dirs: dict[Path, Path] = {}

    def resolve(self, path: Path) -> Path:
        """``path.resolve()``, with the resolution of its folder cached."""
        if path.name in ("", ".", "..") or os.path.islink(path):
            return path.resolve()
        parent = self._dirs.get(path.parent)
        if parent is None:
            parent = self._dirs[path.parent] = path.parent.resolve()
        return parent / path.name

    def check(self, path: Path, what: str) -> Path:
        """``path`` made absolute (not resolved); DatasetError naming ``what`` when it leads outside."""
        path = path if path.is_absolute() else Path.cwd() / path
        if not self.allow_outside:
            resolved = self.resolve(path)
            if not is_under(resolved, self.root):
                raise _outside(what, path, resolved, self.root)
        return path


def is_image_name(name: str) -> bool:
    """True for names ending in an image suffix, optionally followed by ``.enc``."""
    low = name.lower().removesuffix(ENC_SUFFIX)
    return low.endswith(IMAGE_SUFFIXES)


def image_stem(path: Path) -> str:
    """``a`` for ``a.jpg`` and for ``a.jpg.enc``."""
    name = path.name.removesuffix(ENC_SUFFIX) if path.name.lower().endswith(ENC_SUFFIX) else path.name
    return Path(name).stem


def with_enc_fallback(path: Path) -> Path:
    """``path`` if it exists, else its encrypted twin ``path.enc`` if that exists, else ``path``."""
    if path.exists():
        return path
    enc = path.with_name(path.name + ENC_SUFFIX)
    return enc if enc.exists() else path
