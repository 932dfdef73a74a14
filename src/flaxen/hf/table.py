"""The machinery of a family's Hugging Face key table: one table drives loading and saving.

A family's `params.py` builds a `ParamsTable`: Hugging Face config keys -> our config fields, and Hugging Face
tensor names -> (our parameter path, `Transform`). Names are templates in which "{}" stands for a layer number.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

ArrayMap = Callable[[np.ndarray, Any], np.ndarray]  # (array, our config) -> array


@dataclasses.dataclass(frozen=True)
class Transform:
    """Inverse array maps between a Hugging Face tensor and our parameter (or part `index` of `count` of it)."""

    to_flaxen: ArrayMap
    to_hf: ArrayMap
    index: int = 0  # parts are concatenated along our parameter's last axis, e.g. q, k, v of a fused qkv
    count: int = 1

    def part(self, index: int, *, of: int) -> Transform:
        """The same maps, for part `index` of `of` concatenated along our parameter's last axis."""
        return dataclasses.replace(self, index=index, count=of)


IDENTITY = Transform(lambda x, _: x, lambda x, _: x)
TRANSPOSE = Transform(lambda x, _: x.T, lambda x, _: x.T)  # torch Linear (out, in) <-> nnx.Linear (in, out)

# Our activation names and Hugging Face's (ACT2FN) spellings of the same function, the one we write first.
# prelu and rrelu have no Hugging Face twin.
HF_ACTIVATION_SPELLINGS = {
    "relu": ("relu",),
    "gelu": ("gelu",),
    "gelu_tanh": ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"),
    "swish": ("silu", "swish"),
    "mish": ("mish",),
}


def activation_from_hf(name: str) -> str:
    """Our name for a Hugging Face activation; an unknown name is returned as it is (the config check names it)."""
    return next((ours for ours, spellings in HF_ACTIVATION_SPELLINGS.items() if name in spellings), name)


def activation_to_hf(name: str) -> str | None:
    """Hugging Face's spelling of our activation, or None when it has none."""
    spellings = HF_ACTIVATION_SPELLINGS.get(name)
    return spellings[0] if spellings else None


# config.json keys every Hugging Face BERT-style encoder (BERT, ViT) shares, as our TransformerConfig fields.
ENCODER_CONFIG_KEYS = {
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "mlp_dim",
    "hidden_act": "activation",
    "layer_norm_eps": "layer_norm_eps",
    "initializer_range": "initializer_range",
    "hidden_dropout_prob": "dropout",
}


def separate_qkv(hf_prefix: str, qkv_path: str) -> dict[str, tuple[str, Transform]]:
    """Table rules for three torch Linears `{hf_prefix}.query|key|value` that are our fused `qkv_path` Linear."""
    rules = {}
    for index, name in enumerate(("query", "key", "value")):
        rules[f"{hf_prefix}.{name}.weight"] = (f"{qkv_path}.kernel", TRANSPOSE.part(index, of=3))
        rules[f"{hf_prefix}.{name}.bias"] = (f"{qkv_path}.bias", IDENTITY.part(index, of=3))
    return rules


@dataclasses.dataclass(frozen=True)
class ParamsTable:
    """One family's Hugging Face layout, written for its task models ("bert.encoder..." / our "bert.stack...").

    A backbone-only checkpoint or model (BertModel, our `Bert`) has the same names without the backbone prefixes.
    """

    model_type: str  # config.json "model_type"
    architectures: dict[str, str]  # our class name -> Hugging Face class name written on save
    hf_backbone_prefix: str  # where a Hugging Face task model keeps its backbone, e.g. "transformer."
    flaxen_backbone_prefix: str  # where ours does, e.g. "gpt."
    config_keys: dict[str, str]  # config.json key -> our config field
    tensors: dict[str, tuple[str, Transform]]  # Hugging Face name -> (our parameter path, transform)
    heads: tuple[str, ...] = ()  # our paths of optional heads: fresh when the folder lacks them, skipped when unwanted
    ignored: dict[str, str] = dataclasses.field(default_factory=dict)  # Hugging Face names we have no place for -> why
    computed_defaults: dict[str, Callable[[dict], Any]] = dataclasses.field(
        default_factory=dict
    )  # for null/absent keys
    required: dict[str, Any] = dataclasses.field(default_factory=dict)  # Hugging Face settings we implement only so
    tokenizer_fields: dict[str, str | tuple[str, ...]] = dataclasses.field(default_factory=dict)  # field -> token(s)

    def to_flaxen(self, hf_name: str) -> tuple[str, Transform] | None:
        """Our parameter path and the transform for a Hugging Face tensor name; None if the table lacks it."""
        for hf_template, (template, transform) in self.tensors.items():
            if match := _pattern(hf_template).fullmatch(hf_name):
                return template.format(*match.groups()), transform
        return None

    def to_hf(self, path: str) -> list[tuple[str, Transform]]:
        """The Hugging Face names (several for a fused parameter) and transforms of one of our parameters."""
        return [
            (hf_template.format(*match.groups()), transform)
            for hf_template, (template, transform) in self.tensors.items()
            if (match := _pattern(template).fullmatch(path))
        ]

    def ignore_reason(self, hf_name: str) -> str | None:
        """Why we have no place for this Hugging Face tensor, or None."""
        return next((why for template, why in self.ignored.items() if _pattern(template).fullmatch(hf_name)), None)


@functools.cache
def _pattern(template: str) -> re.Pattern:
    """A name template ("h.{}.attn.bias") as a regex whose groups are the layer numbers."""
    return re.compile(re.escape(template).replace(r"\{\}", r"(\d+)"))


def dotted(path: tuple) -> str:
    """An nnx state path as one name: ("gpt", "stack", "blocks", 0, ...) -> "gpt.stack.blocks.0..."."""
    return ".".join(map(str, path))


def backbone_prefix(names: Iterable[str], prefix: str) -> str:
    """What to put before these names to read them as a task model's: `prefix` if none has it (a backbone), else ""."""
    return "" if any(name.startswith(prefix) for name in names) else prefix


def summarise(names: Iterable[str]) -> list[str]:
    """Names differing only in layer numbers folded into one, counted: "h.*.attn.bias (×12)"."""
    groups = collections.defaultdict(list)
    for name in names:
        groups[re.sub(r"\.\d+(?=\.)", ".*", name)].append(name)
    return sorted(f"{folded} (×{len(group)})" if len(group) > 1 else group[0] for folded, group in groups.items())


def default_label_names(num_labels: int) -> tuple[str, ...]:
    """Hugging Face's names for unnamed classes: LABEL_0, LABEL_1, ..."""
    return tuple(f"LABEL_{i}" for i in range(num_labels))
