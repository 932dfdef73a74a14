"""Train, load and save tokenizers (Hugging Face `tokenizers`), and encode batches to fixed-shape numpy arrays.

Two recipes: GPT-style byte-level BPE (every string round-trips through encode/decode) and BERT-style WordPiece
([PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, "[CLS] A [SEP]" added on encode).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from flaxen.text.files import PathLike, iter_training_texts

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"  # a Hugging Face BERT folder's WordPiece vocabulary, one token per line
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
BPE_VOCAB_FILE, BPE_MERGES_FILE = "vocab.json", "merges.txt"  # a Hugging Face GPT-2 folder's byte-level BPE
# What a Hugging Face folder may keep of its tokenizer; copied along when a model folder is converted.
HF_TOKENIZER_FILES = (
    TOKENIZER_FILE,
    VOCAB_FILE,
    BPE_VOCAB_FILE,
    BPE_MERGES_FILE,
    TOKENIZER_CONFIG_FILE,
    "special_tokens_map.json",
)
EOS_TOKEN = "<|endoftext|>"
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SPECIAL_TOKEN_NAMES = {
    "pad": "[PAD]",
    "unk": "[UNK]",
    "cls": "[CLS]",
    "sep": "[SEP]",
    "mask": "[MASK]",
    "eos": EOS_TOKEN,
}
_BYTE_ALPHABET_SIZE = 256


def train_bpe(
    files_or_iterator: PathLike | Iterable[PathLike] | Iterator[str],
    vocab_size: int = 8192,
    min_frequency: int = 2,
    *,
    encoding: str = "utf-8",
) -> Tokenizer:
    """Train a GPT-style byte-level BPE tokenizer with `<|endoftext|>` as id 0 (files, or an iterator of texts)."""
    smallest = _BYTE_ALPHABET_SIZE + 1
    if vocab_size < smallest:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for byte-level BPE: the 256 byte tokens and {EOS_TOKEN} "
            f"alone need {smallest}; use at least {smallest} (8192 is a good default)"
        )
    tokenizer = Tokenizer(models.BPE())
    _set_byte_level_pipeline(tokenizer)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(iter_training_texts(files_or_iterator, encoding), trainer)
    return tokenizer


def train_wordpiece(
    files_or_iterator: PathLike | Iterable[PathLike] | Iterator[str],
    vocab_size: int = 8192,
    lowercase: bool = True,
    *,
    padding: bool = False,
    encoding: str = "utf-8",
) -> Tokenizer:
    """Train a BERT-style WordPiece tokenizer; `padding=True` turns on its own padding (to the longest, with [PAD])."""
    if vocab_size <= len(BERT_SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the {len(BERT_SPECIAL_TOKENS)} special tokens alone fill it; "
            f"use a few thousand (8192 is a good default)"
        )
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(BERT_SPECIAL_TOKENS), show_progress=False
    )
    _set_bert_pipeline(tokenizer, lowercase)
    tokenizer.train_from_iterator(iter_training_texts(files_or_iterator, encoding), trainer)
    if tokenizer.get_vocab_size() > vocab_size:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for this text: its characters and their ##-continuations "
            f"alone need {tokenizer.get_vocab_size()} entries; use a larger vocab_size"
        )
    _set_bert_post_processor(tokenizer)
    if padding:
        tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    return tokenizer


def load_tokenizer(path: PathLike) -> Tokenizer:
    """Load a `tokenizer.json` file, a folder holding one, or a Hugging Face BERT folder with only `vocab.txt`."""
    path = Path(path)
    if path.is_dir() and (path / TOKENIZER_FILE).is_file():
        path = path / TOKENIZER_FILE
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception as err:  # the Rust side raises a bare Exception for malformed JSON
            raise ValueError(f"{path} is not a tokenizer.json the tokenizers library can read: {err}") from None
    if not path.is_dir():
        raise ValueError(f"no tokenizer at {path}: expected a tokenizer.json file or a folder containing one")
    if (path / VOCAB_FILE).is_file():
        return _bert_tokenizer_from_vocab(path)
    if (path / BPE_VOCAB_FILE).is_file() and (path / BPE_MERGES_FILE).is_file():
        return _byte_level_bpe_from_files(path)
    raise ValueError(
        f"{path} holds no tokenizer.json, vocab.txt or vocab.json + merges.txt; "
        f"give a folder saved by save_tokenizer or a Hugging Face BERT or GPT-2 folder"
    )


def save_tokenizer(tokenizer: Tokenizer, folder: PathLike) -> Path:
    """Write `folder/tokenizer.json` (creating the folder) and return its path."""
    path = Path(folder) / TOKENIZER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Ids of the special tokens this tokenizer has, keyed pad/unk/cls/sep/mask/eos."""
    ids = {name: tokenizer.token_to_id(token) for name, token in SPECIAL_TOKEN_NAMES.items()}
    return {name: token_id for name, token_id in ids.items() if token_id is not None}


def encode_batch(tokenizer: Tokenizer, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """Encode, truncate and right-pad to exactly `max_length`: token_ids int32 (B, T), padding_mask bool (B, T).

    `padding_mask` is True at real tokens and False at padding. Padding uses [PAD], else `<|endoftext|>`, else 0.
    Special tokens ([CLS] ... [SEP]) are added as the tokenizer's post-processor says; truncation keeps them.
    """
    pad_id = pad_token_id(tokenizer)
    with _temporary_settings(tokenizer):
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.enable_padding(length=max_length, pad_id=pad_id, pad_token=tokenizer.id_to_token(pad_id) or "")
        encodings = tokenizer.encode_batch(list(texts))
    shape = (len(encodings), max_length)
    token_ids = np.array([e.ids for e in encodings], dtype=np.int32).reshape(shape)
    padding_mask = np.array([e.attention_mask for e in encodings], dtype=bool).reshape(shape)
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def pad_token_id(tokenizer: Tokenizer) -> int:
    """The id rows are padded with: [PAD], else `<|endoftext|>`, else 0."""
    ids = special_token_ids(tokenizer)
    return ids.get("pad", ids.get("eos", 0))


def encode_truncated(tokenizer: Tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text with its special tokens, truncated to `max_length` as `encode_batch` does, unpadded."""
    with _temporary_settings(tokenizer):
        tokenizer.enable_truncation(max_length=max_length)
        return [e.ids for e in tokenizer.encode_batch(list(texts))]


def encode_documents(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text in full: no special tokens, no truncation, no padding."""
    with _temporary_settings(tokenizer):
        # The fast variant skips the offsets, which take more memory and time than the ids.
        return [e.ids for e in tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]


_LOCAL_NORMALIZERS = {"BertNormalizer", "NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents"}
_WHITESPACE_PRE_TOKENIZERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}


def encodes_in_pieces(tokenizer: Tokenizer) -> bool:
    """True if encoding a text in `text_pieces` gives the tokens of encoding it whole: a byte-level BPE with the
    GPT-2 pre-tokenizer and no prefix space, or a pre-tokenizer that splits at whitespace, behind a normalizer that
    works character by character. Others (a Metaspace, a Llama-3 style Split, a prepending normalizer) are not."""
    config = json.loads(tokenizer.to_str())

    def local(normalizer) -> bool:
        if normalizer is None:
            return True
        if normalizer["type"] == "Sequence":
            return all(local(part) for part in normalizer["normalizers"])
        return normalizer["type"] in _LOCAL_NORMALIZERS

    pre = config.get("pre_tokenizer") or {}
    byte_level = pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
    return local(config.get("normalizer")) and (byte_level or pre.get("type") in _WHITESPACE_PRE_TOKENIZERS)


@contextlib.contextmanager
def _temporary_settings(tokenizer: Tokenizer) -> Iterator[None]:
    """Turn the tokenizer's truncation and padding off for the block, then restore what it had."""
    truncation, padding = tokenizer.truncation, tokenizer.padding
    tokenizer.no_truncation()
    tokenizer.no_padding()
    try:
        yield
    finally:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        if truncation is not None:
            tokenizer.enable_truncation(**truncation)
        if padding is not None:
            tokenizer.enable_padding(**padding)


def _set_byte_level_pipeline(tokenizer: Tokenizer) -> None:
    """GPT-2's byte-level pre-tokenizer, decoder and post-processor (every string round-trips)."""
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)


def _set_bert_pipeline(tokenizer: Tokenizer, lowercase: bool) -> None:
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")


def _set_bert_post_processor(tokenizer: Tokenizer) -> None:
    special = [(token, tokenizer.token_to_id(token)) for token in ("[CLS]", "[SEP]")]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=special
    )


def _bert_tokenizer_from_vocab(folder: Path) -> Tokenizer:
    vocab = models.WordPiece.read_file(str(folder / VOCAB_FILE))
    missing = [token for token in ("[UNK]", "[CLS]", "[SEP]") if token not in vocab]
    if missing:
        raise ValueError(f"{folder / VOCAB_FILE} lacks the BERT special token(s) {', '.join(missing)}")
    config_path = folder / TOKENIZER_CONFIG_FILE
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    _set_bert_pipeline(tokenizer, lowercase=bool(config.get("do_lower_case", True)))
    _set_bert_post_processor(tokenizer)
    return tokenizer


def _byte_level_bpe_from_files(folder: Path) -> Tokenizer:
    """GPT-2's tokenizer from its vocab.json and merges.txt (no special tokens added on encode)."""
    try:
        model = models.BPE.from_file(str(folder / BPE_VOCAB_FILE), str(folder / BPE_MERGES_FILE))
    except Exception as err:  # the Rust side raises a bare Exception for unreadable files
        raise ValueError(f"cannot read the BPE files in {folder}: {err}") from None
    tokenizer = Tokenizer(model)
    _set_byte_level_pipeline(tokenizer)
    if tokenizer.token_to_id(EOS_TOKEN) is not None:
        tokenizer.add_special_tokens([EOS_TOKEN])
    return tokenizer
