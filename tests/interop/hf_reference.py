"""Tiny Hugging Face models, their inputs and reference outputs.

Shared by the parity tests (which build the models with torch) and scripts/make_golden_fixtures.py (which stores
the same folders and outputs under tests/fixtures/ so that parity is checked where torch is absent).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from flaxen import (
    Bert,
    BertForMaskedLM,
    BertForSequenceClassification,
    GPTForCausalLM,
    GPTForSequenceClassification,
    ViT,
    ViTForImageClassification,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
TOLERANCE = 2e-6  # the README's parity claim; the largest error seen in these cases is 1.2e-6
VOCAB_SIZE = 99
BERT_CONFIG = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 16,
}
GPT2_CONFIG = {"vocab_size": VOCAB_SIZE, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 64, "n_positions": 16}
VIT_CONFIG = {
    "image_size": 8,
    "patch_size": 4,
    "num_channels": 3,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
}


def text_inputs(*, token_types: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Two rows of 10 tokens; the second is right-padded after 6 (its pad ids are arbitrary, the mask hides them)."""
    rng = np.random.default_rng(seed)
    padding_mask = np.ones((2, 10), np.int32)
    padding_mask[1, 6:] = 0
    inputs = {"token_ids": rng.integers(0, VOCAB_SIZE, (2, 10)).astype(np.int32), "padding_mask": padding_mask}
    if token_types:
        inputs["token_type_ids"] = np.repeat([[0] * 5 + [1] * 5], 2, axis=0).astype(np.int32)
    return inputs


def gpt2_classifier_inputs() -> dict[str, np.ndarray]:
    """Three rows, two right-padded with GPT2_PAD: transformers' GPT-2 classifier reads each row's last token that
    is not the pad id, flaxen's the last one its padding mask marks real; real tokens never equal the pad id."""
    rng = np.random.default_rng(1)
    padding_mask = np.ones((3, 10), np.int32)
    padding_mask[1, 6:] = 0
    padding_mask[2, 1:] = 0
    token_ids = rng.integers(0, GPT2_PAD, (3, 10)).astype(np.int32)
    return {
        "token_ids": np.where(padding_mask == 1, token_ids, GPT2_PAD).astype(np.int32),
        "padding_mask": padding_mask,
    }


def image_inputs(height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Two images, channels first as Hugging Face takes them."""
    return {"pixel_values": np.random.default_rng(seed).normal(size=(2, 3, height, width)).astype(np.float32)}


GPT2_PAD = VOCAB_SIZE - 2


@dataclasses.dataclass(frozen=True)
class Case:
    hf_class: str  # transformers model class
    hf_config_class: str  # transformers config class
    hf_config: dict
    flaxen_class: type
    inputs: dict[str, np.ndarray]


CASES = {
    "gpt2-lm": Case(
        "GPT2LMHeadModel",
        "GPT2Config",
        GPT2_CONFIG | {"bos_token_id": VOCAB_SIZE - 1, "eos_token_id": VOCAB_SIZE - 1},
        GPTForCausalLM,
        text_inputs(token_types=False),
    ),
    "gpt2-classifier": Case(
        "GPT2ForSequenceClassification",
        "GPT2Config",
        GPT2_CONFIG | {"num_labels": 3, "pad_token_id": GPT2_PAD},
        GPTForSequenceClassification,
        gpt2_classifier_inputs(),
    ),
    "bert-model": Case("BertModel", "BertConfig", BERT_CONFIG, Bert, text_inputs(token_types=True)),
    "bert-mlm": Case(
        "BertForMaskedLM",
        "BertConfig",
        BERT_CONFIG | {"hidden_act": "gelu_new"},
        BertForMaskedLM,
        text_inputs(token_types=True),
    ),
    "bert-classifier": Case(
        "BertForSequenceClassification",
        "BertConfig",
        BERT_CONFIG | {"num_labels": 3},
        BertForSequenceClassification,
        text_inputs(token_types=True),
    ),
    "vit-classifier": Case(
        "ViTForImageClassification",
        "ViTConfig",
        VIT_CONFIG | {"num_labels": 5},
        ViTForImageClassification,
        image_inputs(8, 8),
    ),
    # A second, non-square image size: position embeddings resampled (HF interpolate_pos_encoding=True).
    "vit-model-interpolated": Case("ViTModel", "ViTConfig", VIT_CONFIG, ViT, image_inputs(12, 16)),
}


def build_hf_model(case: Case):
    """The case's transformers model, seeded, every parameter nudged off its init so that a swapped LayerNorm
    scale/bias or a zero bias cannot hide a mapping mistake; eval mode."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, case.hf_config_class)(**case.hf_config)
    model = getattr(transformers, case.hf_class)(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def hf_outputs(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hidden states of every layer plus logits (task models) or the pooled output (BertModel), from transformers."""
    import torch

    if "pixel_values" in inputs:
        kwargs = {"pixel_values": torch.from_numpy(inputs["pixel_values"]), "interpolate_pos_encoding": True}
    else:
        kwargs = {
            "input_ids": torch.from_numpy(inputs["token_ids"]).long(),
            "attention_mask": torch.from_numpy(inputs["padding_mask"]).long(),
        }
        if "token_type_ids" in inputs:
            kwargs["token_type_ids"] = torch.from_numpy(inputs["token_type_ids"]).long()
    with torch.no_grad():
        output = model(**kwargs, output_hidden_states=True)
        hidden_states = list(output.hidden_states)
        if "pixel_values" in inputs:  # HF ViT's last hidden state precedes its final LayerNorm; ours follows it
            hidden_states[-1] = model.base_model.layernorm(hidden_states[-1])
    outputs = {f"hidden_states.{i}": h for i, h in enumerate(hidden_states)}
    if "logits" in output:
        outputs["logits"] = output.logits
    elif "pooler_output" in output and "pixel_values" not in inputs:  # BertModel; flaxen's ViT has no pooler
        outputs["pooled"] = output.pooler_output
    return {name: value.numpy() for name, value in outputs.items()}


def flaxen_outputs(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same outputs from a flaxen model."""
    if "pixel_values" in inputs:
        args, kwargs = (inputs["pixel_values"].transpose(0, 2, 3, 1),), {"interpolate_position_embeddings": True}
    else:
        token_types = (inputs["token_type_ids"],) if "token_type_ids" in inputs else ()
        args, kwargs = (inputs["token_ids"], inputs["padding_mask"].astype(bool), *token_types), {}
    backbone = getattr(model, model.params_table.flaxen_backbone_prefix.rstrip("."), model)
    _, hidden_states = backbone(*args, return_hidden_states=True, **kwargs)
    outputs = {f"hidden_states.{i}": h for i, h in enumerate(hidden_states)}
    if backbone is not model:
        outputs["logits"] = model(*args, **kwargs)
    elif hasattr(model, "pool"):
        outputs["pooled"] = model.pool(hidden_states[-1])
    return {name: np.asarray(value) for name, value in outputs.items()}


def max_errors(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, float]:
    """Largest absolute difference per expected output; every expected output must be present with its shape."""
    assert set(actual) == set(expected), (sorted(actual), sorted(expected))
    for name in expected:
        assert actual[name].shape == expected[name].shape, (name, actual[name].shape, expected[name].shape)
    return {name: float(np.max(np.abs(actual[name] - expected[name]))) for name in expected}


def assert_parity(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Every output within TOLERANCE of the reference."""
    errors = max_errors(actual, expected)
    assert max(errors.values()) < TOLERANCE, errors


# ------------------------------------------------------------------------------- pipelines on exported folders

PIPELINE_TEXTS = [
    "the king loves the fair queen",
    "foul night",
    "sweet life and honour, " * 12,  # longer than the model's 32 tokens: truncated on both sides
    "blood",
]
SMALLEST = {"hidden_size": 32, "num_heads": 4, "mlp_dim": 64}  # fixtures live in git
PIPELINE_LABELS = {"text-classification": ("negative", "neutral", "positive"), "image-classification": ("cat", "dog")}


def pipeline_images() -> list:
    """Four RGB images at the tiny ViT's 8×8 (seeded), as PIL images."""
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    return [Image.fromarray(image) for image in pixels]


def build_pipeline_folder(task: str, folder: Path) -> Path:
    """A flaxen classifier with named labels in a Hugging Face folder, written as `flaxen convert` writes a run's:
    config with id2label, weights, tokenizer.json + tokenizer_config.json, or preprocessor_config.json."""
    import jax
    from flax import nnx

    from flaxen import BertConfig, ViTConfig
    from flaxen.convert import write_preprocessing
    from flaxen.text import train_wordpiece

    labels = PIPELINE_LABELS[task]
    if task == "text-classification":
        words = "the king queen love night day sword crown blood heart fair foul sweet death life honour and".split()
        tokenizer = train_wordpiece(iter([" ".join(words[i:] + words[:i]) for i in range(len(words))]), vocab_size=80)
        config = BertConfig.tiny(vocab_size=80, num_labels=3, label_names=labels, **SMALLEST)
        model = BertForSequenceClassification(config, rngs=nnx.Rngs(0))
        info = {"data": {"max_length": 32}}
    else:
        config = ViTConfig.tiny(image_size=8, channels=3, num_labels=2, label_names=labels, **SMALLEST)
        model = ViTForImageClassification(config, rngs=nnx.Rngs(0))
        info = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "scale": 1 / 255}
    params = nnx.state(model, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(params))))
    nnx.update(model, jax.tree.map(lambda x: x + 0.1 * jax.random.normal(next(keys), x.shape), params))
    model.save_pretrained(folder)
    if task == "text-classification":
        tokenizer.save(str(folder / "tokenizer.json"))
    write_preprocessing(model, info, folder)
    return folder


def hf_pipeline_scores(task: str, folder: Path) -> list[dict[str, float]]:
    """Per input, every label's score from transformers' own pipeline for `task` on `folder`."""
    import transformers

    predictor = transformers.pipeline(task, model=str(folder), device="cpu")
    if task == "text-classification":
        outputs = predictor(PIPELINE_TEXTS, top_k=None, truncation=True)
    else:
        outputs = predictor(pipeline_images(), top_k=len(PIPELINE_LABELS[task]))
    return [{entry["label"]: entry["score"] for entry in row} for row in outputs]
