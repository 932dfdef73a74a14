import json

import numpy as np
import pytest

from flaxen.text import (
    encode_batch,
    encode_documents,
    load_tokenizer,
    save_tokenizer,
    special_token_ids,
    train_bpe,
    train_wordpiece,
)

HF_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "Hello", "world", "##s", ",", "!"]


@pytest.fixture(scope="module")
def bpe(corpus_file):
    return train_bpe([corpus_file], vocab_size=400)


@pytest.fixture(scope="module")
def wordpiece(corpus_file):
    return train_wordpiece([corpus_file], vocab_size=300)


def write_hf_bert_folder(folder, do_lower_case=None):
    """A Hugging Face BERT tokenizer folder with only vocab.txt (and optionally tokenizer_config.json)."""
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(HF_VOCAB) + "\n")
    if do_lower_case is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": do_lower_case}))
    return folder


@pytest.mark.parametrize("fixture", ["bpe", "wordpiece"])
def test_saved_tokenizer_loads_from_folder_and_from_file(fixture, request, tmp_path):
    tokenizer = request.getfixturevalue(fixture)
    path = save_tokenizer(tokenizer, tmp_path / "saved")
    assert path == tmp_path / "saved" / "tokenizer.json"
    text = "The king, the queen and thee! 日本"
    for source in (tmp_path / "saved", path, str(path)):
        loaded = load_tokenizer(source)
        assert loaded.encode(text).ids == tokenizer.encode(text).ids
        assert loaded.decode(loaded.encode(text).ids) == tokenizer.decode(tokenizer.encode(text).ids)


def test_hf_vocab_folder_lowercases_by_default(tmp_path):
    tokenizer = load_tokenizer(write_hf_bert_folder(tmp_path / "bert"))
    assert tokenizer.encode("Hello worlds!").tokens == ["[CLS]", "hello", "world", "##s", "!", "[SEP]"]
    assert special_token_ids(tokenizer) == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}


def test_hf_vocab_folder_honours_do_lower_case_false(tmp_path):
    tokenizer = load_tokenizer(write_hf_bert_folder(tmp_path / "bert", do_lower_case=False))
    assert tokenizer.encode("Hello hello, dog").tokens == ["[CLS]", "Hello", "hello", ",", "[UNK]", "[SEP]"]


def test_hf_vocab_without_special_tokens_is_rejected(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("[UNK]\nhello\n")
    with pytest.raises(ValueError, match=r"lacks the BERT special token\(s\) \[CLS\], \[SEP\]"):
        load_tokenizer(folder)


def test_load_tokenizer_errors_say_what_is_expected(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer at .*nowhere"):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no tokenizer.json, vocab.txt or vocab.json"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "broken.json").write_text('{"version": "1.0"}')
    with pytest.raises(ValueError, match="broken.json is not a tokenizer.json the tokenizers library can read"):
        load_tokenizer(tmp_path / "broken.json")


def test_encode_batch_truncates_keeping_sep_and_pads_with_pad(wordpiece):
    batch = encode_batch(wordpiece, ["the king sweet queen of the night", "love"], max_length=5)
    assert batch["token_ids"].dtype == np.int32 and batch["padding_mask"].dtype == bool
    long, short = batch["token_ids"]
    assert wordpiece.decode(long.tolist(), skip_special_tokens=False) == "[CLS] the king sweet [SEP]"
    assert short.tolist() == [2, wordpiece.token_to_id("love"), 3, 0, 0]
    assert batch["padding_mask"].tolist() == [[True] * 5, [True, True, True, False, False]]


def test_encode_batch_pads_a_gpt_tokenizer_with_end_of_text(bpe):
    batch = encode_batch(bpe, [" thee", "the king the queen the night"], max_length=4)
    assert batch["token_ids"][0].tolist() == [bpe.token_to_id("Ġthee"), 0, 0, 0]
    assert batch["padding_mask"][0].tolist() == [True, False, False, False]
    assert batch["token_ids"][1].tolist() == bpe.encode("the king the queen the night").ids[:4]


def test_encode_batch_of_nothing_keeps_the_shape(bpe):
    batch = encode_batch(bpe, [], max_length=7)
    assert batch["token_ids"].shape == (0, 7) and batch["padding_mask"].shape == (0, 7)


def test_encoding_helpers_leave_the_tokenizer_settings_as_they_were(corpus_file):
    tokenizer = train_wordpiece([corpus_file], vocab_size=300, padding=True)
    tokenizer.enable_truncation(max_length=50)
    before = (tokenizer.padding, tokenizer.truncation)
    encode_batch(tokenizer, ["the king"], max_length=3)
    encode_documents(tokenizer, ["the king"])
    assert (tokenizer.padding, tokenizer.truncation) == before


def test_encode_documents_adds_no_special_tokens_and_never_truncates_or_pads(corpus_file):
    tokenizer = train_wordpiece([corpus_file], vocab_size=300, padding=True)
    tokenizer.enable_truncation(max_length=3)
    long_text = " ".join(["the king"] * 20)
    short_ids, long_ids = encode_documents(tokenizer, ["love", long_text])
    assert short_ids == [tokenizer.token_to_id("love")]
    assert long_ids == [tokenizer.token_to_id("the"), tokenizer.token_to_id("king")] * 20
