"""Masked-language-model rows: [CLS] block [SEP], from text files or a token folder."""

from __future__ import annotations

from flaxen.data.arrays import ArrayDataset, DataSplits
from flaxen.data.shards import TokenShards
from flaxen.data.text import text_blocks, wrap_rows
from flaxen.text.tokenizer import special_token_ids


def mlm_blocks(
    files, tokenizer, max_length: int, *, encoding: str = "utf-8", validation_fraction: float = 0.1
) -> DataSplits:
    """[CLS] block [SEP] rows of exactly `max_length` tokens for MLM pretraining and evaluation (documents end with
    [SEP]); `files` may be a `TokenShards` folder instead, whose rows are then read from disk. With
    `validation_fraction=0` every row is in the training split (held-out text for `flaxen eval`)."""
    if isinstance(files, TokenShards) and files.meta["eos_token"] != "[SEP]":
        raise ValueError(
            f"{files.folder} ends its documents with {files.meta['eos_token']!r}, not [SEP]: it was not tokenized "
            "with a WordPiece; tokenize with --kind wordpiece for BERT"
        )
    ids = special_token_ids(tokenizer)
    if "cls" not in ids or "sep" not in ids:
        raise ValueError("MLM pretraining needs a WordPiece tokenizer with [CLS] and [SEP]")
    if isinstance(files, TokenShards):
        splits = files.blocks(max_length - 2, prefix=[ids["cls"]], suffix=[ids["sep"]])
        return DataSplits(splits.train, splits.validation, splits.info | {"max_length": max_length})
    splits = text_blocks(
        files, tokenizer, max_length - 2, eos_token="[SEP]", encoding=encoding, validation_fraction=validation_fraction
    )

    def wrap(split: ArrayDataset | None) -> ArrayDataset | None:
        if split is None:
            return None
        return ArrayDataset(wrap_rows(split["token_ids"], [ids["cls"]], [ids["sep"]]))

    return DataSplits(wrap(splits.train), wrap(splits.validation), splits.info | {"max_length": max_length})
