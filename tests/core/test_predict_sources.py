"""--task predict on file sources: the kind of predict.source decided in one place, glob and list
sources equal to the folder, a video file as JSON lines plus an annotated video, a truncated video,
and the streamed JSON / COCO files equal to the in-memory ones."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_data import BCCD, train_tiny

from configs.base_config import ConfigError
from core.evaluation.frames import unique_names
from core.evaluation.predict_outputs import coco_predictions, write_coco, write_json_list
from core.evaluation.sources import open_source, source_kind
from main import main

IMAGES = sorted((BCCD / "JPEGImages").glob("*.jpg"))[:3]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint trained one epoch on tiny data; returns the checkpoint path."""
    return train_tiny(tmp_path_factory.mktemp("predict_sources"))[1]


def predict(ckpt: Path, out: Path, source: str | Path, *extra: str) -> int:
    return main(["--task", "predict", "--ckpt", str(ckpt), "--out", str(out), f"predict.source={str(source)!r}",
                 "predict.conf_thres=0.0", "predict.max_det=5", *extra])


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0, fourcc: str = "mp4v") -> None:
    """BGR frames -> a video file."""
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(f)
    vw.release()


REAL_CAPTURE = cv2.VideoCapture  # the live-source tests replace cv2.VideoCapture with a fake camera


def read_video(path: Path) -> tuple[int, tuple[int, int]]:
    """(frames decoded, (w, h)) of a video file, with OpenCV's own capture."""
    cap = REAL_CAPTURE(str(path))
    n, size = 0, (0, 0)
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n, size = n + 1, (frame.shape[1], frame.shape[0])
    cap.release()
    return n, size


def lines(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture
def folder(tmp_path) -> Path:
    src = tmp_path / "imgs"
    src.mkdir()
    for f in IMAGES:
        (src / f.name).write_bytes(f.read_bytes())
    return src


def test_source_kinds_and_errors_name_the_source(folder, tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    (tmp_path / "list.txt").write_text(f"{IMAGES[0]}\n")
    (tmp_path / "notes.csv").write_text("x")
    kinds = {"0": "webcam", "12": "webcam", "rtsp://cam.local:554/live": "stream", "https://x.org/a.m3u8": "stream",
             "RTMP://x/live": "stream", str(folder): "folder", str(tmp_path / "list.txt"): "list",
             str(IMAGES[0]): "image", str(tmp_path / "clip.mp4"): "video", f"{folder}/*.jpg": "glob"}
    assert {s: source_kind(s) for s in kinds} == kinds
    with pytest.raises(FileNotFoundError, match=r"predict.source=.*nope.jpg: no such file or folder; "
                                                r"predict.source takes a camera index"):
        source_kind(str(tmp_path / "nope.jpg"))
    with pytest.raises(ConfigError, match=r"notes.csv: unknown file type '.csv'; predict.source takes"):
        source_kind(str(tmp_path / "notes.csv"))
    with pytest.raises(ConfigError, match="predict.source is empty"):
        source_kind("")
    with pytest.raises(FileNotFoundError, match=r"\*.png: the glob matches no image or video; predict.source takes"):
        open_source(f"{folder}/*.png")
    with pytest.raises(FileNotFoundError, match=r"the glob matches no image or video \(only 1 other"):
        open_source(f"{tmp_path}/*.csv")


def test_list_lines_resolve_against_the_list_and_bad_lines_name_file_and_line(folder, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text(f"# held-out images\n\nimgs/{IMAGES[1].name}\n  {folder / IMAGES[0].name}  \n")
    src = open_source(str(lst))
    assert src.kind == "list" and src.files == [folder / IMAGES[1].name, folder / IMAGES[0].name]  # listed order
    for body, error, message in [
            ("# a\nimgs/missing.jpg\n", FileNotFoundError, r"list.txt:2: 'imgs/missing.jpg': no such file"),
            (f"imgs/{IMAGES[0].name}\n\nimgs\n", FileNotFoundError, r"list.txt:3: 'imgs': a folder"),
            ("list.txt\n", ConfigError, r"list.txt:1: 'list.txt': not an image"),
            ("# only a comment\n\n", ConfigError, r"the list names no file")]:
        lst.write_text(body)
        with pytest.raises(error, match=message):
            open_source(str(lst))


def test_repeated_stems_get_distinct_output_names(tmp_path):
    files = [tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg", tmp_path / "x_2.jpg.enc", tmp_path / "x.mp4"]
    assert unique_names(files) == ["x", "x_2", "x_2_2", "x_3"]


def test_glob_and_list_predict_like_the_folder(trained, folder, tmp_path):
    (tmp_path / "list.txt").write_text("".join(f"imgs/{f.name}\n" for f in IMAGES))
    runs = {"folder": folder, "glob": f"{tmp_path}/im*/*.jpg", "list": tmp_path / "list.txt"}
    results = {}
    for kind, source in runs.items():
        assert predict(trained, tmp_path / kind, source, "predict.save_txt=True") == 0
        results[kind] = json.loads((tmp_path / kind / "predictions.json").read_text())
        assert results[kind] == lines(tmp_path / kind)  # the JSON list holds the JSON lines
    assert [Path(r["file"]).name for r in results["folder"]] == [f.name for f in IMAGES]
    assert sum(len(r["detections"]) for r in results["folder"]) == 15
    for kind in ("glob", "list"):
        assert [Path(r["file"]).resolve() for r in results[kind]] == [Path(r["file"]).resolve() for r in results["folder"]]
        assert [(r["detections"], r["frame"], r["time_s"]) for r in results[kind]] == \
            [(r["detections"], r["frame"], r["time_s"]) for r in results["folder"]]
        for f in IMAGES:
            name = f"{f.stem}.txt"
            assert (tmp_path / kind / "labels" / name).read_text() == (tmp_path / "folder" / "labels" / name).read_text()


def test_video_file_gives_one_json_line_per_strided_frame_and_an_annotated_video(trained, tmp_path):
    img = cv2.imread(str(IMAGES[0]))
    video = tmp_path / "clip.mp4"
    write_video(video, [np.roll(img, 8 * i, axis=1) for i in range(7)], fps=10.0)
    for stride, indices in ((1, list(range(7))), (3, [0, 3, 6])):
        out = tmp_path / f"stride{stride}"
        assert predict(trained, out, video, f"predict.video_stride={stride}", "predict.batch_size=2") == 0
        recs = lines(out)
        assert [r["frame"] for r in recs] == indices
        assert [r["time_s"] for r in recs] == [i / 10.0 for i in indices]  # seconds at 10 fps
        assert all(r["file"] == str(video) and (r["width"], r["height"]) == (640, 480) for r in recs)
        assert all(len(r["detections"]) == 5 and 0 <= d["box_xyxy"][0] <= d["box_xyxy"][2] <= 640
                   for r in recs for d in r["detections"])
        assert json.loads((out / "predictions.json").read_text()) == recs
        assert read_video(out / "videos" / "clip.mp4") == (len(indices), (640, 480))
        cap = cv2.VideoCapture(str(out / "videos" / "clip.mp4"))
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0 / stride, abs=1e-3)  # mp4 time base: 3.333
        cap.release()
    assert read_video(video) == (7, (640, 480))  # stride 1: as many frames as the input, same size


def test_truncated_video_is_reported_and_its_frames_kept(trained, tmp_path):
    img = cv2.resize(cv2.imread(str(IMAGES[0])), (160, 120))
    whole = tmp_path / "whole.avi"
    write_video(whole, [np.roll(img, 8 * i, axis=1) for i in range(10)], fourcc="MJPG")  # AVI decodes when cut
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    n_read, _ = read_video(cut)
    assert 0 < n_read < 10
    out = tmp_path / "out"
    assert predict(trained, out, cut) == 0
    assert [r["frame"] for r in lines(out)] == list(range(n_read))
    assert read_video(out / "videos" / "cut.mp4") == (n_read, (160, 120))
    assert f"ended after {n_read} of the 10 frames its container declares" in (out / "predict.log").read_text()


def test_streamed_json_and_coco_equal_the_in_memory_ones(tmp_path):
    recs = [{"file": "/v/clip.mp4", "frame": i, "time_s": i / 30, "height": 10, "width": 20,
             "detections": [{"box_xyxy": [1.0, 2.0, 5.5, 8.0], "score": 0.5, "label": i % 2, "class_name": "x"}] * i}
            for i in range(4)] + [{"file": "/a.jpg", "frame": None, "time_s": None, "height": 9, "width": 9,
                                   "detections": []}]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in recs))
    write_json_list(jsonl, tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text()) == recs
    for cat_ids in (None, [7, 9]):
        write_coco(jsonl, tmp_path / "c.json", ["a", "b"], cat_ids)
        coco = json.loads((tmp_path / "c.json").read_text())
        assert coco == coco_predictions(recs, ["a", "b"], cat_ids)
    assert [a["id"] for a in coco["annotations"]] == list(range(1, 7)) and coco["images"][4] == \
        {"id": 5, "file_name": "a.jpg", "height": 9, "width": 9}
    assert [a["category_id"] for a in coco["annotations"]] == [9, 7, 7, 9, 9, 9]


@pytest.mark.parametrize("key, value, message", [
    ("predict.stream_timeout_s", 0.0, "predict.stream_timeout_s=0.0 must be positive"),
    ("predict.max_frames", -1, "predict.max_frames=-1 must be >= 0"),
    ("predict.video_stride", 0, "predict.video_stride=0 must be positive"),
    ("predict.batch_size", 0, "predict.batch_size=0 must be positive"),
])
def test_predict_config_checks_name_the_key(key, value, message):
    from configs.base_config import BaseConfig
    cfg = BaseConfig()
    cfg.set(key, value)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()
