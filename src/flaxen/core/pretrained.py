"""Folders in and out: Hugging Face layout (config.json + safetensors) or flaxen's own, one loader for every family.

Each family's `params.py` holds a `ParamsTable`: Hugging Face config keys -> our config fields, and Hugging Face
tensor names -> (our parameter path, transform). The same table drives loading and saving. A model class gets
`from_pretrained` / `save_pretrained` by inheriting `PretrainedMixin` and pointing `params_table` at its table.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import re
import typing
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from flaxen.core.activations import canonical_name

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
# Our activation names as Hugging Face's ACT2FN spells them; the others (prelu, rrelu) have no Hugging Face twin.
HF_ACTIVATION_NAMES = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "swish": "silu", "mish": "mish"}
BIN_ONLY_MESSAGE = (
    "{folder} holds only pytorch_model.bin; flaxen reads only safetensors, because a .bin file is a pickle and "
    "loading one can run arbitrary code. Convert it once with transformers:\n"
    '  python -c "from transformers import AutoModel; AutoModel.from_pretrained(p).save_pretrained(p, safe_serialization=True)"\n'
    "with p = '{folder}' (use the AutoModelFor... class of the checkpoint's task to keep its head)."
)

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
    """One family's Hugging Face layout. Tensor names are templates in which "{}" stands for a layer number.

    Names are those of the task models ("bert.encoder..." / our "bert.stack..."); a backbone-only checkpoint or
    model (BertModel, our `Bert`) is the same without `prefixes`.
    """

    model_type: str  # config.json "model_type"
    architectures: dict[str, str]  # our class name -> Hugging Face class name written on save
    prefixes: tuple[str, str]  # (Hugging Face, ours): where a task model keeps its backbone
    config_keys: dict[str, str]  # config.json key -> our config field
    tensors: dict[str, tuple[str, Transform]]  # Hugging Face name -> (our parameter path, transform)
    heads: tuple[str, ...] = ()  # our paths of optional heads: fresh when the folder lacks them, skipped when unwanted
    ignored: dict[str, str] = dataclasses.field(default_factory=dict)  # Hugging Face names we have no place for -> why
    computed_defaults: dict[str, Callable[[dict], Any]] = dataclasses.field(default_factory=dict)  # for null/absent keys
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


class PretrainedMixin:
    """`from_pretrained` / `save_pretrained` for a model class whose `params_table` describes its family."""

    params_table: ClassVar[ParamsTable]

    @classmethod
    def from_pretrained(cls, path: str | Path, *, rngs: nnx.Rngs | None = None, **config_overrides: Any) -> Self:
        """Load a Hugging Face folder, or a flaxen one (config.json with "config_class"), in eval mode.

        Heads the folder lacks are initialised from `rngs` (default `nnx.Rngs(0)`) with a warning; tensors this
        class has no place for (another head, buffers) are skipped with a warning; anything else that does not
        fit is reported, all at once, in one ValueError.
        """
        return _load(cls, Path(path), rngs or nnx.Rngs(0), config_overrides)

    def save_pretrained(self, path: str | Path, *, format: Literal["hf", "flaxen"] = "hf") -> Path:
        """Write config.json + model.safetensors, in Hugging Face layout ("hf") or with our parameter names."""
        return _save(self, Path(path), format)


# ---------------------------------------------------------------------------------------------------- loading


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
            "unexpected tensors (the model has no place for them)": _summarise(self.unexpected),
            "missing tensors (the folder lacks them)": _summarise(self.missing),
            "tensors of the wrong shape (config.json, or an override, disagrees with the weights)": _summarise(self.mis_shaped),
        }
        lines = [f"{title}:\n" + "\n".join(f"  - {item}" for item in items) for title, items in sections.items() if items]
        if lines:
            raise ValueError(f"{headline}\n" + "\n".join(lines))


def _load(cls, folder: Path, rngs: nnx.Rngs, config_overrides: dict[str, Any]):
    report = _Report()
    config, entries, source_names = _read_folder(cls, folder, config_overrides, report)
    abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
    graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
    flat = list(nnx.to_flat_state(abstract_params))
    prefix = _backbone_prefix([_dotted(path) for path, _ in flat], cls.params_table.prefixes[1])
    shapes = {prefix + _dotted(path): variable.shape for path, variable in flat}
    values = _match(cls.__name__, cls.params_table.heads, entries, shapes, source_names, report)
    report.raise_if_problems(f"cannot load {folder} into {cls.__name__}:")
    caller = f"{cls.__name__}.from_pretrained({str(folder)!r})"
    if report.ignored:
        by_reason = collections.defaultdict(list)
        for name, why in report.ignored.items():
            by_reason[why].append(name)
        details = "; ".join(f"{', '.join(_summarise(names))} ({why})" for why, names in by_reason.items())
        warnings.warn(f"{caller} skipped tensors it has no place for: {details}", stacklevel=3)
    if report.fresh:
        warnings.warn(f"{caller}: {', '.join(report.fresh)} not in the folder, so freshly initialised; train before use", stacklevel=3)
        values |= _initialise(cls, config, prefix, set(shapes) - set(values), rngs)
    params = nnx.from_flat_state(
        [(path, variable.replace(jnp.asarray(values[prefix + _dotted(path)], variable.dtype))) for path, variable in flat]
    )
    model = nnx.merge(graphdef, params, rest)
    model.eval()
    return model


def _read_folder(cls, folder: Path, config_overrides: dict[str, Any], report: _Report) -> tuple[Any, list[_Entry], SourceNames]:
    """The config (overrides applied) and the tensors renamed for us, from a Hugging Face or a flaxen folder."""
    table = cls.params_table
    config_class = typing.get_type_hints(cls.__init__)["config"]
    saved_config = _read_config(folder)
    weight_files = _weight_files(folder)
    if "config_class" in saved_config:  # written by save_pretrained(format="flaxen")
        written_by = saved_config.pop("config_class")
        if written_by != config_class.__name__:
            raise ValueError(f"{folder} holds a flaxen {written_by} model; {cls.__name__} needs a {config_class.__name__} folder")
        config = config_class.from_dict(saved_config | config_overrides)
        return config, *_entries_from_flaxen(table, _read_tensors(weight_files))
    if saved_config.get("model_type") != table.model_type:
        found = saved_config.get("model_type", "no model_type")
        raise ValueError(
            f"{folder} holds a Hugging Face {found!r} model ({', '.join(saved_config.get('architectures') or [])}); "
            f"{cls.__name__} reads model_type {table.model_type!r}"
        )
    fields = _config_fields_from_hf(table, config_class, saved_config, report) | _tokenizer_fields(table, folder)
    config = config_class.from_dict(fields | config_overrides)
    return config, *_entries_from_hf(table, config, _read_tensors(weight_files), report)


def _read_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise ValueError(f"no folder at {folder}: give a folder holding config.json and model.safetensors")
    if not (folder / CONFIG_FILE).is_file():
        raise ValueError(f"{folder} has no {CONFIG_FILE}; a pretrained folder holds config.json and model.safetensors")
    return json.loads((folder / CONFIG_FILE).read_text())


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
            raise ValueError(f"{file} is not a readable safetensors file ({err}); it may be truncated: copy or convert it again") from None
    return tensors


def _config_fields_from_hf(table: ParamsTable, config_class: type, hf_config: dict[str, Any], report: _Report) -> dict[str, Any]:
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
            fields[field] = canonical_name(value) if field == "activation" else value
    if "num_labels" in {f.name for f in dataclasses.fields(config_class)}:
        if "id2label" in hf_config:
            fields["num_labels"] = len(hf_config["id2label"])
        elif "num_labels" in hf_config:
            fields["num_labels"] = hf_config["num_labels"]
    return fields


def _tokenizer_fields(table: ParamsTable, folder: Path) -> dict[str, Any]:
    """Config fields holding token ids (pad, mask, specials), from the folder's tokenizer when it has one."""
    vocabulary = _vocabulary(folder) if table.tokenizer_fields else {}
    fields = {}
    for field, tokens in table.tokenizer_fields.items():
        if isinstance(tokens, str) and tokens in vocabulary:
            fields[field] = vocabulary[tokens]
        elif not isinstance(tokens, str) and vocabulary:
            fields[field] = tuple(sorted(vocabulary[token] for token in tokens if token in vocabulary))
    return fields


def _vocabulary(folder: Path) -> dict[str, int]:
    """token -> id from tokenizer.json (vocabulary and added tokens) or vocab.txt; empty without either."""
    if (folder / "tokenizer.json").is_file():
        spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        vocab = spec["model"].get("vocab", {})
        if isinstance(vocab, list):  # Unigram: [token, score] pairs in id order
            vocab = {token: index for index, (token, _) in enumerate(vocab)}
        return vocab | {added["content"]: added["id"] for added in spec.get("added_tokens", [])}
    if (folder / "vocab.txt").is_file():
        with open(folder / "vocab.txt", encoding="utf-8") as lines:
            return {line.rstrip("\n"): index for index, line in enumerate(lines)}
    return {}


def _entries_from_flaxen(table: ParamsTable, tensors: dict[str, np.ndarray]) -> tuple[list[_Entry], SourceNames]:
    prefix = _backbone_prefix(tensors, table.prefixes[1])
    entries = [_Entry(name, prefix + name, array) for name, array in tensors.items()]
    return entries, lambda path: {0: path.removeprefix(prefix)}


def _entries_from_hf(table: ParamsTable, config, tensors: dict[str, np.ndarray], report: _Report) -> tuple[list[_Entry], SourceNames]:
    """Hugging Face tensors renamed and re-laid-out by the table; those it ignores or lacks go to `report`."""
    prefix = _backbone_prefix(tensors, table.prefixes[0])
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
    model_name: str, heads: tuple[str, ...], entries: list[_Entry], shapes: dict[str, tuple[int, ...]],
    source_names: SourceNames, report: _Report,
) -> dict[str, np.ndarray]:
    """Check every entry against the model's shapes and assemble our parameters.

    A head the model lacks makes its tensors skipped; a head the folder lacks is initialised fresh; anything
    else that does not fit goes to `report`.
    """
    head_of = lambda path: next((head for head in heads if path.startswith(head + ".")), None)
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
            report.mis_shaped.append(f"{entry.source}: {tuple(entry.array.shape)} in the folder, {expected} in {model_name}")
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
        return {prefix + _dotted(path): variable[...] for path, variable in variables if prefix + _dotted(path) in paths}

    return initialise(rngs)


# ----------------------------------------------------------------------------------------------------- saving


def save_weights(model: nnx.Module, file: str | Path) -> Path:
    """The model's parameters under flaxen's names in one safetensors file, written atomically (temporary + rename)."""
    file = Path(file)
    partial = file.with_name(file.name + ".partial")
    save_file(_contiguous(_flaxen_params(model)), partial, metadata={"format": "flaxen"})
    partial.replace(file)
    return file


def _flaxen_params(model) -> dict[str, np.ndarray]:
    return {_dotted(path): np.asarray(variable[...]) for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _contiguous(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(array) for name, array in tensors.items()}


def _save(model, folder: Path, format: str) -> Path:
    params = _flaxen_params(model)
    if format == "flaxen":
        tensors, config_text = params, model.config.to_json()
    elif format == "hf":
        tensors, hf_config = _to_hf(model, params)
        config_text = json.dumps(hf_config, indent=2)
    else:
        raise ValueError(f"unknown format {format!r}; use 'hf' (Hugging Face layout) or 'flaxen'")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(config_text + "\n")
    save_file(_contiguous(tensors), folder / WEIGHTS_FILE, metadata={"format": "pt" if format == "hf" else "flaxen"})
    return folder


def _to_hf(model, params: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Our parameters and config in Hugging Face layout; whatever has no Hugging Face place, in one error."""
    table, config, model_name = model.params_table, model.config, type(model).__name__
    hf_prefix, flaxen_prefix = table.prefixes
    is_backbone = _backbone_prefix(params, flaxen_prefix) != ""
    unsupported = [] if model_name in table.architectures else [f"{model_name} has no Hugging Face class in the table"]
    hf_config = {"architectures": [table.architectures.get(model_name)], "model_type": table.model_type}
    for key, field in table.config_keys.items():
        value = getattr(config, field)
        if field == "activation":
            if value not in HF_ACTIVATION_NAMES:
                unsupported.append(f"activation {value!r} has no Hugging Face equivalent")
            value = HF_ACTIVATION_NAMES.get(value)
        hf_config[key] = value
    if hasattr(config, "num_labels"):
        hf_config["id2label"] = {str(i): f"LABEL_{i}" for i in range(config.num_labels)}
        hf_config["label2id"] = {f"LABEL_{i}": i for i in range(config.num_labels)}
    tensors = {}
    for name, array in params.items():
        targets = table.to_hf(flaxen_prefix + name if is_backbone else name)
        if not targets:
            unsupported.append(f"parameter {name} has no Hugging Face place")
        for hf_name, transform in targets:
            part = np.split(array, transform.count, axis=-1)[transform.index]
            tensors[hf_name.removeprefix(hf_prefix) if is_backbone else hf_name] = transform.to_hf(part, config)
    if unsupported:
        raise ValueError(f"cannot save {model_name} in Hugging Face layout:\n" + "\n".join(f"  - {item}" for item in unsupported))
    return tensors, hf_config


# ---------------------------------------------------------------------------------------------------- helpers


@functools.cache
def _pattern(template: str) -> re.Pattern:
    """A name template ("h.{}.attn.bias") as a regex whose groups are the layer numbers."""
    return re.compile(re.escape(template).replace(r"\{\}", r"(\d+)"))


def _dotted(path: tuple) -> str:
    """An nnx state path as one name: ("gpt", "stack", "blocks", 0, ...) -> "gpt.stack.blocks.0..."."""
    return ".".join(map(str, path))


def _backbone_prefix(names: Iterable[str], prefix: str) -> str:
    """What to put before these names to read them as a task model's: `prefix` if none has it (a backbone), else ""."""
    return "" if any(name.startswith(prefix) for name in names) else prefix


def _summarise(names: Iterable[str]) -> list[str]:
    """Names differing only in layer numbers folded into one, counted: "h.*.attn.bias (×12)"."""
    groups = collections.defaultdict(list)
    for name in names:
        groups[re.sub(r"\.\d+(?=\.)", ".*", name)].append(name)
    return sorted(f"{folded} (×{len(group)})" if len(group) > 1 else group[0] for folded, group in groups.items())
