"""Live sources: a webcam or a network stream, read on a thread of its own.

``cap.read()`` blocks without a deadline on most backends, so a reader thread reads the capture and
the predictor waits for its frames with a deadline (``predict.stream_timeout_s``): a source that
gives no frame for that long, or whose read fails, has dropped. The drop is logged (frames read,
seconds since the source opened) and the iterator ends, so the caller closes its outputs as after
any other source. The reader queues a few frames at most: memory stays constant on an endless stream.
"""
from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import cv2
import numpy as np
from loguru import logger

from core.evaluation.frames import Frame, usable_fps
from datasets.image_io import ImageError
from datasets.loaders import ImageLoader

POLL_S = 0.1  # how often a wait for a live frame looks at the stop flag and the deadline, seconds
JOIN_S = 1.0  # how long the end of a run waits for the reader thread (a read stuck in the backend may never return)
STOPPED_READING = "the predictor stopped reading (predict.max_frames, or an error)"


class LiveSource:
    """A webcam (``source`` = its index) or a stream URL: frames until it drops, ``stop`` is set or the
    caller closes the iterator. ``ended`` says how it ended, ``dropped`` whether it was a drop."""

    def __init__(self, kind: str, source: str, timeout_s: float, queue_size: int) -> None:
        self.kind, self.timeout_s, self.queue_size = kind, timeout_s, queue_size
        webcam = kind == "webcam"
        self.target: int | str = int(source) if webcam else source
        self.label = f"webcam:{source}" if webcam else shown_url(source)  # the "file" of its frames
        self.name = f"webcam{source}" if webcam else stream_name(source)  # stem of its output files
        self.ended, self.dropped = "", False

    def describe(self) -> str:
        return f"{self.kind} {self.label}"

    def count(self, stride: int) -> None:
        """Unknown: a live source runs until it drops or is stopped."""
        return None

    def frames(self, loader: ImageLoader | None, stride: int, stop: threading.Event) -> Iterator[Frame]:
        """Every ``stride``-th frame read (RGB; OpenCV decodes, ``loader`` is unused), until the source
        drops or ``stop`` is set. No frame at all is an error."""
        cap = self._open()
        fps = usable_fps(cap)
        reader = _Reader(cap, stride, self.queue_size)
        reader.start()
        given = 0
        try:
            for index, t, bgr in self._received(reader, stop):
                given += 1
                yield Frame(f"{self.name}_{index:06d}", self.label, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                            index, round(t, 3), fps, self.name)
        finally:
            if stop.is_set() and not self.dropped:  # the predictor closed us after a stop signal
                self.ended = "stop requested"
            reader.halt.set()
            reader.join(timeout=JOIN_S)
            self._report(reader, given)
        if given == 0 and self.dropped:
            raise ImageError(f"{self.describe()}: no frame came ({self.ended}); check that it runs and is reachable")

    def _open(self) -> cv2.VideoCapture:
        if self.kind == "webcam":
            cap = cv2.VideoCapture(self.target)
        else:
            ms = int(self.timeout_s * 1000)
            # FFmpeg's own deadlines too: without them opening a dead URL can block for minutes.
            cap = cv2.VideoCapture(self.target, cv2.CAP_ANY,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        if not cap.isOpened():
            cap.release()
            why = ("no such camera, in use by another program, or no camera support in this OpenCV build"
                   if self.kind == "webcam" else
                   "unreachable, a wrong URL or credentials, or a protocol this OpenCV build cannot read")
            raise ImageError(f"{self.describe()}: OpenCV cannot open it ({why})")
        return cap

    def _received(self, reader: _Reader, stop: threading.Event) -> Iterator[tuple[int, float, np.ndarray]]:
        """The reader's (index, seconds, BGR) items until the source drops or ``stop`` is set."""
        self.ended, self.dropped = STOPPED_READING, False
        waiting_since = time.monotonic()
        while not stop.is_set():
            try:
                item = reader.queue.get(timeout=POLL_S)
            except queue.Empty:
                # Idle since the last frame the capture gave (strided-out ones count: the source lives).
                if time.monotonic() - max(reader.last_read, waiting_since) > self.timeout_s:
                    self._drop(f"no frame for {self.timeout_s:g} s (predict.stream_timeout_s)")
                    return
                continue
            if item is _END:
                self._drop("the capture gave no more frames (the stream ended or the connection was lost)")
                return
            if isinstance(item, BaseException):
                self._drop(f"reading failed: {type(item).__name__}: {item}")
                return
            yield item
            waiting_since = time.monotonic()
        self.ended = "stop requested"

    def _drop(self, why: str) -> None:
        self.ended, self.dropped = why, True

    def _report(self, reader: _Reader, given: int) -> None:
        what = (f"{self.describe()}: {reader.read} frames read ({given} predicted) in "
                f"{time.monotonic() - reader.t0:.1f} s")
        if self.dropped:
            logger.warning(f"{what}; dropped: {self.ended}; outputs closed")
        else:
            logger.info(f"{what}; ended: {self.ended}")


def shown_url(url: str) -> str:
    """The URL without its password (it goes into logs and prediction files)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=f"{parts.username}:***@{parts.hostname}"
                          + (f":{parts.port}" if parts.port else "")).geturl()


def stream_name(url: str) -> str:
    """A file stem for a stream: its host and path, e.g. "cam.local_live_ch1" for rtsp://cam.local/live/ch1."""
    parts = urlsplit(url)
    name = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{parts.hostname or ''}{parts.path}").strip("_.")
    return name[:60] or "stream"


_END = object()  # the reader's last item: the capture gave no more frames


class _Reader(threading.Thread):
    """Reads every frame of a capture and queues every ``stride``-th one as (index, seconds since the
    reader started, BGR image), then ``_END`` (or the exception that stopped it)."""

    def __init__(self, cap: cv2.VideoCapture, stride: int, size: int) -> None:
        super().__init__(daemon=True, name="predict-reader")  # a read stuck in the backend must not hold the exit
        self.cap, self.stride = cap, stride
        # Bounded (constant memory): when the predictor is slower than the source the reader waits
        # and the capture's own small buffer drops the frames it cannot hold.
        self.queue: queue.Queue = queue.Queue(size)
        self.halt = threading.Event()
        self.read = 0  # frames read from the capture so far
        self.t0 = self.last_read = time.monotonic()

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                ok, bgr = self.cap.read()
                if not ok or bgr is None:
                    break
                self.last_read = time.monotonic()
                if self.read % self.stride == 0:
                    self._put((self.read, self.last_read - self.t0, bgr))
                self.read += 1
            self._put(_END)
        except Exception as e:  # noqa: BLE001 - handed to the predictor, which reports the drop
            self._put(e)
        finally:
            self.cap.release()

    def _put(self, item: object) -> None:
        while not self.halt.is_set():
            try:
                self.queue.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue
