"""DetectionDataset, collate and DataLoader construction (one data contract for every split).

Item: ``(image uint8 [3, H, W], target float32 [n, 5] = (cls, x1, y1, x2, y2) in input-image
pixels with ignore regions as cls = -1, meta)``. Batch: ``(images float32 [B, 3, H, W] in 0..1,
targets float32 [N, 6] = (batch_idx, cls, x1, y1, x2, y2), metas)``.

Reproducibility: sample i of epoch e draws all randomness from
``np.random.default_rng([seed, e, i])``, so augmentation depends on (seed, epoch, index) only,
never on the worker count. The epoch lives in shared memory so ``set_epoch`` reaches
persistent workers; call it before ``iter(loader)``.
"""
from __future__ import annotations

import functools
import random
from typing import Any

import numpy as np
import torch
from loguru import logger
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler

from datasets.image_io import ImageError, load_image
from datasets.mosaic import mosaic4
from datasets.records import Record
from datasets.transforms import TrainAugment, boxes_to_letterbox, letterbox, letterbox_params

_MAX_REPLACEMENTS = 10  # train: how many other images to try when one fails to decode


class DetectionDataset(Dataset):
    """Records -> model inputs. ``train=True`` augments (mosaic or single image), else letterbox."""

    def __init__(self, records: list[Record], class_names: list[str], img_size: int,
                 aug_cfg: Any = None, train: bool = False, seed: int = 0) -> None:
        self.records = records
        self.class_names = list(class_names)
        self.img_size = img_size
        self.aug_cfg = aug_cfg
        self.train = train
        self.seed = seed
        self.augment = TrainAugment(aug_cfg, img_size) if train and aug_cfg is not None else None
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (visible to already running workers)."""
        self._epoch[0] = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The generator of sample ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, int(self._epoch[0]), index])

    # -- loading ------------------------------------------------------------------------
    def _load(self, index: int) -> np.ndarray:
        """[H, W, 3] uint8 of record ``index``; ImageError if it no longer matches the scan."""
        rec = self.records[index]
        img = load_image(rec.file)
        if img.shape[:2] != tuple(rec.img_hw):
            raise ImageError(f"{rec.file}: size {img.shape[:2]} differs from the scanned "
                             f"{tuple(rec.img_hw)} (file changed after the scan?)")
        return img

    def _load_train(self, index: int, rng: np.random.Generator) -> tuple[int, np.ndarray]:
        """Load ``index``; if it fails, warn and use another random index (never crash a worker)."""
        for _ in range(_MAX_REPLACEMENTS):
            try:
                return index, self._load(index)
            except ImageError as e:
                new = int(rng.integers(len(self)))
                logger.warning(f"{e}; train index {index} replaced by index {new}")
                index = new
        raise RuntimeError(f"{_MAX_REPLACEMENTS} consecutive training images failed to decode "
                           f"(last: {self.records[index].file}); re-run the scan")

    def _targets(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes [n+m, 4] xyxy original pixels and labels [n+m] (ignore regions = -1)."""
        rec = self.records[index]
        boxes = np.concatenate([rec.boxes.reshape(-1, 4), rec.ignore.reshape(-1, 4)]).astype(np.float32)
        labels = np.concatenate([rec.labels.astype(np.int64), np.full(len(rec.ignore), -1, np.int64)])
        return boxes, labels

    # -- items --------------------------------------------------------------------------
    def _eval_item(self, index: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        try:
            img = self._load(index)
        except ImageError as e:
            raise ImageError(f"{e} (dataset index {index})") from e
        out, scale, pad = letterbox(img, self.img_size)
        boxes, labels = self._targets(index)
        return index, out, boxes_to_letterbox(boxes, scale, pad), labels

    def _train_item(self, index: int, rng: np.random.Generator) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        aug = self.aug_cfg
        if self.augment is None:  # train order and replacement policy, but no augmentation
            index, img = self._load_train(index, rng)
            out, scale, pad = letterbox(img, self.img_size)
            boxes, labels = self._targets(index)
            return index, out, boxes_to_letterbox(boxes, scale, pad), labels
        if rng.random() < aug.mosaic_prob:
            picks = [index] + [int(j) for j in rng.integers(len(self), size=3)]
            loaded = [self._load_train(j, rng) for j in picks]
            samples = [(img, *self._targets(j)) for j, img in loaded]
            index = loaded[0][0]  # meta describes the (possibly replaced) first tile
            img, boxes, labels = mosaic4(samples, self.img_size, rng, aug)
            img, boxes, labels = self.augment(img, boxes, labels, seed=_seed(rng), geometric=False)
            return index, img, boxes, labels
        index, img = self._load_train(index, rng)
        boxes, labels = self._targets(index)
        img, boxes, labels = self.augment(img, boxes, labels, seed=_seed(rng))
        return index, img, boxes, labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(image uint8 [3, S, S], target float32 [n, 5] (cls, x1, y1, x2, y2) input pixels, meta).

        meta: image_id, file, orig_hw (h, w), scale and pad (pad_x, pad_y) of the letterbox; in
        train mode they are the letterbox eval would use, not the random augmentation's.
        """
        rng = self.rng(index)
        if self.train:
            index, img, boxes, labels = self._train_item(index, rng)
        else:
            index, img, boxes, labels = self._eval_item(index)
        rec = self.records[index]
        scale, pad = letterbox_params(rec.img_hw, self.img_size)
        target = np.concatenate([labels.reshape(-1, 1).astype(np.float32),
                                 boxes.reshape(-1, 4).astype(np.float32)], axis=1)
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        meta = {"image_id": rec.image_id, "file": rec.file, "orig_hw": tuple(rec.img_hw),
                "scale": scale, "pad": pad}
        return image, torch.from_numpy(target), meta


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31 - 1))


def collate_fn(batch: list[tuple[torch.Tensor, torch.Tensor, dict]]) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Items -> (images float32 [B, 3, H, W] in 0..1, targets float32 [N, 6] =
    (batch_idx, cls, x1, y1, x2, y2) input pixels, metas list[dict])."""
    images = torch.stack([b[0] for b in batch]).float().div_(255.0)
    targets = [torch.cat([torch.full((len(b[1]), 1), float(i)), b[1]], dim=1) for i, b in enumerate(batch)]
    return images, torch.cat(targets, 0) if targets else torch.zeros((0, 6)), [b[2] for b in batch]


class SeededRandomSampler(Sampler[int]):
    """Shuffles with ``torch.Generator().manual_seed(seed + epoch)``: a resumed run gets the same
    order for the same epoch. Call ``set_epoch`` each epoch, like DistributedSampler."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def _worker_init(worker_id: int, seed: int, rank: int) -> None:
    """Seed numpy/random per worker (and rank)."""
    s = (seed * 1000 + rank * 100 + worker_id) % 2**32
    np.random.seed(s)
    random.seed(s)


def build_dataloader(dataset: Dataset, batch_size: int, train: bool, num_workers: int, rank: int = 0,
                     world_size: int = 1, seed: int = 0, pin_memory: bool = False) -> tuple[DataLoader, Sampler]:
    """DataLoader and its sampler (call ``sampler.set_epoch(e)`` on train samplers each epoch).

    Args:
        batch_size: images per step on this rank.
        world_size: > 1 uses a DistributedSampler (shuffle=train, seed, drop_last=False).
    Train loaders shuffle with a seeded generator and drop the last partial batch when the
    (per-rank) dataset is larger than one batch.
    """
    if world_size > 1:
        sampler: Sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                              shuffle=train, seed=seed, drop_last=False)
    elif train:
        sampler = SeededRandomSampler(len(dataset), seed)
    else:
        sampler = SequentialSampler(dataset)
    drop_last = bool(train and len(sampler) > batch_size)
    if num_workers > 0:
        # Workers are forked: an OpenCV thread pool already running in this process would be
        # inherited half-dead and hang the first resize in a worker. The workers give the
        # parallelism, so OpenCV stays single-threaded in this process (and its children).
        import cv2
        cv2.setNumThreads(0)
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_fn, pin_memory=pin_memory, drop_last=drop_last,
        persistent_workers=num_workers > 0,
        worker_init_fn=functools.partial(_worker_init, seed=seed, rank=rank),
        generator=torch.Generator().manual_seed(seed))
    return loader, sampler
