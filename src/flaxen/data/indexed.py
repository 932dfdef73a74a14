"""Datasets read by row index when a batch needs them (token folders, image files), through grain.

A subclass says how many rows it has and how to read some of them; this class gives the trainer's dataset protocol
with the same batches as `ArrayDataset` holding the same rows: batch k of training holds the rows
`EpochOrder(len, batch_size, seed).rows(k)`, only this process's share of them is read, and threads read ahead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import grain
import numpy as np

from flaxen.data.arrays import EpochOrder, evaluation_rows, local_rows

READ_THREADS = 2


class IndexedDataset:
    """Rows read on demand: subclasses define `__len__` and `read(rows) -> dict of (len(rows), ...) arrays`."""

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> np.ndarray:
        """A whole column, read into memory (for small datasets and tests)."""
        return self.read(np.arange(len(self)))[key]

    def batches(
        self,
        batch_size: int,
        *,
        seed: int,
        start_step: int = 0,
        shard: tuple[int, int] = (0, 1),
        threads: int = READ_THREADS,
    ) -> grain.DatasetIterator:
        """Endless training batches as `ArrayDataset.batches` orders them; the iterator's `get_state()` /
        `set_state()` save and restore its position (the state counts steps from 0, as the trainer does)."""
        steps = _Steps(self, EpochOrder(len(self), batch_size, seed), shard)
        read_ahead = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)
        iterator = iter(steps.to_iter_dataset(read_ahead))
        if start_step:
            iterator.set_state({"next_index": start_step})
        return iterator

    def epoch_batches(self, batch_size: int, *, shard: tuple[int, int] = (0, 1)) -> Iterator[dict[str, np.ndarray]]:
        """One pass in order, as `ArrayDataset.epoch_batches`."""
        for rows, weights in evaluation_rows(len(self), batch_size):
            rows, weights = local_rows(rows, shard), local_rows(weights, shard)
            yield {**self.read(rows), "weights": weights}


class _Steps(grain.MapDataset):
    """Training batch k (this process's rows of it) at index k; endless."""

    def __init__(self, dataset: IndexedDataset, order: EpochOrder, shard: tuple[int, int]):
        super().__init__()
        self.dataset, self.order, self.shard = dataset, order, shard

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, step):
        return self.dataset.read(local_rows(self.order.rows(step), self.shard))
