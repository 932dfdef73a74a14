"""`from_pretrained` / `save_pretrained` for a model class that names its config class and its family's table."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from flax import nnx

from flaxen.core.config import ConfigMixin
from flaxen.hf.load import load_pretrained
from flaxen.hf.save import save_pretrained
from flaxen.hf.table import ParamsTable


class PretrainedMixin:
    """Model folders in and out; the class sets `config_class` and `params_table` (its family's HF key table)."""

    config_class: ClassVar[type[ConfigMixin]]
    params_table: ClassVar[ParamsTable]

    @classmethod
    def from_pretrained(cls, path: str | Path, *, rngs: nnx.Rngs | None = None, **config_overrides: Any) -> Self:
        """Load a Hugging Face folder, or a flaxen one (config.json with "config_class"), in eval mode.

        Heads the folder lacks are initialised from `rngs` (default `nnx.Rngs(0)`) with a warning; tensors this
        class has no place for (another head, buffers) are skipped with a warning; anything else that does not
        fit is reported, all at once, in one ValueError.
        """
        return load_pretrained(cls, Path(path), rngs or nnx.Rngs(0), config_overrides)

    def save_pretrained(self, path: str | Path, *, format: Literal["hf", "flaxen"] = "hf") -> Path:
        """Write config.json + model.safetensors, in Hugging Face layout ("hf") or with our parameter names."""
        return save_pretrained(self, Path(path), format)
