"""Letterbox geometry, the random perspective warp, HSV jitter and the finishing transforms."""
import cv2
import numpy as np
import pytest

from configs.base_config import AugCfg
from datasets.transforms import (
    PAD_VALUE,
    FinishTransforms,
    boxes_from_letterbox,
    boxes_to_letterbox,
    hsv_jitter,
    letterbox,
    letterbox_params,
    random_perspective,
    resize_long_side,
)
from tests.datasets.synth import BG, image_with_rect


@pytest.mark.parametrize("hw,size", [((480, 640), 416), ((100, 37), 64), ((64, 64), 64), ((7, 300), 96)])
def test_letterbox_shape_pad_and_round_trip(hw, size):
    img = np.full((*hw, 3), 7, np.uint8)
    out, scale, (px, py) = letterbox(img, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert scale == pytest.approx(size / max(hw))
    assert (scale, (px, py)) == letterbox_params(hw, size)
    assert px == int(px) and py == int(py)
    if py > 0:
        assert (out[: int(py)] == PAD_VALUE).all() and (out[int(py):int(py) + 2] == 7).all()
    if px > 0:
        assert (out[:, : int(px)] == PAD_VALUE).all()
    rng = np.random.default_rng(0)
    h, w = hw
    xy = rng.uniform(0, 1, (20, 4)) * [w, h, w, h]
    boxes = np.concatenate([np.minimum(xy[:, :2], xy[:, 2:]), np.maximum(xy[:, :2], xy[:, 2:])], 1)
    lb = boxes_to_letterbox(boxes, scale, (px, py))
    assert lb.dtype == np.float32
    back = boxes_from_letterbox(lb, scale, (px, py), hw)
    np.testing.assert_allclose(back, boxes, atol=1e-3)
    # the letterbox transform is exact on corners: the image corner maps to the padded corner
    np.testing.assert_allclose(boxes_to_letterbox([[0, 0, w, h]], scale, (px, py)),
                               [[px, py, px + round(w * scale), py + round(h * scale)]], atol=0.5)


def test_boxes_from_letterbox_clips_to_original():
    out = boxes_from_letterbox(np.array([[-10, -10, 500, 500]]), 0.5, (2.0, 4.0), (100, 200))
    np.testing.assert_array_equal(out, [[0, 0, 200, 100]])


def _aug_cfg(**kw):
    a = AugCfg()
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def test_resize_long_side_matches_letterbox_content():
    img = np.random.default_rng(0).integers(0, 255, (100, 37, 3), np.uint8)
    small = resize_long_side(img, 64)
    out, _scale, (px, py) = letterbox(img, 64)
    assert small.shape == (64, round(37 * 64 / 100), 3)
    np.testing.assert_array_equal(out[int(py):int(py) + 64, int(px):int(px) + small.shape[1]], small)
    assert resize_long_side(small, 64) is small  # nothing to do


def test_perspective_identity_keeps_image_and_boxes():
    aug = _aug_cfg(scale=(1.0, 1.0), translate=0.0)
    img = image_with_rect((64, 64), (10, 20, 30, 40))
    out, b, lab = random_perspective(img, np.array([[10, 20, 30, 40]], np.float32), np.array([1]), 64,
                                     np.random.default_rng(0), aug)
    np.testing.assert_array_equal(out, img)
    np.testing.assert_array_equal(b, [[10, 20, 30, 40]])
    assert lab.tolist() == [1]


def test_perspective_2s_canvas_into_s_output_centre_maps_to_centre():
    """Zoom 0.5 of a 2s canvas shows all of it in the s output, centred (no grey from cropping first)."""
    aug = _aug_cfg(scale=(0.5, 0.5), translate=0.0)
    canvas = image_with_rect((128, 128), (0, 0, 128, 128))  # red everywhere
    out, b, _ = random_perspective(canvas, np.array([[0, 0, 128, 128]], np.float32), np.array([0]), 64,
                                   np.random.default_rng(0), aug)
    assert out.shape == (64, 64, 3)
    assert (out[1:-1, 1:-1, 0] > 200).all()  # the whole canvas fills the output
    np.testing.assert_allclose(b, [[0, 0, 64, 64]], atol=1e-3)


def _red_bbox(out):
    ys, xs = np.nonzero((out[..., 0] > 150) & (out[..., 1] < 100))
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, len(xs)


def test_perspective_shift_boxes_tight_and_cut_boxes_dropped():
    """Each kept box tightly covers what is left of its object; each dropped one was really cut away
    (less than min_visibility of its 30 x 30 px left, or at most min_box_size px wide or tall)."""
    aug = _aug_cfg(scale=(1.0, 1.0), translate=0.45, min_visibility=0.2, min_box_size=2.0)
    box = (60, 20, 90, 50)
    img = image_with_rect((96, 96), box)
    kept = dropped = partial = 0
    for seed in range(60):
        out, b, _lab = random_perspective(img, np.array([box], np.float32), np.array([0]), 64,
                                         np.random.default_rng(seed), aug)
        red = (out[..., 0] > 150) & (out[..., 1] < 100)
        if len(b):
            kept += 1
            x1, y1, x2, y2, n = _red_bbox(out)
            np.testing.assert_allclose(b[0], [x1, y1, x2, y2], atol=1.5)
            assert (b >= 0).all() and (b <= 64).all()
            partial += n < 0.9 * 900
        else:
            dropped += 1
            wide, tall = red.any(axis=0).sum(), red.any(axis=1).sum()
            assert red.sum() <= 0.2 * 900 + 2 * 30 or wide <= 3 or tall <= 3
    assert kept >= 20 and dropped >= 5 and partial >= 5


def test_zoom_shift_fast_path_matches_the_general_warp():
    """Without rotation/shear the warp is a crop + resize: same picture and boxes as warpAffine."""
    img = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (128, 128, 3), np.uint8), (9, 9), 3)
    img[40:90, 30:70] = (220, 30, 30)
    boxes = np.array([[30, 40, 70, 90]], np.float32)
    for seed in range(10):
        fast = random_perspective(img, boxes, np.array([0]), 64, np.random.default_rng(seed),
                                  _aug_cfg(scale=(0.4, 1.6), translate=0.2))
        general = random_perspective(img, boxes, np.array([0]), 64, np.random.default_rng(seed),
                                     _aug_cfg(scale=(0.4, 1.6), translate=0.2, shear=1e-7))
        diff = np.abs(fast[0].astype(int) - general[0].astype(int))
        assert np.median(diff) <= 2 and (diff > 40).mean() < 0.05  # only sub-pixel edge shifts
        assert len(fast[1]) == len(general[1])
        np.testing.assert_allclose(fast[1], general[1], atol=1.0)
        if len(fast[1]):  # and the fast path's box is exact on its pixels
            x1, y1, x2, y2, _ = _red_bbox(fast[0])
            np.testing.assert_allclose(fast[1][0], [x1, y1, x2, y2], atol=1.0)


def test_perspective_drop_rule_against_uncut_size():
    """full_wh: a box already cut to 10% of its object by an earlier step is judged on the whole object."""
    aug = _aug_cfg(scale=(1.0, 1.0), translate=0.0, min_visibility=0.25)
    img = np.full((64, 64, 3), BG, np.uint8)
    boxes = np.array([[0, 0, 10, 40]], np.float32)  # 10 x 40 visible
    keep = random_perspective(img, boxes, np.array([0]), 64, np.random.default_rng(0), aug)[1]
    cut = random_perspective(img, boxes, np.array([0]), 64, np.random.default_rng(0), aug,
                             full_wh=np.array([[100, 40]], np.float32))[1]  # of a 100 x 40 object
    assert len(keep) == 1 and len(cut) == 0


@pytest.mark.parametrize("kw", [{"degrees": 30.0}, {"shear": 10.0}, {"perspective": 0.001}])
def test_perspective_rotation_shear_boxes_inside_and_cover_object(kw):
    aug = _aug_cfg(scale=(0.8, 1.2), translate=0.1, min_visibility=0.1, **kw)
    box = (20, 24, 44, 40)
    img = image_with_rect((64, 64), box)
    for seed in range(15):
        out, b, _lab = random_perspective(img, np.array([box], np.float32), np.array([0]), 64,
                                         np.random.default_rng(seed), aug)
        assert len(b) == 1 and (b >= 0).all() and (b <= 64).all()
        x1, y1, x2, y2, _ = _red_bbox(out)
        assert b[0, 0] <= x1 + 1 and b[0, 1] <= y1 + 1 and b[0, 2] >= x2 - 1 and b[0, 3] >= y2 - 1


def test_box_filter_aspect_and_min_size():
    aug = _aug_cfg(scale=(1.0, 1.0), translate=0.0, max_aspect_ratio=5.0, min_box_size=2.0)
    boxes = np.array([[0, 0, 60, 10], [0, 20, 3, 30], [10, 40, 12, 60], [20, 20, 40, 40]], np.float32)
    _, _b, lab = random_perspective(np.zeros((64, 64, 3), np.uint8), boxes, np.arange(4), 64,
                                   np.random.default_rng(0), aug)
    assert lab.tolist() == [1, 3]  # 6:1 too elongated; 2 px wide not > 2


def test_hsv_gains():
    img = image_with_rect((16, 16), (0, 0, 8, 16), color=(200, 80, 40))
    off = _aug_cfg(hsv_h=0, hsv_s=0, hsv_v=0)
    np.testing.assert_array_equal(hsv_jitter(img, np.random.default_rng(0), off), img)
    aug = _aug_cfg(hsv_h=0.0, hsv_s=0.0, hsv_v=0.4)
    values = set()
    for seed in range(10):
        out = hsv_jitter(img, np.random.default_rng(seed), aug)
        gain = np.random.default_rng(seed).uniform(-1, 1, 3)[2] * 0.4 + 1
        v_in = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[..., 2].astype(float)
        v_out = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)[..., 2].astype(float)
        np.testing.assert_allclose(v_out, np.clip(v_in * gain, 0, 255), atol=3)  # value scaled by its gain
        values.add(int(v_out[0, 0]))
    assert len(values) > 5


def test_finish_flips_move_boxes_and_are_independent():
    finish = FinishTransforms(_aug_cfg(hflip_prob=0.5, vflip_prob=0.5, extras_prob=0.0))
    img = image_with_rect((32, 48), (0, 0, 8, 8))
    boxes = np.array([[0, 0, 8, 8]], np.float32)
    corners = set()
    for s in range(40):
        out, bx, lab = finish(img, boxes, np.array([-1]), np.random.default_rng(s))
        assert out.shape == (32, 48, 3) and lab.tolist() == [-1] and lab.dtype == np.int64
        x1, y1, x2, y2, _ = _red_bbox(out)
        np.testing.assert_array_equal(bx[0], [x1, y1, x2, y2])
        corners.add((bx[0, 0] > 24, bx[0, 1] > 16))
    assert len(corners) == 4  # h and v flips are drawn independently
    a = finish(img, boxes, np.array([0]), np.random.default_rng(5))
    b = finish(img, boxes, np.array([0]), np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])


def test_finish_extras_run_through_albumentations():
    """extras_prob 1: blur, median blur, grey and CLAHE all fire: grey output, edges smoothed."""
    finish = FinishTransforms(_aug_cfg(hflip_prob=0.0, vflip_prob=0.0, extras_prob=1.0))
    img = image_with_rect((32, 32), (8, 8, 24, 24))
    out, bx, _ = finish(img, np.array([[8, 8, 24, 24]], np.float32), np.array([0]), np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.ptp(out.astype(int), axis=2).max() <= 2  # ToGray (CLAHE's LAB round trip may shift by 1-2)
    assert len(np.unique(out[8, 4:12, 0])) > 2  # the sharp edge is blurred
    np.testing.assert_array_equal(bx, [[8, 8, 24, 24]])
    plain = FinishTransforms(_aug_cfg(hflip_prob=0.0, vflip_prob=0.0, extras_prob=0.0))
    np.testing.assert_array_equal(plain(img, bx, np.array([0]), np.random.default_rng(0))[0], img)


def test_background_grey_constant():
    assert BG != PAD_VALUE  # tests distinguish image content from padding
