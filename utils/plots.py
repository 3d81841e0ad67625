"""Drawing detections and prior assignments on images with PIL.

Images are uint8 HWC RGB numpy arrays; boxes are [N, 4] xyxy absolute pixels of that image.
Text uses ``ImageFont.load_default()`` (bundled with Pillow: nothing is downloaded).
Colours come from a fixed golden-ratio hue walk, so class i has the same colour in every
plot and every run.
"""
from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Sequence

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
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
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
    h, w = img_hw
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
