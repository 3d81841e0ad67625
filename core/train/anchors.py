"""``model.anchors = "auto"``: anchors fitted to the training boxes before the model is built.

Like the class names, the fitted anchors are a resolution of the config: they replace "auto" in
``cfg.model.anchors`` (given for ``model.anchor_ref_size``, as configured anchors are), so every
checkpoint stores the anchors its model was trained with and val, predict and export rebuild it
from the file alone. Every rank fits the same anchors from the same records and seed, without
communicating. The log gives the fit of the family's own anchors and of the fitted ones; the
family's own are kept when they fit as well (within ``KEEP_MARGIN`` of the fitted fitness).
"""
from __future__ import annotations

import numpy as np
from loguru import logger

from datasets import build_records
from datasets.records import RecordTable
from models import assign_method, build_assigner_for, scaled_anchors
from models.anchor_fit import AnchorFit, evaluate, fit_anchors
from models.nets import NETS

KEEP_MARGIN = 0.01  # the configured anchors are kept when their fitness is within 1% of the fitted
DEFAULT_IOU = 0.25  # the IoU a shape must reach for methods without an IoU or ratio threshold


def box_shapes(records: RecordTable, img_size: int) -> np.ndarray:
    """[N, 2] width and height of every (non-ignore) box letterboxed to ``img_size``, input pixels:
    the sizes the model sees at evaluation (the long image side becomes img_size)."""
    counts = np.diff(records.box_offsets)
    scale = img_size / records.img_hw.max(1).astype(np.float64)  # [n] letterbox scale per image
    boxes = records.boxes.astype(np.float64)
    return (boxes[:, 2:] - boxes[:, :2]) * np.repeat(scale, counts)[:, None]


def fit_measure(cfg) -> tuple[str, float]:
    """How the assignment compares shapes: ("ratio", 1 / anchor_t) for ratio_grid, ("iou", the match
    threshold) for the grid methods, ("iou", DEFAULT_IOU) for the others."""
    opt = build_assigner_for(cfg).opt
    if hasattr(opt, "anchor_t"):
        return "ratio", 1.0 / opt.anchor_t
    return "iou", float(getattr(opt, "match_iou_thres", DEFAULT_IOU))


def family_anchors(cfg) -> np.ndarray:
    """[levels, per_level, 2] the family's own anchors at data.img_size: the COCO default of the
    simple YOLO (scaled from anchor_ref_size), an anchor-based net's own (v7)."""
    if cfg.model.name == "yolo":
        model_cfg = type(cfg.model)()  # the default anchors, whatever this config says
        return np.array(scaled_anchors(model_cfg, cfg.data.img_size), dtype=np.float64)
    return np.array(NETS[cfg.model.name].ANCHORS, dtype=np.float64)


def resolve_anchors(cfg, records: RecordTable | None = None) -> None:
    """Replace ``cfg.model.anchors == "auto"`` by anchors fitted to ``records`` (the train split; None:
    built here, only when there is something to fit)."""
    if cfg.model.anchors != "auto":
        return
    if records is None:
        records = build_records(cfg, "train")[0]
    own = family_anchors(cfg)
    levels, per_level = own.shape[:2]
    wh = box_shapes(records, cfg.data.img_size)
    measure, threshold = fit_measure(cfg)
    fitted = fit_anchors(wh, levels, per_level, measure, threshold, seed=cfg.train.seed)
    fit_own, fit_new = (evaluate(wh, a.reshape(-1, 2), measure, threshold) for a in (own, fitted))
    what = (f"ratio >= 1/{1 / threshold:g}" if measure == "ratio" else f"IoU >= {threshold:g}")
    logger.info(f"model.anchors='auto' ({assign_method(cfg)}: a box matches an anchor at {what}; {len(wh)} "
                f"train boxes at {cfg.data.img_size} px)\n  configured: {_line(own, fit_own)}\n"
                f"  fitted:     {_line(fitted, fit_new)}")
    keep = fit_own.fitness >= fit_new.fitness * (1 - KEEP_MARGIN)
    if keep:
        logger.info("the configured anchors fit the data as well as the fitted ones: kept")
    chosen = own if keep else fitted
    k = cfg.model.anchor_ref_size / cfg.data.img_size  # stored at anchor_ref_size, as configured anchors are
    cfg.model.anchors = [[[round(float(w) * k, 2), round(float(h) * k, 2)] for w, h in lv] for lv in chosen]


def _line(anchors: np.ndarray, fit: AnchorFit) -> str:
    shapes = ", ".join(f"{w:.0f}x{h:.0f}" for w, h in anchors.reshape(-1, 2))
    return f"{shapes} | {fit.line()}"
