"""The files of a predict run, written as the frames come.

Under the run directory:
- predictions.jsonl: one JSON line per predicted image or frame, flushed as it is written (a killed
  run keeps every line before the kill): {file, frame, time_s, height, width, detections:
  [{box_xyxy, score, label, class_name}]}, boxes in original pixels (``frame_record``);
- predictions.json: the same records as one JSON list, written at the end of the run;
- predictions_coco.json (predict.save_coco): COCO {images, categories, annotations} with a "score"
  per annotation, the category ids of the training data (1..nc when none), bbox [x, y, w, h] pixels;
- labels/<name>.txt (predict.save_txt): YOLO lines "class cx cy w h score", normalised by the image
  size; an image without detections gets an empty file;
- images/<name>.jpg and videos/<video>.mp4 (predict.save_images): annotated copies; a video holds
  every predicted frame of its source at the source's fps / predict.video_stride.
predictions.json and predictions_coco.json are built from predictions.jsonl line by line, so no
run holds its records in memory (a stream may run for days).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from core.evaluation.frames import Frame
from datasets.image_io import ImageError
from utils.files import atomic_write
from utils.plots import draw_detections, save_image


def frame_record(frame: Frame, det: dict, names: list[str]) -> dict:
    """The JSON record of a frame's detections (``det``: boxes [K, 4] xyxy original pixels, scores [K],
    labels [K]); coordinates rounded to 0.01 px, scores to 1e-4."""
    h, w = frame.image.shape[:2]
    return {"file": frame.file, "frame": frame.frame, "time_s": frame.time_s, "height": int(h), "width": int(w),
            "detections": [{"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 4),
                            "label": int(c), "class_name": names[int(c)]}
                           for b, s, c in zip(det["boxes"], det["scores"], det["labels"])]}


class PredictOutputs:
    """The files above for one run. ``close`` (also at the end of a ``with`` block, whatever ended
    the run) leaves a complete JSON lines file and valid videos; ``finish`` then writes the JSON files.

    p: the predict config section (save_images, save_txt, save_coco, line_width, video_stride).
    """

    def __init__(self, out_dir: Path, names: list[str], cat_ids: list[int] | None, p) -> None:
        self.out_dir, self.names, self.cat_ids, self.p = Path(out_dir), names, cat_ids, p
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.lines_path = self.out_dir / "predictions.jsonl"
        self.lines = open(self.lines_path, "w", encoding="utf-8")
        self.videos = VideoSinks(self.out_dir / "videos", p.video_stride)
        self.frames = self.detections = 0

    def add(self, frame: Frame, det: dict) -> None:
        """Write ``frame``'s detections (boxes in its pixels) to every output."""
        record = frame_record(frame, det, self.names)
        self.lines.write(json.dumps(record) + "\n")
        self.lines.flush()  # as frames come: an interrupted run keeps what it did
        self.frames, self.detections = self.frames + 1, self.detections + len(record["detections"])
        if self.p.save_txt:
            write_yolo_txt(self.out_dir / "labels" / f"{frame.name}.txt", det, frame.image.shape[:2])
        if self.p.save_images:
            drawn = draw_detections(frame.image, det["boxes"], det["labels"], det["scores"], self.names,
                                    self.p.line_width)
            if frame.video is None:
                save_image(self.out_dir / "images" / f"{frame.name}.jpg", drawn)
            else:
                self.videos.write(frame, drawn)

    def close(self) -> None:
        self.videos.close()
        self.lines.close()

    def __enter__(self) -> PredictOutputs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def finish(self) -> None:
        """predictions.json and (predict.save_coco) predictions_coco.json from the closed JSON lines."""
        write_json_list(self.lines_path, self.out_dir / "predictions.json")
        if self.p.save_coco:
            write_coco(self.lines_path, self.out_dir / "predictions_coco.json", self.names, self.cat_ids)


def read_records(lines_path: Path) -> Iterator[dict]:
    """The records of a predictions.jsonl file, one at a time."""
    with open(lines_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def write_json_list(lines_path: Path, out_path: Path) -> None:
    """The JSON lines of ``lines_path`` as one JSON list, streamed (atomic write)."""
    with atomic_write(out_path, "w") as out, open(lines_path, encoding="utf-8") as src:
        out.write("[")
        for i, line in enumerate(ln for ln in src if ln.strip()):
            out.write(("," if i else "") + "\n" + line.rstrip("\n"))
        out.write("\n]\n")


def write_yolo_txt(path: Path, det: dict, img_hw: tuple[int, int]) -> None:
    """YOLO txt: one "class cx cy w h score" line per detection, coordinates / image (w, h)."""
    h, w = img_hw
    b = np.asarray(det["boxes"], np.float64).reshape(-1, 4)
    cxcywh = np.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
                       (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], 1)
    lines = [f"{int(c)} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f} {float(s):.4f}"
             for c, (x, y, bw, bh), s in zip(det["labels"], cxcywh, det["scores"])]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _coco_image(image_id: int, r: dict) -> dict:
    return {"id": image_id, "file_name": Path(r["file"]).name, "height": r["height"], "width": r["width"],
            **({"frame": r["frame"]} if r["frame"] is not None else {})}


def _coco_annotations(image_id: int, r: dict, cat_ids: list[int], first_id: int) -> list[dict]:
    anns = []
    for k, d in enumerate(r["detections"]):
        x1, y1, x2, y2 = d["box_xyxy"]
        anns.append({"id": first_id + k, "image_id": image_id, "category_id": cat_ids[d["label"]],
                     "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                     "area": round((x2 - x1) * (y2 - y1), 2), "score": d["score"], "iscrowd": 0})
    return anns


def _categories(names: list[str], cat_ids: list[int] | None) -> tuple[list[int], list[dict]]:
    ids = list(cat_ids) if cat_ids is not None else list(range(1, len(names) + 1))
    return ids, [{"id": c, "name": n} for c, n in zip(ids, names)]


def coco_predictions(records: list[dict], names: list[str], cat_ids: list[int] | None = None) -> dict:
    """predictions.json records -> COCO {images, categories, annotations (with "score")}.

    Image and annotation ids are 1-based; cat_ids: COCO category id of each label (default 1..nc).
    """
    ids, categories = _categories(names, cat_ids)
    images, anns = [], []
    for i, r in enumerate(records, start=1):
        images.append(_coco_image(i, r))
        anns += _coco_annotations(i, r, ids, len(anns) + 1)
    return {"images": images, "categories": categories, "annotations": anns}


def write_coco(lines_path: Path, out_path: Path, names: list[str], cat_ids: list[int] | None = None) -> None:
    """``coco_predictions`` of the records of ``lines_path``, streamed: two passes over the file, one
    for the images and one for the annotations (atomic write)."""
    ids, categories = _categories(names, cat_ids)
    with atomic_write(out_path, "w") as out:
        out.write('{"images": [')
        for i, r in enumerate(read_records(lines_path), start=1):
            out.write(("," if i > 1 else "") + json.dumps(_coco_image(i, r)))
        out.write('], "categories": ' + json.dumps(categories) + ', "annotations": [')
        n = 0
        for i, r in enumerate(read_records(lines_path), start=1):
            for ann in _coco_annotations(i, r, ids, n + 1):
                out.write(("," if n else "") + json.dumps(ann))
                n += 1
        out.write("]}\n")


class VideoSinks:
    """The annotated mp4 (OpenCV's mp4v, in every OpenCV build) of the video or stream being read,
    at its fps / ``stride``. Frames arrive video after video, so one writer is open at a time."""

    def __init__(self, out_dir: Path, stride: int) -> None:
        self.out_dir, self.stride = out_dir, stride
        self.video: str | None = None
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] = (0, 0)  # (w, h) of the open writer

    def write(self, frame: Frame, rgb: np.ndarray) -> None:
        """Append ``rgb`` ([H, W, 3] uint8) to the video of ``frame`` (opened at its first frame)."""
        if frame.video != self.video:
            self.close()
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / f"{frame.video}.mp4"
            self.size = (rgb.shape[1], rgb.shape[0])
            self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"),
                                          max(frame.fps / self.stride, 1.0), self.size)
            if not self.writer.isOpened():
                raise ImageError(f"{path}: OpenCV cannot write mp4v video here; set predict.save_images=False")
            self.video = frame.video
        if (rgb.shape[1], rgb.shape[0]) != self.size:  # a stream changed resolution: the writer drops such frames
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        """Release the open writer (it writes the mp4 index: the file is valid from here on)."""
        if self.writer is not None:
            self.writer.release()
        self.video, self.writer = None, None
