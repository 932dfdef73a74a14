import numpy as np
import pytest

from flaxen.text import EOS_TOKEN, special_token_ids, train_bpe, train_wordpiece

# Pieces that stress byte-level BPE: combining marks, CJK, emoji with modifiers/ZWJ/flags, RTL, invisible and
# control characters, whitespace runs, and fragments of the special token (never the whole of it).
UNICODE_PIECES = [
    " ",
    "  ",
    "\n",
    "\n\n",
    "\r\n",
    "\t",
    "\u00a0",
    "\u200b",
    "\ufeff",
    "\x00",
    "\x7f",
    "e\u0301",
    "n\u0303\u0323",
    "\u0301",
    "日本語",
    "中文",
    "한국어",
    "ひらがな",
    "👍🏽",
    "👩‍👩‍👧",
    "🇫🇷",
    "\U0010fffd",
    "Ω",
    "ß",
    "İ",
    "ﬁ",
    "ع",
    "שלום",
    "a",
    "The",
    "thee",
    " king",
    "'s",
    "123",
    "<|",
    "endoftext",
    "|",
]


def random_texts(count, seed):
    """Random strings built from UNICODE_PIECES and random non-surrogate code points."""
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(count):
        parts = []
        for _ in range(rng.integers(0, 25)):
            if rng.random() < 0.2:
                code_point = int(rng.integers(1, 0x110000))
                parts.append(chr(code_point) if not 0xD800 <= code_point <= 0xDFFF else "x")
            else:
                parts.append(UNICODE_PIECES[rng.integers(len(UNICODE_PIECES))])
        texts.append("".join(parts))
    return [text for text in texts if EOS_TOKEN not in text]


@pytest.fixture(scope="module")
def bpe(corpus_file):
    return train_bpe([corpus_file], vocab_size=400)


@pytest.fixture(scope="module")
def wordpiece(corpus_file):
    return train_wordpiece([corpus_file], vocab_size=300)


def test_bpe_round_trips_arbitrary_unicode(bpe):
    texts = random_texts(1500, seed=0) + ["", " leading space", "  two leading", "trailing  ", "\n", "a\r\nb"]
    for text in texts:
        assert bpe.decode(bpe.encode(text).ids) == text, repr(text)


def test_bpe_batch_encoding_round_trips_too(bpe):
    texts = random_texts(200, seed=1)
    decoded = bpe.decode_batch([encoding.ids for encoding in bpe.encode_batch(texts)])
    assert decoded == texts


def test_bpe_has_end_of_text_as_id_zero_and_as_one_token(bpe):
    assert special_token_ids(bpe) == {"eos": 0}
    ids = bpe.encode(f"night{EOS_TOKEN}day").ids
    assert ids == bpe.encode("night").ids + [0] + bpe.encode("day").ids
    assert bpe.id_to_token(0) == EOS_TOKEN


def test_bpe_merges_frequent_words_into_single_tokens(bpe):
    assert bpe.encode(" thee").tokens == ["Ġthee"]
    assert bpe.encode(" Hamlet").tokens == ["ĠHamlet"]
    assert len(bpe.encode("zqxj").tokens) == 4  # never seen: one byte token each


def test_bpe_does_not_add_a_prefix_space(bpe):
    assert bpe.encode("king").tokens[0] != bpe.encode(" king").tokens[0]


def test_bpe_trains_from_an_iterator_of_texts():
    tokenizer = train_bpe(iter(["hello hello hello world"] * 50), vocab_size=300, min_frequency=2)
    assert tokenizer.encode("hello hello").tokens == ["hello", "Ġhello"]


def test_bpe_respects_min_frequency():
    tokenizer = train_bpe(iter(["rare", "common common common"]), vocab_size=300, min_frequency=3)
    assert "common" in tokenizer.get_vocab()
    assert "rare" not in tokenizer.get_vocab()


def test_bpe_vocab_size_below_byte_alphabet_is_rejected(corpus_file):
    with pytest.raises(ValueError, match="vocab_size=100 is too small.*at least 257"):
        train_bpe([corpus_file], vocab_size=100)


def test_wordpiece_special_tokens_have_fixed_ids(wordpiece):
    assert [wordpiece.id_to_token(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert special_token_ids(wordpiece) == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}


def test_wordpiece_wraps_single_and_pair_in_cls_and_sep(wordpiece):
    single = wordpiece.encode("the king")
    assert single.tokens == ["[CLS]", "the", "king", "[SEP]"]
    pair = wordpiece.encode("the king", "sweet night")
    assert pair.tokens == ["[CLS]", "the", "king", "[SEP]", "sweet", "night", "[SEP]"]
    assert pair.type_ids == [0, 0, 0, 0, 1, 1, 1]


def test_wordpiece_lowercases_and_strips_accents_by_default(wordpiece):
    assert wordpiece.encode("THE KING").ids == wordpiece.encode("the king").ids
    assert wordpiece.encode("Café").tokens[1:-1] == wordpiece.encode("cafe").tokens[1:-1]


def test_wordpiece_can_keep_case(corpus_file):
    cased = train_wordpiece([corpus_file], vocab_size=300, lowercase=False)
    assert cased.encode("Hamlet").tokens[1:-1] == ["Hamlet"]
    assert cased.encode("Hamlet").ids != cased.encode("hamlet").ids


def test_wordpiece_splits_unseen_words_into_continuation_pieces(wordpiece):
    tokens = wordpiece.encode("kingdom").tokens[1:-1]
    assert tokens[0] == "king" and all(token.startswith("##") for token in tokens[1:])
    assert wordpiece.decode(wordpiece.encode("the kingdom").ids) == "the kingdom"


def test_wordpiece_pads_with_pad_only_when_requested(corpus_file, wordpiece):
    assert wordpiece.padding is None
    padded = train_wordpiece([corpus_file], vocab_size=300, padding=True)
    short, long = padded.encode_batch(["king", "the king and the queen"])
    assert len(short.ids) == len(long.ids)
    assert short.ids[-1] == 0 and short.attention_mask[-1] == 0


def test_wordpiece_vocab_size_smaller_than_alphabet_is_rejected(corpus_file):
    with pytest.raises(ValueError, match="vocab_size=20 is too small for this text"):
        train_wordpiece([corpus_file], vocab_size=20)


@pytest.mark.parametrize("train", [train_bpe, train_wordpiece])
def test_missing_file_is_named(train, tmp_path):
    with pytest.raises(ValueError, match=r"no such file: .*absent\.txt.*iter\(texts\)"):
        train([tmp_path / "absent.txt"], vocab_size=300)


@pytest.mark.parametrize("train", [train_bpe, train_wordpiece])
def test_empty_inputs_are_rejected(train, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        train([empty], vocab_size=300)
    with pytest.raises(ValueError, match="iterator is empty"):
        train(iter([]), vocab_size=300)
    with pytest.raises(ValueError, match="no files given"):
        train([], vocab_size=300)


def test_non_utf8_file_names_the_file_and_the_encoding_option(tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("le café est très bon\n".encode("latin-1") * 20)
    with pytest.raises(ValueError, match=r"latin\.txt is not valid utf-8 text.*encoding='latin-1'"):
        train_bpe([latin], vocab_size=300)
    tokenizer = train_bpe([latin], vocab_size=300, encoding="latin-1")
    assert tokenizer.decode(tokenizer.encode("très").ids) == "très"
    # The file was read as the characters it holds: the merges learned from it spell "café" and "très" (read as
    # bytes or as another code page, the file would hold other character sequences and these words stay split).
    assert len(tokenizer.encode("le café est très bon").ids) <= 5
    assert tokenizer.decode(tokenizer.encode(" café").ids) == " café"
