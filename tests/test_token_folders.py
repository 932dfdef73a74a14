"""Pretraining from a token folder (`flaxen tokenize`) trains exactly as from the text files, and resumes exactly."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

import flaxen
from flaxen import recipes
from flaxen.checkpoints import checkpoint_manager
from flaxen.cli import main
from flaxen.runs import CHECKPOINT_DIR
from flaxen.train.metrics import read_metrics

WORDS = "the king queen love night day sword crown blood heart fair foul sweet death life honour".split()
TINY = {"preset": "tiny", "batch_size": 4, "eval_every": 4, "progress": False, "tensorboard": False}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    paths = []
    for index in range(3):
        lines = [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(150)]
        path = folder / f"play{index}.txt"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def weights(run) -> dict[str, np.ndarray]:
    return load_file(run / "model.safetensors")


def losses(run) -> list[tuple[int, str, float]]:
    return [(r["step"], r["split"], r["loss"]) for r in read_metrics(run / "metrics.jsonl")]


def test_a_token_folder_trains_exactly_as_its_files(corpus, tmp_path):
    tokenize = [
        "tokenize",
        *map(str, corpus),
        "--out",
        str(tmp_path / "tokens"),
        "--vocab-size",
        "300",
        "--no-progress",
    ]
    assert main(tokenize) == 0
    from_files = recipes.pretrain_gpt(corpus, tmp_path / "files", steps=8, context_length=16, vocab_size=300, **TINY)
    from_tokens = recipes.pretrain_gpt(
        [tmp_path / "tokens"], tmp_path / "tokens-run", steps=8, context_length=16, **TINY
    )
    assert from_tokens["validation_loss"] == from_files["validation_loss"]
    assert losses(tmp_path / "tokens-run") == losses(tmp_path / "files")
    expected = weights(tmp_path / "files")
    for name, array in weights(tmp_path / "tokens-run").items():
        np.testing.assert_array_equal(array, expected[name])
    assert json.loads((tmp_path / "tokens-run" / "run.json").read_text())["data"]["tokens"] == str(tmp_path / "tokens")
    # `flaxen eval` rebuilds the validation blocks from the folder (its batches of 64 sum in another order).
    assert recipes.evaluate_run(tmp_path / "tokens-run")["loss"] == pytest.approx(
        from_tokens["validation_loss"], rel=1e-5
    )


def test_a_token_folder_run_resumes_exactly_and_checkpoints_its_reader(corpus, tmp_path):
    recipes.tokenize(corpus, tmp_path / "tokens", vocab_size=300, progress=False)
    source = [tmp_path / "tokens"]
    recipes.pretrain_gpt(source, tmp_path / "straight", steps=8, context_length=16, **TINY)
    # A run killed after its step-4 checkpoint: the same folder without what came later.
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / CHECKPOINT_DIR / "8")
    (tmp_path / "resumed" / "model.safetensors").unlink()
    recipes.pretrain_gpt(source, tmp_path / "resumed", steps=8, context_length=16, resume=True, **TINY)
    expected = weights(tmp_path / "straight")
    for name, array in weights(tmp_path / "resumed").items():
        np.testing.assert_array_equal(array, expected[name])
    with checkpoint_manager(tmp_path / "resumed" / CHECKPOINT_DIR, read_only=True) as manager:
        saved = json.loads((manager.directory / "4" / "progress" / "metadata").read_text())
    assert saved["data"] == {"next_index": 4}


def test_tokenize_refuses_bad_input_in_one_line(corpus, tmp_path, capsys):
    assert main(["tokenize", str(corpus[0]), "--out", str(tmp_path / "t"), "--kind", "unigram"]) == 2
    assert main(["tokenize", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "t")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "t").mkdir()
    assert main(["tokenize", str(corpus[0]), "--out", str(tmp_path / "t"), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["pretrain", "gpt", "--data", str(tmp_path), "--steps", "2", "--out", str(tmp_path / "r")]) == 2
    assert "not a token folder" in capsys.readouterr().err
    recipes.tokenize(corpus, tmp_path / "bpe-tokens", vocab_size=300, progress=False)
    bert = ["pretrain", "bert", "--data", str(tmp_path / "bpe-tokens"), "--steps", "2", "--out", str(tmp_path / "r")]
    assert main(bert) == 2
    assert "tokenize with --kind wordpiece for BERT" in capsys.readouterr().err
    gpt = ["pretrain", "gpt", "--data", str(tmp_path / "bpe-tokens"), "--steps", "2", "--out", str(tmp_path / "r")]
    assert main([*gpt, "--vocab-size", "500"]) == 2
    assert "--vocab-size 500 does not apply to token folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_corpus_above_the_sample_size_trains_its_tokenizer_on_its_start(tmp_path, monkeypatch):
    head, tail = tmp_path / "a.txt", tmp_path / "b.txt"
    head.write_text("alpha beta gamma delta\n" * 400)
    tail.write_text("zulu yankee xray whiskey\n" * 400)
    vocabularies = {}
    for cap in (10**9, head.stat().st_size):
        monkeypatch.setattr(recipes, "TOKENIZER_SAMPLE_BYTES", cap)
        folder = tmp_path / f"tokens-{cap}"
        recipes.tokenize([head, tail], folder, vocab_size=300, progress=False)
        vocabularies[cap] = flaxen.text.load_tokenizer(folder).get_vocab()
    assert {"Ġbeta", "Ġyankee"} <= vocabularies[10**9].keys()  # the whole corpus: both files' words
    sampled = vocabularies[head.stat().st_size]
    assert "Ġbeta" in sampled and not any("yankee" in token for token in sampled)  # only the first file's text
