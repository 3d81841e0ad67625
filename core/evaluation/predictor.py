"""Predictor: images, folders and video frames -> detections in original pixels.

Outputs under the run directory:
- predictions.json: per image (or video frame) {file, frame, height, width, detections:
  [{box_xyxy, score, label, class_name}]};
- predictions_coco.json (predict.save_coco): COCO {images, categories, annotations} with a
  "score" per annotation, the category ids of the training data (``data.category_ids``; 1..nc
  when empty), bbox [x, y, w, h] pixels;
- labels/<name>.txt (predict.save_txt): YOLO lines "class cx cy w h score", normalised by the
  image size; an image without detections gets an empty file;
- images/<name>.jpg and videos/<video>.mp4 (predict.save_images): annotated copies.
Images are read with the configured loader (``data.image_loader``: PIL, TurboJPEG, or the
encrypted loader, which also reads ``<name>.jpg.enc`` files); an image is named after its
stem (``a`` for ``a.jpg`` and ``a.jpg.enc``). A video frame is named "<video stem>_<frame index,
6 digits>". Frames are read with OpenCV (whatever its build can decode) and batched with
images: predict.batch_size per forward.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from loguru import logger
from tqdm import tqdm

from configs.base_config import ConfigError
from datasets.dataset import to_input
from datasets.image_io import ImageError
from datasets.loaders import EncryptedLoader, ImageLoader, build_loader
from datasets.paths import ENC_SUFFIX, IMAGE_SUFFIXES, image_stem, is_image_name
from datasets.transforms import boxes_from_letterbox, letterbox
from models.postprocess import postprocess
from utils.files import write_json_atomic
from utils.model_info import model_device
from utils.plots import draw_detections, save_image

IMAGE_EXTS = set(IMAGE_SUFFIXES)
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


def _is_source(path: Path) -> bool:
    """An image (``a.jpg``, or ``a.jpg.enc`` for the encrypted loader) or a video file name."""
    return is_image_name(path.name) or path.suffix.lower() in VIDEO_EXTS


def list_sources(source: str) -> list[Path]:
    """An image or video file, or the images and videos of a folder (sorted, non-recursive)."""
    if not source:
        raise ConfigError("predict.source is empty: pass predict.source=path/to/image_folder_or_video")
    p = Path(source)
    if p.is_file():
        if not _is_source(p):
            raise ConfigError(f"predict.source={source}: unknown file type {p.suffix!r}; images "
                              f"{sorted(IMAGE_EXTS)} (+ {ENC_SUFFIX!r} when encrypted) or videos "
                              f"{sorted(VIDEO_EXTS)}")
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and _is_source(f))
        if not files:
            raise ConfigError(f"predict.source={source}: no images {sorted(IMAGE_EXTS)} or videos "
                              f"{sorted(VIDEO_EXTS)} in that folder")
        return files
    raise FileNotFoundError(f"predict.source={source}: no such file or folder")


def load_class_names(path: str, num_classes: int) -> list[str]:
    """Class names from a JSON list, or a {"0": name, ...} mapping covering 0..num_classes-1."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"predict.class_names_file={path}: no such file") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"predict.class_names_file={path}: not a readable JSON file ({e})") from None
    if isinstance(data, dict):
        try:
            data = [data[str(i)] for i in range(len(data))]
        except KeyError as e:
            raise ConfigError(f"predict.class_names_file={path}: keys must be 0..{len(data) - 1}, "
                              f"missing {e}") from None
    if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
        raise ConfigError(f"predict.class_names_file={path}: expected a list of names or a "
                          '{"0": name} mapping')
    if len(data) != num_classes:
        raise ConfigError(f"predict.class_names_file={path}: {len(data)} names but the model predicts "
                          f"{num_classes} classes")
    return data


@dataclass
class Frame:
    """One image to predict: a file, or a frame of a video."""

    name: str  # output stem: the image stem, or "<video stem>_<frame:06d>"
    file: Path
    image: np.ndarray  # [H, W, 3] uint8 RGB
    frame: int | None = None  # index in the video (None for an image file)
    fps: float = 0.0  # frames per second of the video the frame comes from


def iter_frames(files: list[Path], loader: ImageLoader, video_stride: int = 1) -> Iterator[Frame]:
    """Each file in ``files`` order: an image read by ``loader``, or every ``video_stride``-th frame
    of a video."""
    for f in files:
        if f.suffix.lower() in VIDEO_EXTS:
            yield from _video_frames(f, video_stride)
        else:
            yield Frame(image_stem(f), f, _load(loader, f))


def _load(loader: ImageLoader, path: Path) -> np.ndarray:
    """``loader.load(path)``; an undecodable ``.enc`` file under another loader says what is missing."""
    try:
        return loader.load(path)
    except ImageError as e:
        if path.name.lower().endswith(ENC_SUFFIX) and not isinstance(loader, EncryptedLoader):
            raise ImageError(f"{e}; an encrypted image needs data.image_loader="
                             "datasets.loaders.EncryptedLoader and data.key_env") from None
        raise


def _video_frames(path: Path, stride: int) -> Iterator[Frame]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ImageError(f"{path}: OpenCV cannot open this video (codec or container not supported by "
                         "its build)")
    fps, index = cap.get(cv2.CAP_PROP_FPS) or 25.0, 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if index % stride == 0:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                yield Frame(f"{path.stem}_{index:06d}", path, rgb, index, fps)
            index += 1
    finally:
        cap.release()
    if index == 0:
        raise ImageError(f"{path}: no frame could be decoded from this video")


def count_frames(files: list[Path], video_stride: int = 1) -> int:
    """How many frames ``iter_frames`` will yield (video lengths as their containers declare them)."""
    total = 0
    for f in files:
        if f.suffix.lower() in VIDEO_EXTS:
            cap = cv2.VideoCapture(str(f))
            total += -(-int(max(cap.get(cv2.CAP_PROP_FRAME_COUNT), 0)) // video_stride)
            cap.release()
        else:
            total += 1
    return total


def _batches(frames: Iterator[Frame], size: int) -> Iterator[list[Frame]]:
    batch: list[Frame] = []
    for f in frames:
        batch.append(f)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Predictor:
    """run(source, out_dir) -> per-image detection records (also written as files, module docstring).

    ``model``: a PyTorch detector or a runtime model of core.deploy.runtime (.onnx, .tflite).
    """

    def __init__(self, cfg, model: torch.nn.Module) -> None:
        p = cfg.predict
        for key in ("predict.batch_size", "predict.video_stride"):
            if cfg.get(key) <= 0:
                raise ConfigError(f"{key}={cfg.get(key)} must be positive")
        self.cfg, self.model = cfg, model.eval()
        self.names = (load_class_names(p.class_names_file, cfg.num_classes) if p.class_names_file
                      else list(cfg.data.class_names))
        self.cat_ids = cfg.coco_category_ids()
        self.loader = build_loader(cfg.data)
        self.device = model_device(model)  # CPU for an exported model (core.deploy.runtime)

    @torch.no_grad()
    def detect_batch(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """HWC uint8 RGB images -> per image {"boxes" [K,4] xyxy original pixels, "scores" [K],
        "labels" [K]}."""
        size, p = self.cfg.data.img_size, self.cfg.predict
        boxed = [letterbox(im, size) for im in images]
        x = to_input(torch.from_numpy(np.stack([lb for lb, _, _ in boxed])).permute(0, 3, 1, 2), self.device)
        boxes, scores = self.model.decode(self.model(x), (size, size))
        dets = postprocess(boxes, scores, p.conf_thres, p.nms_iou, p.max_det)
        return [{"boxes": boxes_from_letterbox(d["boxes"].cpu().numpy(), scale, pad, im.shape[:2]),
                 "scores": d["scores"].cpu().numpy(), "labels": d["labels"].cpu().numpy()}
                for d, (_, scale, pad), im in zip(dets, boxed, images)]

    def detect(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """One HWC uint8 RGB image -> {"boxes", "scores", "labels"} in its pixels."""
        return self.detect_batch([image])[0]

    def run(self, source: str, out_dir: Path) -> list[dict]:
        p, out_dir = self.cfg.predict, Path(out_dir)
        files = list_sources(source)
        records: list[dict] = []
        videos = _VideoSinks(out_dir / "videos")
        try:
            bar = tqdm(total=count_frames(files, p.video_stride), desc="predict", unit="img")
            for batch in _batches(iter_frames(files, self.loader, p.video_stride), p.batch_size):
                for frame, det in zip(batch, self.detect_batch([f.image for f in batch])):
                    records.append(self._record(frame, det))
                    self._save(frame, det, out_dir, videos)
                bar.update(len(batch))
            bar.close()
        finally:
            videos.close()
        write_json_atomic(out_dir / "predictions.json", records)
        if p.save_coco:
            coco = coco_predictions(records, self.names, self.cat_ids)
            write_json_atomic(out_dir / "predictions_coco.json", coco)
        n = sum(len(r["detections"]) for r in records)
        logger.info(f"{n} detections on {len(records)} images/frames from {len(files)} files "
                    f"written to {out_dir}")
        return records

    def _save(self, frame: Frame, det: dict, out_dir: Path, videos: _VideoSinks) -> None:
        p = self.cfg.predict
        if p.save_txt:
            write_yolo_txt(out_dir / "labels" / f"{frame.name}.txt", det, frame.image.shape[:2])
        if p.save_images:
            drawn = draw_detections(frame.image, det["boxes"], det["labels"], det["scores"], self.names,
                                    p.line_width)
            if frame.frame is None:
                save_image(out_dir / "images" / f"{frame.name}.jpg", drawn)
            else:
                videos.write(frame, drawn, p.video_stride)

    def _record(self, frame: Frame, det: dict) -> dict:
        h, w = frame.image.shape[:2]
        return {"file": str(frame.file), "frame": frame.frame, "height": int(h), "width": int(w),
                "detections": [{"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 4),
                                "label": int(c), "class_name": self.names[int(c)]}
                               for b, s, c in zip(det["boxes"], det["scores"], det["labels"])]}


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


def coco_predictions(records: list[dict], names: list[str], cat_ids: list[int] | None = None) -> dict:
    """predictions.json records -> COCO {images, categories, annotations (with "score")}.

    Image and annotation ids are 1-based; cat_ids: COCO category id of each label (default 1..nc).
    """
    cat_ids = list(cat_ids) if cat_ids is not None else list(range(1, len(names) + 1))
    images, anns = [], []
    for i, r in enumerate(records, start=1):
        images.append({"id": i, "file_name": Path(r["file"]).name, "height": r["height"], "width": r["width"],
                       **({"frame": r["frame"]} if r["frame"] is not None else {})})
        for d in r["detections"]:
            x1, y1, x2, y2 = d["box_xyxy"]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat_ids[d["label"]],
                         "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                         "area": round((x2 - x1) * (y2 - y1), 2), "score": d["score"], "iscrowd": 0})
    return {"images": images, "categories": [{"id": c, "name": n} for c, n in zip(cat_ids, names)],
            "annotations": anns}


class _VideoSinks:
    """The annotated mp4 of the video being read (OpenCV's mp4v), at the source fps / video_stride.

    Frames arrive video after video, so one writer is open at a time.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.file: Path | None = None
        self.writer: cv2.VideoWriter | None = None

    def write(self, frame: Frame, rgb: np.ndarray, stride: int) -> None:
        if frame.file != self.file:
            self.close()
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / f"{frame.file.stem}.mp4"
            h, w = rgb.shape[:2]
            fps = max(frame.fps / stride, 1.0)
            self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not self.writer.isOpened():
                raise ImageError(f"{path}: OpenCV cannot write mp4v video here; "
                                 "set predict.save_images=False")
            self.file = frame.file
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        self.file, self.writer = None, None
