"""flaxen: a transformer model zoo on JAX/Flax NNX."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flaxen import runtime
from flaxen.generate import generate, generate_ids
from flaxen.models.bert import Bert, BertConfig, BertForMaskedLM, BertForSequenceClassification
from flaxen.models.gpt import GPT, GPTConfig, GPTForCausalLM, GPTForSequenceClassification
from flaxen.models.vit import ViT, ViTConfig, ViTForImageClassification

if TYPE_CHECKING:
    from flaxen import data, evaluation, lora, text, train
    from flaxen.predict import pipeline
    from flaxen.train import Trainer

__version__ = "0.1.0.dev0"

__all__ = [
    "GPT",
    "Bert",
    "data",
    "evaluation",
    "runtime",
    "generate",
    "generate_ids",
    "lora",
    "pipeline",
    "text",
    "train",
    "Trainer",
    "BertConfig",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "GPTConfig",
    "GPTForCausalLM",
    "GPTForSequenceClassification",
    "ViT",
    "ViTConfig",
    "ViTForImageClassification",
]

# The data and training stacks (datasets, orbax, matplotlib) take most of the import time; load them on first use,
# so that `flaxen --help` and the command's relaunch (flaxen.runtime) stay quick.
_LAZY = {
    "data": ("flaxen.data", None),
    "text": ("flaxen.text", None),
    "train": ("flaxen.train", None),
    "lora": ("flaxen.lora", None),
    "evaluation": ("flaxen.evaluation", None),
    "Trainer": ("flaxen.train", "Trainer"),
    "pipeline": ("flaxen.predict", "pipeline"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'flaxen' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
