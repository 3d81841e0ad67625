"""Prediction sources: what ``predict.source`` names, decided in one place.

``source_kind`` tries these in order (``SOURCE_KINDS`` describes each one for error messages):
- webcam: a camera index ("0", "1"), opened with ``cv2.VideoCapture(index)`` (write ``./0`` for a
  file named 0);
- stream: an rtsp, rtsps, rtmp, http or https URL, read by OpenCV (its FFmpeg backend);
- folder: the images and videos of a folder (sorted, non-recursive);
- list: a .txt file naming one image or video per line, in its order (relative paths are relative
  to the list's folder; blank lines and lines starting with # are skipped);
- image, video: one file;
- glob: a pattern with * ? or [ (``**`` recurses), its images and videos sorted by path.

A file kind lists its files up front (a bad list line fails before any prediction) and reads them
with ``frames.FileSource``; a live kind is read by ``live.LiveSource``.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from urllib.parse import urlsplit

from configs.base_config import ConfigError
from core.evaluation.frames import VIDEO_EXTS, FileSource, is_source_file, is_video
from core.evaluation.live import LiveSource
from datasets.paths import ENC_SUFFIX, IMAGE_SUFFIXES, is_image_name

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")
LIST_SUFFIXES = (".txt",)
LIVE_KINDS = ("webcam", "stream")

SOURCE_KINDS = {
    "webcam": "a camera index: 0, 1, ...",
    "stream": "an rtsp://, rtsps://, rtmp://, http:// or https:// URL",
    "folder": "a folder of images and videos",
    "list": "a .txt file of image or video paths, one per line",
    "image": f"an image file ({' '.join(IMAGE_SUFFIXES)}, or + {ENC_SUFFIX} when encrypted)",
    "video": f"a video file ({' '.join(sorted(VIDEO_EXTS))})",
    "glob": "a glob pattern such as 'data/*/JPEGImages/*.jpg'",
}


def accepted_kinds() -> str:
    return "predict.source takes " + "; ".join(SOURCE_KINDS.values())


def source_kind(source: str) -> str:
    """The kind of ``source`` (a key of SOURCE_KINDS); an error names the source and the kinds."""
    if not source:
        raise ConfigError(f"predict.source is empty: {accepted_kinds()}")
    if source.isdecimal():
        return "webcam"
    if urlsplit(source).scheme.lower() in STREAM_SCHEMES:
        return "stream"
    p = Path(source).expanduser()
    if p.is_dir():
        return "folder"
    if p.is_file():
        if p.suffix.lower() in LIST_SUFFIXES:
            return "list"
        if is_image_name(p.name):
            return "image"
        if is_video(p):
            return "video"
        raise ConfigError(f"predict.source={source}: unknown file type {p.suffix!r}; {accepted_kinds()}")
    if any(c in source for c in "*?["):
        return "glob"
    raise FileNotFoundError(f"predict.source={source}: no such file or folder; {accepted_kinds()}")


def _one_file(source: str) -> list[Path]:
    return [Path(source).expanduser()]


def _folder_files(source: str) -> list[Path]:
    files = sorted(f for f in Path(source).expanduser().iterdir() if f.is_file() and is_source_file(f))
    if not files:
        raise ConfigError(f"predict.source={source}: no images {list(IMAGE_SUFFIXES)} or videos "
                          f"{sorted(VIDEO_EXTS)} in that folder")
    return files


def _list_files(source: str) -> list[Path]:
    """The files a list names; a bad line is an error naming ``list:line`` (before any prediction)."""
    path = Path(source).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"predict.source={source}: cannot read this list of paths ({e})") from None
    files = []
    for n, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        f = path.parent / Path(entry).expanduser()  # an absolute entry stays absolute
        if not f.is_file():
            what = "a folder (list its files instead)" if f.is_dir() else f"no such file ({f})"
            raise FileNotFoundError(f"{path}:{n}: {entry!r}: {what}")
        if not is_source_file(f):
            raise ConfigError(f"{path}:{n}: {entry!r}: not an image {list(IMAGE_SUFFIXES)} or video "
                              f"{sorted(VIDEO_EXTS)} file")
        files.append(f)
    if not files:
        raise ConfigError(f"predict.source={source}: the list names no file (only blank lines and # comments)")
    return files


def _glob_files(source: str) -> list[Path]:
    matches = sorted(glob.glob(os.path.expanduser(source), recursive=True))
    files = [Path(m) for m in matches if Path(m).is_file() and is_source_file(Path(m))]
    if not files:
        other = f" (only {len(matches)} other files or folders)" if matches else ""
        raise FileNotFoundError(f"predict.source={source}: the glob matches no image or video{other}; "
                                f"{accepted_kinds()}")
    return files


# The file kinds and how each one lists its files.
FILE_LISTERS = {"image": _one_file, "video": _one_file, "folder": _folder_files, "list": _list_files,
                "glob": _glob_files}


def open_source(source: str, stream_timeout_s: float = 10.0, queue_size: int = 8) -> FileSource | LiveSource:
    """The source ``predict.source`` names (its kind decided by ``source_kind``).

    stream_timeout_s: a live source that gives no frame for this long has dropped; queue_size: live
    frames read ahead of the predictor at most.
    """
    kind = source_kind(source)
    if kind in LIVE_KINDS:
        return LiveSource(kind, source, stream_timeout_s, queue_size)
    return FileSource(kind, FILE_LISTERS[kind](source))

