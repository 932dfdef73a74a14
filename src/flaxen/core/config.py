"""Frozen model configs that round-trip through JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Self


class ConfigMixin:
    """JSON round trip for frozen config dataclasses; unknown keys are an error, not silently dropped."""

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
                f"{cls.__name__} has no field(s) {', '.join(unknown)}; "
                f"known fields are: {', '.join(known)}"
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
        written_by = values.pop("config_class", cls.__name__)
        if written_by != cls.__name__:
            raise ValueError(f"this JSON holds a {written_by}, not a {cls.__name__}")
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _to_json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
