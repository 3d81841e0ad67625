"""``data.data_fraction``: a stratified subset of a split for quick experiments.

Each image's stratum is its main class: the label with the most boxes (ties: the lowest class
index); images without boxes form their own stratum. From every stratum ``round(fraction * n)``
images (at least one) are drawn with a seeded generator, and the kept records stay in their
original order, so class proportions survive and the subset is reproducible.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from datasets.records import Record


def main_class(rec: Record) -> int:
    """The most frequent label of ``rec`` (lowest on ties), or -1 for a background image."""
    if len(rec.labels) == 0:
        return -1
    counts = np.bincount(rec.labels)
    return int(np.argmax(counts))


def stratified_subset(records: list[Record], fraction: float, seed: int = 0) -> list[Record]:
    """About ``fraction`` of ``records``, the same fraction of every main class."""
    if fraction >= 1.0:
        return list(records)
    strata: dict[int, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        strata[main_class(rec)].append(i)
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for cls in sorted(strata):
        members = strata[cls]
        k = max(1, round(fraction * len(members)))
        keep.extend(int(i) for i in rng.choice(members, size=k, replace=False))
    return [records[i] for i in sorted(keep)]
