"""Losses, computed in float32 and stable for extreme logits."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax


def cross_entropy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None, *, num_classes: int | None = None
) -> jax.Array:
    """Mean softmax cross-entropy over integer labels; with `weights`, a weighted mean (weights 0 = ignored).

    `num_classes`: only the first this many logits are classes (the rest, padding, are never predicted).
    """
    per_item, _ = scored_labels(logits, labels, num_classes or logits.shape[-1])
    return weighted_mean(per_item, weights)


def accuracy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None, *, num_classes: int | None = None
) -> jax.Array:
    """Fraction (weighted) of rows whose label has the largest logit; labels outside [0, V) and ties are wrong.

    The same as `argmax(logits) == labels` except on exact ties for the maximum, which never count (so an
    untrained zero-initialised head scores 0, not 1).
    """
    _, correct = scored_labels(logits, labels, num_classes or logits.shape[-1])
    return weighted_mean(correct, weights)


def scored_labels(logits: jax.Array, labels: jax.Array, num_classes: int) -> tuple[jax.Array, jax.Array]:
    """(softmax cross-entropy, 1.0 where the label alone has the largest logit) per row, in float32, over the first
    `num_classes` of the last axis.

    On a GPU the gradient is `fused_scored_labels`' hand-written one (fewer passes over a large vocabulary's
    logits, which bound the step there); elsewhere autodiff's, which keeps the forward pass's softmax instead of
    recomputing its exponentials (cheaper where arithmetic, not memory traffic, bounds the step).
    """
    if jax.default_backend() in FUSED_LOSS_BACKENDS:
        return fused_scored_labels(logits, labels, num_classes)
    loss, correct, _ = _scored_labels(logits, labels, num_classes)
    return loss, correct


FUSED_LOSS_BACKENDS = ("gpu",)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def fused_scored_labels(logits: jax.Array, labels: jax.Array, num_classes: int) -> tuple[jax.Array, jax.Array]:
    """`scored_labels` with a hand-written backward pass: it reads the logits once and writes softmax − one-hot,
    with no scatter for the labels' column and no masked copy of the logits kept from the forward pass."""
    loss, correct, _ = _scored_labels(logits, labels, num_classes)
    return loss, correct


def _scored_labels(logits, labels, num_classes):
    """(loss, correct, log normaliser) per row."""
    scores = _class_scores(logits, num_classes)
    normaliser = jax.nn.logsumexp(scores, axis=-1)
    row_max = jnp.max(jax.lax.stop_gradient(scores), axis=-1)
    maxima = jnp.sum(scores == row_max[..., None], axis=-1)
    labels = labels.astype(jnp.int32)
    in_range = (labels >= 0) & (labels < num_classes)  # a label out of range scores column 0 and is never correct
    label_scores = jnp.take_along_axis(scores, jnp.where(in_range, labels, 0)[..., None], axis=-1)[..., 0]
    correct = in_range & (maxima == 1) & (label_scores == row_max)
    return normaliser - label_scores, correct.astype(jnp.float32), normaliser


def _class_scores(logits: jax.Array, num_classes: int) -> jax.Array:
    """float32 logits with the columns past `num_classes` at -inf."""
    scores = logits.astype(jnp.float32)
    if num_classes == logits.shape[-1]:
        return scores
    return jnp.where(jnp.arange(logits.shape[-1]) < num_classes, scores, -jnp.inf)


def _scored_labels_forward(logits, labels, num_classes):
    loss, correct, normaliser = _scored_labels(logits, labels, num_classes)
    return (loss, correct), (logits, labels, normaliser)


def _scored_labels_backward(num_classes, residuals, cotangents):
    logits, labels, normaliser = residuals
    loss_cotangent, _ = cotangents  # `correct` is a step function: no gradient
    probabilities = jnp.exp(_class_scores(logits, num_classes) - normaliser[..., None])
    labels = labels.astype(jnp.int32)
    scored = jnp.where((labels >= 0) & (labels < num_classes), labels, 0)  # the column the forward pass scored
    label_columns = jnp.arange(logits.shape[-1]) == scored[..., None]
    grad = (probabilities - label_columns) * loss_cotangent[..., None]
    return grad.astype(logits.dtype), None


fused_scored_labels.defvjp(_scored_labels_forward, _scored_labels_backward)


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
    logits: jax.Array,
    labels: jax.Array,
    weights: jax.Array | None = None,
    targets: jax.Array | None = None,
    *,
    num_classes: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The (loss, metrics) pair every task model's `loss` returns: weighted cross-entropy and accuracy.

    With `targets` (B, V) probabilities, as training augmentation may make them, the loss is taken against those;
    accuracy is always against `labels`. `num_classes`: only the first this many logits are classes.
    """
    per_item, correct = scored_labels(logits, labels, num_classes or logits.shape[-1])
    loss = weighted_mean(per_item, weights) if targets is None else soft_cross_entropy(logits, targets, weights)
    return loss, {"loss": loss, "accuracy": weighted_mean(correct, weights)}
