"""Reading a model folder into a model: Hugging Face layout, or flaxen's own (config.json with "config_class").

Everything that does not fit (settings we do not implement, unknown, missing or mis-shaped tensors) is collected
and reported at once, folded by layer.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open

from flaxen.hf.table import ParamsTable, activation_from_hf, backbone_prefix, default_label_names, dotted, summarise
from flaxen.text.tokenizer import TOKENIZER_FILE, VOCAB_FILE, load_tokenizer

CONFIG_FILE = "config.json"
MODEL_CLASS_KEY = "model_class"  # in a flaxen folder's config.json: the class (head) whose weights the folder holds
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
BIN_ONLY_MESSAGE = (
    "{folder} holds only pytorch_model.bin; flaxen reads only safetensors, because a .bin file is a pickle and "
    "loading one can run arbitrary code. Convert it once with transformers:\n"
    '  python -c "from transformers import AutoModel; '
    'AutoModel.from_pretrained(p).save_pretrained(p, safe_serialization=True)"\n'
    "with p = '{folder}' (use the AutoModelFor... class of the checkpoint's task to keep its head)."
)


@dataclasses.dataclass(frozen=True)
class _Entry:
    """A folder tensor renamed and laid out for us."""

    source: str  # its name in the folder
    path: str  # our parameter path, task-model layout
    array: np.ndarray
    index: int = 0
    count: int = 1


SourceNames = Callable[[str], dict[int, str]]  # our path -> {part index: the folder's name for that part}


@dataclasses.dataclass
class _Report:
    """What did not fit, collected so that one error names all of it."""

    unsupported: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    mis_shaped: list[str] = dataclasses.field(default_factory=list)
    ignored: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> why
    fresh: list[str] = dataclasses.field(default_factory=list)  # heads to initialise

    def raise_if_problems(self, headline: str) -> None:
        sections = {
            "unsupported settings": self.unsupported,
            "unexpected tensors (the model has no place for them)": summarise(self.unexpected),
            "missing tensors (the folder lacks them)": summarise(self.missing),
            "tensors of the wrong shape (config.json, or an override, disagrees with the weights)": summarise(
                self.mis_shaped
            ),
        }
        lines = [
            f"{title}:\n" + "\n".join(f"  - {item}" for item in items) for title, items in sections.items() if items
        ]
        if lines:
            raise ValueError(f"{headline}\n" + "\n".join(lines))


def load_pretrained(cls, folder: Path, rngs: nnx.Rngs, config_overrides: dict[str, Any]):
    """A `cls` model (eval mode) from `folder`; heads the folder lacks are initialised from `rngs`."""
    report = _Report()
    config, entries, source_names = _read_folder(cls, folder, config_overrides, report)
    abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
    graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
    flat = list(nnx.to_flat_state(abstract_params))
    prefix = backbone_prefix([dotted(path) for path, _ in flat], cls.params_table.flaxen_backbone_prefix)
    shapes = {prefix + dotted(path): variable.shape for path, variable in flat}
    values = _match(cls.__name__, cls.params_table.heads, entries, shapes, source_names, report)
    report.raise_if_problems(f"cannot load {folder} into {cls.__name__}:")
    caller = f"{cls.__name__}.from_pretrained({str(folder)!r})"
    if report.ignored:
        by_reason = collections.defaultdict(list)
        for name, why in report.ignored.items():
            by_reason[why].append(name)
        details = "; ".join(f"{', '.join(summarise(names))} ({why})" for why, names in by_reason.items())
        warnings.warn(f"{caller} skipped tensors it has no place for: {details}", stacklevel=3)
    if report.fresh:
        fresh = ", ".join(report.fresh)
        warnings.warn(f"{caller}: {fresh} not in the folder, so freshly initialised; train before use", stacklevel=3)
        values |= _initialise(cls, config, prefix, set(shapes) - set(values), rngs)
    params = nnx.from_flat_state(
        [
            (path, variable.replace(jnp.asarray(values[prefix + dotted(path)], variable.dtype)))
            for path, variable in flat
        ]
    )
    model = nnx.merge(graphdef, params, rest)
    model.eval()
    return model


def read_config_file(folder: Path) -> dict[str, Any]:
    """The folder's config.json as a dict; ValueError naming what is missing."""
    if not folder.is_dir():
        raise ValueError(f"no folder at {folder}: give a folder holding config.json and model.safetensors")
    if not (folder / CONFIG_FILE).is_file():
        raise ValueError(f"{folder} has no {CONFIG_FILE}; a pretrained folder holds config.json and model.safetensors")
    return json.loads((folder / CONFIG_FILE).read_text())


def _read_folder(
    cls, folder: Path, config_overrides: dict[str, Any], report: _Report
) -> tuple[Any, list[_Entry], SourceNames]:
    """The config (overrides applied) and the tensors renamed for us, from a Hugging Face or a flaxen folder."""
    table, config_class = cls.params_table, cls.config_class
    saved_config = read_config_file(folder)
    weight_files = _weight_files(folder)
    if "config_class" in saved_config:  # written by save_pretrained(format="flaxen")
        written_by = saved_config.pop("config_class")
        saved_config.pop(MODEL_CLASS_KEY, None)  # any class of the family may load the folder (a head's backbone)
        if written_by != config_class.__name__:
            raise ValueError(
                f"{folder} holds a flaxen {written_by} model; {cls.__name__} needs a {config_class.__name__} folder"
            )
        config = config_class.from_dict(_with_overrides(saved_config, config_overrides))
        return config, *_entries_from_flaxen(table, _read_tensors(weight_files))
    if saved_config.get("model_type") != table.model_type:
        found = saved_config.get("model_type", "no model_type")
        raise ValueError(
            f"{folder} holds a Hugging Face {found!r} model ({', '.join(saved_config.get('architectures') or [])}); "
            f"{cls.__name__} reads model_type {table.model_type!r}"
        )
    fields = _config_fields_from_hf(table, config_class, saved_config, report) | _tokenizer_fields(table, folder)
    config = config_class.from_dict(_with_overrides(fields, config_overrides))
    return config, *_entries_from_hf(table, config, _read_tensors(weight_files), report)


def _with_overrides(fields: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The saved fields with the caller's changes; another `num_labels` without names drops the folder's names."""
    names = fields.get("label_names", ())
    if "label_names" not in overrides and overrides.get("num_labels", len(names)) != len(names):
        fields = {name: value for name, value in fields.items() if name != "label_names"}
    return fields | overrides


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors file(s) of a folder: one file, or the shards its index lists."""
    if (folder / WEIGHTS_INDEX_FILE).is_file():
        weight_map = json.loads((folder / WEIGHTS_INDEX_FILE).read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    if (folder / WEIGHTS_FILE).is_file():
        return [folder / WEIGHTS_FILE]
    if any(folder.glob("pytorch_model*.bin")):
        raise ValueError(BIN_ONLY_MESSAGE.format(folder=folder))
    raise ValueError(f"{folder} has no {WEIGHTS_FILE} (nor {WEIGHTS_INDEX_FILE} with shards)")


def _read_tensors(files: Iterable[Path]) -> dict[str, np.ndarray]:
    tensors = {}
    for file in files:
        try:
            with safe_open(file, framework="flax") as reader:  # "flax", not "numpy": numpy has no bfloat16
                tensors |= {name: np.asarray(reader.get_tensor(name)) for name in reader.keys()}
        except SafetensorError as err:
            raise ValueError(
                f"{file} is not a readable safetensors file ({err}); it may be truncated: copy or convert it again"
            ) from None
    return tensors


def _config_fields_from_hf(
    table: ParamsTable, config_class: type, hf_config: dict[str, Any], report: _Report
) -> dict[str, Any]:
    """Our config fields from a Hugging Face config.json; settings we cannot honour go to `report`."""
    report.unsupported += [
        f"{key} = {hf_config[key]!r} (flaxen implements only {value!r})"
        for key, value in table.required.items()
        if key in hf_config and hf_config[key] != value
    ]
    fields = {}
    for key, field in table.config_keys.items():
        value = hf_config.get(key)
        if value is None and key in table.computed_defaults:
            value = table.computed_defaults[key](hf_config)
        if value is not None:
            fields[field] = activation_from_hf(value) if field == "activation" else value
    if "num_labels" in {f.name for f in dataclasses.fields(config_class)}:
        if "id2label" in hf_config:
            fields["num_labels"] = len(hf_config["id2label"])
            names = tuple(str(hf_config["id2label"][str(i)]) for i in range(fields["num_labels"]))
            if names != default_label_names(fields["num_labels"]):
                fields["label_names"] = names
        elif "num_labels" in hf_config:
            fields["num_labels"] = hf_config["num_labels"]
    return fields


def _tokenizer_fields(table: ParamsTable, folder: Path) -> dict[str, Any]:
    """Config fields holding token ids (pad, mask, specials), from the folder's tokenizer when it has one."""
    has_tokenizer = (folder / TOKENIZER_FILE).is_file() or (folder / VOCAB_FILE).is_file()
    if not table.tokenizer_fields or not has_tokenizer:
        return {}
    try:
        vocabulary = load_tokenizer(folder).get_vocab(with_added_tokens=True)
    except ValueError:  # unreadable, or a vocab.txt without BERT's specials: keep the config's defaults
        return {}
    fields = {}
    for field, tokens in table.tokenizer_fields.items():
        if isinstance(tokens, str) and tokens in vocabulary:
            fields[field] = vocabulary[tokens]
        elif not isinstance(tokens, str):
            fields[field] = tuple(sorted(vocabulary[token] for token in tokens if token in vocabulary))
    return fields


def _entries_from_flaxen(table: ParamsTable, tensors: dict[str, np.ndarray]) -> tuple[list[_Entry], SourceNames]:
    prefix = backbone_prefix(tensors, table.flaxen_backbone_prefix)
    entries = [_Entry(name, prefix + name, array) for name, array in tensors.items()]
    return entries, lambda path: {0: path.removeprefix(prefix)}


def _entries_from_hf(
    table: ParamsTable, config, tensors: dict[str, np.ndarray], report: _Report
) -> tuple[list[_Entry], SourceNames]:
    """Hugging Face tensors renamed and re-laid-out by the table; those it ignores or lacks go to `report`."""
    prefix = backbone_prefix(tensors, table.hf_backbone_prefix)
    entries = []
    for name, array in tensors.items():
        if (why := table.ignore_reason(prefix + name)) is not None:
            report.ignored[name] = why
        elif (target := table.to_flaxen(prefix + name)) is None:
            report.unexpected.append(name)
        else:
            path, transform = target
            try:
                entries.append(_Entry(name, path, transform.to_flaxen(array, config), transform.index, transform.count))
            except (ValueError, IndexError):
                report.mis_shaped.append(f"{name}: {tuple(array.shape)} cannot be laid out as {path}")
    return entries, lambda path: {transform.index: name.removeprefix(prefix) for name, transform in table.to_hf(path)}


def _match(
    model_name: str,
    heads: tuple[str, ...],
    entries: list[_Entry],
    shapes: dict[str, tuple[int, ...]],
    source_names: SourceNames,
    report: _Report,
) -> dict[str, np.ndarray]:
    """Check every entry against the model's shapes and assemble our parameters.

    A head the model lacks makes its tensors skipped; a head the folder lacks is initialised fresh; anything
    else that does not fit goes to `report`.
    """

    def head_of(path: str) -> str | None:
        return next((head for head in heads if path.startswith(head + ".")), None)

    model_heads = {head_of(path) for path in shapes} - {None}
    parts, misfits = collections.defaultdict(dict), set()
    for entry in entries:
        if entry.path not in shapes:
            head = head_of(entry.path)
            if head is not None and head not in model_heads:
                report.ignored[entry.source] = f"{model_name} has no {head}"
            else:
                report.unexpected.append(entry.source)
            continue
        *leading, last = shapes[entry.path]
        expected = (*leading, last // entry.count)
        if entry.array.shape != expected:
            report.mis_shaped.append(
                f"{entry.source}: {tuple(entry.array.shape)} in the folder, {expected} in {model_name}"
            )
            misfits.add(entry.path)
        parts[entry.path][entry.index] = entry.array
    supplied_heads = {head_of(path) for path in parts}
    report.fresh += sorted(model_heads - supplied_heads)
    values = {}
    for path in shapes:
        if path in misfits or head_of(path) in report.fresh:
            continue
        found, expected_names = parts.get(path, {}), source_names(path) or {0: path}
        if len(found) == len(expected_names):
            values[path] = np.concatenate([found[index] for index in sorted(found)], axis=-1)
        else:
            report.missing += [name for index, name in sorted(expected_names.items()) if index not in found]
    return values


def _initialise(cls, config, prefix: str, paths: set[str], rngs: nnx.Rngs) -> dict[str, jax.Array]:
    """Initialise only `paths` of a new model: it is built under jit, so XLA drops every other initializer."""

    @nnx.jit
    def initialise(rngs):
        variables = nnx.to_flat_state(nnx.state(cls(config, rngs=rngs), nnx.Param))
        return {prefix + dotted(path): variable[...] for path, variable in variables if prefix + dotted(path) in paths}

    return initialise(rngs)
