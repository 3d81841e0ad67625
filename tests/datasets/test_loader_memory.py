"""What keeps DataLoader memory flat: the sampler holds no list of Python ints, and the parent's
objects are frozen (out of the cyclic GC's reach) before workers fork."""
import gc

import numpy as np
import torch

from datasets import DetectionDataset, build_dataloader
from datasets.dataset import SeededRandomSampler
from datasets.records import Record


def test_sampler_yields_the_seeded_permutation_in_chunks():
    sampler = SeededRandomSampler(10_000, seed=3)
    sampler.set_epoch(2)
    expected = torch.randperm(10_000, generator=torch.Generator().manual_seed(5)).tolist()
    assert list(sampler) == expected  # more than one chunk, same order as one list
    sampler.set_start(9_000)
    assert list(sampler) == expected[9_000:] and len(sampler) == 1_000
    sampler.set_epoch(3)
    assert len(list(sampler)) == 10_000 and list(sampler) != expected


def _dataset(tmp_path, n=4):
    from PIL import Image
    records = []
    for i in range(n):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(path)
        records.append(Record(i + 1, str(path), (20, 30), np.array([[2, 2, 12, 10]], np.float32),
                              np.array([i % 2])))
    return DetectionDataset(records, ["a", "b"], 32)


class FreezeProbe(torch.utils.data.Dataset):
    """Reports, from the process that loads the item, how many objects are frozen there."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i):
        return torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(0, 5), {"frozen": gc.get_freeze_count()}


def test_workers_start_with_the_parents_objects_frozen_and_the_parent_unfreezes(tmp_path):
    before = gc.get_freeze_count()
    loader, _ = build_dataloader(FreezeProbe(), batch_size=2, train=False, num_workers=0)
    assert [m["frozen"] for _, _, metas in loader for m in metas] == [before] * 4  # no workers, no freeze
    loader, _ = build_dataloader(FreezeProbe(), batch_size=2, train=False, num_workers=2, persistent_workers=False)
    in_workers = [m["frozen"] for _, _, metas in loader for m in metas]
    assert min(in_workers) > before + 1000  # the parent's objects, frozen when the workers forked
    assert gc.get_freeze_count() == before  # the parent collects its own objects as before
    ds = _dataset(tmp_path)
    plain = [b[0] for b in build_dataloader(ds, batch_size=2, train=False, num_workers=0)[0]]
    with_workers = [b[0] for b in build_dataloader(ds, batch_size=2, train=False, num_workers=2)[0]]
    assert all(torch.equal(a, b) for a, b in zip(plain, with_workers)) and len(plain) == 2
