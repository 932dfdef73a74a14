"""metrics.jsonl (one JSON object per log line) and its loss-curve plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from flaxen.runs import write_atomically


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file (empty if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    # Every record ends with a newline; a last line without one was torn by a crash mid-write, and is dropped.
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]


def read_validation_scores(path: Path) -> list[dict[str, Any]]:
    """The validation records of a metrics.jsonl, in order."""
    return [record for record in read_metrics(path) if record.get("split") == "validation"]


def drop_records_after(path: Path, step: int) -> None:
    """Keep only records up to `step`: a resumed run re-logs the steps after its checkpoint."""
    kept = [record for record in read_metrics(path) if record["step"] <= step]
    write_atomically(path, "".join(json.dumps(record) + "\n" for record in kept))


def plot_metrics(metrics_path: str | Path, png_path: str | Path) -> None:
    """Plot train and validation loss against step, and accuracy beside it when logged, to a PNG."""
    records = read_metrics(metrics_path)
    panels = ["loss"] + (["accuracy"] if any("accuracy" in record for record in records) else [])
    # A bare Figure renders with Agg and leaves the user's pyplot backend alone.
    figure = Figure(figsize=(6 * len(panels), 4), layout="constrained")
    for axes, metric in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for split, style in (("train", "-"), ("validation", "o-")):
            points = [(r["step"], r[metric]) for r in records if r["split"] == split and metric in r]
            if points:
                steps, values = zip(*points)
                axes.plot(steps, values, style, label=split, markersize=3)
        axes.set_xlabel("step")
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend()
    figure.savefig(png_path, dpi=100)
