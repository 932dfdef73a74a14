"""Masked-language-model corruption drawn on the device, with static shapes (jittable)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class MaskedTokens(NamedTuple):
    token_ids: jax.Array  # (B, T) the corrupted input
    positions: jax.Array  # (B, P) int32 prediction slots
    labels: jax.Array  # (B, P) int32 original token at each slot
    weights: jax.Array  # (B, P) float32, 1 for a real prediction, 0 for an unused slot


def num_prediction_slots(sequence_length: int, mask_rate: float = 0.15) -> int:
    """Static number of prediction slots per row: enough for `mask_rate` of the row plus rounding headroom."""
    return max(1, min(sequence_length, int(sequence_length * mask_rate) + 1))


def mask_tokens(
    token_ids: jax.Array,
    special_mask: jax.Array,
    key: jax.Array,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_token_ids: tuple[int, ...] = (),
    mask_rate: float = 0.15,
    num_predictions: int | None = None,
) -> MaskedTokens:
    """Choose `mask_rate` of each row's non-special positions; make 80% [MASK], 10% a random token, 10% unchanged.

    `special_mask` (B, T) is True where a position may never be chosen (special tokens, padding).
    Each row picks round-at-random(mask_rate · eligible) slots, so the expected rate is exact for any length;
    slots are the top-k of random scores, so every shape is static. Random replacement tokens are drawn
    from the vocabulary without `special_token_ids`.
    """
    batch, length = token_ids.shape
    num_predictions = num_predictions or num_prediction_slots(length, mask_rate)
    score_key, count_key, action_key, token_key = jax.random.split(key, 4)

    eligible = ~special_mask
    scores = jnp.where(eligible, jax.random.uniform(score_key, (batch, length)), -1.0)
    _, positions = jax.lax.top_k(scores, num_predictions)  # (B, P), best score first
    positions = positions.astype(jnp.int32)
    wanted = jnp.floor(eligible.sum(axis=1) * mask_rate + jax.random.uniform(count_key, (batch,)))
    weights = (jnp.arange(num_predictions)[None, :] < wanted[:, None]).astype(jnp.float32)
    labels = jnp.take_along_axis(token_ids, positions, axis=1).astype(jnp.int32)

    action = jax.random.uniform(action_key, (batch, num_predictions))
    replacement = jnp.where(action < 0.8, mask_token_id, labels)
    random_ids = _random_non_special(token_key, (batch, num_predictions), vocab_size, special_token_ids)
    replacement = jnp.where((action >= 0.8) & (action < 0.9), random_ids, replacement)
    replacement = jnp.where(weights > 0, replacement, labels)  # unused slots leave the input unchanged

    rows = jnp.arange(batch)[:, None]
    corrupted = token_ids.at[rows, positions].set(replacement.astype(token_ids.dtype))
    return MaskedTokens(corrupted, positions, labels, weights)


def _random_non_special(
    key: jax.Array, shape: tuple[int, ...], vocab_size: int, special_token_ids: tuple[int, ...]
) -> jax.Array:
    specials = sorted(set(special_token_ids))
    draws = jax.random.randint(key, shape, 0, vocab_size - len(specials), dtype=jnp.int32)
    for special in specials:  # shift past each special id in ascending order: a bijection onto the non-special ids
        draws = draws + (draws >= special)
    return draws
