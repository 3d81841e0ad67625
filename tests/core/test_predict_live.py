"""--task predict on live sources, with cv2.VideoCapture replaced by a stand-in camera (no device, no
network): a webcam index opens the camera, a stream that drops or stalls is reported and leaves
complete outputs, predict.max_frames and SIGTERM end an endless stream cleanly."""
from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_predict_sources import IMAGES, lines, read_video
from tiny_data import train_tiny

from core.evaluation.live import shown_url, stream_name
from main import main

W, H = 160, 120
FRAME = cv2.resize(cv2.imread(str(IMAGES[0])), (W, H))  # BGR, as a capture gives it


class FakeCapture:
    """A camera or stream stand-in: ``n`` frames (None = endless), then a failed read, or with
    ``stall`` a read that blocks until the event is set; ``on_read(i)`` runs before read i."""

    def __init__(self, n: int | None = None, fps: float = 25.0, stall: threading.Event | None = None,
                 on_read=None, opens: bool = True) -> None:
        self.n, self.fps, self.stall, self.on_read, self.opens = n, fps, stall, on_read, opens
        self.reads, self.released = 0, False

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.opens

    def get(self, prop: int) -> float:
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.on_read:
            self.on_read(self.reads)
        if self.n is not None and self.reads >= self.n:
            if self.stall is None:
                return False, None
            self.stall.wait(120)  # the test sets it when done: the cap only frees a thread a failed test left
            return False, None
        self.reads += 1
        return True, np.roll(FRAME, 4 * self.reads, axis=1)

    def release(self) -> None:
        self.released = True


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("predict_live"))[1]


@pytest.fixture
def camera(monkeypatch):
    """Install a FakeCapture; returns the list of (args, capture) of every cv2.VideoCapture call."""
    opened: list = []

    def install(**kw) -> list:
        def fake(*args):
            opened.append((args, FakeCapture(**kw)))
            return opened[-1][1]
        monkeypatch.setattr(cv2, "VideoCapture", fake)
        return opened
    yield install
    monkeypatch.undo()


def predict(ckpt: Path, out: Path, source: str, *extra: str) -> int:
    return main(["--task", "predict", "--ckpt", str(ckpt), "--out", str(out), f"predict.source={source!r}",
                 "predict.conf_thres=0.0", "predict.max_det=3", "predict.batch_size=2", *extra])


def check_outputs(out: Path, video: str, n: int, stride: int = 1) -> list[dict]:
    """The JSON lines, JSON list, COCO file and annotated video of a run agree and hold n frames."""
    recs = lines(out)
    assert [r["frame"] for r in recs] == [stride * i for i in range(n)]
    assert all((r["width"], r["height"]) == (W, H) and len(r["detections"]) == 3 for r in recs)
    assert json.loads((out / "predictions.json").read_text()) == recs
    assert len(json.loads((out / "predictions_coco.json").read_text())["images"]) == n
    assert read_video(out / "videos" / f"{video}.mp4") == (n, (W, H))  # a valid, finished mp4
    return recs


def test_webcam_index_opens_the_camera_and_max_frames_ends_the_run(trained, tmp_path, camera):
    opened = camera(n=None, fps=0.0)  # endless, reports no fps
    out = tmp_path / "cam"
    assert predict(trained, out, "0", "predict.max_frames=5", "predict.save_txt=True") == 0
    (args, cap), = opened
    assert args == (0,) and type(args[0]) is int and cap.released
    recs = check_outputs(out, "webcam0", 5)
    assert {r["file"] for r in recs} == {"webcam:0"}
    assert all(0 <= a <= b for a, b in zip([0.0] + [r["time_s"] for r in recs], [r["time_s"] for r in recs]))
    assert sorted(p.name for p in (out / "labels").iterdir()) == [f"webcam0_{i:06d}.txt" for i in range(5)]
    log = (out / "predict.log").read_text()
    assert "predict.max_frames=5 reached" in log and "15 detections on 5 images/frames" in log


def test_stream_that_drops_is_reported_and_outputs_are_complete(trained, tmp_path, camera):
    opened = camera(n=7)
    out = tmp_path / "drop"
    url = "rtsp://viewer:s3cret@cam.local:554/live/ch1"
    assert predict(trained, out, url, "predict.video_stride=2") == 0
    (args, cap), = opened
    assert args[0] == url and cap.reads == 7 and cap.released  # opened with FFmpeg deadlines as params
    recs = check_outputs(out, "cam.local_live_ch1", 4, stride=2)
    assert {r["file"] for r in recs} == {"rtsp://viewer:***@cam.local:554/live/ch1"}
    log = (out / "predict.log").read_text()
    assert "stream rtsp://viewer:***@cam.local:554/live/ch1: 7 frames read (4 predicted)" in log
    assert "dropped: the capture gave no more frames" in log and "the stream dropped" in log
    assert "s3cret" not in log + (out / "predictions.jsonl").read_text()


def test_stream_that_stalls_times_out(trained, tmp_path, camera):
    release = threading.Event()
    camera(n=3, stall=release)
    out = tmp_path / "stall"
    try:
        # The 3 frames are read at once by the reader thread; the deadline must also outlast that thread
        # waiting for a core on a loaded machine (quiet: milliseconds), or a live frame counts as a stall.
        assert predict(trained, out, "http://cam.local/video.mjpg", "predict.stream_timeout_s=2.0") == 0
    finally:
        release.set()  # lets the stuck reader thread finish
    check_outputs(out, "cam.local_video.mjpg", 3)
    log = (out / "predict.log").read_text()
    assert "3 frames read (3 predicted)" in log and "dropped: no frame for 2 s (predict.stream_timeout_s)" in log


def test_sigterm_ends_an_endless_stream_cleanly(trained, tmp_path, camera):
    def on_read(i: int) -> None:
        if i == 6:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler stopping the job would
    before = signal.getsignal(signal.SIGTERM)
    camera(n=None, on_read=on_read)
    out = tmp_path / "term"
    assert predict(trained, out, "rtmp://cam.local/live") == 0
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored
    n = len(lines(out))
    assert 1 <= n <= 6 + 2 * 2 + 2  # read so far, plus at most the reader's queue and the batch in hand
    check_outputs(out, "cam.local_live", n)
    log = (out / "predict.log").read_text()
    assert "stopped by SIGTERM" in log and "ended: stop requested" in log


def test_live_sources_that_give_nothing_are_errors(trained, tmp_path, camera):
    camera(opens=False)
    assert predict(trained, tmp_path / "a", "3") == 2
    assert "webcam webcam:3: OpenCV cannot open it (no such camera" in (tmp_path / "a" / "predict.log").read_text()
    camera(n=0)
    assert predict(trained, tmp_path / "b", "rtsp://cam.local/x") == 2
    log = (tmp_path / "b" / "predict.log").read_text()
    assert "stream rtsp://cam.local/x: no frame came (the capture gave no more frames" in log
    assert lines(tmp_path / "b") == []  # outputs closed, empty


def test_stream_names_and_shown_urls():
    assert stream_name("rtsp://u:p@10.0.0.5:554/Streaming/Channels/101") == "10.0.0.5_Streaming_Channels_101"
    assert stream_name("http://") == "stream"
    assert shown_url("rtsp://admin:pw@cam:8554/x?y=1") == "rtsp://admin:***@cam:8554/x?y=1"
    assert shown_url("https://cam/x") == "https://cam/x"
