"""Predictor: images (file or folder) -> annotated copies and a JSON of detections in original pixels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from loguru import logger
from tqdm import tqdm

from configs.base_config import ConfigError
from datasets.image_io import load_image
from datasets.transforms import boxes_from_letterbox, letterbox
from models.postprocess import postprocess
from utils.coco_eval import write_json_atomic
from utils.plots import draw_detections, save_image

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(source: str) -> list[Path]:
    """An image file, or the images of a folder (sorted, non-recursive)."""
    if not source:
        raise ConfigError("predict.source is empty: pass predict.source=path/to/image_or_folder")
    p = Path(source)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise ConfigError(f"predict.source={source}: no images ({sorted(IMAGE_EXTS)}) in that folder")
        return files
    raise FileNotFoundError(f"predict.source={source}: no such file or folder")


class Predictor:
    """run(source, out_dir) -> list of per-image detection dicts (also written as JSON)."""

    def __init__(self, cfg, model: torch.nn.Module) -> None:
        self.cfg, self.model = cfg, model.eval()
        self.names = list(cfg.data.class_names)
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def detect(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """image: HWC uint8 RGB -> {"boxes" [K,4] xyxy original pixels, "scores" [K], "labels" [K]}."""
        size, p = self.cfg.data.img_size, self.cfg.predict
        lb, scale, pad = letterbox(image, size)
        x = torch.from_numpy(lb).permute(2, 0, 1)[None].float().div(255).to(self.device)
        boxes, scores = self.model.decode(self.model(x), (size, size))
        det = postprocess(boxes, scores, p.conf_thres, p.nms_iou, p.max_det)[0]
        return {"boxes": boxes_from_letterbox(det["boxes"].cpu().numpy(), scale, pad, image.shape[:2]),
                "scores": det["scores"].cpu().numpy(), "labels": det["labels"].cpu().numpy()}

    def run(self, source: str, out_dir: Path) -> list[dict]:
        files = list_images(source)
        out_dir = Path(out_dir)
        results = []
        for f in tqdm(files, desc="predict"):
            image = load_image(f)
            det = self.detect(image)
            results.append(self._record(f, image, det))
            if self.cfg.predict.save_images:
                drawn = draw_detections(image, det["boxes"], det["labels"], det["scores"], self.names,
                                        self.cfg.predict.line_width)
                save_image(out_dir / "images" / (f.stem + ".jpg"), drawn)
        write_json_atomic(out_dir / "predictions.json", results)
        n = sum(len(r["detections"]) for r in results)
        logger.info(f"{n} detections on {len(files)} images written to {out_dir}")
        return results

    def _record(self, f: Path, image: np.ndarray, det: dict) -> dict:
        return {"file": str(f), "height": int(image.shape[0]), "width": int(image.shape[1]),
                "detections": [{"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 4),
                                "label": int(c), "class_name": self.names[int(c)]}
                               for b, s, c in zip(det["boxes"], det["scores"], det["labels"])]}
