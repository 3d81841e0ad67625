"""The whole training augmentation on synthetic images with known objects: every kept box lies
inside the image and tightly on what is left of its object, and only objects that were really
cut away lose their box. Also close-mosaic through persistent workers and after a resume."""
import numpy as np
import pytest
import torch

from configs.base_config import AugCfg
from datasets import DetectionDataset, build_dataloader, build_records
from datasets.augment import TrainAugment
from tests.datasets.three_formats import NAMES, cfg_for, default_items, write_yolo

S = 64
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
          (255, 255, 255), (0, 0, 0)]  # 0/255 channels: edge blends never match another colour
SHAPES = [(48, 64), (64, 40), (64, 64), (32, 64), (64, 52), (40, 64), (64, 64), (56, 64), (64, 48)]
ZOOM = 0.75


def _aug(**kw) -> AugCfg:
    a = AugCfg()
    a.scale, a.degrees, a.shear, a.perspective = (ZOOM, ZOOM), 0.0, 0.0, 0.0
    a.hsv_h = a.hsv_s = a.hsv_v = 0.0
    a.extras_prob, a.hflip_prob, a.vflip_prob = 0.0, 0.5, 0.5
    a.min_visibility, a.min_box_size, a.translate = 0.25, 2.0, 0.2
    for k, v in kw.items():
        setattr(a, k, v)
    return a


class _Loader:
    """load(index, rng): the k-th call of a sample gets a tile with one object of colour k, label k."""

    def __init__(self):
        self.calls, self.areas = 0, {}

    def __call__(self, index, rng):
        k = self.calls
        self.calls += 1
        h, w = SHAPES[(index + k) % len(SHAPES)]
        img = np.full((h, w, 3), 60, np.uint8)
        if k >= len(COLORS):
            return index, img, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        x1, y1 = 3 + (7 * k) % 20, 2 + (5 * k) % 17
        box = (x1, y1, min(w - 1, x1 + 14 + 3 * k), min(h - 1, y1 + 12 + 2 * k))
        img[box[1]:box[3], box[0]:box[2]] = COLORS[k]
        self.areas[k] = (box[2] - box[0]) * (box[3] - box[1])
        return index, img, np.array([box], np.float32), np.array([k])


def _check_sample(image, boxes, labels, areas, aug):
    assert image.shape == (S, S, 3) and image.dtype == np.uint8
    assert boxes.dtype == np.float32 and labels.dtype == np.int64 and len(boxes) == len(labels)
    assert (boxes >= 0).all() and (boxes <= S).all()
    assert len(set(labels.tolist())) == len(labels)
    dropped = kept = 0
    for k, area in areas.items():
        mask = np.all(image == COLORS[k], axis=2)
        rows = np.nonzero(labels == k)[0]
        if len(rows):
            kept += 1
            ys, xs = np.nonzero(mask)
            assert len(xs), f"box of object {k} lies on nothing"
            tight = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            np.testing.assert_allclose(boxes[rows[0]], tight, atol=1.6)
        else:
            dropped += mask.any()
            full = area * ZOOM ** 2
            wide, tall = mask.any(axis=0).sum(), mask.any(axis=1).sum()
            # the exact-colour mask misses the blended rim: allow one pixel around it
            assert mask.sum() <= aug.min_visibility * full or wide + 1 <= aug.min_box_size + 1 \
                or tall + 1 <= aug.min_box_size + 1 \
                or (wide + 1) * (tall + 1) <= aug.min_visibility * full * 1.3, \
                f"object {k} dropped although {mask.sum()} of {full:.0f} px are visible"
    return kept, dropped


@pytest.mark.parametrize("kind", ["single", "mosaic4", "mosaic9"])
def test_augmentation_keeps_only_boxes_of_visible_objects(kind):
    aug = _aug(mosaic_prob=0.0 if kind == "single" else 1.0, mosaic_9_prob=1.0 if kind == "mosaic9" else 0.0,
               translate=0.4 if kind == "single" else 0.2)
    augment = TrainAugment(aug, S)
    total_kept = total_dropped = 0
    for seed in range(30):
        load = _Loader()
        _, image, boxes, labels = augment(seed % 9, 9, load, np.random.default_rng(seed))
        assert load.calls == {"single": 1, "mosaic4": 4, "mosaic9": 9}[kind]
        kept, dropped = _check_sample(image, boxes, labels, load.areas, aug)
        total_kept += kept
        total_dropped += dropped
    assert total_kept >= 15
    assert total_dropped >= 1  # partly visible objects were really dropped somewhere


def test_mixup_and_cutmix_keep_boxes_inside():
    cases = (({"mosaic_prob": 1.0, "mixup_prob": 1.0}, 8), ({"mosaic_prob": 0.0, "cutmix_prob": 1.0}, 2))
    for kw, calls in cases:
        augment = TrainAugment(_aug(**kw), S)
        for seed in range(10):
            load = _Loader()
            _, _image, boxes, labels = augment(0, 9, load, np.random.default_rng(seed))
            assert load.calls == calls
            assert (boxes >= 0).all() and (boxes <= S).all() and len(boxes) == len(labels)
            assert ((boxes[:, 2:] - boxes[:, :2]) > 0).all()
            assert set(labels.tolist()) <= set(range(8))


def test_multi_image_off_equals_zero_probabilities():
    on = TrainAugment(_aug(mosaic_prob=0.7, mixup_prob=0.5, cutmix_prob=0.5), S)
    zero = TrainAugment(_aug(mosaic_prob=0.0, mixup_prob=0.0, cutmix_prob=0.0), S)
    differs = 0
    for seed in range(8):
        a = on(1, 9, _Loader(), np.random.default_rng(seed), multi_image=False)
        b = zero(1, 9, _Loader(), np.random.default_rng(seed))
        c = on(1, 9, _Loader(), np.random.default_rng(seed))
        for x, y in zip(a[1:], b[1:]):
            np.testing.assert_array_equal(x, y)
        differs += not np.array_equal(a[1], c[1])
    assert differs >= 4


# -- close mosaic through the DataLoader ------------------------------------------------------
@pytest.fixture(scope="module")
def yolo_records(tmp_path_factory):
    root = write_yolo(tmp_path_factory.mktemp("cm") / "y", default_items())
    return build_records(cfg_for(root, "yolo", class_names=list(NAMES)), "train")[0]


def _dataset(records, mosaic_prob, close, epochs=4):
    aug = _aug(mosaic_prob=mosaic_prob, mixup_prob=0.5, close_mosaic_epochs=close)
    return DetectionDataset(records, NAMES, S, aug, train=True, seed=1, epochs=epochs)


def _batch(ds, loader, sampler, epoch):
    ds.set_epoch(epoch)
    sampler.set_epoch(epoch)
    return next(iter(loader))


def test_close_mosaic_reaches_persistent_workers(yolo_records, caplog_loguru):
    ds = _dataset(yolo_records, 1.0, close=2)
    loader, sampler = build_dataloader(ds, batch_size=2, train=True, num_workers=2, seed=1)
    assert loader.persistent_workers
    plain = _dataset(yolo_records, 0.0, close=0)
    plain_loader, plain_sampler = build_dataloader(plain, batch_size=2, train=True, num_workers=0, seed=1)
    for epoch in range(4):
        got = _batch(ds, loader, sampler, epoch)
        ref = _batch(plain, plain_loader, plain_sampler, epoch)
        closed = epoch >= 2
        assert torch.equal(got[0], ref[0]) == closed, epoch  # the same workers switch mosaic off
        assert ds.multi_image() == (not closed)
    assert sum("mosaic, MixUp and CutMix are off" in m for m in caplog_loguru) == 1


def test_close_mosaic_after_resume(yolo_records):
    """A fresh dataset (a resumed run) set to a late epoch is closed, and equals the original run."""
    original = _dataset(yolo_records, 1.0, close=1)
    original.set_epoch(3)
    resumed = _dataset(yolo_records, 1.0, close=1)
    resumed.set_epoch(3)
    assert not resumed.multi_image()
    a, b = original[0], resumed[0]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    extended = _dataset(yolo_records, 1.0, close=1, epochs=6)  # resumed with train.epochs extended
    extended.set_epoch(3)
    assert extended.multi_image()
