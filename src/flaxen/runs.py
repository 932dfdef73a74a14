"""Run folders: what a training run leaves behind, and loading it back as a model (+ tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from flax import nnx

from flaxen import text as ftext
from flaxen.models.bert import Bert, BertConfig, BertForMaskedLM, BertForSequenceClassification
from flaxen.models.gpt import GPT, GPTConfig, GPTForCausalLM, GPTForSequenceClassification
from flaxen.models.vit import ViT, ViTConfig, ViTForImageClassification
from flaxen.train.checkpoints import CONFIG_FILE, RUN_FILE, load_checkpoint

TOKENIZER_FILE = "tokenizer.json"
MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (GPT, GPTForCausalLM, GPTForSequenceClassification, Bert, BertForMaskedLM, BertForSequenceClassification,
                ViT, ViTForImageClassification)
}
CONFIG_CLASSES = {cls.__name__: cls for cls in (GPTConfig, BertConfig, ViTConfig)}


class Run(NamedTuple):
    folder: Path
    model: nnx.Module
    tokenizer: Any  # tokenizers.Tokenizer, or None for image models
    info: dict[str, Any]  # run.json
    step: int  # the checkpoint loaded


def read_run_file(folder: str | Path) -> dict[str, Any]:
    """The run.json of a run folder; ValueError if the folder is not a flaxen run."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        raise ValueError(f"{folder} is not a flaxen run folder (it has no {RUN_FILE}); give the --out folder of a training run")
    return json.loads(path.read_text())


def load_run(folder: str | Path, *, step: int | None = None) -> Run:
    """Build the run's model from its config.json and fill it from its best (else latest) checkpoint."""
    folder = Path(folder)
    info = read_run_file(folder)
    model_class = MODEL_CLASSES.get(info.get("model_class"))
    if model_class is None:
        raise ValueError(f"{folder} holds a {info.get('model_class')!r} run, which flaxen cannot load")
    config = CONFIG_CLASSES[json.loads((folder / CONFIG_FILE).read_text()).get("config_class")].from_json(folder / CONFIG_FILE)
    model = nnx.eval_shape(lambda: model_class(config, rngs=nnx.Rngs(0)))
    loaded_step = load_checkpoint(model, folder, step)
    model.eval()
    tokenizer = ftext.load_tokenizer(folder / TOKENIZER_FILE) if (folder / TOKENIZER_FILE).exists() else None
    if tokenizer is not None:
        check_tokenizer_fits(tokenizer, config, where=str(folder))
    return Run(folder, model, tokenizer, info, loaded_step)


def check_tokenizer_fits(tokenizer, config, *, where: str) -> None:
    """ValueError when the tokenizer can produce ids the model's embedding has no row for."""
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is not None and tokenizer.get_vocab_size() > vocab_size:
        raise ValueError(
            f"the tokenizer in {where} has {tokenizer.get_vocab_size()} tokens but the model's vocabulary has {vocab_size}; "
            "they belong to different models: use the tokenizer the model was trained with"
        )
