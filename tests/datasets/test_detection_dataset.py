"""DetectionDataset items, collate and DataLoader determinism on a synthetic VOC set."""
import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from datasets import (
    DetectionDataset,
    build_dataloader,
    build_records,
    collate_fn,
    to_input,
)
from datasets.image_io import ImageError
from datasets.transforms import boxes_to_letterbox
from tests.datasets.synth import (
    add_item,
    append_to_set,
    image_with_rect,
    make_cfg,
    make_voc,
)


@pytest.fixture
def voc(tmp_path):
    root = make_voc(tmp_path, n_train=6, n_val=2)
    # one image with an ignore region (difficult object), for the cls = -1 rows
    add_item(root, "diff", image_with_rect(box=(10, 10, 40, 40)),
             [("dog", 11, 11, 40, 40), ("cat", 51, 5, 70, 20, 1)])
    append_to_set(root, "train", "diff")
    append_to_set(root, "val", "diff")
    return make_cfg(root)


def test_eval_item_is_letterboxed_with_targets_in_that_frame(voc):
    records, _ = build_records(voc, "val")
    ds = DetectionDataset(records, voc.data.class_names, 64)
    img, target, meta = ds[2]
    rec = records[2]
    assert img.shape == (3, 64, 64) and img.dtype == torch.uint8
    assert target.dtype == torch.float32 and target.shape == (2, 5)
    assert meta == {"image_id": 3, "file": rec.file, "orig_hw": (60, 80), "scale": 0.8, "pad": (0.0, 8.0)}
    np.testing.assert_allclose(target[0, 1:].numpy(), boxes_to_letterbox(rec.boxes, 0.8, (0.0, 8.0))[0])
    assert target[:, 0].tolist() == [1.0, -1.0]  # dog, then the ignore region
    x1, y1, x2, y2 = target[0, 1:].round().int().tolist()
    inner = img[:, y1 + 1:y2 - 1, x1 + 1:x2 - 1].float()
    assert inner[0].mean() > 180 and inner[1].mean() < 80  # the box sits on the red object


def test_train_items_in_bounds_and_reproducible(voc):
    records, _ = build_records(voc, "train")
    voc.aug.mosaic_prob = 0.5
    ds = DetectionDataset(records, voc.data.class_names, 64, voc.aug, train=True, seed=3)
    for i in range(len(ds)):
        img, target, _meta = ds[i]
        assert img.shape == (3, 64, 64) and target.shape[1] == 5
        assert (target[:, 1:] >= 0).all() and (target[:, 1:] <= 64).all()
        assert set(target[:, 0].tolist()) <= {-1.0, 0.0, 1.0}
        again = ds[i]
        assert torch.equal(img, again[0]) and torch.equal(target, again[1])
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i][0], DetectionDataset(records, voc.data.class_names, 64, voc.aug,
                                                          train=True, seed=3)[i][0]) for i in range(3))


def test_collate_shapes_and_batch_index(voc):
    records, _ = build_records(voc, "val")
    ds = DetectionDataset(records, voc.data.class_names, 64)
    images, targets, metas = collate_fn([ds[0], ds[2], ds[1]])
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.uint8
    assert torch.equal(images[1], ds[2][0])  # the items' pixels, unscaled
    x = to_input(images, "cpu", torch.channels_last)  # the model input: float 0..1
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x * 255.0, images.float())
    assert to_input(x, "cpu", torch.channels_last) is x  # already a model input: passes through
    assert targets.shape == (4, 6) and targets[:, 0].tolist() == [0.0, 1.0, 1.0, 2.0]
    assert [m["image_id"] for m in metas] == [1, 3, 2]
    torch.testing.assert_close(targets[1:3, 1:], ds[2][1])


def _first_batch(cfg, records, workers, epoch=0):
    ds = DetectionDataset(records, cfg.data.class_names, 64, cfg.aug, train=True, seed=7)
    loader, sampler = build_dataloader(ds, batch_size=3, train=True, num_workers=workers, seed=7)
    ds.set_epoch(epoch)
    sampler.set_epoch(epoch)
    return next(iter(loader)), (ds, loader, sampler)


def test_dataloader_same_seed_same_first_batch_any_worker_count(voc):
    records, _ = build_records(voc, "train")
    voc.aug.mosaic_prob = 0.5
    b0, _ = _first_batch(voc, records, 0)
    b2, (ds, loader, sampler) = _first_batch(voc, records, 2)
    assert loader.drop_last and loader.persistent_workers
    assert torch.equal(b0[0], b2[0]) and torch.equal(b0[1], b2[1])
    assert [m["image_id"] for m in b0[2]] == [m["image_id"] for m in b2[2]]
    # epoch 1 through the same persistent workers equals a fresh in-process loader at epoch 1
    ds.set_epoch(1)
    sampler.set_epoch(1)
    e1_workers = next(iter(loader))
    e1_main, _ = _first_batch(voc, records, 0, epoch=1)
    assert torch.equal(e1_workers[0], e1_main[0]) and torch.equal(e1_workers[1], e1_main[1])
    assert not torch.equal(e1_main[0], b0[0])


def test_build_dataloader_samplers_and_drop_last(voc):
    records, _ = build_records(voc, "val")
    ds = DetectionDataset(records, voc.data.class_names, 64)
    loader, _ = build_dataloader(ds, batch_size=2, train=False, num_workers=0)
    assert not loader.drop_last and len(loader) == 2
    loader, sampler = build_dataloader(ds, batch_size=8, train=True, num_workers=0)
    assert not loader.drop_last  # dataset smaller than one batch: keep it
    loader, sampler = build_dataloader(ds, batch_size=1, train=False, num_workers=0, rank=1, world_size=2,
                                       seed=5)
    assert isinstance(sampler, DistributedSampler) and not sampler.shuffle and sampler.seed == 5
    assert list(sampler) == [1, 0]  # padded to equal length per rank (evaluator de-duplicates)


def test_train_decode_failure_is_replaced_eval_raises(voc, caplog_loguru):
    records, _ = build_records(voc, "train")
    open(records[0].file, "wb").close()  # the file breaks after the scan
    voc.aug.mosaic_prob = 0.0
    ds = DetectionDataset(records, voc.data.class_names, 64, voc.aug, train=True)
    img, _target, meta = ds[0]
    assert img.shape == (3, 64, 64) and meta["file"] != records[0].file
    assert any(records[0].file in m and "replaced" in m for m in caplog_loguru)
    with pytest.raises(ImageError, match=r"zero-byte.*dataset index 0"):
        DetectionDataset(records, voc.data.class_names, 64)[0]
