"""Losses, computed in float32 and stable for extreme logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross-entropy over integer labels; with `weights`, a weighted mean (weights 0 = ignored)."""
    per_item = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return weighted_mean(per_item, weights)


def accuracy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Fraction (weighted) of rows whose label has the largest logit; labels outside [0, V) and ties are wrong.

    The same as `argmax(logits) == labels` except on exact ties for the maximum, which never count (so an
    untrained zero-initialised head scores 0, not 1). The label's logit is compared with the row maximum the
    loss also computes, instead of a separate argmax reduction.
    """
    logits = logits.astype(jnp.float32)
    labels = labels.astype(jnp.int32)
    in_range = (labels >= 0) & (labels < logits.shape[-1])
    label_logits = jnp.take_along_axis(logits, jnp.where(in_range, labels, 0)[..., None], axis=-1)[..., 0]
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    unique_max = jnp.sum(logits == row_max, axis=-1) == 1
    correct = in_range & unique_max & (label_logits == row_max[..., 0])
    return weighted_mean(correct.astype(jnp.float32), weights)


def weighted_mean(values: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean of `values`; with weights, sum(w * v) / sum(w), and 0 when every weight is 0."""
    if weights is None:
        return jnp.mean(values)
    weights = jnp.broadcast_to(weights.astype(jnp.float32), values.shape)  # e.g. per-row weights for per-token values
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-9)


def position_weights(batch: dict[str, jax.Array], *, padding_mask: jax.Array | None) -> jax.Array | None:
    """(B, T) weights for scoring: a (B, T) mask times the per-row `weights` an evaluation batch may carry."""
    row_weights = batch.get("weights")
    if row_weights is None:
        return padding_mask
    row_weights = row_weights.astype(jnp.float32)[:, None]
    return row_weights if padding_mask is None else row_weights * padding_mask


def soft_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross-entropy against (..., V) target probabilities (smoothed or mixed labels)."""
    per_item = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets.astype(jnp.float32))
    return weighted_mean(per_item, weights)


def loss_and_metrics(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None, targets: jax.Array | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The (loss, metrics) pair every task model's `loss` returns: weighted cross-entropy and accuracy.

    With `targets` (B, V) probabilities, as training augmentation may make them, the loss is taken against those;
    accuracy is always against `labels`.
    """
    loss = cross_entropy(logits, labels, weights) if targets is None else soft_cross_entropy(logits, targets, weights)
    return loss, {"loss": loss, "accuracy": accuracy(logits, labels, weights)}
