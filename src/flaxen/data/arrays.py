"""ArrayDataset (a dict of equal-length numpy arrays with reproducible batching) and DataSplits."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """A dict of numpy arrays sharing their first dimension (rows)."""

    arrays: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        if not self.arrays:
            raise ValueError("an ArrayDataset needs at least one array")
        lengths = {key: len(value) for key, value in self.arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays of an ArrayDataset must have equal length, got {lengths}")

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def take(self, rows: np.ndarray) -> ArrayDataset:
        """A new dataset holding the given row indices (or boolean row mask)."""
        return ArrayDataset({key: value[rows] for key, value in self.arrays.items()})

    def batches(
        self,
        batch_size: int,
        *,
        seed: int,
        start_step: int = 0,
        drop_remainder: bool = True,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[dict[str, np.ndarray]]:
        """Endless shuffled batches; batch k depends only on (seed, k), so resuming at `start_step` is exact.

        Epoch e visits rows in the order `np.random.default_rng([seed, e]).permutation(len(self))`.
        With `drop_remainder=False` each epoch ends with one smaller batch. `shard=(index, count)` yields only
        this process's share of each batch (rows `index * batch_size // count` on), so `count` processes together
        see exactly the batches of one.
        """
        order = EpochOrder(len(self), batch_size, seed, drop_remainder)
        for step in itertools.count(start_step):
            rows = local_rows(order.rows(step), shard)
            yield {key: value[rows] for key, value in self.arrays.items()}

    def epoch_batches(self, batch_size: int, *, shard: tuple[int, int] = (0, 1)) -> Iterator[dict[str, np.ndarray]]:
        """One pass in order, every batch exactly `batch_size` rows, plus `weights` float32 (B,): 1 real, 0 pad.

        The last batch is filled up with copies of its first row carrying weight 0, so shapes stay static and
        `batch["weights"].sum()` counts the real rows. `shard` as in `batches`.
        """
        for rows, weights in evaluation_rows(len(self), batch_size):
            rows, weights = local_rows(rows, shard), local_rows(weights, shard)
            yield {**{key: value[rows] for key, value in self.arrays.items()}, "weights": weights}


class EpochOrder:
    """Which rows training batch `step` holds: epoch by epoch, each a seeded permutation of the rows."""

    def __init__(self, num_rows: int, batch_size: int, seed: int, drop_remainder: bool = True):
        if num_rows == 0 or (drop_remainder and num_rows < batch_size):
            raise ValueError(
                f"the dataset has {num_rows} rows, fewer than batch_size={batch_size}; "
                f"use a smaller batch_size or drop_remainder=False"
            )
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.steps_per_epoch = num_rows // batch_size if drop_remainder else math.ceil(num_rows / batch_size)
        # The epoch being read, and the next one that a prefetching reader may already be in.
        self._permutation = functools.lru_cache(maxsize=2)(self._epoch_permutation)

    def rows(self, step: int) -> np.ndarray:
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        start = step_in_epoch * self.batch_size
        return self._permutation(epoch)[start : start + self.batch_size]

    def _epoch_permutation(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
        return order.astype(np.int32) if self.num_rows < 2**31 else order  # half the memory for large datasets


def evaluation_rows(num_rows: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, weights) of one pass in order, the last batch filled up with weight-0 copies of its first row."""
    for start in range(0, num_rows, batch_size):
        rows = np.arange(start, min(start + batch_size, num_rows))
        weights = np.ones(batch_size, dtype=np.float32)
        weights[len(rows) :] = 0.0
        yield np.pad(rows, (0, batch_size - len(rows)), constant_values=start), weights


def local_rows(rows: np.ndarray, shard: tuple[int, int]) -> np.ndarray:
    """Process `index` of `count`'s contiguous share of a batch's rows."""
    index, count = shard
    if count == 1:
        return rows
    if len(rows) % count:
        raise ValueError(f"a batch of {len(rows)} rows does not split over {count} processes; use a multiple")
    share = len(rows) // count
    return rows[index * share : (index + 1) * share]


@dataclasses.dataclass(frozen=True)
class DataSplits:
    """Training and validation datasets and what was learned while building them (label names, mean/std, ...)."""

    train: ArrayDataset
    validation: ArrayDataset | None
    info: dict[str, Any]


def validation_size(num_rows: int, validation_fraction: float) -> int:
    """Rows to hold out: `validation_fraction` of them rounded, at least 1 when the fraction is positive."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if validation_fraction == 0.0:
        return 0
    return max(1, round(num_rows * validation_fraction))


def random_split(
    dataset: ArrayDataset, validation_fraction: float, seed: int
) -> tuple[ArrayDataset, ArrayDataset | None]:
    """(train, validation), validation rows drawn by `np.random.default_rng(seed)`; both keep the original order."""
    num_validation = validation_size(len(dataset), validation_fraction)
    if num_validation == 0:
        return dataset, None
    if num_validation >= len(dataset):
        raise ValueError(
            f"{len(dataset)} rows are too few to hold out {num_validation} for validation and still train; "
            f"add data or lower validation_fraction"
        )
    is_validation = np.zeros(len(dataset), dtype=bool)
    is_validation[np.random.default_rng(seed).permutation(len(dataset))[:num_validation]] = True
    return dataset.take(~is_validation), dataset.take(is_validation)
