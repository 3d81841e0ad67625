"""LMDB image cache: same pixels as decoding, one file for ram and disk modes, rebuilt when stale,
shared by DataLoader workers."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from core.loaders import build_eval_loader, build_train_loader
from datasets import build_dataloader
from datasets.image_cache import ImageCache, stored_hw
from tests.datasets.three_formats import (
    NAMES,
    cfg_for,
    default_items,
    rect_image,
    write_yolo,
)
from utils.dist import DistInfo

DIST = DistInfo.single()


@pytest.fixture
def data(tmp_path):
    return write_yolo(tmp_path / "y", default_items()), tmp_path / "cache"


def _cfg(root, cache, mode, **kw):
    cfg = cfg_for(root, "yolo", cache, cache_images=mode, class_names=list(NAMES), num_workers=0, **kw)
    cfg.aug.mosaic_prob, cfg.aug.mixup_prob, cfg.train.batch_size = 0.5, 0.5, 2
    return cfg


def _items(loader):
    ds = loader.dataset
    ds.set_epoch(0)
    return [ds[i] for i in range(len(ds))]


def _equal(a, b):
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


@pytest.mark.parametrize("mode,resize", [("ram", True), ("disk", True), ("ram", False)])
def test_cached_items_equal_decoded_items(data, mode, resize):
    root, cache = data
    plain_train = _items(build_train_loader(_cfg(root, cache, "none"), DIST)[0])
    plain_val = _items(build_eval_loader(_cfg(root, cache, "none"), DIST))
    train_loader = build_train_loader(_cfg(root, cache, mode, cache_resize=resize), DIST)[0]
    val_loader = build_eval_loader(_cfg(root, cache, mode, cache_resize=resize), DIST)
    assert isinstance(train_loader.dataset.image_cache, ImageCache)
    assert train_loader.dataset.image_cache.mode == mode
    assert _equal(_items(train_loader), plain_train) and _equal(_items(val_loader), plain_val)


def test_cache_holds_resized_read_only_pixels(data):
    root, cache = data
    ds = build_train_loader(_cfg(root, cache, "ram"), DIST)[0].dataset
    for i, rec in enumerate(ds.records):
        img = ds.image_cache.get(i)
        assert img.shape[:2] == stored_hw(rec.img_hw, 64) and max(img.shape[:2]) == 64
        assert not img.flags.writeable
    assert stored_hw((60, 80), 0) == (60, 80) and stored_hw((60, 80), 64) == (48, 64)


def test_one_file_for_both_modes_and_rebuild_reasons(data, caplog_loguru):
    root, cache = data
    build_train_loader(_cfg(root, cache, "ram"), DIST)
    (lmdb_file,) = cache.rglob("images_s64.lmdb")
    built = lmdb_file.stat().st_mtime_ns
    assert any("building image cache" in m and "(no cache yet)" in m for m in caplog_loguru)
    caplog_loguru.clear()
    build_train_loader(_cfg(root, cache, "disk"), DIST)
    assert lmdb_file.stat().st_mtime_ns == built  # reused, not rebuilt
    assert any("valid, reused (disk mode)" in m for m in caplog_loguru)
    # an image changes on disk: rebuilt, and the log names it
    blue = rect_image((60, 80), [(2, 1, 1, 30, 30)])
    Image.fromarray(blue).save(root / "images" / "train" / "train000.jpg")
    caplog_loguru.clear()
    loader = build_train_loader(_cfg(root, cache, "disk", cache_labels=False), DIST)[0]
    assert any("files changed" in m and "train000.jpg" in m for m in caplog_loguru)
    cached = loader.dataset.image_cache.get(0)
    np.testing.assert_array_equal(cached, _decoded(loader.dataset, 0))
    np.testing.assert_allclose(cached[10, 10], (40, 60, 230), atol=15)  # the new blue object (JPEG)
    caplog_loguru.clear()
    build_train_loader(_cfg(root, cache, "disk", cache_refresh=True), DIST)
    assert any("valid, reused" in m for m in caplog_loguru)  # rebuilt by this run already
    os.utime(lmdb_file, ns=(0, 0))  # as if built by an earlier run
    caplog_loguru.clear()
    build_train_loader(_cfg(root, cache, "disk", cache_refresh=True), DIST)
    assert any("building image cache" in m and "data.cache_refresh=True" in m for m in caplog_loguru)


def _decoded(ds, i):
    from datasets.transforms import resize_long_side
    return resize_long_side(ds.loader.load(ds.records[i].file), 64)


def test_workers_share_the_ram_cache(data):
    root, cache = data
    ds = build_train_loader(_cfg(root, cache, "ram"), DIST)[0].dataset
    assert ds.image_cache._blob.is_shared()
    ds.set_epoch(0)
    batches = []
    for workers in (0, 2):
        loader, sampler = build_dataloader(ds, batch_size=2, train=True, num_workers=workers, seed=3)
        sampler.set_epoch(0)
        batches.append(next(iter(loader)))
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])


def test_data_fraction_caches_only_the_subset(data):
    root, cache = data
    ds = build_train_loader(_cfg(root, cache, "disk", data_fraction=0.5), DIST)[0].dataset
    assert len(ds) == 3  # 1 of 2 "cat" images, the "bird" image, the background image
    assert len(ds.image_cache.shapes) == 3
    assert next(cache.rglob("images_s64_f0.5.lmdb")).is_file()


def test_disk_cache_in_forked_workers_after_the_main_process_read_it(data):
    """LMDB forbids reusing an environment across fork: workers open their own, even when the
    main process had the file open (and the same file opened twice in one process is shared)."""
    root, cache = data
    ds = build_train_loader(_cfg(root, cache, "disk"), DIST)[0].dataset
    ds.set_epoch(0)
    first = ds[0]
    again = build_train_loader(_cfg(root, cache, "disk"), DIST)[0].dataset  # same file, same process
    np.testing.assert_array_equal(again.image_cache.get(1), ds.image_cache.get(1))
    loader, sampler = build_dataloader(ds, batch_size=2, train=True, num_workers=2, seed=3)
    sampler.set_epoch(0)
    for _ in range(2):  # two epochs through the same persistent workers
        images, _, _ = next(iter(loader))
        assert images.shape == (2, 3, 64, 64)
    assert torch.equal(ds[0][0], first[0])
