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
    path = _require_file(path)
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as err:
        raise _decode_error(path, encoding, err) from None


def check_decodable(path: PathLike, encoding: str = "utf-8") -> None:
    """Raise the same ValueErrors as `read_text_file`, reading the file in chunks instead of keeping it."""
    path = _require_file(path)
    try:
        with path.open(encoding=encoding) as handle:
            while handle.read(1 << 20):
                pass
    except UnicodeDecodeError as err:
        raise _decode_error(path, encoding, err) from None


def _require_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return path


def _decode_error(path: PathLike, encoding: str, err: UnicodeDecodeError) -> ValueError:
    return ValueError(
        f"{path} is not valid {encoding} text ({err.reason}: {err.object[err.start : err.end]!r}); "
        f"pass the file's real encoding, e.g. encoding='latin-1'"
    )


def iter_training_texts(source: PathLike | Iterable[PathLike] | Iterator[str], encoding: str) -> Iterator[str]:
    """Texts to train a tokenizer on: each file whole (as it will be encoded), or the strings of an iterator.

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
            text = read_text_file(path, encoding)
            if not text.strip():
                raise ValueError(f"{path} is empty: there is no text to train a tokenizer on")
            yield text
        return
    seen_text = False
    for text in source:
        if not isinstance(text, str):
            raise ValueError(f"expected the iterator to yield str, got {type(text).__name__}; decode bytes first")
        seen_text = seen_text or bool(text.strip())
        yield text
    if not seen_text:
        raise ValueError("the text iterator is empty: there is no text to train a tokenizer on")
