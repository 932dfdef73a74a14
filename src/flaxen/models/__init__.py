"""Model families, each a folder with `modeling.py` (config, backbone, heads) and `params.py` (its HF key table).

The registry of model and config classes by name lives here, once: run folders and model folders name their
classes, and whoever reads them looks the classes up here.
"""

from flaxen.models.bert import Bert, BertConfig, BertForMaskedLM, BertForSequenceClassification
from flaxen.models.gpt import GPT, GPTConfig, GPTForCausalLM, GPTForSequenceClassification
from flaxen.models.vit import ViT, ViTConfig, ViTForImageClassification

MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (
        GPT,
        GPTForCausalLM,
        GPTForSequenceClassification,
        Bert,
        BertForMaskedLM,
        BertForSequenceClassification,
        ViT,
        ViTForImageClassification,
    )
}
CONFIG_CLASSES = {cls.__name__: cls for cls in (GPTConfig, BertConfig, ViTConfig)}
# Flaxen model folders written before they named their model class: the class their weights most often belong to.
DEFAULT_MODEL_CLASS = {
    "GPTConfig": GPTForCausalLM,
    "BertConfig": BertForMaskedLM,
    "ViTConfig": ViTForImageClassification,
}


def model_class_named(name: str | None) -> type:
    """The model class called `name`; ValueError listing the known ones otherwise."""
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model class {name!r}; choose one of {', '.join(MODEL_CLASSES)}")
    return MODEL_CLASSES[name]
