"""ArrayDataset (a dict of equal-length numpy arrays with reproducible batching) and DataSplits."""

from __future__ import annotations

import dataclasses
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
        self, batch_size: int, *, seed: int, start_step: int = 0, drop_remainder: bool = True
    ) -> Iterator[dict[str, np.ndarray]]:
        """Endless shuffled batches; batch k depends only on (seed, k), so resuming at `start_step` is exact.

        Epoch e visits rows in the order `np.random.default_rng([seed, e]).permutation(len(self))`.
        With `drop_remainder=False` each epoch ends with one smaller batch.
        """
        num_rows = len(self)
        if num_rows == 0 or (drop_remainder and num_rows < batch_size):
            raise ValueError(
                f"the dataset has {num_rows} rows, fewer than batch_size={batch_size}; "
                f"use a smaller batch_size or drop_remainder=False"
            )
        steps_per_epoch = num_rows // batch_size if drop_remainder else math.ceil(num_rows / batch_size)
        epoch, step_in_epoch = divmod(start_step, steps_per_epoch)
        while True:
            order = np.random.default_rng([seed, epoch]).permutation(num_rows)
            for step in range(step_in_epoch, steps_per_epoch):
                rows = order[step * batch_size : (step + 1) * batch_size]
                yield {key: value[rows] for key, value in self.arrays.items()}
            epoch, step_in_epoch = epoch + 1, 0

    def epoch_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """One pass in order, every batch exactly `batch_size` rows, plus `weights` float32 (B,): 1 real, 0 pad.

        The last batch is filled up with copies of its first row carrying weight 0, so shapes stay static and
        `batch["weights"].sum()` counts the real rows.
        """
        num_rows = len(self)
        for start in range(0, num_rows, batch_size):
            rows = np.arange(start, min(start + batch_size, num_rows))
            weights = np.ones(batch_size, dtype=np.float32)
            weights[len(rows) :] = 0.0
            rows = np.pad(rows, (0, batch_size - len(rows)), constant_values=start)
            yield {**{key: value[rows] for key, value in self.arrays.items()}, "weights": weights}


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
