"""``--task debug debug.mode=dataset``: what the training boxes look like to the model.

Class counts, objects per image, box width / height / aspect histograms in input pixels (each
image letterboxed to ``data.img_size``, as the model sees it), the box-size scatter with the anchors
(anchor-based families; "auto" is fitted first) or the strides (anchor-free) drawn over it, and the
images with the most boxes. Written as ``dataset.png``, ``dataset.json`` and the
``most_boxes_*.png`` drawings into ``<run dir>/debug/dataset/``; the summary is logged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from loguru import logger

from core.train.anchors import box_shapes, family_anchors, resolve_anchors
from datasets import build_records, resolve_class_names
from datasets.loaders import build_loader
from datasets.records import RecordTable
from models import configured_anchors, model_family
from utils.files import write_json_atomic
from utils.plots import class_color, draw_detections, new_figure, save_figure, save_image

TOP_IMAGES = 4  # images with the most boxes drawn


def dataset_stats(records: RecordTable, class_names: list[str], img_size: int) -> dict:
    """Plain-data summary of ``records`` (boxes in input pixels at ``img_size``)."""
    per_image = np.diff(records.box_offsets)
    wh = box_shapes(records, img_size)
    top = np.argsort(-per_image, kind="stable")[:10]
    counts = np.bincount(records.labels, minlength=len(class_names))
    return {
        "images": len(records), "boxes": int(len(records.boxes)),
        "background_images": int((per_image == 0).sum()),
        "class_counts": {n: int(c) for n, c in zip(class_names, counts)},
        "boxes_per_image": {"mean": float(per_image.mean()) if len(records) else 0.0,
                            "max": int(per_image.max(initial=0)), "median": float(np.median(per_image)) if len(records) else 0.0},
        "box_size_px": {k: _quantiles(v) for k, v in (("width", wh[:, 0]), ("height", wh[:, 1]),
                                                       ("aspect_w_over_h", wh[:, 0] / np.maximum(wh[:, 1], 1e-9)))},
        "most_boxes": [{"file": records[int(i)].file, "boxes": int(per_image[i])} for i in top],
    }


def _quantiles(x: np.ndarray) -> dict:
    if not len(x):
        return {}
    q = np.quantile(x, [0.0, 0.05, 0.5, 0.95, 1.0])
    return dict(zip(("min", "p5", "median", "p95", "max"), (round(float(v), 2) for v in q)))


def report_dataset(cfg, run_dir: Path) -> Path:
    """Write the report of ``cfg.debug.split``; returns its folder."""
    resolve_class_names(cfg)
    records, _ = build_records(cfg, cfg.debug.split)
    resolve_anchors(cfg, records if cfg.debug.split == "train" else None)  # "auto": fitted to the train split
    out = Path(run_dir) / "debug" / "dataset"
    stats = dataset_stats(records, list(cfg.data.class_names), cfg.data.img_size)
    stats["split"], stats["img_size"] = cfg.debug.split, cfg.data.img_size
    anchors = configured_anchors(cfg)
    if anchors is None and model_family(cfg.model.name) == "anchor":  # v7 with its own anchors
        anchors = family_anchors(cfg).tolist()
    stats["anchors_px"] = anchors
    write_json_atomic(out / "dataset.json", stats)
    _plot(records, cfg, anchors, out / "dataset.png")
    _draw_most_boxes(records, cfg, out)
    logger.info(f"dataset report of split {cfg.debug.split!r}: {stats['images']} images, {stats['boxes']} boxes "
                f"({stats['boxes_per_image']['mean']:.1f} per image, max {stats['boxes_per_image']['max']}), "
                f"classes {stats['class_counts']}; box width p5/median/p95 "
                f"{_q(stats, 'width')} px at {cfg.data.img_size}; written to {out}")
    return out


def _q(stats: dict, key: str) -> str:
    q = stats["box_size_px"].get(key, {})
    return "/".join(f"{q[k]:.0f}" for k in ("p5", "median", "p95")) if q else "-"


def _plot(records: RecordTable, cfg, anchors: list | None, path: Path) -> None:
    names = list(cfg.data.class_names)
    wh = box_shapes(records, cfg.data.img_size)
    fig, axes = new_figure(2, 3, width=15, height=8.5)
    counts = np.bincount(records.labels, minlength=len(names))
    axes[0].bar(range(len(names)), counts, color=[np.array(class_color(i)) / 255 for i in range(len(names))])
    axes[0].set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes[0].set_title("boxes per class")
    axes[1].hist(np.diff(records.box_offsets), bins=30)
    axes[1].set(title="boxes per image", xlabel="boxes", ylabel="images")
    for ax, values, what in ((axes[2], wh[:, 0], "width"), (axes[3], wh[:, 1], "height")):
        ax.hist(values, bins=40)
        ax.set(title=f"box {what}, input px at {cfg.data.img_size}", xlabel="px")
    axes[4].hist(np.log2(wh[:, 0] / np.maximum(wh[:, 1], 1e-9)), bins=40)
    axes[4].set(title="aspect ratio log2(w / h)", xlabel="log2(w / h)")
    _size_scatter(axes[5], wh, anchors, cfg)
    save_figure(fig, path)


def _size_scatter(ax, wh: np.ndarray, anchors: list | None, cfg) -> None:
    ax.scatter(wh[:, 0], wh[:, 1], s=2, alpha=0.3, color="gray", label="boxes")  # 860k points: ~1 s
    if anchors is not None:
        for lv, level in enumerate(anchors):
            a = np.array(level)
            ax.scatter(a[:, 0], a[:, 1], s=60, marker="x", label=f"anchors stride {cfg.model.strides[lv]}")
        title = "box sizes and anchors, input px"
    else:
        for s in (8, 16, 32):
            ax.axvline(s, linestyle="--", linewidth=0.8)
            ax.axhline(s, linestyle="--", linewidth=0.8, label=f"stride {s}")
        title = "box sizes and strides (anchor-free), input px"
    ax.set(xscale="log", yscale="log", title=title, xlabel="width", ylabel="height")
    ax.legend(fontsize=7)


def _draw_most_boxes(records: RecordTable, cfg, out: Path) -> None:
    per_image = np.diff(records.box_offsets)
    loader = build_loader(cfg.data)
    for rank, i in enumerate(np.argsort(-per_image, kind="stable")[:TOP_IMAGES]):
        rec = records[int(i)]
        drawn = draw_detections(loader.load(rec.file), rec.boxes, rec.labels, None, list(cfg.data.class_names))
        save_image(out / f"most_boxes_{rank + 1}_{Path(rec.file).stem}.png", drawn)
