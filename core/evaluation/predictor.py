"""Predictor: images, videos, webcams and streams -> detections in original pixels.

``predict.source`` is any kind of ``core.evaluation.sources`` (image, folder, list, glob, video,
webcam, stream); the outputs are those of ``core.evaluation.predict_outputs`` (JSON lines written
as frames come, annotated images and videos, YOLO txt, COCO json). Images are read with the
configured loader (``data.image_loader``: PIL, TurboJPEG, or the encrypted loader, which also reads
``<name>.jpg.enc`` files); an image is named after its stem (``a`` for ``a.jpg`` and ``a.jpg.enc``).
A video frame is named "<video stem>_<frame index, 6 digits>". Frames are batched with images:
predict.batch_size per forward.

A run ends at the end of the source, at ``predict.max_frames``, when a live source drops, or on
SIGTERM / Ctrl-C (after the batch in hand): in every case the outputs are closed and complete.
"""
from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import closing
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from loguru import logger
from tqdm import tqdm

from configs.base_config import ConfigError
from core.evaluation.evaluator import infer
from core.evaluation.frames import Frame
from core.evaluation.live import shown_url
from core.evaluation.predict_outputs import PredictOutputs
from core.evaluation.sources import open_source
from datasets.dataset import to_input
from datasets.loaders import build_loader
from datasets.transforms import boxes_from_letterbox, letterbox
from models.postprocess import postprocess
from utils.model_info import model_device
from utils.signals import stop_on_signals


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


def _batches(frames: Iterator[Frame], size: int) -> Iterator[list[Frame]]:
    batch: list[Frame] = []
    for f in frames:
        batch.append(f)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class StopFlag(threading.Event):
    """Set by a stop signal (``request``, handed to ``utils.signals.stop_on_signals``); ``signum`` is
    the signal (None before one came)."""

    signum: int | None = None

    def request(self, signum: int) -> None:
        self.signum = signum
        self.set()


class Predictor:
    """run(source, out_dir) -> summary; the detections go to files (core.evaluation.predict_outputs).

    ``model``: a PyTorch detector or a runtime model of core.deploy.runtime (.onnx, .tflite).
    """

    def __init__(self, cfg, model: torch.nn.Module) -> None:
        p = cfg.predict
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
        boxes, scores = infer(self.model, x, self.cfg.train)  # as validation: the training's autocast
        dets = postprocess(boxes, scores, p.conf_thres, p.nms_iou, p.max_det, agnostic=p.agnostic_nms)
        return [{"boxes": boxes_from_letterbox(d["boxes"].cpu().numpy(), scale, pad, im.shape[:2]),
                 "scores": d["scores"].cpu().numpy(), "labels": d["labels"].cpu().numpy()}
                for d, (_, scale, pad), im in zip(dets, boxed, images)]

    def detect(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """One HWC uint8 RGB image -> {"boxes", "scores", "labels"} in its pixels."""
        return self.detect_batch([image])[0]

    def run(self, source: str, out_dir: Path) -> dict:
        """Predict every frame of ``source`` into files under ``out_dir``; returns {"frames": predicted
        images/frames, "detections": their count, "ended": how the run ended}."""
        p, out_dir = self.cfg.predict, Path(out_dir)
        src = open_source(source, p.stream_timeout_s, queue_size=2 * p.batch_size)
        logger.info(f"predict.source={shown_url(source)}: {src.describe()}")  # no stream password in logs
        total = src.count(p.video_stride)
        if p.max_frames:
            total = p.max_frames if total is None else min(total, p.max_frames)
        stop = StopFlag()
        with PredictOutputs(out_dir, self.names, self.cat_ids, p) as out, stop_on_signals(stop.request), \
                closing(src.frames(self.loader, p.video_stride, stop)) as frames, \
                tqdm(total=total, desc="predict", unit="img") as bar:
            for batch in _batches(islice(frames, p.max_frames or None), p.batch_size):
                for frame, det in zip(batch, self.detect_batch([f.image for f in batch])):
                    out.add(frame, det)
                bar.update(len(batch))
                if stop.is_set():
                    break
        out.finish()
        ended = self._ended(src, stop, out.frames)
        logger.info(f"{out.detections} detections on {out.frames} images/frames ({ended}) written to {out_dir}")
        return {"frames": out.frames, "detections": out.detections, "ended": ended}

    def _ended(self, src, stop: StopFlag, frames: int) -> str:
        if stop.signum is not None:
            return f"stopped by {signal.Signals(stop.signum).name}"
        if self.cfg.predict.max_frames and frames == self.cfg.predict.max_frames:
            return f"predict.max_frames={self.cfg.predict.max_frames} reached"
        if getattr(src, "dropped", False):
            return f"the {src.kind} dropped: {src.ended}"
        return "end of the source"
