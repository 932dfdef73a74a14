"""Frozen model configs that round-trip through JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Self

import jax.numpy as jnp
from flax import nnx

from flaxen.core.activations import check_activation_name

ATTENTION_IMPLEMENTATIONS = (None, "xla", "cudnn", "blockwise")


class ConfigMixin:
    """JSON round trip for frozen config dataclasses; unknown keys are an error, not silently dropped."""

    # Named sizes: preset name -> (one-line description, field values). `from_preset` and the CLI's --help read it.
    PRESETS: ClassVar[dict[str, tuple[str, dict[str, Any]]]] = {}

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Self:
        """The preset `name` with some fields changed; ValueError naming the presets for an unknown name."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(cls.PRESETS)}")
        return cls(**cls.PRESETS[name][1] | overrides)

    @classmethod
    def preset_help(cls) -> str:
        """One line per preset: its name and description."""
        return "; ".join(f"{name} ({description})" for name, (description, _) in cls.PRESETS.items())

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of every field."""
        return {f.name: _to_json_value(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Build from a dict as written by `to_dict`; names any key this config does not have."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"{cls.__name__} has no field(s) {', '.join(unknown)}; known fields are: {', '.join(known)}"
            )
        kwargs = {name: tuple(v) if isinstance(v, list) else v for name, v in values.items()}
        return cls(**kwargs)

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text; also written to `path` when given."""
        text = json.dumps({"config_class": type(self).__name__, **self.to_dict()}, indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> Self:
        """Parse JSON text, or read it from a file path."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        values = json.loads(text)
        values.pop("model_class", None)  # a model folder's record of its head, not a config field
        written_by = values.pop("config_class", cls.__name__)
        if written_by != cls.__name__:
            raise ValueError(f"this JSON holds a {written_by}, not a {cls.__name__}")
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _to_json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclasses.dataclass(frozen=True)
class TransformerConfig(ConfigMixin):
    """Fields every family shares; the shared core reads only these."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    activation: str = "gelu"
    dropout: float = 0.1  # residual, MLP and embedding dropout
    attention_dropout: float = 0.0  # DropKey: keys dropped before the softmax, so the fused kernel stays on
    stochastic_depth: float = 0.0  # the last block's residual branches skipped per example at this rate (DeiT)
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    dtype: str = "float32"  # compute dtype; parameters stay float32
    # None: automatic (cuDNN's fused kernel on GPUs where it applies, long causal attention blockwise on CPUs; see
    # core.attention.choose_implementation); "xla", "cudnn" or "blockwise" (core/blockwise.py) to choose.
    attention_implementation: str | None = None
    # How the model runs, not what it computes: a run may resume with these changed.
    EXECUTION_FIELDS: ClassVar[tuple[str, ...]] = ("scan_layers", "remat", "attention_implementation")

    scan_layers: bool = False  # run the blocks as one lax.scan over stacked parameters (with remat: far less memory)
    remat: bool = False  # recompute each block's activations in the backward pass instead of storing them

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        for name in ("hidden_size", "num_layers", "num_heads", "mlp_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("dropout", "attention_dropout", "stochastic_depth"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        check_activation_name(self.activation)
        if self.attention_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"unknown attention_implementation {self.attention_implementation!r}; choose one of "
                f"{', '.join(map(str, ATTENTION_IMPLEMENTATIONS))}"
            )
        label_names = getattr(self, "label_names", ())  # the families with a classifier head have these two
        if label_names and len(label_names) != self.num_labels:
            raise ValueError(
                f"{len(label_names)} label_names for num_labels={self.num_labels}; give one name per class"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def compute_dtype(self) -> jnp.dtype:
        """`dtype` as a dtype object."""
        return jnp.dtype(self.dtype)

    def weight_init(self, scale: float = 1.0) -> nnx.Initializer:
        """The family's weight initializer: normal with std `scale · initializer_range`."""
        return nnx.initializers.normal(self.initializer_range * scale)
