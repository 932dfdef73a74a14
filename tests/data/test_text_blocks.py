import re

import numpy as np
import pytest

from flaxen.data import text_blocks

DOCUMENTS = [
    "alpha beta gamma delta epsilon. " * 9,
    "one two three four five six. " * 7,
    "Alpha beta gamma! " * 5,
]


@pytest.fixture
def document_files(tmp_path):
    paths = []
    for index, text in enumerate(DOCUMENTS):
        path = tmp_path / f"doc{index}.txt"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def expected_stream(tokenizer, texts):
    """Each document's ids followed by end-of-text (id 0), concatenated."""
    return [token for text in texts for token in tokenizer.encode(text).ids + [0]]


def test_blocks_are_the_documents_joined_by_end_of_text(bpe, document_files):
    splits = text_blocks(document_files, bpe, block_size=16, validation_fraction=0.0)
    stream = expected_stream(bpe, DOCUMENTS)
    blocks = splits.train["token_ids"]
    assert blocks.dtype == np.int32 and blocks.shape == (len(stream) // 16, 16)
    np.testing.assert_array_equal(blocks.reshape(-1), stream[: blocks.size])
    assert splits.validation is None
    assert splits.info["num_tokens"] == len(stream) and splits.info["num_documents"] == 3
    assert splits.info["dropped_tokens"] == len(stream) % 16


def test_a_block_never_crosses_a_document_boundary_without_end_of_text(bpe, document_files):
    splits = text_blocks(document_files, bpe, block_size=12, validation_fraction=0.2)
    blocks = np.concatenate([splits.train["token_ids"], splits.validation["token_ids"]])
    crossings = 0
    for block in blocks:
        pieces = np.split(block, np.flatnonzero(block == 0))  # each piece starts at an end-of-text (or the block)
        crossings += len(pieces) - 1
        for piece in pieces:
            text = bpe.decode(piece.tolist())
            assert any(text in document for document in DOCUMENTS), f"{text!r} mixes documents"
    assert crossings >= 2  # the boundaries were really inside blocks, so the check above had work to do


def test_validation_is_the_end_of_the_stream_with_no_overlap(bpe, document_files):
    splits = text_blocks(document_files, bpe, block_size=8, validation_fraction=0.25)
    stream = expected_stream(bpe, DOCUMENTS)
    train, validation = splits.train["token_ids"], splits.validation["token_ids"]
    num_blocks = len(stream) // 8
    assert len(validation) == round(num_blocks * 0.25) and len(train) + len(validation) == num_blocks
    np.testing.assert_array_equal(np.concatenate([train, validation]).reshape(-1), stream[: num_blocks * 8])
    assert splits.info["train_blocks"] == len(train) and splits.info["validation_blocks"] == len(validation)


def test_a_single_path_is_one_document(bpe, document_files):
    splits = text_blocks(str(document_files[0]), bpe, block_size=4, validation_fraction=0.0)
    assert splits.info["num_documents"] == 1
    assert splits.info["num_tokens"] == len(bpe.encode(DOCUMENTS[0]).ids) + 1


def test_text_shorter_than_a_block_says_how_many_tokens_it_has_and_needs(bpe, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("alpha beta")
    num_tokens = len(bpe.encode("alpha beta").ids) + 1
    with pytest.raises(ValueError, match=re.escape(f"the text has {num_tokens} tokens but 64 are needed")):
        text_blocks(short, bpe, block_size=32)
    with pytest.raises(ValueError, match=re.escape(f"the text has {num_tokens} tokens but 32 are needed")):
        text_blocks(short, bpe, block_size=32, validation_fraction=0.0)


def test_wordpiece_needs_an_end_of_text_it_knows(wordpiece, document_files):
    with pytest.raises(ValueError, match=r"no '<\|endoftext\|>' token.*'\[SEP\]'"):
        text_blocks(document_files, wordpiece, block_size=8)
    splits = text_blocks(document_files, wordpiece, block_size=8, eos_token="[SEP]", validation_fraction=0.0)
    sep = wordpiece.token_to_id("[SEP]")
    assert splits.info["eos_id"] == sep
    assert (splits.train["token_ids"] == sep).sum() == 3 - (splits.info["dropped_tokens"] > 0)
    assert (splits.train["token_ids"] == wordpiece.token_to_id("[CLS]")).sum() == 0


def test_undecodable_or_missing_documents_are_named(bpe, tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait ".encode("latin-1") * 50)
    with pytest.raises(ValueError, match=r"latin\.txt is not valid utf-8.*encoding='latin-1'"):
        text_blocks(latin, bpe, block_size=8)
    assert text_blocks(latin, bpe, block_size=8, encoding="latin-1").info["num_documents"] == 1
    with pytest.raises(ValueError, match="no such file: .*absent.txt"):
        text_blocks(tmp_path / "absent.txt", bpe, block_size=8)


def test_a_large_stream_holds_out_its_fraction_only_up_to_4096_blocks():
    from flaxen.data.text import block_plan

    small = block_plan(8 * 10_000, 8, 0.1, "text", 1, 0)  # 10,000 blocks: a tenth held out
    assert (small["train_blocks"], small["validation_blocks"]) == (9_000, 1_000)
    large = block_plan(8 * 1_000_000, 8, 0.1, "text", 1, 0)  # 1,000,000 blocks: the cap, not 100,000
    assert (large["train_blocks"], large["validation_blocks"]) == (1_000_000 - 4096, 4096)
