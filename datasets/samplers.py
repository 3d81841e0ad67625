"""Which dataset indices a rank reads, in which order and batches.

- ``SeededRandomSampler``: one process's training order (a seeded shuffle that can start mid-epoch).
- ``ShardSampler``: a rank's share under DDP (torch's DistributedSampler that can start mid-epoch).
- ``PoolSampler``: wraps either, adding to each index the pool its mosaic partners come from.
- ``rect_batches`` + ``RectBatchSampler``: rectangular evaluation (``eval.rect``): the images sorted
  by aspect ratio into batches, each letterboxed to one canvas padded only up to the next multiple
  of the stride; under DDP each rank takes whole batches.
"""
from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

_SAMPLER_CHUNK = 4096  # indices turned into Python ints at a time
_BUFFER_BUDGET = 192 * 2**20  # data.mosaic_buffer=-1: bytes of resized images a worker may keep
_BUFFER_PER_BATCH = 8  # data.mosaic_buffer=-1: at most this many batches' worth of images


def mosaic_buffer_size(setting: int, batch_size: int, img_size: int) -> int:
    """Images a worker keeps decoded for mosaic partners: ``setting`` (data.mosaic_buffer) when
    >= 0, else (-1, auto) 8 batches' worth, at most what 192 MB holds at img_size x img_size:
    with 8 ranks x 8 workers a node then holds at most 12 GB of them (128 images of 1.2 MB at 640 px)."""
    if setting >= 0:
        return setting
    return max(1, min(_BUFFER_PER_BATCH * batch_size, _BUFFER_BUDGET // (3 * img_size * img_size)))


class SeededRandomSampler(Sampler[int]):
    """Shuffles with ``torch.Generator().manual_seed(seed + epoch)``: a resumed run gets the same
    order for the same epoch. Call ``set_epoch`` each epoch, like DistributedSampler.

    ``set_start(k)`` skips the first k indices of the current epoch's order (a run resumed
    mid-epoch continues without loading the samples it already trained on); ``set_epoch``
    clears it.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = epoch, 0

    def set_start(self, start: int) -> None:
        if not 0 <= start <= self.n:
            raise ValueError(f"sampler start {start} is outside 0..{self.n}")
        self.start = start

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g)[self.start:]
        # a COCO epoch is 118k indices: as one list of Python ints they would hold 4 MB of objects
        # in the training process all epoch; chunks of the tensor cost its 8 bytes per index
        return itertools.chain.from_iterable(chunk.tolist() for chunk in order.split(_SAMPLER_CHUNK))

    def __len__(self) -> int:
        return self.n - self.start


class ShardSampler(DistributedSampler):
    """torch's DistributedSampler (this rank's share of a seeded shuffle, padded to equal shares)
    that can start mid-epoch: ``set_start(k)`` skips the first k indices of this rank's share, so a
    run resumed inside an epoch does not load the samples it already trained on; ``set_epoch``
    clears it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start = 0

    def set_start(self, start: int) -> None:
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"sampler start {start} is outside 0..{self.num_samples}")
        self.start = start

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


def rect_batches(img_hw: np.ndarray, batch_size: int, img_size: int, stride: int,
                 pad: float = 0.0) -> tuple[list[np.ndarray], np.ndarray]:
    """Batches of similar aspect ratio and the one canvas each batch is letterboxed to.

    Args:
        img_hw: [N, 2] original (h, w) of each dataset index, pixels.
        batch_size: images per batch (the last batch may be smaller).
        img_size: long side after the letterbox resize, pixels (a multiple of ``stride``).
        stride: the model's largest stride, pixels.
        pad: context added to each short side before rounding, in strides (``eval.rect_pad``), so
            objects at the image's edge are not at the border of the feature maps; a side never
            grows past the square's (max(img_size, its own rounded size)).
    Returns:
        (batches, canvas_hw): batches, a list of [b] int64 dataset-index arrays, consecutive in
        the order of h / w (ties in index order); canvas_hw, [num_batches, 2] int64 (h, w) pixels:
        the largest resized side of the batch's images along each axis plus ``pad`` strides, rounded
        up to a multiple of ``stride``. Images that are all square get img_size x img_size, the
        square letterbox.
    """
    if pad < 0:
        raise ValueError(f"rect pad {pad} must be >= 0 strides")
    hw = np.asarray(img_hw, np.int64).reshape(-1, 2)
    order = np.argsort(hw[:, 0] / hw[:, 1], kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    # resized_hw of every image at once: the same float64 product and half-to-even rounding as the
    # letterbox itself, so every image fits its canvas
    scale = img_size / hw.max(1, initial=1).astype(np.float64)
    resized = np.maximum(np.rint(hw * scale[:, None]), 1).astype(np.int64)
    tight = [-(-resized[b].max(0) // stride) * stride for b in batches]  # next multiple of the stride
    padded = [np.ceil(resized[b].max(0) / stride + pad).astype(np.int64) * stride for b in batches]
    canvas = [np.minimum(p, np.maximum(t, img_size)) for p, t in zip(padded, tight)]
    return batches, np.array(canvas, np.int64).reshape(-1, 2)


class RectBatchSampler(Sampler[list[int]]):
    """Yields this rank's whole batches of ``rect_batches``: batches rank, rank + W, rank + 2W ...

    Every image is in exactly one batch of one rank (no padding with repeated images: the
    evaluation gathers the ranks' predictions whatever their count), so a rank may get one batch
    fewer than another, or none.
    """

    def __init__(self, batches: Sequence[np.ndarray], rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.batches = [np.asarray(b, np.int64) for b in batches[rank::world_size]]

    def __iter__(self) -> Iterator[list[int]]:
        return (b.tolist() for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class PoolSampler(Sampler[tuple[int, tuple[int, ...]]]):
    """A training sampler whose items carry the pool of mosaic, MixUp and CutMix partners.

    Yields ``(index, pool)`` in the order of ``base`` (a SeededRandomSampler or ShardSampler):
    ``pool`` holds the previous ``size`` indices of the same lane, where the lane of position ``p``
    of this rank's epoch order is ``(p // batch_size) % lanes``. The DataLoader hands batch ``j`` to
    worker ``j % num_workers`` (lanes = the worker count, 1 without workers), so a worker keeps its
    lane all epoch, also after a resume (batch ``k`` then goes to worker 0, which keeps lane
    ``k % lanes``), and the pool is the images it loaded last: a buffer of them
    (``DetectionDataset``) makes a 4-tile mosaic decode one image instead of four.

    The pool is a function of (seed, epoch, rank, batch size, lanes, size) and the position, never of
    what a worker happens to hold: ``set_start(k)`` (a mid-epoch resume) yields the same items as the
    uninterrupted epoch from position ``k`` on.
    """

    def __init__(self, base: Sampler, batch_size: int, lanes: int, size: int) -> None:
        if batch_size < 1 or lanes < 1 or size < 1:
            raise ValueError(f"PoolSampler needs batch_size, lanes and size >= 1, got {batch_size}, {lanes}, {size}")
        self.base, self.batch_size, self.lanes, self.size = base, batch_size, lanes, size
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)  # also clears the base's start, which stays 0: the pools need the whole order
        self.start = 0

    def set_start(self, start: int) -> None:
        if not 0 <= start <= len(self.base):
            raise ValueError(f"sampler start {start} is outside 0..{len(self.base)}")
        self.start = start

    @property
    def epoch(self) -> int:
        return self.base.epoch

    def __iter__(self) -> Iterator[tuple[int, tuple[int, ...]]]:
        pools = [collections.deque(maxlen=self.size) for _ in range(self.lanes)]
        for p, index in enumerate(self.base):
            pool = pools[(p // self.batch_size) % self.lanes]
            if p >= self.start:
                yield index, tuple(pool)
            pool.append(index)

    def __len__(self) -> int:
        return len(self.base) - self.start
