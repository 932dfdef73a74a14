"""flaxen: a transformer model zoo on JAX/Flax NNX."""

from flaxen import data, text, train
from flaxen.generate import generate, generate_ids
from flaxen.train import Trainer

from flaxen.models.bert import Bert, BertConfig, BertForMaskedLM, BertForSequenceClassification
from flaxen.models.gpt import GPT, GPTConfig, GPTForCausalLM, GPTForSequenceClassification
from flaxen.models.vit import ViT, ViTConfig, ViTForImageClassification

__version__ = "0.1.0.dev0"

__all__ = [
    "GPT", "Bert", "data", "generate", "generate_ids", "text", "train", "Trainer", "BertConfig", "BertForMaskedLM", "BertForSequenceClassification", "GPTConfig", "GPTForCausalLM",
    "GPTForSequenceClassification", "ViT", "ViTConfig", "ViTForImageClassification",
]
