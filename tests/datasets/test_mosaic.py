"""2x2 mosaic: output size, boxes in bounds and on their objects, filtering."""
import numpy as np

from configs.base_config import AugCfg
from datasets.mosaic import mosaic4
from tests.datasets.synth import image_with_rect


def _samples():
    out = []
    for k, hw in enumerate([(60, 80), (80, 60), (50, 50), (40, 90)]):
        box = (10, 10, 10 + 20 + k * 3, 10 + 15 + k * 2)
        out.append((image_with_rect(hw, box), np.array([box], np.float32), np.array([k % 2])))
    return out


def test_mosaic_size_boxes_in_bounds_and_on_objects():
    aug = AugCfg()
    aug.min_visibility, aug.min_box_size = 0.0, 1.0
    seen = 0
    for seed in range(20):
        img, boxes, labels = mosaic4(_samples(), 96, np.random.default_rng(seed), aug)
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        assert boxes.dtype == np.float32 and labels.dtype == np.int64 and len(boxes) == len(labels)
        assert (boxes >= 0).all() and (boxes <= 96).all()
        assert (boxes[:, 2:] - boxes[:, :2] >= 1.0).all()
        for x1, y1, x2, y2 in boxes:
            inner = img[int(np.ceil(y1)) + 1:int(y2) - 1, int(np.ceil(x1)) + 1:int(x2) - 1]
            if inner.size:
                assert inner[..., 0].mean() > 150 and inner[..., 1].mean() < 100
            seen += 1
    assert seen >= 40


def test_mosaic_filters_by_visibility_and_keeps_ignore_label():
    aug = AugCfg()
    aug.min_visibility, aug.min_box_size, aug.scale = 0.99, 2.0, (1.0, 1.0)
    samples = [(img, b, np.array([k - 1])) for k, (img, b, _) in enumerate(_samples())]  # labels -1..2
    full_area = {}
    for img, b, lab in samples:  # tile long side = 96 / 2 at scale 1
        f = 48 / max(img.shape[:2])
        full_area[int(lab[0])] = float(np.prod(b[0, 2:] - b[0, :2])) * f * f
    n_dropped = 0
    for seed in range(20):
        _, boxes, labels = mosaic4(samples, 96, np.random.default_rng(seed), aug)
        assert set(labels.tolist()) <= {-1, 0, 1, 2}
        for box, lab in zip(boxes, labels):  # every kept box is whole (>= 99% of its area)
            assert np.prod(box[2:] - box[:2]) >= 0.98 * full_area[int(lab)]
        n_dropped += 4 - len(boxes)
    assert n_dropped > 0  # some boxes were cut by the canvas border and dropped


def test_mosaic_is_deterministic_given_rng():
    aug = AugCfg()
    a = mosaic4(_samples(), 64, np.random.default_rng(3), aug)
    b = mosaic4(_samples(), 64, np.random.default_rng(3), aug)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
