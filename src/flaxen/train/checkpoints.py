"""Run folders: orbax checkpoints (latest N + best by validation loss), config.json and run.json."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import optax
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
PARTIAL_SUFFIX = ".partial"  # a file being written by `write_atomically`


def _validation_loss(metrics: dict[str, float]) -> float:
    return metrics.get("validation_loss", math.inf)  # a checkpoint saved between evaluations is never the best


def checkpoint_manager(
    directory: str | Path, *, keep: int = 3, track_best: bool = True, read_only: bool = False
) -> ocp.CheckpointManager:
    """Async orbax manager keeping the last `keep` checkpoints and, with `track_best`, the lowest validation loss."""
    preserve: list[Any] = [LatestN(n=keep)]
    if track_best:
        # Checkpoints saved without a validation loss are kept only while they are among the latest `keep`.
        best = BestN(get_metric_fn=_validation_loss, reverse=True, n=1, keep_checkpoints_without_metrics=False)
        preserve.append(best)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=AnyPreservationPolicy(preserve),
        best_fn=_validation_loss if track_best else None,  # lets manager.best_step() rank by it
        best_mode="min",
        enable_async_checkpointing=True,
        cleanup_tmp_directories=not read_only,  # remove half-written saves of a crashed run
        read_only=read_only,
        create=not read_only,
    )
    return ocp.CheckpointManager(
        Path(directory).absolute(), item_names=("model", "opt_state", "progress"), options=options
    )


def save_checkpoint(
    manager: ocp.CheckpointManager,
    step: int,
    model_state: nnx.State,
    opt_state: optax.OptState,
    *,
    seed: int,
    elapsed: float,
    validation_loss: float | None = None,
) -> None:
    """Start an async save of the model state, optimizer state and the run position (seed, step, elapsed seconds)."""
    manager.save(
        step,
        args=ocp.args.Composite(
            model=ocp.args.StandardSave(model_state),
            opt_state=ocp.args.StandardSave(opt_state),
            progress=ocp.args.JsonSave({"step": step, "seed": seed, "elapsed": elapsed}),
        ),
        # Always a dict: orbax warns on every save without metrics once best_fn is set.
        metrics={} if validation_loss is None else {"validation_loss": validation_loss},
    )


def restore_checkpoint(
    manager: ocp.CheckpointManager, step: int, model_state: nnx.State, opt_state: optax.OptState
) -> tuple[nnx.State, optax.OptState, dict[str, Any]]:
    """Model state, optimizer state and run position of checkpoint `step`, shaped like the given templates."""
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            model=ocp.args.StandardRestore(_abstract(model_state)),
            opt_state=ocp.args.StandardRestore(_abstract(opt_state)),
            progress=ocp.args.JsonRestore(),
        ),
    )
    return restored.model, restored.opt_state, restored.progress


def load_checkpoint(model: nnx.Module, out_dir: str | Path, step: int | None = None) -> int:
    """Restore a run's saved weights into `model` (the best by validation loss, else the latest) and return the step."""
    out_dir = Path(out_dir)
    check_model_class(model, out_dir)
    directory = out_dir / CHECKPOINT_DIR
    if not directory.is_dir():
        raise FileNotFoundError(f"{out_dir} has no {CHECKPOINT_DIR}/ folder; is it a flaxen run folder?")
    with checkpoint_manager(directory, read_only=True) as manager:
        if step is None:
            step = manager.best_step()  # None when no checkpoint carries a validation loss
            step = manager.latest_step() if step is None else step
        if step is None or step not in manager.all_steps():
            raise FileNotFoundError(f"no checkpoint {'' if step is None else step} in {directory}; "
                                    f"saved steps: {manager.all_steps()}")
        restored = manager.restore(
            step, args=ocp.args.Composite(model=ocp.args.StandardRestore(_abstract(nnx.state(model))))
        )
    nnx.update(model, restored.model)
    return step


def write_run_files(model: nnx.Module, out_dir: Path, run_info: dict[str, Any] | None) -> None:
    """Write run.json (model class + run_info) and config.json (the model config) into the run folder.

    run.json comes first: it marks the folder as a run, so a run killed after it can be resumed.
    """
    run = {"model_class": type(model).__name__, **(run_info or {})}
    write_atomically(out_dir / RUN_FILE, json.dumps(run, indent=2) + "\n")
    write_atomically(out_dir / CONFIG_FILE, model.config.to_json() + "\n")


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` by `text` in one step: a crash leaves the old file or the new one, never half of it."""
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    partial.write_text(text)
    os.replace(partial, path)


def check_model_class(model: nnx.Module, out_dir: Path) -> None:
    """Raise ValueError if the folder's run.json names a model class other than `model`'s."""
    run_file = out_dir / RUN_FILE
    if not run_file.exists():
        return
    saved_class = json.loads(run_file.read_text()).get("model_class")
    if saved_class != type(model).__name__:
        raise ValueError(
            f"{out_dir} holds a {saved_class} run, not a {type(model).__name__} one; use another out_dir"
        )


def check_resumable(model: nnx.Module, out_dir: Path) -> None:
    """Raise ValueError unless the folder's run.json and config.json match `model` (absent files pass)."""
    check_model_class(model, out_dir)
    config_file = out_dir / CONFIG_FILE
    if not config_file.exists():
        return
    saved = json.loads(config_file.read_text())
    saved.pop("config_class", None)  # the model class was checked above
    current = model.config.to_dict()
    # Fields added after the run was written take their defaults; execution switches may change on resume.
    defaults = {f.name: f.default for f in dataclasses.fields(model.config) if f.default is not dataclasses.MISSING}
    ignored = set(getattr(model.config, "EXECUTION_FIELDS", ()))
    differing = sorted(
        key for key in (saved.keys() | current.keys()) - ignored
        if json.dumps(saved.get(key, defaults.get(key))) != json.dumps(current.get(key))
    )
    if differing:
        raise ValueError(
            f"cannot resume {out_dir}: its {CONFIG_FILE} differs from this model's config in "
            f"{', '.join(differing)}; use the same config or another out_dir"
        )


def _abstract(tree: Any) -> Any:
    """Shape/dtype/sharding skeleton of `tree` telling orbax what to restore into (works on nnx.eval_shape models)."""
    default_sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None) or default_sharding),
        tree,
    )
