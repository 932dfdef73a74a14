"""AdamW with linear warmup, cosine decay, ≥2-D weight decay, clipping and gradient accumulation."""

from __future__ import annotations

import jax
import optax

SCHEDULES = ("cosine", "linear", "constant")


def learning_rate_schedule(
    learning_rate: float,
    *,
    warmup: int = 0,
    total: int | None = None,
    min_lr_ratio: float = 0.1,
    schedule: str = "cosine",
) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then until `total` a decay to `min_lr_ratio * learning_rate`:
    "cosine" or "linear", or none ("constant").

    Without `total` the rate stays at its peak after warmup.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    warm = optax.linear_schedule(0.0, learning_rate, warmup) if warmup else optax.constant_schedule(learning_rate)
    if total is None or schedule == "constant":
        return optax.join_schedules([warm, optax.constant_schedule(learning_rate)], [warmup])
    if total <= warmup:
        raise ValueError(f"total ({total}) must be larger than warmup ({warmup})")
    if schedule == "linear":
        decay = optax.linear_schedule(learning_rate, learning_rate * min_lr_ratio, total - warmup)
        return optax.join_schedules([warm, decay], [warmup])
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=learning_rate,
        warmup_steps=warmup,
        decay_steps=total,  # optax counts the warmup inside decay_steps
        end_value=learning_rate * min_lr_ratio,
    )


def matrices_only(params: optax.Params) -> optax.Params:
    """Weight-decay mask: True for parameters with ndim >= 2 (kernels, embeddings), False for biases and norm scales."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def adamw(
    learning_rate: float,
    *,
    warmup: int = 0,
    total: int | None = None,
    weight_decay: float = 0.01,
    b1: float = 0.9,
    b2: float = 0.95,
    clip_norm: float | None = 1.0,
    min_lr_ratio: float = 0.1,
    accumulate_steps: int = 1,
    schedule: str = "cosine",
) -> optax.GradientTransformation:
    """AdamW on `learning_rate_schedule` (`schedule`: cosine, linear or constant after warm-up); `warmup` and
    `total` count trainer steps (batches), also when accumulating.

    The current rate is kept in the optimizer state (`optax.inject_hyperparams`) under "learning_rate", where the
    trainer reads it for logging. With `accumulate_steps > 1` gradients of that many batches are averaged
    (`optax.MultiSteps`) before one clipped update.
    """
    if accumulate_steps < 1:
        raise ValueError(f"accumulate_steps must be >= 1, got {accumulate_steps}")
    batch_schedule = learning_rate_schedule(
        learning_rate, warmup=warmup, total=total, min_lr_ratio=min_lr_ratio, schedule=schedule
    )

    def update_schedule(update_count):
        return batch_schedule(update_count * accumulate_steps)

    optimizer = optax.chain(
        optax.clip_by_global_norm(clip_norm) if clip_norm is not None else optax.identity(),
        optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
            learning_rate=update_schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=matrices_only
        ),
    )
    if accumulate_steps == 1:
        return optimizer
    return optax.MultiSteps(optimizer, every_k_schedule=accumulate_steps).gradient_transformation()


def current_learning_rate(opt_state: optax.OptState) -> jax.Array | None:
    """The learning rate an `inject_hyperparams` optimizer used for its last update; None if it records none."""
    return optax.tree_utils.tree_get(
        opt_state, "learning_rate", filtering=lambda path, value: isinstance(value, jax.Array)
    )
