"""Orbax checkpoints of a training run: model state, optimizer state and run position; latest N + best kept."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import optax
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN


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


def restore_model_weights(model: nnx.Module, directory: str | Path, step: int | None = None) -> int:
    """Restore checkpoint `step` (default: the best by validation loss, else the latest) into `model`; its step."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {directory}; is it a flaxen run folder?")
    with checkpoint_manager(directory, read_only=True) as manager:
        if step is None:
            step = manager.best_step()  # None when no checkpoint carries a validation loss
            step = manager.latest_step() if step is None else step
        if step is None or step not in manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint {'' if step is None else step} in {directory}; saved steps: {manager.all_steps()}"
            )
        restored = manager.restore(
            step, args=ocp.args.Composite(model=ocp.args.StandardRestore(_abstract(nnx.state(model))))
        )
    nnx.update(model, restored.model)
    return step


def _abstract(tree: Any) -> Any:
    """Shape/dtype/sharding skeleton of `tree` telling orbax what to restore into (works on nnx.eval_shape models)."""
    default_sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None) or default_sharding),
        tree,
    )
