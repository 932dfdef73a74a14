"""Writing a model folder: config.json + model.safetensors, in Hugging Face layout or with flaxen's names."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from flaxen import lora
from flaxen.distributed import fully_on_host
from flaxen.hf.load import CONFIG_FILE, MODEL_CLASS_KEY, WEIGHTS_FILE
from flaxen.hf.table import activation_to_hf, backbone_prefix, default_label_names, dotted

FORMATS = ("hf", "flaxen")
PREPROCESSOR_FILE = "preprocessor_config.json"  # a Hugging Face image model's resizing and normalisation


def save_pretrained(model: nnx.Module, folder: Path, format: str) -> Path:
    """Write config.json + model.safetensors for `model` into `folder` (created if needed). A grey-scale image model
    is written to Hugging Face layout as one that takes RGB and computes on their luma (its `for_hugging_face`)."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; use 'hf' (Hugging Face layout) or 'flaxen'")
    if format == "hf" and hasattr(model, "for_hugging_face"):
        model = model.for_hugging_face()
    params = flaxen_params(model)
    if format == "flaxen":
        tensors, config_text = params, flaxen_config_json(model)
    else:
        tensors, hf_config = _to_hf(model, params)
        config_text = json.dumps(hf_config, indent=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(config_text + "\n")
    save_file(_contiguous(tensors), folder / WEIGHTS_FILE, metadata={"format": "pt" if format == "hf" else "flaxen"})
    return folder


def flaxen_config_json(model: nnx.Module) -> str:
    """A flaxen folder's config.json: the config, and which model class (head) the folder holds."""
    config = json.loads(model.config.to_json())
    named = {"config_class": config.pop("config_class"), MODEL_CLASS_KEY: type(model).__name__}
    return json.dumps(named | config, indent=2)


def write_flaxen_weights(params: dict[str, np.ndarray], file: Path) -> None:
    """`flaxen_params`' arrays as a flaxen safetensors file."""
    save_file(_contiguous(params), file, metadata={"format": "flaxen"})


def flaxen_params(model: nnx.Module) -> dict[str, np.ndarray]:
    """Every parameter as a numpy array, keyed by its dotted nnx path; LoRA adapters merged into their layers."""
    return named_arrays(nnx.state(lora.merged(model), nnx.Param))


def named_arrays(state: nnx.State) -> dict[str, np.ndarray]:
    """Each array of `state` as numpy, keyed by its dotted nnx path (in a multi-process run every process must call
    this: arrays split over processes are gathered)."""
    flat = nnx.to_flat_state(state)
    arrays = fully_on_host([variable[...] for _, variable in flat])
    return {dotted(path): np.asarray(array) for (path, _), array in zip(flat, arrays)}


def _contiguous(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(array) for name, array in tensors.items()}


def _to_hf(model, params: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Our parameters and config in Hugging Face layout; whatever has no Hugging Face place, in one error."""
    table, config, model_name = model.params_table, model.config, type(model).__name__
    is_backbone = backbone_prefix(params, table.flaxen_backbone_prefix) != ""
    unsupported = [] if model_name in table.architectures else [f"{model_name} has no Hugging Face class in the table"]
    hf_config = {"architectures": [table.architectures.get(model_name)], "model_type": table.model_type}
    for key, field in table.config_keys.items():
        value = getattr(config, field)
        if field == "activation":
            if activation_to_hf(value) is None:
                unsupported.append(f"activation {value!r} has no Hugging Face equivalent")
            value = activation_to_hf(value)
        hf_config[key] = value
    if hasattr(config, "num_labels"):
        names = config.label_names or default_label_names(config.num_labels)
        hf_config["id2label"] = {str(i): name for i, name in enumerate(names)}
        hf_config["label2id"] = {name: i for i, name in enumerate(names)}
    tensors = {}
    for name, array in params.items():
        targets = table.to_hf(table.flaxen_backbone_prefix + name if is_backbone else name)
        if not targets:
            unsupported.append(f"parameter {name} has no Hugging Face place")
        for hf_name, transform in targets:
            part = np.split(array, transform.count, axis=-1)[transform.index]
            tensors[hf_name.removeprefix(table.hf_backbone_prefix) if is_backbone else hf_name] = transform.to_hf(
                part, config
            )
    if unsupported:
        items = "\n".join(f"  - {item}" for item in unsupported)
        raise ValueError(f"cannot save {model_name} in Hugging Face layout:\n{items}")
    return tensors, hf_config


def preprocessor_config(image_size: int, mean: Sequence[float], std: Sequence[float], scale: float) -> dict[str, Any]:
    """A Hugging Face ViTImageProcessor's preprocessor_config.json for images prepared as `flaxen.data.prepare_image`
    prepares them: the shorter side resized (bilinear), the centre cropped, then scaled and normalised. transformers
    reads every image as RGB, so a grey-scale model's one mean and std serve all three channels (its export takes
    RGB: `save_pretrained`)."""
    mean, std = list(mean), list(std)
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "resample": 2,  # bilinear
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": scale,
        "do_normalize": True,
        "image_mean": mean * 3 if len(mean) == 1 else mean,
        "image_std": std * 3 if len(std) == 1 else std,
    }
