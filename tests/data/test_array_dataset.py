import itertools

import numpy as np
import pytest

from flaxen.data import ArrayDataset
from flaxen.data.arrays import random_split


def numbered(num_rows):
    """Rows that carry their own index, so batches can be traced back to rows."""
    return ArrayDataset({"row": np.arange(num_rows), "square": np.arange(num_rows) ** 2})


def test_resumed_batches_equal_the_uninterrupted_run():
    dataset = numbered(10)
    uninterrupted = list(itertools.islice(dataset.batches(3, seed=7), 12))
    resumed = list(itertools.islice(dataset.batches(3, seed=7, start_step=5), 7))
    for expected, actual in zip(uninterrupted[5:], resumed, strict=True):
        np.testing.assert_array_equal(expected["row"], actual["row"])


def test_every_epoch_visits_every_row_once_in_a_seeded_order():
    batches = list(itertools.islice(numbered(10).batches(5, seed=3), 8))  # four epochs of two batches
    epochs = [np.concatenate([b["row"] for b in batches[2 * e : 2 * e + 2]]) for e in range(4)]
    for rows in epochs:
        assert sorted(rows.tolist()) == list(range(10))
    assert len({tuple(rows.tolist()) for rows in epochs}) == 4  # reshuffled every epoch
    again = list(itertools.islice(numbered(10).batches(5, seed=3), 8))  # a pure function of the seed
    for first, second in zip(batches, again, strict=True):
        np.testing.assert_array_equal(first["row"], second["row"])


def test_batches_keep_rows_aligned_across_keys():
    batch = next(numbered(10).batches(4, seed=0))
    np.testing.assert_array_equal(batch["square"], batch["row"] ** 2)


def test_drop_remainder_visits_each_row_at_most_once_per_epoch():
    batches = list(itertools.islice(numbered(10).batches(3, seed=0), 3))  # one epoch = 3 full batches
    rows = np.concatenate([b["row"] for b in batches])
    assert len(rows) == 9 and len(set(rows.tolist())) == 9
    assert all(len(b["row"]) == 3 for b in batches)


def test_keeping_the_remainder_ends_each_epoch_with_a_short_batch():
    batches = list(itertools.islice(numbered(10).batches(3, seed=0, drop_remainder=False), 8))
    assert [len(b["row"]) for b in batches] == [3, 3, 3, 1, 3, 3, 3, 1]
    assert sorted(np.concatenate([b["row"] for b in batches[:4]]).tolist()) == list(range(10))


def test_different_seeds_and_epochs_give_different_orders():
    dataset = numbered(50)
    first, second = itertools.islice(dataset.batches(50, seed=0), 2)
    other_seed = next(dataset.batches(50, seed=1))
    assert not np.array_equal(first["row"], second["row"])
    assert not np.array_equal(first["row"], other_seed["row"])


def test_batch_larger_than_the_dataset_is_rejected():
    with pytest.raises(ValueError, match="has 4 rows, fewer than batch_size=8"):
        next(numbered(4).batches(8, seed=0))


def test_epoch_batches_cover_rows_in_order_and_weight_out_the_filler():
    batches = list(numbered(7).epoch_batches(3))
    assert [b["row"].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6, 6, 6]]
    assert [b["weights"].tolist() for b in batches] == [[1, 1, 1], [1, 1, 1], [1, 0, 0]]
    assert sum(b["weights"].sum() for b in batches) == 7
    assert batches[-1]["weights"].dtype == np.float32


def test_arrays_of_unequal_length_are_rejected():
    with pytest.raises(ValueError, match="equal length"):
        ArrayDataset({"a": np.zeros(3), "b": np.zeros(4)})


def test_random_split_is_disjoint_complete_and_seeded():
    train, validation = random_split(numbered(100), 0.2, seed=5)
    assert len(validation) == 20 and len(train) == 80
    assert sorted(train["row"].tolist() + validation["row"].tolist()) == list(range(100))
    _, same = random_split(numbered(100), 0.2, seed=5)
    _, other = random_split(numbered(100), 0.2, seed=6)
    np.testing.assert_array_equal(validation["row"], same["row"])
    assert not np.array_equal(validation["row"], other["row"])


def test_random_split_without_validation():
    train, validation = random_split(numbered(10), 0.0, seed=0)
    assert validation is None and len(train) == 10
    with pytest.raises(ValueError, match=r"validation_fraction must be in \[0, 1\)"):
        random_split(numbered(10), 1.0, seed=0)
