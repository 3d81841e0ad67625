"""data.loader_timeout_s: a stalled DataLoader worker is an error that names the setting, not a hang."""
import time

import pytest
import torch
from torch.utils.data import Dataset

from datasets.dataset import LoaderStallError, build_dataloader


class Stalling(Dataset):
    """Item 2 takes ``stall_s`` seconds (a hung read on network storage)."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        if i == 2:
            time.sleep(self.stall_s)
        return torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(0, 5), {"image_id": i + 1}


def test_a_stalled_worker_raises_naming_the_setting():
    loader, _ = build_dataloader(Stalling(4.0), 1, train=False, num_workers=1, timeout_s=1.0,
                                 persistent_workers=False)
    seen = []
    with pytest.raises(LoaderStallError, match=r"no batch from the 1 DataLoader workers in 1 s "
                                               r"\(data.loader_timeout_s\): a worker is stalled"):
        for _, _, metas in loader:
            seen.append(metas[0]["image_id"])
    assert seen == [1, 2]  # raised while item 3 was stalled, 1 s into a 4 s stall


def test_slow_but_timely_batches_pass():
    loader, _ = build_dataloader(Stalling(0.2), 1, train=False, num_workers=1, timeout_s=5.0,
                                 persistent_workers=False)
    assert [m[0]["image_id"] for _, _, m in loader] == [1, 2, 3, 4]
    assert len(loader) == 4 and loader.timeout == 5.0
