"""Boolean attention masks: True = may attend, broadcastable to (B, N, T, S)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def causal(
    query_length: int, key_length: int | None = None, *, query_offset: jax.Array | int | None = None
) -> jax.Array:
    """(1, 1, T, S): query i (at absolute position query_offset + i) may see keys at positions up to its own.

    By default the queries are the last T of the S key positions.
    """
    key_length = query_length if key_length is None else key_length
    if query_offset is None:
        query_offset = key_length - query_length
    return causal_at((jnp.arange(query_length) + query_offset)[None], key_length)


def causal_at(query_positions: jax.Array, key_length: int) -> jax.Array:
    """(B, 1, P, S) from (B, P) absolute query positions: each query may see keys at positions up to its own."""
    return (jnp.arange(key_length)[None, None, :] <= query_positions[:, :, None])[:, None]


def padding(
    valid: jax.Array | None = None, *, lengths: jax.Array | None = None, key_length: int | None = None
) -> jax.Array:
    """(B, 1, 1, S) from a (B, S) validity mask, or from per-row `lengths` and `key_length`."""
    if (valid is None) == (lengths is None):
        raise ValueError("padding() takes either a (B, S) validity mask or lengths=, not both or neither")
    if valid is None:
        if key_length is None:
            raise ValueError("padding(lengths=...) also needs key_length=")
        valid = jnp.arange(key_length)[None, :] < jnp.asarray(lengths)[:, None]
    return jnp.asarray(valid, dtype=bool)[:, None, None, :]


def random(
    key: jax.Array, shape: tuple[int, int, int, int], drop_rate: float, *, query_positions: jax.Array | None = None
) -> jax.Array:
    """(B, N, T, S): drop each key with probability `drop_rate`, but every query row keeps its own position.

    The queries are the last T of the S key positions, or at the (B, T) absolute `query_positions`.
    """
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    *_, query_length, key_length = shape
    keep = jax.random.bernoulli(key, 1.0 - drop_rate, shape)
    if query_positions is None:
        query_positions = (jnp.arange(query_length) + key_length - query_length)[None]
    own_position = jnp.arange(key_length)[None, None, :] == query_positions[:, :, None]
    return keep | own_position[:, None]


def combine(*masks: jax.Array | None) -> jax.Array | None:
    """Logical and of the given masks (None entries are ignored; all None gives None)."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    combined = present[0]
    for mask in present[1:]:
        combined = combined & mask
    return combined
