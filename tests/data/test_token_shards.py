"""Token folders: the on-disk path gives the in-memory path's tokens, blocks and batches, reading only what it needs."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from flaxen.data import ArrayDataset, TokenShards, text_blocks, tokenize_to_shards
from flaxen.data.shards import SHARDS_FILE
from flaxen.data.text import document_tokens
from flaxen.recipes import mlm_blocks
from flaxen.text import encode_documents, text_pieces, train_bpe, train_wordpiece
from flaxen.text.files import MAX_PIECE_FACTOR
from flaxen.text.tokenizer import encodes_in_pieces

# Line starts, blank lines, trailing spaces, indented lines, CRLF and a line without a newline: the places where a
# careless cut would change the pre-tokens.
DOCUMENTS = [
    "The king is dead.\nLong live the king!  \n\n  Enter QUEEN, weeping\n\tExit.\r\nlove night day " * 40,
    "one two three four five six.\n" * 60 + "sword crown blood",
    "Alpha beta gamma!\n\n\nDelta epsilon\n" * 30,
]


@pytest.fixture
def corpus(tmp_path):
    paths = []
    for index, text in enumerate(DOCUMENTS):
        path = tmp_path / f"doc{index}.txt"
        path.write_bytes(text.encode("utf-8"))
        paths.append(path)
    return paths


@pytest.mark.parametrize("train", [train_bpe, train_wordpiece])
def test_pieces_are_the_file_and_encode_like_it(corpus, train):
    tokenizer = train(corpus, vocab_size=400)  # trained on these texts, so it has merges of their whitespace runs
    for path in corpus:
        whole = path.read_text(encoding="utf-8")
        pieces = list(text_pieces(path, piece_chars=97))
        assert len(pieces) > 10 and "".join(pieces) == whole
        pieced = [token for ids in encode_documents(tokenizer, pieces) for token in ids]
        assert pieced == encode_documents(tokenizer, [whole])[0]


@pytest.fixture
def token_folder(corpus, bpe, tmp_path):
    # Shards of 300 tokens: blocks cross shard boundaries as well as document ends.
    tokenize_to_shards(corpus, bpe, tmp_path / "tokens", shard_tokens=300, progress=False)
    return tmp_path / "tokens"


def test_the_folder_holds_the_stream_text_blocks_cuts(corpus, bpe, token_folder):
    meta = json.loads((token_folder / SHARDS_FILE).read_text())
    assert meta["dtype"] == "uint16" and meta["eos_token"] == "<|endoftext|>" and len(meta["shards"]) > 3
    in_memory = text_blocks(corpus, bpe, 17)
    on_disk = TokenShards(token_folder).blocks(17)
    assert on_disk.info == in_memory.info
    for split in ("train", "validation"):
        np.testing.assert_array_equal(getattr(on_disk, split)["token_ids"], getattr(in_memory, split)["token_ids"])
    assert all(isinstance(array, np.memmap) for array in TokenShards(token_folder)._arrays)  # read, never loaded
    assert TokenShards(token_folder).tokenizer.to_str() == bpe.to_str()


def test_training_and_evaluation_batches_equal_the_in_memory_ones(corpus, bpe, token_folder):
    in_memory = text_blocks(corpus, bpe, 17)
    on_disk = TokenShards(token_folder).blocks(17)
    steps_per_epoch = len(in_memory.train) // 8
    expected = in_memory.train.batches(8, seed=5, start_step=3)
    got = on_disk.train.batches(8, seed=5, start_step=3)
    for _ in range(3 * steps_per_epoch):  # across epoch ends
        np.testing.assert_array_equal(next(got)["token_ids"], next(expected)["token_ids"])
    for got_batch, expected_batch in itertools.zip_longest(
        on_disk.validation.epoch_batches(8), in_memory.validation.epoch_batches(8)
    ):
        assert got_batch.keys() == expected_batch.keys()
        for key in got_batch:
            np.testing.assert_array_equal(got_batch[key], expected_batch[key])


def test_each_process_reads_its_share_and_together_they_read_the_batch(token_folder):
    blocks = TokenShards(token_folder).blocks(17).train
    whole = blocks.batches(8, seed=1)
    shares = [blocks.batches(8, seed=1, shard=(index, 2)) for index in range(2)]
    for _ in range(5):
        together = np.concatenate([next(share)["token_ids"] for share in shares])
        np.testing.assert_array_equal(together, next(whole)["token_ids"])
    in_memory = ArrayDataset({"token_ids": blocks["token_ids"]})
    np.testing.assert_array_equal(
        next(in_memory.batches(8, seed=1, shard=(1, 2)))["token_ids"],
        next(blocks.batches(8, seed=1, shard=(1, 2)))["token_ids"],
    )
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        next(blocks.batches(8, seed=1, shard=(0, 3)))


def test_the_iterator_state_resumes_the_batches(token_folder):
    blocks = TokenShards(token_folder).blocks(17).train
    batches = blocks.batches(4, seed=2)
    for _ in range(7):
        next(batches)
    state = batches.get_state()
    following = [next(batches)["token_ids"] for _ in range(3)]
    resumed = blocks.batches(4, seed=2)
    resumed.set_state(state)
    for expected in following:
        np.testing.assert_array_equal(next(resumed)["token_ids"], expected)
    np.testing.assert_array_equal(next(blocks.batches(4, seed=2, start_step=7))["token_ids"], following[0])


def test_bert_rows_wrap_blocks_like_mlm_blocks(corpus, wordpiece, tmp_path):
    tokenize_to_shards(corpus, wordpiece, tmp_path / "wp", progress=False)
    shards = TokenShards(tmp_path / "wp")
    assert shards.meta["eos_token"] == "[SEP]"
    in_memory, on_disk = mlm_blocks(corpus, wordpiece, 20), mlm_blocks(shards, wordpiece, 20)
    assert on_disk.info == in_memory.info
    for key in ("token_ids", "padding_mask"):
        np.testing.assert_array_equal(on_disk.train[key], in_memory.train[key])
        np.testing.assert_array_equal(
            next(on_disk.train.batches(4, seed=0))[key], next(in_memory.train.batches(4, seed=0))[key]
        )


def test_a_vocabulary_beyond_uint16_is_stored_as_uint32(tmp_path):
    vocab = {f"w{index}": index for index in range(70_000)} | {"<|endoftext|>": 70_000}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "big.txt").write_text("w1 w69999 w65536\nw3")
    meta = tokenize_to_shards([tmp_path / "big.txt"], tokenizer, tmp_path / "tokens", progress=False)
    assert meta["dtype"] == "uint32"
    np.testing.assert_array_equal(TokenShards(tmp_path / "tokens").read(0, 5), [1, 69999, 65536, 3, 70_000])


def test_refusals_touch_nothing(corpus, bpe, token_folder, tmp_path):
    before = sorted(path.name for path in token_folder.iterdir())
    with pytest.raises(ValueError, match="already exists"):
        tokenize_to_shards(corpus, bpe, token_folder, progress=False)
    assert sorted(path.name for path in token_folder.iterdir()) == before
    with pytest.raises(ValueError, match="no such file"):
        tokenize_to_shards([corpus[0], tmp_path / "missing.txt"], bpe, tmp_path / "new", progress=False)
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid utf-8"):
        tokenize_to_shards([corpus[0], tmp_path / "latin.txt"], bpe, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new-*"))  # no half-written folder is left
    shard = token_folder / "tokens-00001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match="tokens-00001.bin is missing or not 600 bytes; tokenize the corpus again"):
        TokenShards(token_folder)
    with pytest.raises(ValueError, match="not a token folder"):
        TokenShards(tmp_path)


def test_lines_without_a_break_are_cut_at_spaces_and_text_without_spaces_at_a_bound(tmp_path, bpe):
    one_line = tmp_path / "one_line.txt"
    one_line.write_text("to be or  not to be, that is the question; " * 300)  # 12,900 characters, no newline
    pieces = list(text_pieces(one_line, piece_chars=500))
    assert len(pieces) > 20 and "".join(pieces) == one_line.read_text()
    assert [t for ids in encode_documents(bpe, pieces) for t in ids] == encode_documents(bpe, [one_line.read_text()])[0]
    no_spaces = tmp_path / "no_spaces.txt"
    no_spaces.write_text("字" * 20_000)
    pieces = list(text_pieces(no_spaces, piece_chars=100))
    assert "".join(pieces) == no_spaces.read_text() and max(map(len, pieces)) <= (MAX_PIECE_FACTOR + 1) * 100


def test_only_tokenizers_whose_pieces_encode_like_the_whole_are_fed_pieces(bpe, wordpiece, tmp_path):
    assert encodes_in_pieces(bpe) and encodes_in_pieces(wordpiece)
    metaspace = Tokenizer(models.WordLevel({"▁a": 0, "▁b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace()
    assert not encodes_in_pieces(metaspace)
    document = tmp_path / "doc.txt"
    document.write_text("a b\n" * 100_000)  # pieces would give each piece's first word a "▁" of its own
    whole = metaspace.encode(document.read_text(), add_special_tokens=False).ids + [1]
    assert np.concatenate(list(document_tokens([document], metaspace, 1))).tolist() == whole
