"""Debug task. Mode "assign": draw, per image and head level, which prior slots the assigner gives
each GT. Mode "samples": save augmented training samples with their boxes, as the model sees them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from loguru import logger
from PIL import Image, ImageDraw

from core.loaders import build_eval_loader
from core.train.anchors import resolve_anchors
from core.weights import load_weights
from datasets import resolve_class_names
from datasets.dataset import to_input
from models import assign_method, build_assigner_for, build_model
from models.assigners import Predictions
from utils.dist import DistInfo
from utils.plots import draw_assignments, draw_detections, save_image

IGNORE_RGB = (160, 160, 160)  # outline of ignore regions (cls -1) in sample plots


def draw_assignments_for_config(cfg, run_dir: Path, ckpt: str | None = None) -> list[Path]:
    """Draw cfg.debug.num_batches batches of cfg.debug.split; returns the PNG paths."""
    resolve_class_names(cfg)
    dist = DistInfo.single()
    cfg.eval.batch_size = cfg.debug.batch_size
    loader = build_eval_loader(cfg, dist, cfg.debug.split, augment=cfg.debug.augment, rect=False)  # plots in file order
    if not ckpt:  # a checkpoint's config holds the anchors it was trained with
        resolve_anchors(cfg)
    model = load_weights(cfg, ckpt, dist.device) if ckpt else build_model(cfg).eval()
    assigner = build_assigner_for(cfg)
    # Prediction-aware assigners (task_aligned, simota) see the model's boxes and scores: say whose.
    source = (f"predictions of {Path(ckpt).name}" if ckpt else "predictions of the untrained model") \
        if assigner.uses_predictions else ""
    note = f"{assign_method(cfg)} {assigner.describe()}"
    out_dir, paths = Path(run_dir) / "debug", []
    for i, (images, targets, metas) in enumerate(loader):
        if i >= cfg.debug.num_batches:
            break
        images = to_input(images, "cpu")
        priors = model.priors(tuple(images.shape[2:]))
        with torch.no_grad():
            preds = Predictions(*model.decode(model(images), tuple(images.shape[2:])))
        res = assigner.assign(targets, priors, preds)
        for b, meta in enumerate(metas):
            pred_boxes = preds.boxes[b] if assigner.uses_predictions else None
            paths += _draw_image(cfg, images[b], targets, b, res, priors, meta, out_dir, note, source, pred_boxes)
    logger.info(f"{len(paths)} assignment plots ({assign_method(cfg)}) written to {out_dir}")
    return paths


def _draw_image(cfg, image, targets, b, res, priors, meta, out_dir: Path, note: str, source: str,
                pred_boxes: torch.Tensor | None) -> list[Path]:
    """One PNG per level. Dashed boxes: the anchor boxes of the assigned slots, or, for
    prediction-aware assigners, the boxes the model predicts there (what the assigner scored)."""
    rows = torch.nonzero((targets[:, 0] == b) & (targets[:, 1] >= 0)).squeeze(1)
    gt = targets[rows]
    local = torch.full((len(targets),), -1, dtype=torch.long)
    local[rows] = torch.arange(len(rows))  # targets row -> index among this image's GTs
    img = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    prior_boxes = priors.boxes() if pred_boxes is None else pred_boxes.cpu()
    cell_boxes = priors.cell_boxes()
    paths = []
    for lv, stride in enumerate(sorted(set(priors.stride.long().tolist()))):
        m = res.fg_mask[b] & (priors.level == lv)
        title = (f"{note} | stride {stride} | {int(m.sum())} slots for {len(rows)} GTs | "
                 f"red: no slot on this level{' | ' + source if source else ''}")
        drawn = draw_assignments(img, gt[:, 2:6].numpy(), gt[:, 1].long().numpy(), prior_boxes[m].numpy(),
                                 local[res.gt_index[b][m]].numpy(), cell_boxes[m].numpy(),
                                 cfg.data.class_names, title)
        path = out_dir / f"{Path(meta['file']).stem}_s{stride}.png"
        save_image(path, drawn)
        paths.append(path)
    return paths


def draw_samples_for_config(cfg, run_dir: Path) -> list[Path]:
    """Save cfg.debug.num_batches x cfg.debug.batch_size augmented samples of cfg.debug.split
    (the training pipeline: mosaic, MixUp, CutMix, warp, colour, flips as configured, epoch 0)
    with their boxes and class names; ignore regions in grey. Returns the PNG paths."""
    resolve_class_names(cfg)
    dist = DistInfo.single()
    cfg.eval.batch_size = cfg.debug.batch_size
    loader = build_eval_loader(cfg, dist, cfg.debug.split, augment=True)
    loader.dataset.set_epoch(0)
    out_dir, paths = Path(run_dir) / "debug" / "samples", []
    for i, (images, targets, metas) in enumerate(loader):
        if i >= cfg.debug.num_batches:
            break
        for b, meta in enumerate(metas):
            rows = targets[targets[:, 0] == b]
            img = np.ascontiguousarray(images[b].permute(1, 2, 0).numpy())  # uint8 HWC
            path = out_dir / f"batch{i}_{b}_{Path(meta['file']).stem}.png"
            paths.append(save_image(path, draw_sample(img, rows[:, 1:].numpy(), cfg.data.class_names)))
    logger.info(f"{len(paths)} augmented training samples written to {out_dir}")
    return paths


def draw_sample(image: np.ndarray, target: np.ndarray, class_names: list[str]) -> np.ndarray:
    """[H, W, 3] uint8 with the boxes of ``target`` [n, 5] = (cls, x1, y1, x2, y2) drawn: classes
    with name tags, ignore regions (cls < 0) as thin grey outlines."""
    positive = target[:, 0] >= 0
    labels = target[positive, 0].astype(np.int64)
    drawn = draw_detections(image, target[positive, 1:], labels, None, class_names)
    if (~positive).any():
        pil = Image.fromarray(drawn)
        draw = ImageDraw.Draw(pil)
        for x1, y1, x2, y2 in target[~positive, 1:]:
            draw.rectangle((round(x1), round(y1), round(x2), round(y2)), outline=IGNORE_RGB, width=1)
        drawn = np.asarray(pil)
    return drawn
