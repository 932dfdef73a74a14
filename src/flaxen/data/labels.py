"""Turning raw labels (strings or integers) into class ids, and checking them against a model's num_labels."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from flaxen.data.arrays import DataSplits

Label = str | int


def label_values(
    raw: Sequence[Any], labels: Sequence[Label] | None = None, label_filter: Callable[[Label], bool] | None = None
) -> list[Label]:
    """The ordered label set: `labels` if given, else sorted strings, else the integers 0..max.

    Raises ValueError for missing labels, a mix of strings and integers, negative integers, or a label in
    `labels` that never occurs in the data.
    """
    present = set(clean_labels(raw))
    if labels is not None:
        absent = [label for label in labels if label not in present]
        if absent:
            shown = ", ".join(map(repr, sorted(present, key=str)[:20]))
            raise ValueError(f"label(s) {absent} do not occur in the data; its labels are: {shown}")
        return list(labels)
    if label_filter is not None:
        present = {value for value in present if label_filter(value)}
    kinds = {type(value) for value in present}
    if len(kinds) > 1:
        raise ValueError("labels mix strings and integers; make the label column one type")
    if kinds == {str}:
        return sorted(present)
    if present and min(present) < 0:
        raise ValueError(f"integer labels must be >= 0, found {min(present)}")
    return list(range(max(present) + 1)) if present else []


def label_ids(
    raw: Sequence[Any], label_set: Sequence[Label], label_filter: Callable[[Label], bool] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 of the kept rows, keep bool mask over all rows): rows whose label is outside the set are dropped."""
    index = {label: i for i, label in enumerate(label_set)}
    values = clean_labels(raw)
    keep = np.array([value in index and (label_filter is None or label_filter(value)) for value in values], dtype=bool)
    ids = np.array([index[value] for value, kept in zip(values, keep) if kept], dtype=np.int32)
    return ids, keep


def check_several_labels(label_set: Sequence[Label], where: str) -> None:
    """ValueError unless there are at least two classes: a one-class classifier learns nothing."""
    if len(label_set) < 2:
        found = f"only the label {label_set[0]!r}" if label_set else "no labels"
        raise ValueError(f"{where} has {found}; a classifier needs examples of at least two labels")


def check_num_labels(splits: DataSplits, num_labels: int) -> None:
    """Raise ValueError unless the data has exactly `num_labels` classes (the size of a model's classifier head)."""
    names = splits.info["label_names"]
    if len(names) != num_labels:
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise ValueError(
            f"the data has {len(names)} labels ({shown}) but the model has num_labels={num_labels}; "
            f"build the model with num_labels={len(names)} or pass labels=[...] to keep {num_labels} of them"
        )


def clean_labels(raw: Sequence[Any]) -> list[Label]:
    """Each raw label as a str or int (1.0 from a CSV becomes 1); ValueError naming a row without a usable label."""
    return [_clean_label(value, row) for row, value in enumerate(raw)]


def _clean_label(value: Any, row: int) -> Label:
    """A str or int label; ints that arrived as floats (e.g. 1.0 from a CSV) become ints."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        raise ValueError(f"row {row} has no label")
    if isinstance(value, (str, np.str_)):
        return str(value)
    if isinstance(value, (int, np.integer, np.bool_)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise ValueError(f"row {row} has label {value!r}; labels must be strings or integers")
