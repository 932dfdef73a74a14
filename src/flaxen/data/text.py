"""Text datasets: contiguous token blocks for language-model pretraining, and labelled texts for classification."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np
from einops import rearrange
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from flaxen.data.arrays import ArrayDataset, DataSplits, random_split, validation_size
from flaxen.data.labels import Label, check_several_labels, label_ids, label_values
from flaxen.text.files import PathLike, as_paths, check_decodable, text_pieces
from flaxen.text.tokenizer import EOS_TOKEN, encode_batch, encode_documents, encodes_in_pieces

_TABLE_FORMATS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
_TEXT_FORMATS = {"csv", "json"}


def text_blocks(
    files: PathLike | Sequence[PathLike],
    tokenizer: Tokenizer,
    block_size: int,
    *,
    validation_fraction: float = 0.1,
    eos_token: str = EOS_TOKEN,
    encoding: str = "utf-8",
) -> DataSplits:
    """Language-model data: each file is a document; `token_ids` int32 (N, block_size) cut from one token stream.

    Every document is followed by `eos_token`, the documents are concatenated, and the stream is cut into
    consecutive blocks (the tail that does not fill a block is dropped). Validation is the last blocks of the
    stream (at most MAX_VALIDATION_BLOCKS), so no text is shared between the splits. Targets are the next tokens
    within a block (the model shifts). For a WordPiece tokenizer pass `eos_token="[SEP]"`.
    """
    paths = as_paths(files)
    if not paths:
        raise ValueError("no files given to text_blocks")
    eos_id = tokenizer.token_to_id(eos_token)
    if eos_id is None:
        raise ValueError(
            f"the tokenizer has no {eos_token!r} token to end documents with; "
            f"pass eos_token= one of its special tokens (e.g. '[SEP]' for WordPiece)"
        )
    for path in paths:
        check_decodable(path, encoding)  # every file, before any tokenizing
    stream = np.concatenate(list(document_tokens(paths, tokenizer, eos_id, encoding)))

    info = block_plan(len(stream), block_size, validation_fraction, "the text", len(paths), eos_id)
    num_train, num_validation = info["train_blocks"], info["validation_blocks"]
    blocks = rearrange(stream[: (num_train + num_validation) * block_size], "(n t) -> n t", t=block_size)
    validation = ArrayDataset({"token_ids": blocks[num_train:]}) if num_validation else None
    return DataSplits(ArrayDataset({"token_ids": blocks[:num_train]}), validation, info)


MAX_VALIDATION_BLOCKS = 4096  # a large corpus holds out its fraction only up to this, so evaluating stays affordable


def block_plan(
    num_tokens: int, block_size: int, validation_fraction: float, source: str, num_documents: int, eos_id: int
) -> dict[str, int]:
    """How a stream of `num_tokens` is cut: `info` with train_blocks and validation_blocks (the last blocks, at
    most MAX_VALIDATION_BLOCKS); ValueError naming `source` if it does not fill the blocks the splits need."""
    num_blocks = num_tokens // block_size
    min_blocks = 2 if validation_fraction > 0 else 1
    if num_blocks < min_blocks:
        raise ValueError(
            f"{source} has {num_tokens} tokens but {min_blocks * block_size} are needed "
            f"(one block of {block_size} for training{' and one for validation' if min_blocks == 2 else ''}); "
            f"add text or use a smaller block_size"
        )
    num_validation = min(validation_size(num_blocks, validation_fraction), num_blocks - 1, MAX_VALIDATION_BLOCKS)
    return {
        "num_documents": num_documents,
        "num_tokens": num_tokens,
        "block_size": block_size,
        "eos_id": eos_id,
        "train_blocks": num_blocks - num_validation,
        "validation_blocks": num_validation,
        "dropped_tokens": num_tokens - num_blocks * block_size,
    }


def wrap_rows(token_ids: np.ndarray, prefix: Sequence[int], suffix: Sequence[int]) -> dict[str, np.ndarray]:
    """Rows prefix + block + suffix (e.g. [CLS] block [SEP]) with an all-True `padding_mask`."""
    first, last = (np.tile(np.asarray(ids, np.int32), (len(token_ids), 1)) for ids in (prefix, suffix))
    wrapped = np.concatenate([first, token_ids, last], axis=1)
    return {"token_ids": wrapped, "padding_mask": np.ones_like(wrapped, bool)}


PIECE_CHARS = 1 << 18
BATCH_CHARS = 1 << 22  # text handed to the tokenizer at once, its threads sharing the pieces; bounds the memory


def document_tokens(
    paths: Sequence[Path],
    tokenizer: Tokenizer,
    eos_id: int,
    encoding: str = "utf-8",
    *,
    dtype: np.dtype = np.int32,
    progress: bool = False,
) -> Iterator[np.ndarray]:
    """The token stream of `paths`, each file's ids followed by `eos_id`, as consecutive arrays of `dtype`.

    Files are read in `text_pieces` (which encode as the whole file does) and encoded about BATCH_CHARS at a time
    with the tokenizer's threads sharing the pieces, so memory stays bounded however large a file is. A tokenizer
    for which pieces would change the tokens (`encodes_in_pieces`) gets each file whole.
    """
    total_bytes = sum(Path(path).stat().st_size for path in paths)
    piece_chars = PIECE_CHARS if encodes_in_pieces(tokenizer) else total_bytes + 1  # more than any file holds
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="Tokenizing", disable=not progress) as bar:
        for batch in _piece_batches(paths, encoding, piece_chars):
            ids = encode_documents(tokenizer, [text for text, _ in batch])
            for (_, ends_document), piece_ids in zip(batch, ids):
                yield np.asarray(piece_ids + [eos_id] * ends_document, dtype=dtype)
            bar.update(sum(len(text.encode(encoding, errors="replace")) for text, _ in batch))


def _piece_batches(paths: Sequence[Path], encoding: str, piece_chars: int) -> Iterator[list[tuple[str, bool]]]:
    """(piece, is its file's last piece) in order, grouped into about BATCH_CHARS of text."""
    batch, size = [], 0
    for path in paths:
        pieces = text_pieces(path, encoding, piece_chars)
        piece = next(pieces, "")
        for following in itertools.chain(pieces, [None]):  # one piece behind, to know which is the last
            batch.append((piece, following is None))
            size += len(piece)
            if size >= BATCH_CHARS:
                yield batch
                batch, size = [], 0
            piece = following
    if batch:
        yield batch


def text_classification(
    path: PathLike,
    tokenizer: Tokenizer,
    *,
    text_column: str = "text",
    label_column: str = "label",
    max_length: int = 128,
    labels: Sequence[Label] | None = None,
    validation: PathLike | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    encoding: str = "utf-8",
    label_filter: Callable[[Label], bool] | None = None,
) -> DataSplits:
    """Labelled texts from CSV/TSV/JSON/JSONL/parquet: `token_ids` int32, `padding_mask` bool (N, T), `labels` int32.

    String labels become ids in sorted order (`info["label_names"]`); integer labels are kept as they are.
    `labels=[...]` chooses and orders the classes (rows with other labels are dropped); `label_filter(label)`
    drops rows whose raw label it rejects. Validation is the file `validation` if given, else a seeded random
    `validation_fraction` of the rows.
    """
    sources = {"train": Path(path)} | ({"validation": Path(validation)} if validation is not None else {})
    tables = {split: load_table(source, encoding) for split, source in sources.items()}
    for split, table in tables.items():
        check_columns(table, sources[split], text_column, label_column)
    raw_labels = {split: list(table[label_column]) for split, table in tables.items()}
    label_set = label_values([value for values in raw_labels.values() for value in values], labels, label_filter)
    check_several_labels(label_set, f"the {label_column!r} column of {sources['train']}")
    splits = {
        split: _labelled_arrays(
            table, sources[split], tokenizer, text_column, raw_labels[split], label_set, label_filter, max_length
        )
        for split, table in tables.items()
    }
    if validation is None:
        train, held_out = random_split(splits["train"], validation_fraction, seed)
    else:
        train, held_out = splits["train"], splits["validation"]
    info = {
        "label_names": [str(label) for label in label_set],
        "num_labels": len(label_set),
        "max_length": max_length,
        "dropped_rows": len(tables["train"]) - len(splits["train"]),
        "train_label_counts": np.bincount(train["labels"], minlength=len(label_set)).tolist(),
    }
    return DataSplits(train, held_out, info)


def _labelled_arrays(
    table: datasets.Dataset,
    source: PathLike,
    tokenizer: Tokenizer,
    text_column: str,
    raw_labels: list,
    label_set: list[Label],
    label_filter: Callable[[Label], bool] | None,
    max_length: int,
) -> ArrayDataset:
    """Keep the rows whose label is in `label_set`, check their texts, and tokenize them."""
    ids, keep = label_ids(raw_labels, label_set, label_filter)
    kept = table.select_columns([text_column]).select(np.flatnonzero(keep))
    if len(kept) == 0:
        raise ValueError(
            f"{source} has no rows left ({len(table)} read, none with a label in {label_set}); "
            f"check the file and labels="
        )
    empty = [row for row, text in enumerate(kept[text_column]) if text is None or not str(text).strip()]
    if empty:
        first_row = np.flatnonzero(keep)[empty[0]]
        raise ValueError(
            f"{source} has {len(empty)} row(s) with an empty {text_column!r} (the first is data row {first_row}, "
            f"counting from 0); remove them from the file"
        )
    encoded = kept.map(
        lambda batch: encode_batch(tokenizer, batch[text_column], max_length),
        batched=True,
        remove_columns=[text_column],
        desc="Tokenizing",
    ).with_format("numpy")[:]
    return ArrayDataset(
        {
            "token_ids": encoded["token_ids"].astype(np.int32),
            "padding_mask": encoded["padding_mask"].astype(bool),
            "labels": ids,
        }
    )


def load_table(path: PathLike, encoding: str) -> datasets.Dataset:
    """One data file as a `datasets.Dataset`, the format chosen by its extension."""
    path = Path(path)
    if path.suffix.lower() not in _TABLE_FORMATS:
        raise ValueError(f"cannot read {path}: expected a file ending in {', '.join(_TABLE_FORMATS)}")
    builder, options = _TABLE_FORMATS[path.suffix.lower()]
    if builder in _TEXT_FORMATS:
        check_decodable(path, encoding)
        options = {**options, "encoding": encoding}
    elif not path.is_file():
        raise ValueError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty: it has no rows")
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except datasets.exceptions.DatasetGenerationError as err:
        reason = err.__cause__ or err
        raise ValueError(f"could not read {path} as {builder}: {type(reason).__name__}: {reason}") from None
    except ValueError:
        raise ValueError(f"{path} has no rows (only a header?)") from None


def table_texts(path: PathLike, text_column: str = "text", *, encoding: str = "utf-8") -> list[str]:
    """The non-empty texts of one column of a CSV/TSV/JSON/JSONL/parquet file (e.g. to train a tokenizer on)."""
    table = load_table(path, encoding)
    check_columns(table, path, text_column)
    return [str(text) for text in table[text_column] if text is not None and str(text).strip()]


def check_columns(table: datasets.Dataset, path: PathLike, *columns: str) -> None:
    """ValueError naming the columns the table lacks and the ones it has."""
    missing = [column for column in columns if column not in table.column_names]
    if missing:
        raise ValueError(
            f"{path} has no column {', '.join(map(repr, missing))}; its columns are: {', '.join(table.column_names)} "
            "(choose with --text-column / --label-column, or text_column= / label_column=)"
        )
