import datasets
import pytest

from flaxen.text import train_bpe, train_wordpiece

TRAINING_TEXT = [
    "alpha beta gamma delta epsilon. Alpha beta gamma!",
    "one two three four five six. One two three?",
    "the movie was great, I loved it",
    "the movie was awful, I hated it",
    "it was fine, nothing special",
] * 20


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    """Keep the `datasets` Arrow cache of every test in its own temporary folder, not in ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", tmp_path / "hf_cache" / "downloads")


@pytest.fixture(scope="session")
def bpe():
    return train_bpe(iter(TRAINING_TEXT), vocab_size=300, min_frequency=2)


@pytest.fixture(scope="session")
def wordpiece():
    return train_wordpiece(iter(TRAINING_TEXT), vocab_size=200)
