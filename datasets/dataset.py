"""DetectionDataset, collate and DataLoader construction (one data contract for every split).

Item: ``(image uint8 [3, H, W] (a view of HWC pixels), target float32 [n, 5] = (cls, x1, y1, x2, y2) in input-image
pixels with ignore regions as cls = -1, meta)``. Batch: ``(images uint8 [B, 3, H, W] (``to_input`` makes the float 0..1 model input),
targets float32 [N, 6] = (batch_idx, cls, x1, y1, x2, y2), metas)``.

Images come from the image cache when there is one (``datasets.image_cache``), else from the
configured loader (``datasets.loaders``); both give the same pixels.

Reproducibility: sample i of epoch e draws all randomness from
``np.random.default_rng([seed, e, i])``. Its mosaic, MixUp and CutMix partners come from the pool
the training sampler attaches to it (``datasets.samplers.PoolSampler``: the images the same worker
loaded last, kept decoded in a buffer, ``data.mosaic_buffer``), so a sample depends on (seed, epoch,
rank, position, batch size, worker count); without a pool (``data.mosaic_buffer=0``, or
``dataset[i]`` called directly) partners are drawn from the whole split and a sample depends on
(seed, epoch, index) only. The epoch lives in shared memory so ``set_epoch`` reaches
persistent workers; call it before ``iter(loader)``. The same shared epoch switches the
multi-image augmentations off for the last ``aug.close_mosaic_epochs`` epochs, in running
workers and after a resume alike (the trainer calls ``set_epoch`` with the resumed epoch).
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from loguru import logger
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler, get_worker_info

from datasets.augment import TrainAugment
from datasets.image_cache import ImageCache
from datasets.image_io import ImageError
from datasets.limits import warn_small_shm, workers_within_file_limit
from datasets.loaders import ImageLoader, PilLoader, load_resized
from datasets.records import Record, RecordTable
from datasets.samplers import PoolSampler, RectBatchSampler, SeededRandomSampler, ShardSampler, rect_batches
from datasets.transforms import (
    boxes_to_letterbox,
    letterbox,
    letterbox_params,
    resize_long_side,
)
from datasets.workers import DetectionLoader, _worker_init
from utils.memory import trim_heap

_MAX_REPLACEMENTS = 10  # train: how many other images to try when one fails to decode
_Item = tuple[int, np.ndarray, np.ndarray, np.ndarray]  # (index used, image HWC, boxes [n, 4], labels [n])


class DetectionDataset(Dataset):
    """Records -> model inputs. ``train=True`` augments (``datasets.augment``), else letterbox.

    Args:
        records: a RecordTable (a list of Records is converted: workers must not hold one Python
            object per image, see ``datasets.records``).
        loader: image loader (default PIL); ``image_cache``: cached pixels of the same records.
        epochs: total training epochs, for ``aug.close_mosaic_epochs`` (0 = never close).
    """

    def __init__(self, records: RecordTable | list[Record], class_names: list[str], img_size: int,
                 aug_cfg: Any = None, train: bool = False, seed: int = 0, *,
                 loader: ImageLoader | None = None, image_cache: ImageCache | None = None,
                 epochs: int = 0) -> None:
        self.records = RecordTable.coerce(records)
        self.split_size = len(self.records)  # images in the whole split (build_dataset: before any subset)
        self.class_names = list(class_names)
        self.img_size = img_size
        self.aug_cfg = aug_cfg
        self.train = train
        self.seed = seed
        self.loader = loader if loader is not None else PilLoader()
        self.image_cache = image_cache
        self.epochs = epochs
        self.augment = TrainAugment(aug_cfg, img_size) if train and aug_cfg is not None else None
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.pool_size = 0  # PoolSampler's size, set by build_dataloader (before the workers fork)
        self._buffer: dict[int, tuple[int, np.ndarray]] = {}  # sampler index -> (index used, resized image)
        self.buffer_stats = {"hits": 0, "decodes": 0}  # of resized training loads, in this process
        self._closed_announced = False
        self.canvas_hw: np.ndarray | None = None  # [N, 2] (h, w) letterbox canvas per index; None = square

    def plan_rect(self, batch_size: int, stride: int, pad: float = 0.0) -> list[np.ndarray]:
        """Rectangular evaluation: group the images into batches of similar aspect ratio
        (``datasets.samplers.rect_batches``); from now on each item is letterboxed to its batch's
        canvas. Returns the batches ([b] dataset indices each), for a RectBatchSampler."""
        if self.train:
            raise ValueError("rectangular batches are for evaluation only (the training batches are augmented squares)")
        batches, canvas = rect_batches(self.records.img_hw, batch_size, self.img_size, stride, pad)
        self.canvas_hw = np.zeros((len(self), 2), np.int64)
        for b, hw in zip(batches, canvas):
            self.canvas_hw[b] = hw
        return batches

    def canvas(self, index: int) -> tuple[int, int] | None:
        """(h, w) of the letterbox canvas of ``index`` (None = the img_size square)."""
        return None if self.canvas_hw is None else (int(self.canvas_hw[index, 0]), int(self.canvas_hw[index, 1]))

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (visible to already running workers)."""
        self._epoch[0] = int(epoch)
        if self.augment is not None and not self.multi_image() and not self._closed_announced:
            logger.info(f"epoch {epoch + 1}: mosaic, MixUp and CutMix are off from here on "
                        f"(aug.close_mosaic_epochs={self.aug_cfg.close_mosaic_epochs} of {self.epochs})")
            self._closed_announced = True

    def multi_image(self) -> bool:
        """False during the last ``aug.close_mosaic_epochs`` epochs of the current epoch count."""
        close = self.aug_cfg.close_mosaic_epochs if self.aug_cfg is not None else 0
        return not (close > 0 and self.epochs > 0 and int(self._epoch[0]) >= self.epochs - close)

    def rng(self, index: int) -> np.random.Generator:
        """The generator of sample ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, int(self._epoch[0]), index])

    # -- loading ------------------------------------------------------------------------
    def _image(self, index: int) -> np.ndarray:
        """[h, w, 3] uint8 of record ``index``: cached (maybe already resized) or decoded."""
        rec = self.records[index]
        img = self.image_cache.get(index) if self.image_cache is not None else None
        if img is None:
            img = self.loader.load(rec.file)
            if img.shape[:2] != tuple(rec.img_hw):
                raise ImageError(f"{rec.file}: size {img.shape[:2]} differs from the scanned "
                                 f"{tuple(rec.img_hw)} (file changed after the scan?)")
        return img

    def _load_train(self, index: int, rng: np.random.Generator, size: int = 0) -> tuple[int, np.ndarray]:
        """Load ``index`` (resized to long side ``size`` when > 0); if it fails, warn and use another
        random index (never crash a worker)."""
        for _ in range(_MAX_REPLACEMENTS):
            try:
                return index, self._image(index) if not size else self._resized(index, size)
            except ImageError as e:
                new = int(rng.integers(len(self)))
                logger.warning(f"{e}; train index {index} replaced by index {new}")
                index = new
        raise RuntimeError(f"{_MAX_REPLACEMENTS} consecutive training images failed to decode "
                           f"(last: {self.records[index].file}); re-run the scan")

    def _resized(self, index: int, size: int) -> np.ndarray:
        """[h, w, 3] uint8 of record ``index`` with long side ``size``: from the cache or decoded."""
        rec = self.records[index]
        img = self.image_cache.get(index) if self.image_cache is not None else None
        if img is not None:
            return resize_long_side(img, size)
        return load_resized(self.loader, rec.file, tuple(rec.img_hw), size)

    def _load_resized(self, index: int, rng: np.random.Generator, keep: bool = False) -> _Item:
        """(index used, image with long side img_size, boxes and labels in its pixels); ``keep``: the
        image is kept in the mosaic buffer (a pool member: a primary, or a partner drawn from a pool)."""
        hit = self._buffer.get(index)
        if hit is not None:
            self.buffer_stats["hits"] += 1
            index, img = hit
        else:
            self.buffer_stats["decodes"] += 1
            used, img = self._load_train(index, rng, self.img_size)
            if keep:
                self._buffer[index] = (used, img)
            index = used
        boxes, labels = self._targets(index)
        (h0, w0), (h, w) = self.records[index].img_hw, img.shape[:2]
        scale = np.array([w / w0, h / h0, w / w0, h / h0], np.float32)
        return index, img, boxes * scale, labels

    def _keep_only(self, pool: tuple[int, ...], index: int) -> None:
        """After a sample: drop buffered images that no later pool of this lane can hold (a pool is
        the lane's last ``len(pool)`` primaries, so the next one is this one's tail plus ``index``)."""
        live = set(pool[max(0, len(pool) - self.pool_size + 1):]) | {index}
        for k in [k for k in self._buffer if k not in live]:
            del self._buffer[k]

    def _targets(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes [n+m, 4] xyxy original pixels and labels [n+m] (ignore regions = -1)."""
        rec = self.records[index]
        boxes = np.concatenate([rec.boxes.reshape(-1, 4), rec.ignore.reshape(-1, 4)]).astype(np.float32)
        labels = np.concatenate([rec.labels.astype(np.int64), np.full(len(rec.ignore), -1, np.int64)])
        return boxes, labels

    # -- items --------------------------------------------------------------------------
    def _letterboxed(self, index: int, img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Letterbox ``img`` (original or cached size) with the targets of record ``index``."""
        out, _, _ = letterbox(img, self.img_size, self.canvas(index))
        scale, pad = letterbox_params(self.records[index].img_hw, self.img_size, self.canvas(index))
        boxes, labels = self._targets(index)
        return out, boxes_to_letterbox(boxes, scale, pad), labels

    def _eval_item(self, index: int) -> _Item:
        try:
            img = self._image(index)
        except ImageError as e:
            raise ImageError(f"{e} (dataset index {index})") from e
        return (index, *self._letterboxed(index, img))

    def _train_item(self, index: int, rng: np.random.Generator, pool: tuple[int, ...] | None) -> _Item:
        if self.augment is None:  # train order and replacement policy, but no augmentation
            index, img = self._load_train(index, rng)
            return (index, *self._letterboxed(index, img))
        if pool is None:
            return self.augment(index, len(self), self._load_resized, rng, self.multi_image())
        primary = index
        item = self.augment(index, len(self), functools.partial(self._load_pooled, primary, set(pool)), rng,
                            self.multi_image(), pool)
        self._keep_only(pool, primary)
        return item

    def _load_pooled(self, primary: int, pool: set[int], index: int, rng: np.random.Generator) -> _Item:
        return self._load_resized(index, rng, keep=index == primary or index in pool)

    def __getitem__(self, key: int | tuple[int, tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(image uint8 [3, S, S] (with ``plan_rect``: [3, h, w] of the batch's canvas), target float32
        [n, 5] (cls, x1, y1, x2, y2) input pixels, meta).

        ``key``: a dataset index, or (index, pool) from a ``PoolSampler`` (training): the sample's
        mosaic, MixUp and CutMix partners are then drawn from the pool.

        meta: image_id, file, orig_hw (h, w), scale and pad (pad_x, pad_y) of the letterbox; in
        train mode they are the letterbox eval would use, not the random augmentation's.
        """
        index, pool = key if isinstance(key, tuple) else (key, None)
        rng = self.rng(index)
        if self.train:
            index, img, boxes, labels = self._train_item(index, rng, pool)
        else:
            index, img, boxes, labels = self._eval_item(index)
        rec = self.records[index]
        scale, pad = letterbox_params(rec.img_hw, self.img_size, self.canvas(index))
        target = np.concatenate([labels.reshape(-1, 1).astype(np.float32),
                                 boxes.reshape(-1, 4).astype(np.float32)], axis=1)
        image = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)  # [3, H, W] view of the HWC pixels
        meta = {"image_id": rec.image_id, "file": rec.file, "orig_hw": tuple(rec.img_hw),
                "scale": scale, "pad": pad}
        return image, torch.from_numpy(target), meta


def collate_fn(batch: list[tuple[torch.Tensor, torch.Tensor, dict]]
               ) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Items -> (images uint8 [B, 3, H, W], targets float32 [N, 6] =
    (batch_idx, cls, x1, y1, x2, y2) input pixels, metas list[dict]).

    The images are in channels_last memory (NHWC bytes seen as [B, 3, H, W]): the pixels leave the
    augmentation as HWC and the channels_last model reads them that way, so no process transposes
    them (``to_input`` lays them out for a model that wants contiguous NCHW, still as uint8).

    Images stay uint8 until ``to_input`` on the consumer's device: a quarter of the bytes through
    the workers' shared memory, pinned memory and the host-to-GPU copy.

    In a DataLoader worker, the heap freed by the batch's samples goes back to the OS: glibc keeps
    the megabyte image buffers of decoding and augmentation in its heap once freed, so a worker
    would otherwise sit on hundreds of MB of its own high-water mark (measured in
    benchmarks/scale.py; one trim per batch costs no measurable throughput).
    """
    images = torch.stack([b[0].permute(1, 2, 0) for b in batch]).permute(0, 3, 1, 2)
    targets = [torch.cat([torch.full((len(b[1]), 1), float(i)), b[1]], dim=1) for i, b in enumerate(batch)]
    out = images, torch.cat(targets, 0) if targets else torch.zeros((0, 6)), [b[2] for b in batch]
    if get_worker_info() is not None:
        trim_heap()
    return out


def to_input(images: torch.Tensor, device: torch.device | str,
             memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """A collated uint8 batch [B, 3, H, W] -> the model input: float32 in 0..1 on ``device``.

    Float input passes through (moved and laid out only), so callers may also feed tensors that
    are already scaled.
    """
    images = images.to(device, non_blocking=True)
    if images.dtype == torch.uint8:  # lay out the uint8 bytes (a quarter of the float ones); float() keeps it
        images = images.contiguous(memory_format=memory_format).float().div_(255.0)
    return images.contiguous(memory_format=memory_format)


def _uses_partners(dataset: Dataset) -> bool:
    """Whether the dataset's augmentation ever loads a second image (mosaic, MixUp, CutMix)."""
    aug = getattr(dataset, "aug_cfg", None)
    return (getattr(dataset, "augment", None) is not None and aug is not None
            and (aug.mosaic_prob > 0 or aug.cutmix_prob > 0))


def _sampler(dataset: Dataset, batch_size: int, train: bool, rank: int, world_size: int, seed: int,
             rect_stride: int, rect_pad: float = 0.0) -> Sampler:
    """The index sampler, or with ``rect_stride`` the batch sampler of rectangular evaluation."""
    if rect_stride > 0:
        if train:
            raise ValueError("rect_stride > 0 (rectangular batches) is for evaluation loaders only")
        return RectBatchSampler(dataset.plan_rect(batch_size, rect_stride, rect_pad), rank, world_size)
    if world_size > 1:
        return ShardSampler(dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed, drop_last=False)
    return SeededRandomSampler(len(dataset), seed) if train else SequentialSampler(dataset)


def build_dataloader(dataset: Dataset, batch_size: int, train: bool, num_workers: int, rank: int = 0,
                     world_size: int = 1, seed: int = 0, pin_memory: bool = False, prefetch_factor: int = 2,
                     persistent_workers: bool = True, timeout_s: float = 0.0,
                     rect_stride: int = 0, rect_pad: float = 0.0, mosaic_buffer: int = 0) -> tuple[DataLoader, Sampler]:
    """DataLoader and its sampler (call ``sampler.set_epoch(e)`` on train samplers each epoch).

    Args:
        batch_size: images per step on this rank.
        world_size: > 1 uses a ShardSampler (DistributedSampler: shuffle=train, seed, drop_last=False).
        num_workers: lowered, with a warning, when the open-file limit cannot hold them.
        prefetch_factor, persistent_workers: as in DataLoader (used only with workers).
        timeout_s: with workers, seconds to wait for a batch before LoaderStallError (0 = forever).
        rect_stride: > 0 (evaluation only): batches of similar aspect ratio, each letterboxed to one
            canvas padded to multiples of this stride (``DetectionDataset.plan_rect``); the sampler
            is then a RectBatchSampler giving each rank whole batches, none repeated.
        rect_pad: with rect_stride, context added to each short side, in strides (``rect_batches``).
        mosaic_buffer: train loaders of an augmenting dataset with mosaic, MixUp or CutMix: each
            worker keeps this many resized images for partners (``PoolSampler``; 0 = none, partners
            from the whole split).
    Train loaders shuffle with a seeded generator and drop the last partial batch when the
    (per-rank) dataset is larger than one batch.
    """
    sampler = _sampler(dataset, batch_size, train, rank, world_size, seed, rect_stride, rect_pad)
    num_workers = workers_within_file_limit(num_workers, prefetch_factor)
    if train and mosaic_buffer > 0 and _uses_partners(dataset):
        sampler = PoolSampler(sampler, batch_size, max(1, num_workers), mosaic_buffer)
        dataset.pool_size = mosaic_buffer
        size = dataset.img_size
        each = mosaic_buffer * 3 * size * size / 2**20
        logger.info(f"mosaic buffer (data.mosaic_buffer): {mosaic_buffer} resized images per "
                    f"{'worker' if num_workers else 'process'}, at most {each:.3g} MB each "
                    f"({each * max(1, num_workers):.3g} MB on this rank)")
    if num_workers > 0:
        # Workers are forked: an OpenCV thread pool already running in this process would be
        # inherited half-dead and hang the first resize in a worker. The workers give the
        # parallelism, so OpenCV stays single-threaded in this process (and its children).
        import cv2
        cv2.setNumThreads(0)
        size = getattr(dataset, "img_size", 0)
        warn_small_shm(4 * 3 * size * size * batch_size, num_workers, prefetch_factor)
    if isinstance(sampler, RectBatchSampler):  # the batches are fixed: DataLoader takes them whole
        batching = {"batch_sampler": sampler}
    else:
        batching = {"batch_size": batch_size, "sampler": sampler,
                    "drop_last": bool(train and len(sampler) > batch_size)}
    loader = DetectionLoader(
        dataset, **batching, num_workers=num_workers, collate_fn=collate_fn, pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        timeout=timeout_s if num_workers > 0 else 0,
        worker_init_fn=functools.partial(_worker_init, seed=seed, rank=rank),
        generator=torch.Generator().manual_seed(seed))
    return loader, sampler
