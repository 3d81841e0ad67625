"""Drawing: pixels change exactly at boxes and tags, saved files reload, assignment plots."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from utils.plots import (
    UNMATCHED_RGB,
    class_color,
    draw_assignments,
    draw_detections,
    label_tag_box,
    save_image,
)

NAMES = ["rbc", "wbc", "platelet"]


def outline_mask(hw: tuple[int, int], box: tuple[int, int, int, int], lw: int) -> np.ndarray:
    """Pixels of a PIL rectangle outline of width lw (drawn inward from the corners)."""
    m = np.zeros(hw, bool)
    x1, y1, x2, y2 = box
    m[y1:y2 + 1, x1:x2 + 1] = True
    m[y1 + lw:y2 - lw + 1, x1 + lw:x2 - lw + 1] = False
    return m


def test_palette_is_deterministic_and_distinct():
    assert class_color(3) == class_color(3)
    colors = [class_color(i) for i in range(10)]
    assert len(set(colors)) == 10 and all(max(c) > 200 for c in colors)  # never black: visible on dark images


def test_draw_detections_changes_only_boxes_and_tags():
    img = np.zeros((120, 160, 3), np.uint8)
    boxes = np.array([[20, 40, 70, 90], [90, 0, 150, 60]], np.float32)  # second touches the top edge
    labels, scores = np.array([0, 2]), np.array([0.87, 0.5])
    out = draw_detections(img, boxes, labels, scores, NAMES, line_width=2)
    assert out.shape == img.shape and out.dtype == np.uint8 and not img.any()  # input untouched
    changed = out.any(axis=2)
    allowed = np.zeros(img.shape[:2], bool)
    for box, lab, s in zip(boxes.astype(int), labels, scores):
        band = outline_mask(img.shape[:2], tuple(box), 2)
        assert changed[band].all()  # the whole outline is drawn
        assert (out[band] == class_color(lab)).all(axis=1).mean() > 0.8  # in the class colour (tags may cover)
        tx1, ty1, tx2, ty2 = label_tag_box(f"{NAMES[lab]} {s:.2f}", box, img.shape[:2])
        allowed |= band
        allowed[ty1:ty2 + 1, tx1:tx2 + 1] = True
    assert not changed[~allowed].any()  # nothing drawn anywhere else
    assert label_tag_box("platelet 0.50", boxes[1], img.shape[:2])[1] == 0  # tag moved inside at the top


def test_draw_detections_without_scores_and_mismatch():
    img = np.full((50, 60, 3), 255, np.uint8)
    out = draw_detections(img, np.array([[5, 20, 40, 45]]), np.array([1]), None, NAMES)
    assert (out != img).any() and (out[0:2, 50:] == 255).all()
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        draw_detections(img, np.zeros((2, 4)), np.array([0]), None, NAMES)
    with pytest.raises(ValueError, match="uint8 HWC RGB"):
        draw_detections(img.astype(np.float32), np.zeros((0, 4)), np.zeros(0), None, NAMES)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_save_image_roundtrip(tmp_path, suffix):
    img = draw_detections(np.zeros((64, 96, 3), np.uint8), np.array([[10, 10, 50, 50]]), np.array([0]),
                          np.array([0.9]), NAMES)
    path = save_image(tmp_path / "a" / "b" / f"det{suffix}", img)
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.size == (96, 64) and im.mode == "RGB"
        if suffix == ".png":
            assert np.array_equal(np.asarray(im), img)  # lossless
    with pytest.raises(ValueError, match="unsupported suffix '.gif'"):
        save_image(tmp_path / "x.gif", img)


def test_draw_assignments_shades_cells_and_flags_unmatched():
    img = np.zeros((96, 128, 3), np.uint8)
    gt = np.array([[8, 8, 40, 40], [70, 50, 120, 90]], np.float32)
    # GT 0 gets two anchors in cell (16..31, 16..31); GT 1 gets none; prior 2 is unassigned (-1).
    cells = np.array([[16, 16, 31, 31], [16, 16, 31, 31], [64, 64, 79, 79]], np.float32)
    priors = np.array([[12, 12, 36, 36], [18, 10, 30, 38], [60, 60, 84, 84]], np.float32)
    prior_gt = np.array([0, 0, -1])
    out = draw_assignments(img, gt, np.array([1, 2]), priors, prior_gt, cells, NAMES, title="epoch 0 nearby_grid")
    bar = out.shape[0] - img.shape[0]
    assert out.shape[1:] == img.shape[1:] and 8 < bar < 40  # title bar added on top
    assert (out[:bar] != 0).any()  # title text drawn on the bar
    body = out[bar:]
    shaded = body[24, 24]  # inside GT 0's cell, away from every line
    assert shaded.any() and np.argmax(shaded) == np.argmax(class_color(0))
    assert not body[66:76, 58:69].any()  # unassigned prior's cell: not shaded, anchor not drawn
    assert (body[89, 75] == UNMATCHED_RGB).all()  # bottom edge of the unmatched GT is red
    tx1, ty1, tx2, ty2 = label_tag_box("platelet unmatched", gt[1], img.shape[:2])
    tag = body[ty1:ty2 + 1, tx1:tx2 + 1].reshape(-1, 3)
    assert (tag == UNMATCHED_RGB).all(axis=1).mean() > 0.5  # red tag (text pixels aside)
    assert (body[8, 20] == class_color(0)).all()  # matched GT outline in its own colour


def test_draw_assignments_rejects_bad_index():
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="prior_gt has index 3 but only 1 GT"):
        draw_assignments(img, np.array([[1, 1, 9, 9]]), np.array([0]), np.zeros((1, 4)), np.array([3]),
                         np.zeros((1, 4)), NAMES, title="t")
