"""An explicit key/value cache for decoding: a pytree, so a compiled decode loop can carry it."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class KVCache(NamedTuple):
    keys: tuple[jax.Array, ...]  # one (B·N, H, S) array per layer: the layout q·kᵀ reads without a transpose
    values: tuple[jax.Array, ...]  # one (B·N, S, H) array per layer
    valid: jax.Array  # (B, S) bool: written and not padding
    index: jax.Array  # int32 scalar: where the next token is written

    @classmethod
    def empty(
        cls, *, num_layers: int, batch: int, length: int, num_heads: int, head_dim: int, dtype=jnp.float32
    ) -> KVCache:
        """A zeroed cache of `length` positions."""
        keys = tuple(jnp.zeros((batch * num_heads, head_dim, length), dtype) for _ in range(num_layers))
        values = tuple(jnp.zeros((batch * num_heads, length, head_dim), dtype) for _ in range(num_layers))
        return cls(keys, values, jnp.zeros((batch, length), bool), jnp.zeros((), jnp.int32))

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    def with_written(self, padding_mask: jax.Array) -> KVCache:
        """Mark the next T positions as written; `padding_mask` (B, T) says which of them are real tokens."""
        valid = jax.lax.dynamic_update_slice_in_dim(self.valid, padding_mask.astype(bool), self.index, axis=1)
        return self._replace(valid=valid)
