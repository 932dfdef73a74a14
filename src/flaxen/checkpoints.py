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

from flaxen.hf.table import dotted

# The validation metrics a run may keep its best checkpoint by, and whether the best is the lowest or the highest.
BEST_METRICS = {"loss": "min", "accuracy": "max"}


def check_best_metric(best_metric: str) -> None:
    """ValueError naming the choices unless `best_metric` is one of BEST_METRICS."""
    if best_metric not in BEST_METRICS:
        raise ValueError(f"unknown best_metric {best_metric!r}; choose one of {', '.join(BEST_METRICS)}")


def _best_ranking(best_metric: str):
    """(metric of a checkpoint's saved metrics, "min" or "max") for `best_metric`."""
    check_best_metric(best_metric)
    mode = BEST_METRICS[best_metric]
    never_best = math.inf if mode == "min" else -math.inf  # a checkpoint saved between evaluations

    def metric(metrics: dict[str, float]) -> float:
        return metrics.get(f"validation_{best_metric}", never_best)

    return metric, mode


def checkpoint_manager(
    directory: str | Path,
    *,
    keep: int = 3,
    track_best: bool = True,
    best_metric: str = "loss",
    read_only: bool = False,
) -> ocp.CheckpointManager:
    """Async orbax manager keeping the last `keep` checkpoints and, with `track_best`, the best by `best_metric`."""
    metric, mode = _best_ranking(best_metric)
    preserve: list[Any] = [LatestN(n=keep)]
    if track_best:
        # Checkpoints saved without validation metrics are kept only while they are among the latest `keep`.
        best = BestN(get_metric_fn=metric, reverse=mode == "min", n=1, keep_checkpoints_without_metrics=False)
        preserve.append(best)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=AnyPreservationPolicy(preserve),
        best_fn=metric if track_best else None,  # lets manager.best_step() rank by it
        best_mode=mode,
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
    validation: dict[str, float] | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Start an async save of the model state, optimizer state and the run position (seed, step, elapsed seconds,
    and `data`, the state of the training batches' iterator when it has one).

    `validation` holds the metrics of an evaluation at this step (loss, accuracy, ...), which rank it for "best".
    """
    manager.save(
        step,
        args=ocp.args.Composite(
            model=ocp.args.StandardSave(model_state),
            opt_state=ocp.args.StandardSave(opt_state),
            progress=ocp.args.JsonSave(
                {"step": step, "seed": seed, "elapsed": elapsed} | ({"data": data} if data is not None else {})
            ),
        ),
        # Always a dict: orbax warns on every save without metrics once best_fn is set.
        metrics={f"validation_{name}": value for name, value in (validation or {}).items()},
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


def restore_model_weights(
    model: nnx.Module,
    directory: str | Path,
    step: int | None = None,
    *,
    best_metric: str = "loss",
    without: set[str] = frozenset(),
) -> int:
    """Restore checkpoint `step` (default: the best by `best_metric`, else the latest) into `model`; its step.

    `without` names (dotted paths) parameters the checkpoint does not hold: a run's frozen ones."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {directory}; is it a flaxen run folder?")
    with checkpoint_manager(directory, read_only=True, best_metric=best_metric) as manager:
        if step is None:
            step = manager.best_step()  # None when no checkpoint carries validation metrics
            step = manager.latest_step() if step is None else step
        if step is None or step not in manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint {'' if step is None else step} in {directory}; saved steps: {manager.all_steps()}"
            )
        saved = nnx.from_flat_state(
            [(path, value) for path, value in nnx.to_flat_state(nnx.state(model)) if dotted(path) not in without]
        )
        restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(_abstract(saved))))
    nnx.update(model, restored.model)
    return step


def _abstract(tree: Any) -> Any:
    """Shape/dtype/sharding skeleton of `tree` telling orbax what to restore into (works on nnx.eval_shape models)."""
    default_sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None) or default_sharding),
        tree,
    )
