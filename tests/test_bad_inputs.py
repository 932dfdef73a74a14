"""The bad-input catalogue beyond the CLI journeys (tests/test_cli.py): one clear error, nothing overwritten."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import flaxen
from flaxen.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
SOURCE = Path(flaxen.__file__).parent


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("flaxen: error:"), lines
    return lines[0]


@pytest.fixture
def truncated_folder(tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(FIXTURES / "bert-mlm", folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


def test_a_truncated_safetensors_file_is_one_clear_error(truncated_folder, tmp_path, capsys):
    with pytest.raises(ValueError, match="truncated"):
        flaxen.BertForMaskedLM.from_pretrained(truncated_folder)
    assert main(["convert", str(truncated_folder), str(tmp_path / "out")]) == 2
    assert "truncated" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    text = root / "doc.txt"
    text.write_text(("the king and the queen walk in the fair night. " * 400) + "\n")
    out = root / "gpt"
    assert (
        main(
            [
                "pretrain",
                "gpt",
                "--data",
                str(text),
                "--preset",
                "tiny",
                "--vocab-size",
                "300",
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def fingerprint(folder: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_config_with_unknown_keys_is_refused(gpt_run, tmp_path, capsys):
    with pytest.raises(ValueError, match="has no field"):
        flaxen.GPTConfig.from_dict({**flaxen.GPTConfig.tiny().to_dict(), "n_embd": 64})
    run = tmp_path / "run"
    shutil.copytree(gpt_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "rotary": True}))
    before = fingerprint(run)
    assert main(["eval", "--run", str(run)]) == 2
    assert "no field(s) rotary" in one_error_line(capsys)
    assert fingerprint(run) == before


def test_a_tokenizer_that_does_not_match_the_model_is_refused(gpt_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(gpt_run, run)
    vocab = json.loads(flaxen.GPTConfig.from_json(run / "config.json").to_json())["vocab_size"]
    rng = np.random.default_rng(0)  # thousands of distinct made-up words: merges enough for any vocabulary asked
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 5)) for _ in range(3000)]
    bigger = flaxen.text.train_bpe(iter([" ".join(words)] * 3), vocab_size=vocab + 300, min_frequency=1)
    assert bigger.get_vocab_size() > vocab
    flaxen.text.save_tokenizer(bigger, run)
    assert main(["generate", "--run", str(run), "--max-new-tokens", "4"]) == 2
    assert "different models" in one_error_line(capsys)


def test_csv_with_empty_texts_is_refused(tmp_path, capsys):
    table = tmp_path / "reviews.csv"
    table.write_text("text,label\nfine day,positive\n,negative\nbad day,negative\n")
    assert main(["finetune", "bert", "--data", str(table), "--preset", "tiny", "--out", str(tmp_path / "out")]) == 2
    assert "empty 'text'" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_nothing_in_flaxen_unpickles():
    unpickling = ("import pickle", "pickle.load", "torch.load", "allow_pickle=True", "joblib.load", "dill.load")
    offenders = [
        f"{path.relative_to(SOURCE)}: {needle}"
        for path in SOURCE.rglob("*.py")
        for needle in unpickling
        if needle in path.read_text()
    ]
    assert offenders == []
