"""Folders in and out: bit-for-bit round trips, transformers reading our saves, shards, heads, and every refusal."""

import functools
import json
import logging
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_reference import CASES, FIXTURES, assert_parity, flaxen_outputs, hf_outputs, image_inputs, text_inputs
from safetensors.numpy import load_file, save_file

from flaxen import (
    GPT,
    Bert,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    GPTConfig,
    GPTForCausalLM,
    GPTForSequenceClassification,
    ViT,
    ViTConfig,
    ViTForImageClassification,
)

# Hugging Face folders whose every tensor has a place in the flaxen class (ViTModel's pooler has none).
ROUND_TRIP_CASES = [name for name in CASES if name != "vit-model-interpolated"]
NATIVE_MODELS = {
    "GPT": (GPT, GPTConfig.tiny(vocab_size=99)),
    "GPTForCausalLM": (GPTForCausalLM, GPTConfig.tiny(vocab_size=99)),
    "GPTForSequenceClassification": (GPTForSequenceClassification, GPTConfig.tiny(vocab_size=99, num_labels=3)),
    "Bert": (Bert, BertConfig.tiny(vocab_size=99)),
    "BertForMaskedLM": (BertForMaskedLM, BertConfig.tiny(vocab_size=99, activation="gelu_tanh")),
    "BertForSequenceClassification": (BertForSequenceClassification, BertConfig.tiny(vocab_size=99, num_labels=3)),
    "ViT": (ViT, ViTConfig.tiny(image_size=8)),
    "ViTForImageClassification": (ViTForImageClassification, ViTConfig.tiny(image_size=8)),
}


def load_quietly(model_class, folder, **overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model_class.from_pretrained(folder, **overrides)


def load_recording_warnings(model_class, folder, **overrides):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = model_class.from_pretrained(folder, **overrides)
    return model, [str(w.message) for w in caught]


def params(model) -> dict[str, np.ndarray]:
    return {".".join(map(str, path)): np.asarray(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@functools.cache  # built once per session: eager construction compiles every initializer
def native_model(name):
    """A flaxen model with every parameter nudged off its init (LayerNorm scales/biases, zero biases); eval mode."""
    model_class, config = NATIVE_MODELS[name]
    model = model_class(config, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(2)
    nnx.update(
        model, jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape, np.float32), nnx.state(model, nnx.Param))
    )
    model.eval()
    return model


def native_inputs(model):
    if isinstance(model.config, ViTConfig):
        return image_inputs(8, 8)
    return text_inputs(token_types=isinstance(model.config, BertConfig))


def assert_same_tensors(a: dict[str, np.ndarray], b: dict[str, np.ndarray]):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name


# ------------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ROUND_TRIP_CASES)
def test_hf_to_flaxen_to_hf_is_bit_for_bit(name, tmp_path):
    model_class = CASES[name].flaxen_class
    model = model_class.from_pretrained(FIXTURES / name)
    model.save_pretrained(tmp_path)
    assert_same_tensors(load_file(tmp_path / "model.safetensors"), load_file(FIXTURES / name / "model.safetensors"))
    hf_config = json.loads((FIXTURES / name / "config.json").read_text())
    saved_config = json.loads((tmp_path / "config.json").read_text())
    assert saved_config["architectures"] == hf_config["architectures"]
    assert model_class.from_pretrained(tmp_path).config == model.config


@pytest.mark.parametrize("name", NATIVE_MODELS)
def test_transformers_loads_our_hf_save_without_warnings_and_agrees(name, tmp_path):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = native_model(name)
    model.save_pretrained(tmp_path)
    architecture = json.loads((tmp_path / "config.json").read_text())["architectures"][0]

    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        hf_model, info = getattr(transformers, architecture).from_pretrained(tmp_path, output_loading_info=True)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    hf_model.eval()
    # ViTModel always builds a pooler, which flaxen's ViT (classifying [CLS] directly) does not have.
    expected_missing = {"pooler.dense.weight", "pooler.dense.bias"} if name == "ViT" else set()
    assert set(info["missing_keys"]) == expected_missing
    assert not info["unexpected_keys"] and not info["mismatched_keys"] and not info["error_msgs"]
    weight_messages = [
        r.getMessage() for r in records if any(w in r.getMessage() for w in ("weight", "initialized", "not used"))
    ]
    assert bool(weight_messages) == (name == "ViT"), weight_messages

    inputs = native_inputs(model)
    if name == "GPTForSequenceClassification":  # without a pad_token_id transformers pools one unpadded row only
        inputs = {"token_ids": inputs["token_ids"][:1], "padding_mask": inputs["padding_mask"][:1]}
    expected = hf_outputs(hf_model, inputs)
    assert_parity(flaxen_outputs(model, inputs), expected)
    assert_same_tensors(params(type(model).from_pretrained(tmp_path)), params(model))  # flaxen -> HF -> flaxen


@pytest.mark.parametrize("name", NATIVE_MODELS)
def test_flaxen_format_round_trip(name, tmp_path):
    model = native_model(name)
    model.save_pretrained(tmp_path, format="flaxen")
    saved_config = json.loads((tmp_path / "config.json").read_text())
    assert saved_config["config_class"] == type(model.config).__name__
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.config == model.config
    assert_same_tensors(params(loaded), params(model))


def test_flaxen_format_uses_our_parameter_names(tmp_path):
    native_model("GPTForCausalLM").save_pretrained(tmp_path, format="flaxen")
    assert "gpt.stack.blocks.0.attention.qkv.kernel" in load_file(tmp_path / "model.safetensors")


def test_flaxen_folders_move_between_backbone_and_task_models(tmp_path):
    mlm = native_model("BertForMaskedLM")
    mlm.save_pretrained(tmp_path / "mlm", format="flaxen")
    backbone, messages = load_recording_warnings(Bert, tmp_path / "mlm")
    assert any("skipped" in m and "lm_head" in m for m in messages)
    assert any("bert.pooler not in the folder" in m for m in messages)
    assert_same_tensors(
        {k: v for k, v in params(backbone).items() if not k.startswith("pooler.")},
        {k.removeprefix("bert."): v for k, v in params(mlm).items() if k.startswith("bert.")},
    )
    backbone.save_pretrained(tmp_path / "backbone", format="flaxen")
    classifier = load_quietly(BertForSequenceClassification, tmp_path / "backbone", num_labels=4)
    assert classifier.classifier.kernel.shape == (64, 4)
    np.testing.assert_array_equal(classifier.bert.pooler.kernel[...], backbone.pooler.kernel[...])


# ------------------------------------------------------------------------------------------------------ heads


def test_a_head_missing_from_the_folder_starts_fresh_with_a_warning():
    folder = FIXTURES / "bert-model"  # BertModel: backbone and pooler, no classifier
    model, messages = load_recording_warnings(BertForSequenceClassification, folder, num_labels=2)
    assert messages == [
        f"BertForSequenceClassification.from_pretrained({str(folder)!r}): "
        "classifier not in the folder, so freshly initialised; train before use"
    ]
    eager = BertForSequenceClassification(model.config, rngs=nnx.Rngs(0))  # the default rngs, initialised eagerly
    np.testing.assert_allclose(
        model.classifier.kernel[...], eager.classifier.kernel[...], rtol=1e-6
    )  # jit vs eager: last bit
    backbone = Bert.from_pretrained(folder)
    assert_same_tensors(params(model.bert), params(backbone))


def test_tensors_without_a_place_are_skipped_with_a_warning():
    folder = FIXTURES / "bert-classifier"  # BertForSequenceClassification: pooler and classifier, no MLM head
    _, messages = load_recording_warnings(BertForMaskedLM, folder)
    assert len(messages) == 2
    assert "bert.pooler.dense.bias, bert.pooler.dense.weight (BertForMaskedLM has no bert.pooler)" in messages[0]
    assert "classifier.bias, classifier.weight (BertForMaskedLM has no classifier)" in messages[0]
    assert "lm_head not in the folder, so freshly initialised" in messages[1]


def test_gpt2_causal_mask_buffers_are_ignored(tmp_path):
    shutil.copytree(FIXTURES / "gpt2-lm", tmp_path, dirs_exist_ok=True)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors |= {f"transformer.h.{i}.attn.bias": np.tril(np.ones((1, 1, 16, 16), bool)) for i in range(2)}
    tensors |= {"lm_head.weight": tensors["transformer.wte.weight"]}
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model, messages = load_recording_warnings(GPTForCausalLM, tmp_path)
    assert len(messages) == 1 and "transformer.h.*.attn.bias (×2) (causal-mask buffer)" in messages[0]
    assert_same_tensors(params(model), params(GPTForCausalLM.from_pretrained(FIXTURES / "gpt2-lm")))


# ---------------------------------------------------------------------------------------------- folder kinds


def test_a_sharded_checkpoint_with_an_index_loads(tmp_path):
    shutil.copy(FIXTURES / "bert-mlm" / "config.json", tmp_path)
    tensors = load_file(FIXTURES / "bert-mlm" / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, shard in shards.items():
        save_file({n: tensors[n] for n in shard}, tmp_path / file, metadata={"format": "pt"})
    weight_map = {n: file for file, shard in shards.items() for n in shard}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert_same_tensors(
        params(BertForMaskedLM.from_pretrained(tmp_path)),
        params(BertForMaskedLM.from_pretrained(FIXTURES / "bert-mlm")),
    )


def test_bare_backbone_checkpoints_without_the_prefix_load(tmp_path):
    """sentence-transformers and GPT2Model folders keep the backbone's tensors without "bert." / "transformer."."""
    shutil.copy(FIXTURES / "gpt2-lm" / "config.json", tmp_path)
    tensors = load_file(FIXTURES / "gpt2-lm" / "model.safetensors")
    save_file({n.removeprefix("transformer."): t for n, t in tensors.items()}, tmp_path / "model.safetensors")
    assert_same_tensors(
        params(GPT.from_pretrained(tmp_path)), params(GPTForCausalLM.from_pretrained(FIXTURES / "gpt2-lm").gpt)
    )


def test_bfloat16_checkpoints_load_as_float32(tmp_path):
    shutil.copy(FIXTURES / "gpt2-lm" / "config.json", tmp_path)
    tensors = {n: t.astype(jnp.bfloat16) for n, t in load_file(FIXTURES / "gpt2-lm" / "model.safetensors").items()}
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    embedding = GPTForCausalLM.from_pretrained(tmp_path).gpt.token_embedding.embedding[...]
    assert embedding.dtype == jnp.float32
    np.testing.assert_array_equal(embedding, tensors["transformer.wte.weight"].astype(np.float32))


def test_a_pytorch_bin_only_folder_is_refused_with_the_conversion_command(tmp_path):
    shutil.copy(FIXTURES / "bert-model" / "config.json", tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(ValueError, match="only safetensors") as error:
        Bert.from_pretrained(tmp_path)
    assert "pickle" in str(error.value)
    assert "save_pretrained(p, safe_serialization=True)" in str(error.value)


def test_bert_special_ids_come_from_the_folder_tokenizer(tmp_path):
    shutil.copytree(FIXTURES / "bert-mlm", tmp_path, dirs_exist_ok=True)
    vocab = (
        ["[PAD]"]
        + [f"[unused{i}]" for i in range(9)]
        + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + [f"w{i}" for i in range(85)]
    )
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = BertForMaskedLM.from_pretrained(tmp_path).config
    assert (config.pad_token_id, config.mask_token_id, config.special_token_ids) == (0, 13, (0, 10, 11, 12, 13))
    assert BertForMaskedLM.from_pretrained(tmp_path, mask_token_id=5).config.mask_token_id == 5  # overrides win


def test_a_tokenizer_the_library_cannot_read_leaves_the_special_ids_at_their_defaults(tmp_path):
    shutil.copytree(FIXTURES / "bert-mlm", tmp_path, dirs_exist_ok=True)
    (tmp_path / "tokenizer.json").write_text("{not json")
    config = BertForMaskedLM.from_pretrained(tmp_path).config
    expected = json.loads((tmp_path / "config.json").read_text())["pad_token_id"]
    assert config.pad_token_id == expected and config.mask_token_id == BertConfig().mask_token_id


# ---------------------------------------------------------------------------------------------------- refusals


def test_a_folder_of_another_family_is_refused():
    expected = (
        r"holds a Hugging Face 'vit' model \(ViTForImageClassification\); BertForMaskedLM reads model_type 'bert'"
    )
    with pytest.raises(ValueError, match=expected):
        BertForMaskedLM.from_pretrained(FIXTURES / "vit-classifier")


def test_a_flaxen_folder_of_another_family_is_refused(tmp_path):
    native_model("GPTForCausalLM").save_pretrained(tmp_path, format="flaxen")
    with pytest.raises(ValueError, match="holds a flaxen GPTConfig model; Bert needs a BertConfig folder"):
        Bert.from_pretrained(tmp_path)


def test_weights_of_another_family_are_all_reported_in_one_error(tmp_path):
    shutil.copy(FIXTURES / "bert-model" / "config.json", tmp_path)
    shutil.copy(FIXTURES / "gpt2-lm" / "model.safetensors", tmp_path)
    with pytest.raises(ValueError) as error:
        Bert.from_pretrained(tmp_path)
    message = str(error.value)
    assert "unexpected tensors" in message and "transformer.h.*.attn.c_attn.weight (×2)" in message
    assert "missing tensors" in message and "encoder.layer.*.attention.self.query.weight (×2)" in message
    assert "  - embeddings.word_embeddings.weight\n" in message


def test_a_folder_of_another_size_reports_every_shape(tmp_path):
    shutil.copytree(FIXTURES / "bert-classifier", tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"intermediate_size": 48, "num_hidden_layers": 1}))
    with pytest.raises(ValueError) as error:
        BertForSequenceClassification.from_pretrained(tmp_path)
    message = str(error.value)
    assert (
        "bert.encoder.layer.0.intermediate.dense.weight: (32, 64) in the folder, "
        "(32, 48) in BertForSequenceClassification" in message
    )
    assert "bert.encoder.layer.1.attention.self.query.weight" in message  # layer 1 has no place in a 1-layer model


def test_a_flaxen_folder_of_another_size_is_refused(tmp_path):
    native_model("ViTForImageClassification").save_pretrained(tmp_path, format="flaxen")
    with pytest.raises(ValueError) as error:
        ViTForImageClassification.from_pretrained(tmp_path, num_labels=3)
    assert "head.kernel: (64, 10) in the folder, (64, 3) in ViTForImageClassification" in str(error.value)


def test_hugging_face_settings_flaxen_does_not_implement_are_refused(tmp_path):
    shutil.copytree(FIXTURES / "bert-model", tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"position_embedding_type": "relative_key"}))
    with pytest.raises(
        ValueError, match="position_embedding_type = 'relative_key' \\(flaxen implements only 'absolute'\\)"
    ):
        Bert.from_pretrained(tmp_path)


def test_saving_what_hugging_face_cannot_hold_is_refused(tmp_path):
    model = ViTForImageClassification(ViTConfig.tiny(representation_size=16, activation="prelu"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError) as error:
        model.save_pretrained(tmp_path)
    message = str(error.value)
    assert "activation 'prelu' has no Hugging Face equivalent" in message
    assert "parameter pre_logits.kernel has no Hugging Face place" in message
    assert "parameter vit.stack.blocks.0.mlp.activation.learned.slope has no Hugging Face place" in message
    assert not (tmp_path / "config.json").exists()
