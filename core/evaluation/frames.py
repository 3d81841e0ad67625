"""Frames to predict: the ``Frame`` record, and image and video files read one frame at a time.

Video frames are read in the caller's thread, so a video gives the same frames on every run, and one
frame at a time, so memory does not grow with the length of a video.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from loguru import logger

from datasets.image_io import ImageError
from datasets.loaders import EncryptedLoader, ImageLoader
from datasets.paths import ENC_SUFFIX, image_stem, is_image_name

VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
DEFAULT_FPS = 30.0  # a stream or video that reports no usable frame rate (the usual camera rate)
MAX_FPS = 240.0  # above this a reported rate is a clock, not frames (some RTSP servers report 90000)


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS


def is_source_file(path: Path) -> bool:
    """An image (``a.jpg``, or ``a.jpg.enc`` for the encrypted loader) or a video file name."""
    return is_image_name(path.name) or is_video(path)


@dataclass
class Frame:
    """One image to predict: an image file, or a frame of a video, webcam or stream."""

    name: str  # output stem: the image's, or "<video name>_<frame:06d>"
    file: str  # where it comes from: the image or video file, the stream URL, or "webcam:<index>"
    image: np.ndarray  # [H, W, 3] uint8 RGB
    frame: int | None = None  # index among all frames read from its video or stream (None for an image)
    time_s: float | None = None  # video: frame / fps; live: seconds since the capture opened; image: None
    fps: float = 0.0  # frames per second of its video or stream
    video: str | None = None  # stem of the annotated video the frame belongs to (None for an image)


def unique_names(files: list[Path]) -> list[str]:
    """Output stem of each file: its stem, with _2, _3 ... added to a repeat (a glob or a list may name
    two ``a.jpg`` in different folders; their outputs must not overwrite each other)."""
    used: set[str] = set()
    names, renamed = [], 0
    for f in files:
        stem = f.stem if is_video(f) else image_stem(f)
        name, k = stem, 1
        while name in used:
            k += 1
            name = f"{stem}_{k}"
        used.add(name)
        names.append(name)
        renamed += name != stem
    if renamed:
        logger.warning(f"{renamed} source files repeat the name of an earlier one: their outputs are named "
                       "<stem>_2, <stem>_3 ...")
    return names


class FileSource:
    """Image and video files, read in order."""

    def __init__(self, kind: str, files: list[Path]) -> None:
        self.kind, self.files = kind, files
        self.names = unique_names(files)

    def describe(self) -> str:
        videos = sum(map(is_video, self.files))
        counts = [f"{n} {what}" for n, what in ((len(self.files) - videos, "images"), (videos, "videos")) if n]
        return f"{self.kind}, {' and '.join(counts)}"

    def count(self, stride: int) -> int:
        return count_frames(self.files, stride)

    def frames(self, loader: ImageLoader, stride: int, stop: threading.Event) -> Iterator[Frame]:
        """Each image (read by ``loader``) and every ``stride``-th frame of each video, until ``stop``."""
        for path, name in zip(self.files, self.names):
            if stop.is_set():
                return
            if is_video(path):
                yield from _video_frames(path, name, stride, stop)
            else:
                yield Frame(name, str(path), load_image(loader, path))


def load_image(loader: ImageLoader, path: Path) -> np.ndarray:
    """``loader.load(path)``; an undecodable ``.enc`` file under another loader says what is missing."""
    try:
        return loader.load(path)
    except ImageError as e:
        if path.name.lower().endswith(ENC_SUFFIX) and not isinstance(loader, EncryptedLoader):
            raise ImageError(f"{e}; an encrypted image needs data.image_loader="
                             "datasets.loaders.EncryptedLoader and data.key_env") from None
        raise


def usable_fps(cap: cv2.VideoCapture) -> float:
    """The capture's frame rate, or DEFAULT_FPS when it reports none or an implausible one."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    return float(fps) if 0 < fps <= MAX_FPS else DEFAULT_FPS


def _video_frames(path: Path, name: str, stride: int, stop: threading.Event) -> Iterator[Frame]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ImageError(f"{path}: OpenCV cannot open this video (codec or container not supported by "
                         "its build)")
    fps, declared, index = usable_fps(cap), int(max(cap.get(cv2.CAP_PROP_FRAME_COUNT), 0)), 0
    try:
        while not stop.is_set():
            ok, bgr = cap.read()
            if not ok:
                break
            if index % stride == 0:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                yield Frame(f"{name}_{index:06d}", str(path), rgb, index, round(index / fps, 3), fps, name)
            index += 1
    finally:
        cap.release()
    if stop.is_set():
        return
    if index == 0:
        raise ImageError(f"{path}: no frame could be decoded from this video")
    if index < declared:
        logger.warning(f"{path}: the video ended after {index} of the {declared} frames its container "
                       "declares (a truncated or damaged file); its outputs hold the frames read")


def count_frames(files: list[Path], video_stride: int = 1) -> int:
    """How many frames the files give (video lengths as their containers declare them)."""
    total = 0
    for f in files:
        if is_video(f):
            cap = cv2.VideoCapture(str(f))
            total += -(-int(max(cap.get(cv2.CAP_PROP_FRAME_COUNT), 0)) // video_stride)
            cap.release()
        else:
            total += 1
    return total
