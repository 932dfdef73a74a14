"""Reading text files with errors that say which file was wrong and what to do about it."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

PathLike = str | os.PathLike


def as_paths(files: PathLike | Iterable[PathLike]) -> list[Path]:
    """One path or a list of paths, as a list of `Path`s (a single string is one file, not many)."""
    if isinstance(files, (str, os.PathLike)):
        return [Path(files)]
    return [Path(f) for f in files]


def read_text_file(path: PathLike, encoding: str = "utf-8") -> str:
    """The whole file as text; ValueError naming the file if it is missing or not valid `encoding`."""
    path = require_file(path)
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as err:
        raise _decode_error(path, encoding, err) from None


def check_decodable(path: PathLike, encoding: str = "utf-8") -> None:
    """Raise the same ValueErrors as `read_text_file`, reading the file in chunks instead of keeping it."""
    path = require_file(path)
    try:
        with path.open(encoding=encoding) as handle:
            while handle.read(1 << 20):
                pass
    except UnicodeDecodeError as err:
        raise _decode_error(path, encoding, err) from None


def require_file(path: PathLike) -> Path:
    """`path` as a Path; ValueError if it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return path


def _decode_error(path: PathLike, encoding: str, err: UnicodeDecodeError) -> ValueError:
    return ValueError(
        f"{path} is not valid {encoding} text ({err.reason}: {err.object[err.start : err.end]!r}); "
        "pass the file's real encoding, e.g. --encoding latin-1 (encoding='latin-1' in Python)"
    )


def iter_training_texts(source: PathLike | Iterable[PathLike] | Iterator[str], encoding: str) -> Iterator[str]:
    """Texts to train a tokenizer on: each file in `text_pieces` (which pre-tokenize as the whole file does, so the
    tokenizer is the same, without holding a large file at once), or the strings of an iterator.

    A path or a list/tuple of paths means files; any other iterable (a generator, `iter(texts)`) yields the texts
    themselves. Raises ValueError for a missing, undecodable or empty file, and for an iterator with no text.
    """
    if isinstance(source, (str, os.PathLike, list, tuple)):
        paths = as_paths(source)
        if not paths:
            raise ValueError("no files given: there is no text to train a tokenizer on")
        for path in paths:
            if not Path(path).is_file():
                raise ValueError(
                    f"no such file: {path} (to train on in-memory texts, pass an iterator such as iter(texts))"
                )
            has_text = False
            for piece in text_pieces(path, encoding):
                has_text = has_text or bool(piece.strip())
                yield piece
            if not has_text:
                raise ValueError(f"{path} is empty: there is no text to train a tokenizer on")
        return
    seen_text = False
    for text in source:
        if not isinstance(text, str):
            raise ValueError(f"expected the iterator to yield str, got {type(text).__name__}; decode bytes first")
        seen_text = seen_text or bool(text.strip())
        yield text
    if not seen_text:
        raise ValueError("the text iterator is empty: there is no text to train a tokenizer on")


def text_pieces(path: PathLike, encoding: str = "utf-8", piece_chars: int = 1 << 20) -> Iterator[str]:
    """The file's text in pieces of about `piece_chars`, read as it is needed, which together are the whole text.

    Each piece but the last ends just before a space, tab or newline that follows a non-space character: there the
    byte-level BPE (GPT-2) and BERT pre-tokenizers start a new pre-token anyway, so encoding the pieces gives the
    tokens of encoding the whole text, and training a tokenizer on them gives the same tokenizer. Text without
    such a place for MAX_PIECE_FACTOR × `piece_chars` characters (no whitespace at all) is cut there regardless,
    to keep memory bounded.
    """
    path = require_file(path)
    pending, scanned = "", 0  # no cut in pending[:scanned]
    try:
        with path.open(encoding=encoding) as handle:  # universal newlines, as read_text_file
            while chunk := handle.read(piece_chars):
                pending += chunk
                if len(pending) < piece_chars:
                    continue
                cut = _last_cut(pending, max(1, scanned))
                if cut == 0 and len(pending) >= MAX_PIECE_FACTOR * piece_chars:
                    cut = len(pending)
                if cut:
                    yield pending[:cut]
                    pending = pending[cut:]
                scanned = len(pending)
    except UnicodeDecodeError as err:
        raise _decode_error(path, encoding, err) from None
    if pending:
        yield pending


MAX_PIECE_FACTOR = 16
_CUT_BEFORE = (" ", "\n", "\t")


def _last_cut(text: str, start: int) -> int:
    """The last index i >= `start` with text[i] a space, tab or newline and text[i - 1] not a space (0: none)."""
    best = 0
    for character in _CUT_BEFORE:
        index = text.rfind(character, start)
        while index > best and text[index - 1].isspace():
            index = text.rfind(character, start, index)
        best = max(best, index)
    return best
