"""Token shards: a corpus tokenized once into memory-mapped files, its blocks read by index through grain.

`tokenize_to_shards` streams text files through the tokenizer (`document_tokens`: in pieces, on every core) and writes
the token stream, every document followed by its end token, as `tokens-NNNNN.bin` files of uint16 (uint32 when the
vocabulary needs it) beside `tokens.json` and the tokenizer. `TokenShards(folder).blocks(block_size)` cuts the
same stream into the same blocks as `flaxen.data.text_blocks` would from the same files, without reading it into
memory: a block is read when a batch needs it, so memory and start-up do not grow with the corpus.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from flaxen.data.arrays import DataSplits
from flaxen.data.indexed import IndexedDataset
from flaxen.data.text import block_plan, document_tokens, wrap_rows
from flaxen.text.files import PathLike, as_paths, require_file
from flaxen.text.tokenizer import EOS_TOKEN, TOKENIZER_FILE, load_tokenizer

SHARDS_FILE = "tokens.json"
SHARDS_FORMAT = "flaxen-token-shards"
SHARD_TOKENS = 1 << 28  # per file: 512 MiB of uint16


def is_token_folder(path: PathLike) -> bool:
    return (Path(path) / SHARDS_FILE).is_file()


def document_end_token(tokenizer: Tokenizer) -> str:
    """The token that ends each document: `<|endoftext|>`, or `[SEP]` for a WordPiece tokenizer."""
    for token in (EOS_TOKEN, "[SEP]"):
        if tokenizer.token_to_id(token) is not None:
            return token
    raise ValueError(f"the tokenizer has neither {EOS_TOKEN!r} nor '[SEP]' to end documents with")


def tokenize_to_shards(
    files: PathLike | Sequence[PathLike],
    tokenizer: Tokenizer,
    out_dir: PathLike,
    *,
    eos_token: str | None = None,
    encoding: str = "utf-8",
    progress: bool = True,
    shard_tokens: int = SHARD_TOKENS,
) -> dict[str, Any]:
    """Tokenize `files` (each a document, in order) into a new token folder `out_dir`; returns its tokens.json.

    The folder is written under a temporary name and renamed when complete, so a failed or interrupted run leaves
    nothing behind, and an existing `out_dir` is never touched (ValueError).
    """
    paths, out_dir = check_tokenize_inputs(files, out_dir)
    eos_token = eos_token or document_end_token(tokenizer)
    eos_id = tokenizer.token_to_id(eos_token)
    if eos_id is None:
        raise ValueError(f"the tokenizer has no {eos_token!r} token to end documents with")
    vocab_size = tokenizer.get_vocab_size()
    dtype = np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        with _ShardWriter(staging, dtype, shard_tokens) as writer:
            for ids in document_tokens(paths, tokenizer, eos_id, encoding, dtype=dtype, progress=progress):
                writer.write(ids)
        meta = {
            "format": SHARDS_FORMAT,
            "version": 1,
            "dtype": dtype.name,
            "vocab_size": vocab_size,
            "eos_token": eos_token,
            "eos_id": eos_id,
            "num_documents": len(paths),
            "num_tokens": writer.total,
            "shards": writer.shards,
            "sources": [str(path) for path in paths],
            "encoding": encoding,
        }
        (staging / TOKENIZER_FILE).write_text(tokenizer.to_str(pretty=True))
        (staging / SHARDS_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        os.chmod(staging, 0o755)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return meta


def check_tokenize_inputs(files: PathLike | Sequence[PathLike], out_dir: PathLike) -> tuple[list[Path], Path]:
    """(the files as paths, the folder) after checking that the files exist and the folder does not."""
    paths, out_dir = as_paths(files), Path(out_dir)
    if not paths:
        raise ValueError("no files given to tokenize")
    if out_dir.exists():
        raise ValueError(f"{out_dir} already exists; choose a new folder for the tokens (or delete it)")
    for path in paths:
        require_file(path)
    return paths, out_dir


class _ShardWriter:
    """Appends token arrays to shard files of at most `shard_tokens` tokens each."""

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int):
        self.folder, self.dtype, self.shard_tokens = folder, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.total = 0
        self._handle = None

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self._handle is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            head, ids = ids[:room], ids[room:]
            self._handle.write(head.tobytes())
            self.shards[-1]["tokens"] += len(head)
            self.total += len(head)

    def _open_next(self) -> None:
        if self._handle is not None:
            self._handle.close()
        name = f"tokens-{len(self.shards):05d}.bin"
        self._handle = open(self.folder / name, "wb")
        self.shards.append({"file": name, "tokens": 0})

    def __enter__(self) -> _ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.close()


class TokenShards:
    """A token folder written by `tokenize_to_shards` (or `flaxen tokenize`), memory-mapped."""

    def __init__(self, folder: PathLike):
        self.folder = Path(folder)
        if not is_token_folder(self.folder):
            raise ValueError(f"{self.folder} is not a token folder (no {SHARDS_FILE}); make one with flaxen tokenize")
        self.meta = json.loads((self.folder / SHARDS_FILE).read_text())
        if self.meta.get("format") != SHARDS_FORMAT:
            raise ValueError(f"{self.folder / SHARDS_FILE} is not a flaxen token folder's index")
        dtype = np.dtype(self.meta["dtype"])
        self._arrays = []
        for shard in self.meta["shards"]:
            path = self.folder / shard["file"]
            expected = shard["tokens"] * dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise ValueError(f"{path} is missing or not {expected} bytes; tokenize the corpus again")
            self._arrays.append(np.memmap(path, dtype=dtype, mode="r"))
        self._starts = np.cumsum([0] + [len(array) for array in self._arrays])

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.folder / TOKENIZER_FILE)

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the stream, as int32."""
        pieces, end = [], start + length
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        while start < end:
            offset = start - self._starts[shard]
            take = min(end - start, len(self._arrays[shard]) - offset)
            pieces.append(self._arrays[shard][offset : offset + take])
            start += take
            shard += 1
        return np.concatenate(pieces).astype(np.int32)

    def blocks(
        self,
        block_size: int,
        *,
        validation_fraction: float = 0.1,
        prefix: Sequence[int] = (),
        suffix: Sequence[int] = (),
    ) -> DataSplits:
        """The stream cut into consecutive `block_size`-token blocks and split as `text_blocks` does (`block_plan`).
        With `prefix`/`suffix` ids (e.g. [CLS] and [SEP]) each row is `wrap_rows`' prefix + block + suffix."""
        meta = self.meta
        info = block_plan(
            len(self), block_size, validation_fraction, str(self.folder), meta["num_documents"], meta["eos_id"]
        )
        num_train, num_validation = info["train_blocks"], info["validation_blocks"]
        layout = _BlockLayout(self, block_size, tuple(prefix), tuple(suffix))
        validation = TokenBlocks(layout, num_train, num_validation) if num_validation else None
        return DataSplits(TokenBlocks(layout, 0, num_train), validation, info)


@dataclasses.dataclass(frozen=True)
class _BlockLayout:
    shards: TokenShards
    block_size: int
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]

    def rows(self, blocks: np.ndarray) -> dict[str, np.ndarray]:
        token_ids = np.stack([self.shards.read(int(block) * self.block_size, self.block_size) for block in blocks])
        if not (self.prefix or self.suffix):
            return {"token_ids": token_ids}
        return wrap_rows(token_ids, self.prefix, self.suffix)


class TokenBlocks(IndexedDataset):
    """Blocks [first, first + count) of a token folder, read by index when a batch needs them."""

    def __init__(self, layout: _BlockLayout, first: int, count: int):
        self.layout, self.first, self.count = layout, first, count

    def __len__(self) -> int:
        return self.count

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return self.layout.rows(self.first + rows)
