"""Letterbox geometry and the albumentations train augmentation."""
import numpy as np
import pytest

from configs.base_config import AugCfg
from datasets.transforms import (PAD_VALUE, TrainAugment, boxes_from_letterbox, boxes_to_letterbox,
                                 letterbox, letterbox_params)
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


def test_augmentation_keeps_rectangle_tightly_boxed():
    """No rotation/colour: the output box must still tightly cover the red rectangle."""
    aug = TrainAugment(_aug_cfg(scale=(0.6, 1.4), translate=0.2, hflip_prob=0.5, vflip_prob=0.5,
                                color_prob=0.0, min_visibility=0.0), 96)
    box = (30, 20, 90, 60)
    img = image_with_rect((80, 120), box)
    n_kept = 0
    for seed in range(12):
        out, b, lab = aug(img, np.array([box], np.float32), np.array([1]), seed=seed)
        assert out.shape == (96, 96, 3)
        red = (out[..., 0] > 150) & (out[..., 1] < 100)
        if len(b) == 0:
            continue
        n_kept += 1
        assert lab.tolist() == [1]
        x1, y1, x2, y2 = b[0]
        assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
        inner = out[int(np.ceil(y1)) + 1:int(y2) - 1, int(np.ceil(x1)) + 1:int(x2) - 1]
        assert inner[..., 0].mean() > 180 and inner[..., 1].mean() < 80  # box lies on red
        ys, xs = np.nonzero(red)
        assert abs(xs.min() - x1) <= 1.5 and abs(xs.max() + 1 - x2) <= 1.5  # and is tight
        assert abs(ys.min() - y1) <= 1.5 and abs(ys.max() + 1 - y2) <= 1.5
    assert n_kept >= 8


def test_full_augmentation_boxes_inside_and_filtered():
    aug = TrainAugment(_aug_cfg(degrees=15.0, shear=5.0, perspective=0.05, translate=0.3,
                                min_box_size=3.0, min_visibility=0.3), 64)
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (50, 70, 3), np.uint8)
    boxes = np.array([[0, 0, 70, 50], [10, 10, 20, 30], [60, 40, 70, 50], [1, 1, 3, 3]], np.float32)
    labels = np.array([0, 1, -1, 1])
    for seed in range(15):
        out, b, lab = aug(img, boxes, labels, seed=seed)
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8
        assert b.dtype == np.float32 and len(b) == len(lab)
        assert (b >= 0).all() and (b <= 64).all()
        assert ((b[:, 2:] - b[:, :2]) >= 3.0 - 1e-4).all()
        assert set(lab.tolist()) <= {0, 1, -1}


def test_augmentation_is_reproducible_per_seed_and_flips_independent():
    aug = TrainAugment(_aug_cfg(hflip_prob=0.5, vflip_prob=0.5), 32)
    img = image_with_rect((32, 32), (0, 0, 8, 8))
    boxes = np.array([[0, 0, 8, 8]], np.float32)
    a = aug(img, boxes, np.array([0]), seed=5)
    b = aug(img, boxes, np.array([0]), seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    aug2 = TrainAugment(_aug_cfg(scale=(1.0, 1.0), translate=0.0, color_prob=0.0,
                                 hflip_prob=0.5, vflip_prob=0.5), 32)
    corners = set()
    for s in range(40):
        _, bx, _ = aug2(img, boxes, np.array([0]), seed=s)
        corners.add((bx[0, 0] > 16, bx[0, 1] > 16))
    assert len(corners) == 4  # h and v flips are drawn independently


def test_background_grey_constant():
    assert BG != PAD_VALUE  # tests distinguish image content from padding
