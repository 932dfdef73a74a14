"""Tokenizers for flaxen: byte-level BPE (GPT) and WordPiece (BERT) on the Hugging Face `tokenizers` library.

`train_bpe` / `train_wordpiece` train one (from files, or from an iterator of texts); `load_tokenizer` /
`save_tokenizer` move one to and from disk; `encode_batch` turns texts into fixed-shape numpy `token_ids` and
`padding_mask`; `encode_truncated` the same ids unpadded;
`encode_documents` gives whole documents' ids without special tokens; `special_token_ids` finds
pad/unk/cls/sep/mask/eos; `text_pieces` reads a large file in pieces that encode like the whole.
Bad input raises one `ValueError` that says what was wrong and what to do.
"""

from flaxen.text.files import read_text_file, text_pieces
from flaxen.text.tokenizer import (
    BERT_SPECIAL_TOKENS,
    EOS_TOKEN,
    encode_batch,
    encode_documents,
    encode_truncated,
    load_tokenizer,
    pad_token_id,
    save_tokenizer,
    special_token_ids,
    train_bpe,
    train_wordpiece,
)

__all__ = [
    "BERT_SPECIAL_TOKENS",
    "EOS_TOKEN",
    "encode_batch",
    "encode_documents",
    "encode_truncated",
    "load_tokenizer",
    "pad_token_id",
    "read_text_file",
    "save_tokenizer",
    "special_token_ids",
    "text_pieces",
    "train_bpe",
    "train_wordpiece",
]
