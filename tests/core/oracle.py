"""Oracle detectors: models that "predict" the ground truth, found from the input image alone.

An ``OracleDetector`` knows each val image's pixels (read here with PIL, not with the repo's loaders)
and its ground truth in original pixels. Given a batch of letterboxed images it finds, per image, the
content rectangle (the rows and columns that are not all pad value 114), identifies which image it is
by comparing a thumbnail of that content with thumbnails of the originals, and maps the ground truth
into input pixels by that rectangle: ``x_in = x0 + x * content_w / orig_w``. None of it calls the
repo's letterbox code, so the evaluator's and predictor's way back to original pixels is checked
against an independent forward.

``perturb`` (a ``Perturbation``) shifts every second box of each image sideways so that its IoU with
its ground truth is exactly ``iou`` and gives it a lower score: the COCO numbers of that prediction
set are known by construction (``expected_coco``).

``make_oracle_voc`` writes the BCCD images these tests use; ``oracle_cfg`` and ``evaluate`` run the
real loader and Evaluator on them.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from configs import load_config
from core.evaluation.evaluator import Evaluator
from core.loaders import build_eval_loader
from utils.dist import DistInfo

CPU = DistInfo.single()
PAD = 114 / 255.0  # the letterbox fill, as the model sees it
THUMB = 12  # thumbnail side for identifying an image


def thumbnail(chw: torch.Tensor) -> torch.Tensor:
    """[3, H, W] float -> [3 * THUMB * THUMB] block means."""
    return F.adaptive_avg_pool2d(chw[None].float(), THUMB).flatten()


def read_rgb(path: Path) -> torch.Tensor:
    """[3, H, W] float 0..1 of an image file, read with PIL."""
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def content_box(chw: torch.Tensor) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the pixels that are not the letterbox pad, half-open."""
    mask = ((chw - PAD).abs() > 0.5 / 255).any(0)
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@dataclass
class Perturbation:
    """Every second box of an image (odd positions) moved sideways to IoU ``iou`` with its GT and
    scored ``low``; the others stay exact and are scored ``high``."""

    iou: float = 0.625
    high: float = 0.9
    low: float = 0.6

    def apply(self, boxes: np.ndarray, orig_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes [n, 4] original pixels, scores [n], shifted [n] bool)."""
        boxes, h, w = boxes.astype(np.float64).copy(), *orig_hw
        scores, shifted = np.full(len(boxes), self.high), np.zeros(len(boxes), bool)
        for j in range(1, len(boxes), 2):
            # A box moved by d along one axis keeps its size: IoU = (s - d) / (s + d) for side s,
            # so d = s (1 - iou) / (1 + iou). It moves towards whichever side has room.
            for axis, limit in ((0, w), (1, h)):
                s = boxes[j, axis + 2] - boxes[j, axis]
                d = s * (1 - self.iou) / (1 + self.iou)
                step = d if boxes[j, axis + 2] + d <= limit else -d if boxes[j, axis] - d >= 0 else None
                if step is not None and s > 0:
                    boxes[j, [axis, axis + 2]] += step
                    scores[j], shifted[j] = self.low, True
                    break
        return boxes, scores, shifted


class OracleDetector(torch.nn.Module):
    """forward(images [B, 3, H, W] letterboxed, 0..1) -> raw [B, P, 4 + nc]; decode(raw, hw) ->
    (boxes [B, P, 4] xyxy input pixels, scores [B, P, nc]). Slots past an image's boxes score 0.

    items: per image (path, boxes [n, 4] xyxy original pixels, labels [n]).
    """

    def __init__(self, items: list[tuple[Path, np.ndarray, np.ndarray]], num_classes: int,
                 perturb: Perturbation | None = None) -> None:
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1))  # gives the oracle a device
        self.nc, self.perturb = num_classes, perturb
        self.hw, self.thumbs, self.targets = [], [], []
        for path, boxes, labels in items:
            pixels = read_rgb(path)
            hw = tuple(pixels.shape[1:])
            self.hw.append(hw)
            self.thumbs.append(thumbnail(pixels))
            if perturb is None:
                boxes, scores = np.asarray(boxes, np.float64), np.full(len(boxes), 0.9)
            else:
                boxes, scores, _ = perturb.apply(np.asarray(boxes), hw)
            self.targets.append((boxes, scores, np.array(labels, np.int64)))
        self.thumbs = torch.stack(self.thumbs)
        self.slots = max(len(t[0]) for t in self.targets) + 1

    def identify(self, chw: torch.Tensor) -> tuple[int, tuple[int, int, int, int]]:
        """(index of the original shown in a letterboxed image, its content box)."""
        x0, y0, x1, y1 = content_box(chw)
        dist = (self.thumbs - thumbnail(chw[:, y0:y1, x0:x1])).abs().mean(1)
        best, second = dist.topk(2, largest=False).values.tolist()
        if not best < 0.5 * second:  # resizing blurs a little; another image differs a lot more
            raise AssertionError(f"oracle: the input matches no val image clearly ({best:.4f} vs {second:.4f})")
        return int(dist.argmin()), (x0, y0, x1, y1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(images.shape[0], self.slots, 4 + self.nc)
        for b, chw in enumerate(images.float().cpu()):
            k, (x0, y0, x1, y1) = self.identify(chw)
            (h, w), (boxes, scores, labels) = self.hw[k], self.targets[k]
            sx, sy = (x1 - x0) / w, (y1 - y0) / h
            n = len(boxes)
            out[b, :n, :4] = torch.from_numpy(boxes * [sx, sy, sx, sy] + [x0, y0, x0, y0]).float()
            out[b, torch.arange(n), 4 + torch.from_numpy(labels)] = torch.from_numpy(scores).float()
        return out.to(images.device)

    def decode(self, raw: torch.Tensor, hw) -> tuple[torch.Tensor, torch.Tensor]:
        return raw[..., :4], raw[..., 4:]


def oracle_for(records, num_classes: int, perturb: Perturbation | None = None) -> OracleDetector:
    """An oracle over scanned records (their image files, boxes and labels)."""
    return OracleDetector([(Path(r.file), r.boxes, r.labels) for r in records], num_classes, perturb)


# -- the data: BCCD val images with little same-class overlap, landscape and portrait ----------------
BCCD = Path(__file__).resolve().parents[2] / "data" / "BCCD"
# Same-class pairs in these overlap by IoU < 0.05, so NMS at any usual threshold keeps every GT box
# and a shifted box (IoU 0.625 with its own GT) meets no other GT of its class above 0.5.
LANDSCAPE = ["BloodImage_00072", "BloodImage_00183", "BloodImage_00389", "BloodImage_00064",
             "BloodImage_00148", "BloodImage_00145"]
PORTRAIT = ["BloodImage_00053", "BloodImage_00241"]  # stored transposed: 480 wide, 640 high


def _objects(xml: Path) -> list[tuple[str, list[float]]]:
    tree = ET.parse(xml)
    return [(o.find("name").text, [float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")])
            for o in tree.findall("object")]


def _write_voc(root: Path, stem: str, image: Image.Image, objects) -> None:
    image.save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
    w, h = image.size
    objs = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]:g}</xmin>"
                   f"<ymin>{b[1]:g}</ymin><xmax>{b[2]:g}</xmax><ymax>{b[3]:g}</ymax></bndbox></object>"
                   for n, b in objects)
    (root / "Annotations" / f"{stem}.xml").write_text(
        f"<annotation><filename>{stem}.jpg</filename><size><width>{w}</width><height>{h}</height>"
        f"<depth>3</depth></size>{objs}</annotation>")


def make_oracle_voc(root: Path, portrait: bool = True) -> Path:
    """A VOC root whose val split is LANDSCAPE (640x480 as bundled) plus, with ``portrait``, PORTRAIT
    transposed to 480x640 (boxes transposed too); the train split holds the same images."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    stems = []
    for stem in LANDSCAPE:
        with Image.open(BCCD / "JPEGImages" / f"{stem}.jpg") as im:
            _write_voc(root, stem, im.convert("RGB"), _objects(BCCD / "Annotations" / f"{stem}.xml"))
        stems.append(stem)
    for stem in PORTRAIT if portrait else []:
        with Image.open(BCCD / "JPEGImages" / f"{stem}.jpg") as im:
            image = im.convert("RGB").transpose(Image.Transpose.TRANSPOSE)  # (x, y) -> (y, x)
        objects = [(n, [b[1], b[0], b[3], b[2]]) for n, b in _objects(BCCD / "Annotations" / f"{stem}.xml")]
        _write_voc(root, f"{stem}_t", image, objects)
        stems.append(f"{stem}_t")
    for split in ("train", "val"):
        (root / "ImageSets/Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root


def expected_coco(records, perturb: Perturbation, num_classes: int) -> dict[str, float]:
    """mAP, mAP50 and mAP75 of the perturbed oracle, by construction.

    Per class with n GT boxes of which k are exact (higher scores) and n - k shifted to IoU
    ``perturb.iou``: at an IoU threshold t <= iou every detection is a true positive, AP = 1; at
    t > iou the exact boxes come first (precision 1 up to recall k / n) and the shifted ones are false
    positives, so the 101-point interpolated AP is the share of recall points r <= k / n (0 when k = 0). COCO's
    thresholds are 0.50:0.05:0.95; mAP averages the classes with ground truth.
    """
    recall_points = np.linspace(0.0, 1.0, 101)
    thresholds = np.linspace(0.5, 0.95, 10)
    n, k = np.zeros(num_classes), np.zeros(num_classes)
    for r in records:
        _, _, shifted = perturb.apply(np.asarray(r.boxes), r.img_hw)
        for label, moved in zip(np.asarray(r.labels), shifted):
            n[label] += 1
            k[label] += not moved
    present = n > 0
    # With k = 0 even the first recall point has precision 0 (the top detection is a false positive).
    ap_high = np.array([(recall_points <= k[c] / n[c]).sum() / 101 if k[c] else 0.0
                        for c in range(num_classes) if present[c]])
    per_t = np.array([np.ones_like(ap_high) if t <= perturb.iou else ap_high for t in thresholds])
    return {"mAP": float(per_t.mean()), "mAP50": float(per_t[0].mean()), "mAP75": float(per_t[5].mean())}


# -- running the real evaluation on make_oracle_voc data -------------------------------------------
def oracle_cfg(root: Path, **overrides):
    base = {"data.root": str(root), "data.num_workers": 0, "data.cache_dir": str(root.parent / "cache"),
            "eval.batch_size": 3, "eval.plots": False, "eval.dashboard": False, "train.num_threads": 1}
    base.update(overrides)
    return load_config("bccd_yolo_r18", [f"{k}={v!r}" for k, v in base.items()])


def evaluate(cfg, model, out: Path) -> tuple[dict, list, list]:
    """(metrics, predictions.json, records) of Evaluator.run on the val split, 1 process."""
    loader = build_eval_loader(cfg, CPU, "val")
    records = loader.dataset.records
    metrics = Evaluator(cfg, records, CPU).run(model, loader, out)
    return metrics, json.loads((out / "predictions.json").read_text()), list(records)


def coco_xyxy(rows: list[dict], image_id: int) -> np.ndarray:
    """[n, 4] xyxy of one image's rows of a COCO results list, sorted by (x1, y1)."""
    b = np.array([r["bbox"] for r in rows if r["image_id"] == image_id], np.float64).reshape(-1, 4)
    b[:, 2:] += b[:, :2]
    return sorted_boxes(b)


def sorted_boxes(boxes) -> np.ndarray:
    """[n, 4] boxes sorted by (x1, y1): two lists of the same boxes compare row by row."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return b[np.lexsort((b[:, 1], b[:, 0]))]
