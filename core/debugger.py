"""Debug task: draw, per image and head level, which prior slots the assigner gives each GT."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from loguru import logger

from core.builders import build_eval_loader, load_weights, resolve_class_names
from models import build_assigner, build_model
from utils.dist import DistInfo
from utils.plots import draw_assignments, save_image


def draw_assignments_for_config(cfg, run_dir: Path, ckpt: str | None = None) -> list[Path]:
    """Draw cfg.debug.num_batches batches of cfg.debug.split; returns the PNG paths."""
    resolve_class_names(cfg)
    dist = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    cfg.eval.batch_size = cfg.debug.batch_size
    loader, _ = build_eval_loader(cfg, dist, cfg.debug.split, augment=cfg.debug.augment)
    model = load_weights(cfg, ckpt, dist.device) if ckpt else build_model(cfg).eval()
    assigner = build_assigner(cfg.assign)
    out_dir, paths = Path(run_dir) / "debug", []
    for i, (images, targets, metas) in enumerate(loader):
        if i >= cfg.debug.num_batches:
            break
        priors = model.priors(tuple(images.shape[2:]))
        with torch.no_grad():
            preds = model(images) if assigner.needs_predictions else None
        res = assigner.assign(targets, priors, images.shape[0], preds)
        for b, meta in enumerate(metas):
            paths += _draw_image(cfg, images[b], targets, b, res, priors, meta, out_dir)
    logger.info(f"{len(paths)} assignment plots ({cfg.assign.method}) written to {out_dir}")
    return paths


def _draw_image(cfg, image, targets, b, res, priors, meta, out_dir: Path) -> list[Path]:
    rows = torch.nonzero((targets[:, 0] == b) & (targets[:, 1] >= 0)).squeeze(1)
    gt = targets[rows]
    local = torch.full((len(targets),), -1, dtype=torch.long)
    local[rows] = torch.arange(len(rows))  # targets row -> index among this image's GTs
    img = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    prior_boxes, cell_boxes = priors.boxes(), priors.cell_boxes()
    paths = []
    for lv, stride in enumerate(sorted(set(priors.stride.long().tolist()))):
        m = res.fg_mask[b] & (priors.level == lv)
        title = (f"{cfg.assign.method} | stride {stride} | {int(m.sum())} slots for {len(rows)} GTs | "
                 f"iou>={cfg.assign.match_iou_thres} | red: no slot on this level")
        drawn = draw_assignments(img, gt[:, 2:6].numpy(), gt[:, 1].long().numpy(), prior_boxes[m].numpy(),
                                 local[res.gt_index[b][m]].numpy(), cell_boxes[m].numpy(),
                                 cfg.data.class_names, title)
        path = out_dir / f"{Path(meta['file']).stem}_s{stride}.png"
        save_image(path, drawn)
        paths.append(path)
    return paths
