import numpy as np
import pytest

WORDS = (
    "the king queen thee thou art love night day sword crown heart blood honour lord lady speak good noble "
    "Hamlet Romeo Juliet Macbeth sweet fair death life world time man woman father mother son brother café "
    "naïve 日本 語 über"
).split()


def write_corpus(path, num_lines=400, seed=0):
    """A small deterministic corpus of random verse-like lines."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(num_lines):
        words = rng.choice(WORDS, size=rng.integers(3, 12))
        line = " ".join(words)
        lines.append(line[0].upper() + line[1:] + rng.choice([",", ".", "!", "?", ";"]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "verse.txt")
