"""The run folder a training run leaves behind: its file names, run.json, atomic writes, resume checks, loading.

run.json          what made the run: model class, recipe, data, seed (written first: it marks a run folder)
config.json       the model config (flaxen layout, so `from_pretrained` reads the folder too)
tokenizer.json    the tokenizer, for text models
checkpoints/      orbax checkpoints, latest N + best by validation loss (`flaxen.checkpoints`)
metrics.jsonl     one line per log or evaluation; loss_curve.png plots it
model.safetensors the final weights under flaxen's names (adapters merged)
frozen.safetensors the parameters a run did not train (a LoRA run's base weights), which its checkpoints leave out
eval-<data>.json  `flaxen eval` on held-out data, with eval-<data>-confusion.png for classifiers
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from flaxen import lora
from flaxen.distributed import is_main_process
from flaxen.hf import CONFIG_FILE, WEIGHTS_FILE
from flaxen.hf.save import flaxen_config_json, flaxen_params, named_arrays, write_flaxen_weights
from flaxen.hf.table import dotted
from flaxen.models import CONFIG_CLASSES, model_class_named
from flaxen.text.tokenizer import TOKENIZER_FILE, load_tokenizer

RUN_FILE = "run.json"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss_curve.png"
FROZEN_FILE = "frozen.safetensors"
PARTIAL_SUFFIX = ".partial"  # a file being written by `write_atomically`
RECIPE_KEY = "recipe"  # run.json's name for the recipe that made the run; runs before 0.2 wrote "journey"


class Run(NamedTuple):
    folder: Path
    model: nnx.Module
    tokenizer: Any  # tokenizers.Tokenizer, or None for image models
    info: dict[str, Any]  # run.json
    step: int  # the checkpoint loaded


# ------------------------------------------------------------------------------------------------- writing


def write_atomically(path: Path, content: str | Callable[[Path], Any]) -> None:
    """Replace `path` by `content` in one step: a crash leaves the old file or the new one, never half of it.

    `content` is text, or a function that writes the file at the path it is given. In a multi-process run only the
    main process writes (the others return at once), so `content` must not need the other processes.
    """
    if not is_main_process():
        return
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    if callable(content):
        content(partial)
    else:
        partial.write_text(content)
    os.replace(partial, path)


def write_run_files(model: nnx.Module, folder: Path, run_info: dict[str, Any] | None) -> None:
    """Write run.json (model class + run_info), then config.json (the model config).

    run.json comes first: it marks the folder as a run, so a run killed after it can be resumed.
    """
    run = {"model_class": type(model).__name__, **(run_info or {})}
    if lora.has_lora(model):
        run["lora"] = {"rank": lora.lora_rank(model), "layers": lora.adapted_layers(model)}
    write_atomically(folder / RUN_FILE, json.dumps(run, indent=2) + "\n")
    write_atomically(folder / CONFIG_FILE, flaxen_config_json(model) + "\n")


def write_weights(model: nnx.Module, folder: Path) -> Path:
    """The model's parameters under flaxen's names in model.safetensors:
    with config.json, a `from_pretrained` folder."""
    params = flaxen_params(model)  # every process takes part in gathering them
    write_atomically(folder / WEIGHTS_FILE, lambda partial: write_flaxen_weights(params, partial))
    return folder / WEIGHTS_FILE


def write_frozen_parameters(frozen: nnx.State, folder: Path) -> None:
    """The parameters a run does not train, under flaxen's names in frozen.safetensors (its checkpoints omit them)."""
    arrays = named_arrays(frozen)
    write_atomically(folder / FROZEN_FILE, lambda partial: save_file(arrays, partial))


# ------------------------------------------------------------------------------------------------- reading


def read_run_file(folder: str | Path) -> dict[str, Any]:
    """The run.json of a run folder; ValueError if the folder is not a flaxen run."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        raise ValueError(
            f"{folder} is not a flaxen run folder (it has no {RUN_FILE}); give the --out folder of a training run"
        )
    return json.loads(path.read_text())


def is_run_folder(folder: str | Path) -> bool:
    """True when `folder` holds a run.json."""
    return (Path(folder) / RUN_FILE).is_file()


def recorded_data(folder: str | Path) -> dict[str, Any]:
    """The data settings (files, columns, encoding, ...) a run recorded in run.json; {} for a model folder."""
    return read_run_file(folder).get("data", {}) if is_run_folder(folder) else {}


def recipe_of(info: dict[str, Any]) -> str | None:
    """The name of the recipe that made a run, from its run.json (either spelling)."""
    return info.get(RECIPE_KEY, info.get("journey"))


def load_checkpoint(model: nnx.Module, folder: str | Path, step: int | None = None) -> int:
    """Restore a run's saved weights into `model` (the best by its run's best_metric, else the latest); the step."""
    from flaxen.checkpoints import restore_model_weights  # orbax loads only when a checkpoint is read

    folder = Path(folder)
    check_model_class(model, folder)
    if not (folder / CHECKPOINT_DIR).is_dir():
        raise FileNotFoundError(f"{folder} has no {CHECKPOINT_DIR}/ folder; is it a flaxen run folder?")
    best_metric = read_run_file(folder).get("best_metric", "loss") if is_run_folder(folder) else "loss"
    frozen = load_frozen_parameters(model, folder / FROZEN_FILE) if (folder / FROZEN_FILE).is_file() else set()
    return restore_model_weights(model, folder / CHECKPOINT_DIR, step, best_metric=best_metric, without=frozen)


def load_frozen_parameters(model: nnx.Module, file: Path) -> set[str]:
    """Fill `model` with the parameters a run did not train (its frozen.safetensors); their names."""
    with safe_open(file, framework="flax") as reader:
        names = set(reader.keys())
        variables = {dotted(path): variable for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param))}
        missing = names - variables.keys()
        if missing:
            raise ValueError(
                f"{file} holds parameters the model lacks ({', '.join(sorted(missing)[:3])}, ...); a LoRA run's model "
                "needs its adapters first (flaxen.lora.add_lora with the run.json's lora rank and layers)"
            )
        for name in names:
            variables[name].set_value(reader.get_tensor(name))
    return names


def load_run(folder: str | Path, *, step: int | None = None) -> Run:
    """Build the run's model from its config.json and fill it from its best (else latest) checkpoint."""
    folder = Path(folder)
    info = read_run_file(folder)
    try:
        model_class = model_class_named(info.get("model_class"))
    except ValueError:
        raise ValueError(f"{folder} holds a {info.get('model_class')!r} run, which flaxen cannot load") from None
    config_file = folder / CONFIG_FILE
    config = CONFIG_CLASSES[json.loads(config_file.read_text()).get("config_class")].from_json(config_file)
    names = tuple(info.get("label_names") or ())
    if hasattr(config, "label_names") and not config.label_names and len(names) == config.num_labels:
        config = config.replace(label_names=names)  # runs before 0.2 kept their label names in run.json only
    model = nnx.eval_shape(lambda: model_class(config, rngs=nnx.Rngs(0)))
    if info.get("lora"):  # adapters as trained, merged once loaded: predictions run on a plain model
        lora.add_lora(model, info["lora"]["rank"], rngs=nnx.Rngs(0), layers=info["lora"].get("layers"))
    loaded_step = load_checkpoint(model, folder, step)
    lora.merge_lora(model)
    model.eval()
    tokenizer = load_tokenizer(folder / TOKENIZER_FILE) if (folder / TOKENIZER_FILE).exists() else None
    if tokenizer is not None:
        check_tokenizer_fits(tokenizer, config, where=str(folder))
    return Run(folder, model, tokenizer, info, loaded_step)


# -------------------------------------------------------------------------------------------------- checks


def check_tokenizer_fits(tokenizer, config, *, where: str) -> None:
    """ValueError when the tokenizer can produce ids the model's embedding has no row for."""
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is not None and tokenizer.get_vocab_size() > vocab_size:
        raise ValueError(
            f"the tokenizer in {where} has {tokenizer.get_vocab_size()} tokens but the model's vocabulary has "
            f"{vocab_size}; they belong to different models: use the tokenizer the model was trained with"
        )


def check_out_dir(folder: str | Path, model_class: type, *, resume: bool, overwrite: bool) -> Path:
    """The folder a run may write to: new, empty, or holding a run of `model_class` to resume (or to overwrite)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file, not a folder")
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pass one")
    if resume and not is_run_folder(folder):
        raise ValueError(f"nothing to resume in {folder}; drop --resume to start a run there")
    # A file still being written by a killed run's first moments does not make the folder taken.
    if not folder.is_dir() or all(path.name.endswith(PARTIAL_SUFFIX) for path in folder.iterdir()) or overwrite:
        return folder
    if not is_run_folder(folder):
        raise ValueError(f"--out {folder} already holds files that are not a flaxen run; choose an empty or new folder")
    saved_class = read_run_file(folder).get("model_class")
    if saved_class != model_class.__name__:
        raise ValueError(
            f"--out {folder} holds a {saved_class} run, not a {model_class.__name__} one; choose another folder"
        )
    if not resume:
        raise ValueError(
            f"--out {folder} already holds a {saved_class} run; "
            "pass --resume to continue it or --overwrite to replace it"
        )
    return folder


def check_model_class(model: nnx.Module, folder: Path) -> None:
    """ValueError if the folder's run.json names a model class other than `model`'s (no run.json passes)."""
    if not is_run_folder(folder):
        return
    saved_class = read_run_file(folder).get("model_class")
    if saved_class != type(model).__name__:
        raise ValueError(f"{folder} holds a {saved_class} run, not a {type(model).__name__} one; use another out_dir")


def check_resumable(model: nnx.Module, folder: Path) -> None:
    """ValueError unless the folder's run.json and config.json match `model` (absent files pass)."""
    check_model_class(model, folder)
    config_file = folder / CONFIG_FILE
    if not config_file.exists():
        return
    saved = json.loads(config_file.read_text())
    saved.pop("config_class", None)  # the model class was checked above
    saved.pop("model_class", None)
    current = model.config.to_dict()
    if "label_names" in current:  # runs before 0.2 kept their label names in run.json only
        saved.setdefault("label_names", current["label_names"])
    # Fields added after the run was written take their defaults; execution switches may change on resume.
    defaults = {f.name: f.default for f in dataclasses.fields(model.config) if f.default is not dataclasses.MISSING}
    ignored = set(getattr(model.config, "EXECUTION_FIELDS", ()))
    differing = sorted(
        key
        for key in (saved.keys() | current.keys()) - ignored
        if json.dumps(saved.get(key, defaults.get(key))) != json.dumps(current.get(key))
    )
    if differing:
        raise ValueError(
            f"cannot resume {folder}: its {CONFIG_FILE} differs from this model's config in "
            f"{', '.join(differing)}; use the same config or another out_dir"
        )
