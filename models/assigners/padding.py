"""The assigners' batch layout, built and reduced without host-device syncs.

GTs are padded per image to a [B, G] layout (G = the caller's host-side bound ``max_gt``, or the
batch's largest GT count read from the device when there is none); padding slots are invalid. A
method pairs each GT with candidate priors: either K listed ones, ``idx`` [B, G, K] prior indices, or
every prior (``idx`` None, pairs [B, G, P]). Per-prior decisions over the pairs naming a prior are
scatter reductions into [B, P + 1], whose last column collects the pairs not taken: no step needs a
count read on the host, and memory grows with B x G x K.
"""
from __future__ import annotations

import torch
from torch import Tensor

# (GT, candidate) pairs an assigner handles at once: a chunk of images of the batch at a time. On the CPU
# a chunk's [b, G, K] tensors stay in the caches and in the allocator's reused blocks (several times
# faster than one pass over the batch); elsewhere the bound only caps the memory (about 40 bytes per
# pair at the peak of the dense methods) and leaves a batch in one piece at the usual sizes.
CHUNK_PAIRS = {"cpu": 2**18}
DEFAULT_CHUNK_PAIRS = 2**25


def image_chunks(batch_size: int, pairs_per_image: int, device: torch.device) -> list[tuple[int, int]]:
    """[lo, hi) spans of consecutive images holding at most the device's pair budget (one image at least)."""
    per_chunk = max(1, CHUNK_PAIRS.get(device.type, DEFAULT_CHUNK_PAIRS) // max(pairs_per_image, 1))
    return [(lo, min(lo + per_chunk, batch_size)) for lo in range(0, batch_size, per_chunk)]


def pad_per_image(targets: Tensor, gt_rows: Tensor | None, batch_size: int, max_gt: int | None = None
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The GT rows of ``targets`` [N, 6] in per-image slots: (rows [B, G] long, the ``targets`` row,
    -1 on padding; boxes [B, G, 4] float, zeros on padding; labels [B, G] long, 0 on padding; valid
    [B, G] bool). GTs keep their order in ``targets`` within each image.

    gt_rows: the row indices to place, or None for every row of class >= 0 (ignore rows are no GTs).
    max_gt: None: G = the largest GT count of an image (read from the device), and a batch index out
    of [0, batch_size) is a ValueError. An int: G = max_gt, a bound on the rows of any one image known
    on the host, so nothing waits for the device; an index out of range or an image with more GTs
    fails a device-side assertion (on the CPU at once, on a GPU at the next sync).
    """
    if gt_rows is None:
        take = targets[:, 1] >= 0
    else:
        take = torch.zeros(targets.shape[0], dtype=torch.bool, device=targets.device).index_fill_(0, gt_rows, True)
    return pad_rows(targets, take, batch_size, max_gt)


def pad_rows(targets: Tensor, take: Tensor, batch_size: int, max_gt: int | None
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``pad_per_image`` of the rows where ``take`` [N] bool is set."""
    n, device = targets.shape[0], targets.device
    img = targets[:, 0].long()
    in_range = (img >= 0) & (img < batch_size)
    of_image = (img[:, None] == torch.arange(batch_size, device=device)) & take[:, None]  # [N, B]
    rank = of_image.cumsum(0).gather(1, img.clamp(0, batch_size - 1)[:, None]).squeeze(1) - 1  # within its image
    stray = take & ~in_range
    message = f"target batch index out of range [0, {batch_size - 1}]"
    if max_gt is None:
        if bool(stray.any()):
            raise ValueError(message)
        g = int(of_image.sum(0).max()) if n else 0
    else:
        torch._assert_async(~stray.any(), message)
        torch._assert_async(of_image.sum(0).max() <= max_gt, f"an image has more than max_gt={max_gt} GTs")
        g = max_gt
    placed = take & in_range & (rank < g)
    slot = torch.where(placed, img * g + rank, batch_size * g)  # the extra last slot takes the rest
    size = batch_size * g + 1
    rows = torch.full((size,), -1, dtype=torch.long, device=device).index_put_(
        (slot,), torch.arange(n, device=device))
    boxes = torch.zeros(size, 4, device=device).index_put_((slot,), targets[:, 2:6].float())
    labels = torch.zeros(size, dtype=torch.long, device=device).index_put_((slot,), targets[:, 1].long())
    rows = rows[:-1].view(batch_size, g)
    return rows, boxes[:-1].view(batch_size, g, 4), labels[:-1].view(batch_size, g), rows >= 0


def check_classes(targets: Tensor, num_classes: int, max_gt: int | None) -> None:
    """Every target class must be below ``num_classes``: a ValueError naming it (``max_gt`` None), else
    a device-side assertion that does not stop the host."""
    labels = targets[:, 1]
    if max_gt is None:
        if labels.numel() and int(labels.max()) >= num_classes:
            raise ValueError(f"target class {int(labels.max())} is out of range for {num_classes} classes")
    else:
        torch._assert_async(~(labels >= num_classes).any(), f"a target class is out of range for {num_classes} classes")


def reduce_per_prior(values: Tensor, idx: Tensor | None, take: Tensor, num_p: int, reduce: str,
                     fill: float | int) -> Tensor:
    """Per prior, the "amax" or "amin" of ``values`` over the taken pairs naming it: [B, P], ``fill``
    where none. values, take: [B, G, K] with idx [B, G, K] prior indices, or [B, G, P] with idx None."""
    values = values.expand_as(take)
    if idx is None:
        masked = values.masked_fill(~take, fill)
        return masked.amax(1) if reduce == "amax" else masked.amin(1)
    b = take.shape[0]
    dest = torch.where(take, idx, num_p).reshape(b, -1)
    out = torch.full((b, num_p + 1), fill, dtype=values.dtype, device=values.device)
    return out.scatter_reduce_(1, dest, values.reshape(b, -1), reduce)[:, :num_p]


def at_pairs(per_prior: Tensor, idx: Tensor | None) -> Tensor:
    """per_prior [B, P] -> its value at each pair: [B, G, K] (idx [B, G, K]) or [B, 1, P] (idx None)."""
    if idx is None:
        return per_prior[:, None]
    return per_prior.gather(1, idx.reshape(idx.shape[0], -1)).view(idx.shape)


def winner_per_prior(key: Tensor, idx: Tensor | None, take: Tensor, num_p: int, last: bool) -> Tensor:
    """[B, P] long: per prior, the GT slot of the taken pair naming it with the largest ``key``, ties
    to the highest GT slot (``last``) or the lowest; -1 where no taken pair names the prior.
    key, take: [B, G, K] (or broadcastable to it) with idx [B, G, K]; [B, G, P] with idx None."""
    num_g = take.shape[1]
    best = reduce_per_prior(key, idx, take, num_p, "amax", float("-inf"))
    top = take & (key == at_pairs(best, idx))
    g = torch.arange(num_g, dtype=torch.int32, device=take.device).view(1, -1, 1)
    if last:
        return reduce_per_prior(g, idx, top, num_p, "amax", -1).long()
    first = reduce_per_prior(g, idx, top, num_p, "amin", num_g).long()
    return torch.where(first < num_g, first, -1)
