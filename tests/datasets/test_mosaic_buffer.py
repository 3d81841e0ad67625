"""The mosaic buffer (data.mosaic_buffer): partner pools from the sampler, one decode per sample,
determinism per (seed, epoch, rank, workers), exact mid-epoch resume with workers; the lazy canvas;
channels_last batches."""
import itertools

import numpy as np
import pytest
import torch

from configs import load_config
from core.loaders import build_train_loader
from datasets import image_io
from datasets.augment import MIN_POOL, draw_partners
from datasets.dataset import collate_fn, to_input
from datasets.mosaic import Canvas, mosaic, mosaic_lazy
from datasets.samplers import PoolSampler, SeededRandomSampler, ShardSampler, mosaic_buffer_size
from utils.dist import DistInfo

CPU = DistInfo.single()


# -- the sampler ------------------------------------------------------------------------------------
def test_pools_are_the_previous_indices_of_the_same_lane():
    base = SeededRandomSampler(40, seed=3)
    order = list(base)
    items = list(PoolSampler(base, batch_size=4, lanes=2, size=5))
    assert [i for i, _ in items] == order  # the primary order is the base sampler's
    for p, (index, pool) in enumerate(items):
        lane = (p // 4) % 2
        earlier = [order[q] for q in range(p) if (q // 4) % 2 == lane]
        assert pool == tuple(earlier[-5:]), p
    # by hand: position 9 is in batch 2 (positions 8..11), lane 0, after lane 0's batch 0 (0..3) and position 8
    assert items[9][1] == (order[0], order[1], order[2], order[3], order[8])
    # position 12: batch 3, lane 1; lane 1 so far is batch 1 (positions 4..7)
    assert items[12][1] == (order[4], order[5], order[6], order[7])
    assert items[0][1] == items[4][1] == ()  # each lane starts empty


def test_set_start_yields_the_uninterrupted_items_and_set_epoch_clears_it():
    s = PoolSampler(SeededRandomSampler(30, seed=1), batch_size=3, lanes=2, size=4)
    s.set_epoch(2)
    full = list(s)
    s.set_start(9)
    assert list(s) == full[9:] and len(s) == 21
    s.set_epoch(2)
    assert list(s) == full and len(s) == 30
    with pytest.raises(ValueError, match="outside 0..30"):
        s.set_start(31)


def test_shard_sampler_pools_per_rank():
    ds = list(range(20))
    for rank in (0, 1):
        base = ShardSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        items = list(PoolSampler(base, batch_size=2, lanes=1, size=3))
        order = list(ShardSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0))
        assert [i for i, _ in items] == order
        assert all(pool == tuple(order[max(0, p - 3):p]) for p, (_, pool) in enumerate(items))


def test_partners_come_from_the_pool_once_it_is_large_enough():
    rng = np.random.default_rng(0)
    assert all(0 <= j < 1000 for j in draw_partners(rng, 1000, 50, tuple(range(MIN_POOL - 1))))  # too small
    small = set(draw_partners(np.random.default_rng(1), 1000, 200, tuple(range(MIN_POOL - 1))))
    assert max(small) >= MIN_POOL  # the whole split, not the short pool
    pool = tuple(range(500, 500 + MIN_POOL))
    assert set(draw_partners(rng, 1000, 200, pool)) == set(pool)
    assert draw_partners(np.random.default_rng(5), 1000, 3, None) == [int(j) for j in np.random.default_rng(5).integers(1000, size=3)]


def test_auto_size_is_eight_batches_within_the_budget():
    assert mosaic_buffer_size(-1, 16, 640) == 128  # 128 x 1.2 MB = 157 MB <= 192 MB
    assert mosaic_buffer_size(-1, 64, 640) == 163  # 192 MB / 1.2 MB
    assert mosaic_buffer_size(-1, 16, 1280) == 40
    assert mosaic_buffer_size(0, 16, 640) == 0 and mosaic_buffer_size(7, 16, 640) == 7


# -- the dataset with a loader ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    from tests.core.tiny_data import make_tiny_voc
    return make_tiny_voc(tmp_path_factory.mktemp("buffer_voc"), n_train=48, n_val=2)


def cfg_for(root, workers=0, **extra):
    base = {"data.root": str(root), "data.img_size": 96, "data.num_workers": workers, "train.batch_size": 4,
            "aug.mosaic_prob": 1.0, "aug.mixup_prob": 0.5, "data.persistent_workers": True,
            "data.cache_dir": str(root.parent / f"{root.name}_cache")}
    base.update(extra)
    return load_config("bccd_v9t", [f"{k}={v!r}" for k, v in base.items()])


def epoch(loader, sampler, e, start=0):
    sampler.set_epoch(e)
    loader.dataset.set_epoch(e)
    if start:
        sampler.set_start(start * loader.batch_size)
    return [(images.clone(), targets.clone()) for images, targets, _ in loader]


@pytest.fixture
def decodes(monkeypatch):
    count = itertools.count()
    real = image_io._fast_decode
    monkeypatch.setattr(image_io, "_fast_decode", lambda *a, **k: (next(count), real(*a, **k))[1])
    return lambda: next(count)  # one more than the decodes so far


def test_one_decode_per_sample_once_pools_fill(voc, decodes):
    loader, sampler = build_train_loader(cfg_for(voc, **{"data.mosaic_buffer": 16}), CPU)
    assert isinstance(sampler, PoolSampler) and loader.dataset.pool_size == 16
    ds = loader.dataset
    epoch(loader, sampler, 0)
    n = len(sampler)  # 48 samples, mosaic always, MixUp half of them: 4 to 8 images each
    used = decodes() - 1
    # each primary once; the first MIN_POOL samples draw partners from the whole split (3 or 7 each)
    assert n <= used <= n + MIN_POOL * 7
    assert ds.buffer_stats["hits"] > 2 * n and len(ds._buffer) <= 16


def test_without_the_buffer_every_tile_is_decoded(voc, decodes):
    loader, sampler = build_train_loader(cfg_for(voc, **{"data.mosaic_buffer": 0}), CPU)
    assert isinstance(sampler, SeededRandomSampler) and not loader.dataset._buffer
    epoch(loader, sampler, 0)
    assert decodes() - 1 >= 4 * len(sampler)


def test_the_buffer_never_outgrows_its_size(voc):
    loader, sampler = build_train_loader(cfg_for(voc, **{"data.mosaic_buffer": 5}), CPU)
    ds = loader.dataset
    sizes = []
    real = ds._keep_only

    def spy(pool, index):
        real(pool, index)
        sizes.append(len(ds._buffer))
        assert set(ds._buffer) <= set(pool[-4:]) | {index}
    ds._keep_only = spy
    epoch(loader, sampler, 0)
    assert max(sizes) == 5 and len(sizes) == 48


def test_buffered_partners_are_pool_members(voc):
    loader, sampler = build_train_loader(cfg_for(voc, **{"data.mosaic_buffer": 12}), CPU)
    ds = loader.dataset
    ds.set_epoch(0)
    loaded = []
    real = ds._load_resized
    ds._load_resized = lambda index, rng, keep=False: (loaded.append(index), real(index, rng, keep))[1]
    for index, pool in itertools.islice(iter(sampler), 20, 30):  # pools of 12: full
        loaded.clear()
        ds[(index, pool)]
        assert loaded[0] == index and set(loaded[1:]) <= set(pool) and len(loaded) in (4, 8)


@pytest.mark.slow
def test_two_workers_are_deterministic_and_resume_mid_epoch_exactly(voc):
    """Two workers, persistent: two loaders give the same batches; an epoch resumed at batch 5 (the
    trainer's set_start, new workers whose buffers are empty) gives the uninterrupted batches 5.. exactly;
    one worker differs (partners follow the workers' lanes)."""
    cfg = cfg_for(voc, workers=2)
    a_loader, a_sampler = build_train_loader(cfg, CPU)
    b_loader, b_sampler = build_train_loader(cfg, CPU)
    first = epoch(a_loader, a_sampler, 0)
    full = epoch(a_loader, a_sampler, 1)  # epoch 2 with warm persistent workers
    assert len(full) == 12
    resumed = epoch(b_loader, b_sampler, 1, start=5)  # fresh workers, empty buffers
    assert len(resumed) == 7
    for (x, t), (y, u) in zip(full[5:], resumed):
        assert torch.equal(x, y) and torch.equal(t, u)
    assert not torch.equal(first[5][0], full[5][0])  # epochs differ
    one_loader, one_sampler = build_train_loader(cfg_for(voc, workers=1), CPU)
    other = epoch(one_loader, one_sampler, 1)
    assert any(not torch.equal(x, y) for (x, _), (y, _) in zip(full, other))


def test_zero_workers_resume_mid_epoch_exactly(voc):
    cfg = cfg_for(voc)
    loader, sampler = build_train_loader(cfg, CPU)
    full = epoch(loader, sampler, 3)
    loader2, sampler2 = build_train_loader(cfg, CPU)
    resumed = epoch(loader2, sampler2, 3, start=7)
    assert len(resumed) == 5
    assert all(torch.equal(x, y) and torch.equal(t, u) for (x, t), (y, u) in zip(full[7:], resumed))


def test_the_log_states_the_buffer_memory(voc, caplog_loguru):
    build_train_loader(cfg_for(voc, workers=2, **{"data.img_size": 640, "train.batch_size": 16}), CPU)
    assert ("mosaic buffer (data.mosaic_buffer): 128 resized images per worker, at most 150 MB each "
            "(300 MB on this rank)") in "".join(caplog_loguru)


def test_a_config_without_partners_gets_no_pool(voc):
    _, sampler = build_train_loader(cfg_for(voc, **{"aug.mosaic_prob": 0.0, "aug.cutmix_prob": 0.0}), CPU)
    assert isinstance(sampler, SeededRandomSampler)


# -- the canvas and the batch layout --------------------------------------------------------------------
def test_lazy_canvas_windows_equal_slices_of_the_whole_canvas():
    rng = np.random.default_rng(0)
    s = 32
    samples = [(rng.integers(0, 255, (int(rng.integers(8, 33)), int(rng.integers(8, 33)), 3), dtype=np.uint8),
                np.array([[1, 1, 6, 6]], np.float32), np.array([k], np.int64)) for k in range(9)]
    for n in (4, 9):
        canvas, boxes, labels, wh = mosaic(samples[:n], s, np.random.default_rng(n))
        lazy, boxes2, labels2, wh2 = mosaic_lazy(samples[:n], s, np.random.default_rng(n))
        assert isinstance(lazy, Canvas) and lazy.shape == canvas.shape == (64, 64, 3)
        np.testing.assert_array_equal(boxes, boxes2)
        np.testing.assert_array_equal(lazy.materialize(), canvas)
        for _ in range(50):
            y0, x0 = rng.integers(-5, 64, 2)
            y1, x1 = y0 + rng.integers(0, 70), x0 + rng.integers(0, 70)
            y0, x0 = max(y0, 0), max(x0, 0)
            np.testing.assert_array_equal(lazy[y0:y1, x0:x1], canvas[y0:y1, x0:x1])


def test_batches_are_channels_last_views_with_the_item_values(voc):
    loader, sampler = build_train_loader(cfg_for(voc), CPU)
    ds = loader.dataset
    ds.set_epoch(0)
    items = [ds[k] for k in itertools.islice(iter(sampler), 4)]
    images, targets, _ = collate_fn(items)
    assert images.shape == (4, 3, 96, 96) and images.dtype == torch.uint8
    assert images.is_contiguous(memory_format=torch.channels_last)
    for b, (img, _, _) in enumerate(items):
        assert torch.equal(images[b], img)
    nchw = to_input(images, "cpu")
    assert nchw.is_contiguous() and torch.equal(nchw, images.contiguous().float() / 255)
    nhwc = to_input(images, "cpu", torch.channels_last)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and torch.equal(nhwc, nchw)
