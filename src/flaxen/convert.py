"""Whole model folders between Hugging Face and flaxen layouts: which model a folder holds, and `flaxen convert`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from flax import nnx

from flaxen.hf import CONFIG_FILE, read_config_file
from flaxen.hf.load import MODEL_CLASS_KEY
from flaxen.hf.save import PREPROCESSOR_FILE, preprocessor_config
from flaxen.models import DEFAULT_MODEL_CLASS, MODEL_CLASSES, model_class_named
from flaxen.runs import is_run_folder, load_run, read_run_file
from flaxen.text.tokenizer import HF_TOKENIZER_FILES, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE


def model_class_for(folder: str | Path, model_class: str | None = None) -> type:
    """The flaxen class for a folder: `model_class` if named, else the run's, the HF architecture's or the config's."""
    folder = Path(folder)
    if model_class is not None:
        return model_class_named(model_class)
    if is_run_folder(folder):
        return model_class_named(read_run_file(folder)["model_class"])
    if not (folder / CONFIG_FILE).is_file():
        raise ValueError(
            f"{folder} has no {CONFIG_FILE}; give a Hugging Face model folder or a flaxen run/model folder"
        )
    config = read_config_file(folder)
    if MODEL_CLASS_KEY in config:  # a flaxen model folder names its class
        return model_class_named(config[MODEL_CLASS_KEY])
    if "config_class" in config:  # written before folders named their class
        return DEFAULT_MODEL_CLASS[config["config_class"]]
    architectures = config.get("architectures") or []
    for cls in MODEL_CLASSES.values():
        if cls.params_table.architectures.get(cls.__name__) in architectures:
            return cls
    raise ValueError(
        f"{folder} holds {', '.join(architectures) or 'a model without architectures in its config.json'}, "
        f"which flaxen does not map; pass the flaxen class to load it as (one of {', '.join(MODEL_CLASSES)})"
    )


def load_folder(folder: str | Path, model_class: str | None = None) -> nnx.Module:
    """A model from a flaxen run folder (its best checkpoint), a flaxen model folder or a Hugging Face folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    cls = model_class_for(folder, model_class)
    if is_run_folder(folder):
        model = load_run(folder).model
        if not isinstance(model, cls):
            raise ValueError(f"{folder} holds a {type(model).__name__} run, not a {cls.__name__}")
        return model
    return cls.from_pretrained(folder)


def convert(
    source: str | Path,
    destination: str | Path,
    *,
    to: str = "hf",
    model_class: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the model in `source` to `destination` in Hugging Face ("hf") or flaxen layout,
    with its tokenizer files."""
    source, destination = Path(source), Path(destination)
    if to not in ("hf", "flaxen"):
        raise ValueError(f"unknown target format {to!r}; use 'hf' or 'flaxen'")
    if destination.exists() and any(destination.iterdir()) and not overwrite:
        raise ValueError(f"{destination} is not empty; choose a new folder or pass --overwrite")
    if destination.resolve() == source.resolve():
        raise ValueError("the destination is the source folder; choose another folder")
    model = load_folder(source, model_class)
    model.save_pretrained(destination, format=to)
    for name in HF_TOKENIZER_FILES + (PREPROCESSOR_FILE,):
        if (source / name).is_file():
            shutil.copyfile(source / name, destination / name)
    if is_run_folder(source):
        write_preprocessing(model, read_run_file(source), destination)
    return destination


def write_preprocessing(model: nnx.Module, info: dict, destination: Path) -> None:
    """What a run (its run.json `info`) knows about its inputs, in Hugging Face's files: the image normalisation
    (preprocessor_config.json), the text length (tokenizer_config.json)."""
    if "mean" in info and hasattr(model.config, "image_size"):
        settings = preprocessor_config(model.config.image_size, info["mean"], info["std"], info.get("scale", 1 / 255))
        (destination / PREPROCESSOR_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    max_length = info.get("data", {}).get("max_length")
    if max_length and (destination / TOKENIZER_FILE).is_file() and not (destination / TOKENIZER_CONFIG_FILE).exists():
        settings = {"model_max_length": max_length, "truncation_side": "right", "padding_side": "right"}
        (destination / TOKENIZER_CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n")
