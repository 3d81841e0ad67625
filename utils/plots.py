"""Drawing detections and prior assignments on images with PIL; metric plots with matplotlib.

Images are uint8 HWC RGB numpy arrays; boxes are [N, 4] xyxy absolute pixels of that image.
Text uses ``ImageFont.load_default()`` (bundled with Pillow: nothing is downloaded).
Colours come from a fixed golden-ratio hue walk, so class i has the same colour in every
plot and every run.
"""
from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

UNMATCHED_RGB = (255, 0, 0)  # GT boxes that received no prior in draw_assignments
_SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}


def class_color(i: int) -> tuple[int, int, int]:
    """Deterministic RGB colour of class (or GT) index ``i``: hues 0.618 apart stay distinct."""
    hue = (0.1 + 0.618033988749895 * int(i)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.8, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _to_pil(image: np.ndarray) -> Image.Image:
    """uint8 HWC RGB (or HW gray) array -> RGB PIL image (a copy; the input is never modified)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"expected a uint8 HWC RGB image, got dtype {arr.dtype} shape {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")


def _int_box(box: Sequence[float]) -> tuple[int, int, int, int]:
    """Rounded, ordered pixel corners (PIL refuses x2 < x1)."""
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def _text_color(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light tags, white on dark ones (Rec. 601 luma)."""
    return (0, 0, 0) if 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] > 140 else (255, 255, 255)


def label_tag_box(text: str, box_xyxy: Sequence[float], img_hw: tuple[int, int],
                  font: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None) -> tuple[int, int, int, int]:
    """Pixel rectangle (x1, y1, x2, y2, inclusive) of the filled tag for ``text`` on a box.

    The tag sits just above the box's top-left corner, or just inside the top edge when the
    box touches the image top; it is shifted left to stay inside the image width.
    """
    font = font or _font()
    l, t, r, b = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    tw, th = r - l + 4, b - t + 4  # 2 px padding each side
    x1, y1, _, _ = _int_box(box_xyxy)
    w = img_hw[1]
    x1 = max(0, min(x1, w - tw))
    y1 = y1 - th if y1 - th >= 0 else max(0, y1)
    return x1, y1, x1 + tw - 1, y1 + th - 1


def _draw_tag(draw: ImageDraw.ImageDraw, text: str, box_xyxy: Sequence[float], img_hw: tuple[int, int],
              fill: tuple[int, int, int], font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> None:
    x1, y1, x2, y2 = label_tag_box(text, box_xyxy, img_hw, font)
    draw.rectangle((x1, y1, x2, y2), fill=fill)
    l, t, _, _ = draw.textbbox((0, 0), text, font=font)
    draw.text((x1 + 2 - l, y1 + 2 - t), text, fill=_text_color(fill), font=font)


def _name(class_names: Sequence[str], label: int) -> str:
    return str(class_names[label]) if 0 <= label < len(class_names) else f"class{label}"


def draw_detections(image: np.ndarray, boxes_xyxy: np.ndarray, labels: np.ndarray,
                    scores: np.ndarray | None, class_names: Sequence[str], line_width: int = 2) -> np.ndarray:
    """Draw boxes with a "name 0.87" tag (just "name" when ``scores`` is None).

    image: [H, W, 3] uint8 RGB; boxes_xyxy: [k, 4] pixels of this image; labels: [k] contiguous
    class ids; scores: [k] in [0, 1] or None. The outline is drawn inside the box, ``line_width``
    px thick, in the class colour. Returns a new [H, W, 3] uint8 array.
    """
    pil = _to_pil(image)
    draw, font = ImageDraw.Draw(pil), _font()
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(labels) != len(boxes) or (scores is not None and len(np.asarray(scores).reshape(-1)) != len(boxes)):
        raise ValueError(f"draw_detections: {len(boxes)} boxes but {len(labels)} labels"
                         + ("" if scores is None else f" and {len(np.asarray(scores).reshape(-1))} scores"))
    for i, (box, lab) in enumerate(zip(boxes, labels)):
        color = class_color(int(lab))
        draw.rectangle(_int_box(box), outline=color, width=line_width)
        text = _name(class_names, int(lab))
        if scores is not None:
            text += f" {float(np.asarray(scores).reshape(-1)[i]):.2f}"
        _draw_tag(draw, text, box, (pil.height, pil.width), color, font)
    return np.asarray(pil)


def _dashed_rect(draw: ImageDraw.ImageDraw, box: Sequence[float], color: tuple[int, int, int],
                 dash: int = 4) -> None:
    """1 px rectangle outline drawn as ``dash`` px on / ``dash`` px off segments."""
    x1, y1, x2, y2 = _int_box(box)
    for a in range(x1, x2 + 1, 2 * dash):
        b = min(a + dash - 1, x2)
        draw.line((a, y1, b, y1), fill=color)
        draw.line((a, y2, b, y2), fill=color)
    for a in range(y1, y2 + 1, 2 * dash):
        b = min(a + dash - 1, y2)
        draw.line((x1, a, x1, b), fill=color)
        draw.line((x2, a, x2, b), fill=color)


def _title_bar(pil: Image.Image, title: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> Image.Image:
    """Return a taller image: a dark bar with ``title`` on top of ``pil``."""
    draw = ImageDraw.Draw(pil)
    l, t, _, b = draw.textbbox((0, 0), title or " ", font=font)
    bar_h = b - t + 8
    out = Image.new("RGB", (pil.width, pil.height + bar_h), (32, 32, 32))
    out.paste(pil, (0, bar_h))
    ImageDraw.Draw(out).text((4 - l, 4 - t), title, fill=(255, 255, 255), font=font)
    return out


def draw_assignments(image: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray, prior_boxes: np.ndarray,
                     prior_gt: np.ndarray, cell_boxes: np.ndarray, class_names: Sequence[str],
                     title: str) -> np.ndarray:
    """Show which priors each GT box was assigned.

    image: [H, W, 3] uint8 RGB network input; gt_boxes: [g, 4] xyxy input pixels; gt_labels: [g];
    prior_boxes: [k, 4] xyxy anchor boxes placed at their cells; prior_gt: [k] index into
    gt_boxes of each prior's GT (negative = unassigned, not drawn); cell_boxes: [k, 4] xyxy grid
    cell rectangle of each prior. Each GT gets its own colour (GT index, not class, so two GTs
    of one class stay apart): its cells shaded, its anchors dashed 1 px, its box 3 px with a
    class tag. A GT without any prior is drawn in red with a "name unmatched" tag.
    Returns [H + bar, W, 3] uint8: the title bar is added above the image.
    """
    pil, font = _to_pil(image), _font()
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels).astype(np.int64).reshape(-1)
    prior_gt = np.asarray(prior_gt).astype(np.int64).reshape(-1)
    priors = np.asarray(prior_boxes, dtype=np.float64).reshape(-1, 4)
    cells = np.asarray(cell_boxes, dtype=np.float64).reshape(-1, 4)
    if not len(priors) == len(cells) == len(prior_gt) or len(gt_labels) != len(gt):
        raise ValueError(f"draw_assignments: {len(priors)} prior_boxes, {len(cells)} cell_boxes, "
                         f"{len(prior_gt)} prior_gt, {len(gt)} gt_boxes, {len(gt_labels)} gt_labels")
    if (prior_gt >= len(gt)).any():
        raise ValueError(f"draw_assignments: prior_gt has index {int(prior_gt.max())} but only {len(gt)} GT boxes")
    overlay = Image.new("RGBA", pil.size, (0, 0, 0, 0))
    shade = ImageDraw.Draw(overlay)
    for j in range(len(gt)):
        # Several anchors share a cell: shade each cell once so the alpha does not stack.
        for cell in np.unique(cells[prior_gt == j], axis=0):
            shade.rectangle(_int_box(cell), fill=(*class_color(j), 90))
    pil = Image.alpha_composite(pil.convert("RGBA"), overlay).convert("RGB")
    draw = ImageDraw.Draw(pil)
    for box, j in zip(priors, prior_gt):
        if j >= 0:
            _dashed_rect(draw, box, class_color(int(j)))
    for j, (box, lab) in enumerate(zip(gt, gt_labels)):
        matched = bool((prior_gt == j).any())
        color = class_color(j) if matched else UNMATCHED_RGB
        draw.rectangle(_int_box(box), outline=color, width=3)
        text = _name(class_names, int(lab)) + ("" if matched else " unmatched")
        _draw_tag(draw, text, box, (pil.height, pil.width), color, font)
    return np.asarray(_title_bar(pil, title, font))


def save_image(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 HWC RGB array as PNG/JPG/BMP (by suffix), creating parent dirs; returns the path."""
    path = Path(path)
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"save_image: {path}: unsupported suffix {path.suffix!r}; use one of {sorted(_SAVE_FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"quality": 95} if fmt == "JPEG" else {}
    _to_pil(image).save(path, format=fmt, **extra)
    return path


# -- metric plots (matplotlib's object API with the Agg canvas: no pyplot state, no GUI, no
# backend switch for the rest of the process; the bundled DejaVu font, nothing downloaded) --

def _figure(width: float = 6.4, height: float = 4.8) -> tuple:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def new_figure(rows: int, cols: int, width: float, height: float, **figure_kw) -> tuple:
    """A figure of rows x cols axes (Agg canvas, as ``_figure``; ``figure_kw`` for matplotlib's Figure,
    e.g. layout="constrained"); returns (figure, flat list of axes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100, **figure_kw)
    FigureCanvasAgg(fig)
    return fig, list(np.atleast_1d(fig.subplots(rows, cols)).flat)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out and write ``fig`` to ``path`` (folders created)."""
    return _save_figure(fig, Path(path))


def _save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_confusion_matrix(matrix: np.ndarray, labels: Sequence[str], path: str | Path,
                          title: str = "") -> Path:
    """Confusion matrix PNG: rows true class, columns predicted, last row/column "background".

    matrix: [n + 1, n + 1] counts (utils.metrics layout). Colour is the share of the row (where
    each true class went; the background row: which classes the false alarms claimed); cells
    show the counts when there are at most 30 classes.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(labels):
        raise ValueError(f"plot_confusion_matrix: matrix {m.shape} does not fit {len(labels)} labels")
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(labels)
    side = min(4.0 + 0.45 * n, 24.0)
    fig, ax = _figure(side + 1.5, side)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    many = n > 8  # many labels only fit written vertically
    ax.set_xticks(range(n), labels=list(labels), rotation=90 if many else 45,
                  ha="center" if many else "right")
    ax.set_yticks(range(n), labels=list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    if n <= 31:
        for (t, p), c in np.ndenumerate(m):
            if c:
                ax.text(p, t, f"{int(c)}", ha="center", va="center", fontsize=8,
                        color="white" if share[t, p] > 0.5 else "black")
    return _save_figure(fig, Path(path))


_CURVES = {  # file name -> (curve key, y label)
    "P_curve.png": ("precision", "precision"),
    "R_curve.png": ("recall", "recall"),
    "F1_curve.png": ("f1", "F1"),
}


def plot_metric_curves(curves: dict, class_names: Sequence[str], out_dir: str | Path,
                       title: str = "") -> list[Path]:
    """PR_curve.png, P_curve.png, R_curve.png and F1_curve.png in ``out_dir``.

    curves: the second result of ``utils.metrics.operative_metrics`` ("conf" [101], "precision" /
    "recall" / "f1" [nc + 1, 101] with the all-classes row last and NaN where not measurable,
    "pr" [nc, 101] at "recall_grid"). One thin line per class (legend up to 20 classes) and a
    thick one for all classes; the F1 plot marks the best F1 of all classes.
    """
    out_dir = Path(out_dir)
    names = list(class_names)
    paths = [_plot_pr(curves, names, out_dir / "PR_curve.png", title)]
    for file, (key, ylabel) in _CURVES.items():
        fig, ax = _figure()
        ys = np.asarray(curves[key])
        for i, name in enumerate(names):
            ax.plot(curves["conf"], ys[i], lw=1, color=_rgb01(i), label=name if len(names) <= 20 else None)
        ax.plot(curves["conf"], ys[-1], lw=3, color="#1f3b73", label="all classes")
        if key == "f1" and np.isfinite(ys[-1]).any():
            best = int(np.nanargmax(ys[-1]))
            ax.plot([curves["conf"][best]], [ys[-1][best]], "o", color="#d62728",
                    label=f"best {ys[-1][best]:.3f} at {curves['conf'][best]:.2f}")
        _finish_axes(ax, "confidence", ylabel, f"{ylabel} vs confidence {title}".strip())
        paths.append(_save_figure(fig, out_dir / file))
    return paths


def _plot_pr(curves: dict, names: list[str], path: Path, title: str) -> Path:
    fig, ax = _figure()
    pr = np.asarray(curves["pr"])
    for i, name in enumerate(names):
        ax.plot(curves["recall_grid"], pr[i], lw=1, color=_rgb01(i),
                label=f"{name} {pr[i].mean():.3f}" if len(names) <= 20 else None)
    if len(names):
        ax.plot(curves["recall_grid"], pr.mean(0), lw=3, color="#1f3b73",
                label=f"all classes {pr.mean():.3f}")
    _finish_axes(ax, "recall", "precision", f"precision-recall at the match IoU (legend: AP) {title}".strip())
    return _save_figure(fig, path)


def _finish_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")


def _rgb01(i: int) -> tuple[float, float, float]:
    """class_color as matplotlib's 0..1 floats (same colour per class as the drawn boxes)."""
    return tuple(c / 255 for c in class_color(i))


_LINE_STYLES = ("-", "--", ":", "-.")  # repeats of one configuration (seeds): one colour, these styles
LEGEND_CHARS = 150  # compare.png: a run's label wraps after this many characters


def plot_run_curves(curves: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Validation mAP per epoch (left) and mean training loss per epoch (right) of several runs, one
    line each, with one legend below both plots.

    curves: per run ``{"label": str, "group": int, "member": int, "map": [(epoch, mAP)], "loss":
    [(epoch, loss)]}``; runs of one ``group`` (a configuration) share a colour, ``member`` (its
    repeats, e.g. seeds) picks the line style.
    """
    import textwrap

    labels = [textwrap.fill(c["label"], LEGEND_CHARS, subsequent_indent="    ") for c in curves]  # 8 pt: fits 12 in
    fig, (ax_map, ax_loss) = new_figure(1, 2, 12.0, 4.2 + 0.17 * sum(t.count("\n") + 1 for t in labels),
                                        layout="constrained")
    for c, text in zip(curves, labels):
        style = dict(color=_rgb01(c["group"]), ls=_LINE_STYLES[c["member"] % len(_LINE_STYLES)], lw=1.6)
        for ax, key in ((ax_map, "map"), (ax_loss, "loss")):
            xs, ys = zip(*c[key]) if c[key] else ((), ())
            # A label starting with "_" would be left out of the legend (matplotlib's "hidden" mark).
            label = (" " + text if text.startswith("_") else text) if ax is ax_map else None
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=label, **style)
    for ax, ylabel in ((ax_map, "val mAP .50:.95"), (ax_loss, "train loss (epoch mean)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_map.set_ylim(bottom=0.0)
    ax_map.set_title(f"mAP per epoch {title}".strip(), fontsize=10)
    ax_loss.set_title(f"loss per epoch {title}".strip(), fontsize=10)
    if curves:
        fig.legend(loc="outside lower center", ncols=1, fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
