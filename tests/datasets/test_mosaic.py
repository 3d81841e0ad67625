"""Mosaic canvases (2x2, 3x3), MixUp and CutMix: geometry, boxes on their objects, filtering."""
import numpy as np
import pytest

from configs.base_config import AugCfg
from datasets.mosaic import cutmix, mixup, mosaic
from datasets.transforms import PAD_VALUE

S = 48
# channel values only 0 or 255: a blend with the grey background or another colour never matches
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
          (255, 255, 255), (0, 0, 0)]


def _no_boxes():
    return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)


def _tile(hw, boxes, colors):
    img = np.full((*hw, 3), 60, np.uint8)
    for (x1, y1, x2, y2), c in zip(boxes, colors):
        img[y1:y2, x1:x2] = c
    return img


def _samples(n):
    """n tiles with long side S, one object each (label = colour index; the ninth tile is empty)."""
    shapes = [(36, 48), (48, 30), (48, 48), (24, 48), (48, 40), (30, 48), (48, 48), (40, 48), (48, 36)]
    out = []
    for k in range(n):
        h, w = shapes[k]
        if k >= len(COLORS):
            out.append((np.full((h, w, 3), 60, np.uint8), *_no_boxes()))
            continue
        box = (4 + k, 3 + k, min(w - 2, 20 + 2 * k), min(h - 2, 18 + 2 * k))
        out.append((_tile((h, w), [box], [COLORS[k]]), np.array([box], np.float32), np.array([k])))
    return out


def _mask(img, color):
    return np.all(img == color, axis=2)


@pytest.mark.parametrize("n", [4, 9])
def test_mosaic_boxes_cover_exactly_the_visible_object(n):
    samples = _samples(n)
    seen = 0
    for seed in range(25):
        canvas, boxes, labels, full_wh = mosaic(samples, S, np.random.default_rng(seed))
        assert canvas.shape == (2 * S, 2 * S, 3) and canvas.dtype == np.uint8
        assert boxes.dtype == np.float32 and labels.dtype == np.int64
        assert len(boxes) == len(labels) == len(full_wh)
        assert (boxes >= 0).all() and (boxes <= 2 * S).all()
        for k in range(min(n, len(COLORS))):
            m = _mask(canvas, COLORS[k])
            rows = np.nonzero(labels == k)[0]
            if not m.any():
                assert len(rows) == 0  # an object entirely off the canvas has no box
                continue
            seen += 1
            (i,) = rows
            ys, xs = np.nonzero(m)
            np.testing.assert_array_equal(boxes[i], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            sb = samples[k][1][0]
            np.testing.assert_array_equal(full_wh[i], sb[2:] - sb[:2])  # size before the canvas cut
    assert seen >= 25 * min(n, 8) // 2


def test_mosaic_2x2_tiles_meet_at_the_centre():
    """ORIG layout: tile k has a corner on the random centre and extends away from it."""
    samples = [(np.full((S, S, 3), 10 * (k + 1), np.uint8), *_no_boxes()) for k in range(4)]
    canvas, _, _, _ = mosaic(samples, S, np.random.default_rng(5))
    xc, yc = (int(v) for v in np.random.default_rng(5).uniform(0.5 * S, 1.5 * S, size=2))
    assert (xc, yc) == (62, 62)  # so the grey margin outside the tiles is 14 px wide
    assert (canvas[yc - S:yc, xc - S:xc] == 10).all() and (canvas[yc - S:yc, xc:xc + S - 14] == 20).all()
    assert (canvas[yc:, xc - S:xc] == 30).all() and (canvas[yc:, xc:] == 40).all()
    assert (canvas[:yc - S] == PAD_VALUE).all() and (canvas[:, :xc - S] == PAD_VALUE).all()


def test_mosaic_3x3_centre_tile_is_centred_and_window_random():
    samples = _samples(9)
    centres = set()
    for seed in range(10):
        canvas, _boxes, _labels, _ = mosaic(samples, S, np.random.default_rng(seed))
        ox, oy = (int(v) for v in np.random.default_rng(seed).uniform(0, S, size=2))
        h, w = samples[0][0].shape[:2]  # centre tile, centred in the middle cell of the 3S layout
        x0, y0 = S + (S - w) // 2 - ox, S + (S - h) // 2 - oy
        np.testing.assert_array_equal(canvas[y0:y0 + h, x0:x0 + w], samples[0][0])
        centres.add((x0, y0))
    assert len(centres) == 10


def test_mosaic_is_deterministic_given_rng_and_checks_count():
    a = mosaic(_samples(4), S, np.random.default_rng(3))
    b = mosaic(_samples(4), S, np.random.default_rng(3))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="4 or 9 samples, got 3"):
        mosaic(_samples(3), S, np.random.default_rng(0))


def test_mixup_blends_with_beta_weight_and_keeps_all_boxes():
    a = (np.full((8, 8, 3), 200, np.uint8), np.array([[0, 0, 4, 4]], np.float32), np.array([1]))
    b = (np.full((8, 8, 3), 100, np.uint8), np.array([[2, 2, 8, 8], [1, 1, 3, 3]], np.float32),
         np.array([0, -1]))
    img, boxes, labels = mixup(a, b, np.random.default_rng(0), 32.0)
    r = np.random.default_rng(0).beta(32.0, 32.0)
    assert abs(int(img[0, 0, 0]) - (200 * r + 100 * (1 - r))) <= 1
    np.testing.assert_array_equal(boxes, [[0, 0, 4, 4], [2, 2, 8, 8], [1, 1, 3, 3]])
    assert labels.tolist() == [1, 0, -1]


def test_cutmix_drops_only_covered_boxes_and_clips_pasted_ones():
    aug = AugCfg()
    aug.cutmix_beta, aug.min_visibility, aug.min_box_size = 1.0, 0.3, 2.0
    rng0 = np.random.default_rng(0)
    grid = [(x, y, x + 8, y + 8) for x in range(0, 64, 8) for y in range(0, 64, 8)]
    a = (np.full((64, 64, 3), 10, np.uint8), np.array(grid, np.float32), np.zeros(len(grid), np.int64))
    b_boxes = rng0.uniform(0, 40, (12, 2))
    b_boxes = np.concatenate([b_boxes, b_boxes + rng0.uniform(4, 24, (12, 2))], axis=1).clip(0, 64)
    b = (np.full((64, 64, 3), 250, np.uint8), b_boxes.astype(np.float32), np.ones(12, np.int64))
    checked = 0
    for seed in range(20):
        img, boxes, labels = cutmix(a, b, np.random.default_rng(seed), aug)
        pasted = img[..., 0] == 250
        if not pasted.any():
            continue
        ys, xs = np.nonzero(pasted)
        region = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
        assert pasted.sum() == (region[2] - region[0]) * (region[3] - region[1])  # one rectangle
        kept_a = {tuple(x) for x in boxes[labels == 0].tolist()}
        for g in grid:
            inter = np.clip(np.minimum(g[2:], region[2:]) - np.maximum(g[:2], region[:2]), 0, None).prod()
            assert (tuple(map(float, g)) in kept_a) == (64 - inter >= 0.3 * 64)
        for bx in boxes[labels == 1]:
            assert (bx[:2] >= region[:2] - 1e-4).all() and (bx[2:] <= region[2:] + 1e-4).all()
        checked += 1
    assert checked >= 15
