"""``data.data_fraction``: a stratified subset of a split for quick experiments.

Each image's stratum is its main class: the label with the most boxes (ties: the lowest class
index); images without boxes form their own stratum. From every stratum ``round(fraction * n)``
images (at least one) are drawn with a seeded generator, and the kept records stay in their
original order, so class proportions survive and the subset is reproducible.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from datasets.records import Record, RecordTable


def main_class(rec: Record) -> int:
    """The most frequent label of ``rec`` (lowest on ties), or -1 for a background image."""
    if len(rec.labels) == 0:
        return -1
    counts = np.bincount(rec.labels)
    return int(np.argmax(counts))


def main_classes(table: RecordTable) -> np.ndarray:
    """[n] ``main_class`` of every image of ``table``, without a Python loop over images."""
    image = np.repeat(np.arange(len(table), dtype=np.int64), table.num_boxes())
    pairs, counts = np.unique(np.stack([image, table.labels]), axis=1, return_counts=True)
    # per image: the highest count first, then the lowest label (pairs are sorted by label)
    order = np.lexsort((pairs[1], -counts, pairs[0]))
    img, first = np.unique(pairs[0, order], return_index=True)
    out = np.full(len(table), -1, np.int64)
    out[img] = pairs[1, order][first]
    return out


def stratified_subset(records: RecordTable | Iterable[Record], fraction: float, seed: int = 0) -> RecordTable:
    """About ``fraction`` of ``records``, the same fraction of every main class."""
    table = RecordTable.coerce(records)
    if fraction >= 1.0:
        return table
    strata = main_classes(table)
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for cls in np.unique(strata):
        members = np.flatnonzero(strata == cls)
        k = max(1, round(fraction * len(members)))
        keep.append(rng.choice(members, size=k, replace=False))
    return table.subset(np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64))
