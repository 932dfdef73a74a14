"""The one multi-head attention all families share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from flaxen.core import masks
from flaxen.core.config import TransformerConfig
from flaxen.core.linear import Linear


class MultiHeadAttention(nnx.Module):
    """Fused QKV projection, heads laid out (B, T, N, H), arithmetic by `jax.nn.dot_product_attention`."""

    def __init__(self, config: TransformerConfig, *, kernel_init, out_kernel_init, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.dtype)
        self.num_heads = config.num_heads
        self.drop_key_rate = config.attention_dropout
        self.implementation = config.attention_implementation
        self.deterministic = False
        # Output columns are [q | k | v], each (num_heads · head_dim): the layout of GPT-2's c_attn.
        self.qkv = Linear(config.hidden_size, 3 * config.hidden_size, kernel_init=kernel_init, dtype=dtype, rngs=rngs)
        self.out = Linear(config.hidden_size, config.hidden_size, kernel_init=out_kernel_init, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        is_causal: bool = False,
        rngs: nnx.Rngs | None = None,
        kv_cache: tuple[jax.Array, jax.Array] | None = None,
        cache_index: jax.Array | None = None,
        query_positions: slice | jax.Array | None = None,
    ):
        """(B, T, D) -> (B, T, D); `mask` is boolean, True = may attend, broadcastable to (B, N, T, S).

        With `kv_cache` = (keys (B, N, H, S), values (B, N, S, H)), this step's keys and values are written at
        `cache_index`, queries attend causally over the cache, and the updated pair is returned as well.
        With `query_positions` (a slice, or (B, P) indices), only those positions query: the output is
        (B, P, D), the same as those rows of the full output; `mask` still describes all T queries.
        """
        query, key, value = rearrange(self.qkv(x), "b t (three n h) -> three b t n h", three=3, n=self.num_heads)
        source_length = key.shape[1]
        own_positions = None
        if query_positions is not None:
            if kv_cache is not None:
                raise ValueError("query_positions cannot be combined with a KV cache")
            own_positions = position_indices(query_positions, x.shape[0], source_length)
            query = take_positions(query, query_positions)
            if mask is not None and mask.ndim >= 2 and mask.shape[-2] != 1:  # per-query rows: keep the chosen ones
                mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
                mask = jnp.broadcast_to(mask, (x.shape[0], mask.shape[1], source_length, source_length))
                mask = jnp.take_along_axis(mask, own_positions[:, None, :, None], axis=2)
            if is_causal:
                mask, is_causal = masks.combine(mask, masks.causal_at(own_positions, source_length)), False
        if kv_cache is not None:
            keys, values = kv_cache
            keys = jax.lax.dynamic_update_slice_in_dim(keys, rearrange(key, "b t n h -> b n h t").astype(keys.dtype), cache_index, axis=3)
            values = jax.lax.dynamic_update_slice_in_dim(values, rearrange(value, "b t n h -> b n t h").astype(values.dtype), cache_index, axis=2)
            source_length = keys.shape[3]
            mask = masks.combine(mask, masks.causal(x.shape[1], source_length, query_offset=cache_index))
        if self.drop_key_rate > 0 and not self.deterministic:
            if rngs is None:
                raise ValueError("attention_dropout in training mode needs rngs=; call model.eval() for inference")
            shape = (x.shape[0], self.num_heads, query.shape[1], source_length)
            mask = masks.combine(mask, masks.random(rngs.dropout(), shape, self.drop_key_rate, query_positions=own_positions))
        if kv_cache is not None:
            attended = _attend_to_cache(query, keys, values, mask)
            return self.out(rearrange(attended, "b t n h -> b t (n h)")), (keys, values)
        attended = jax.nn.dot_product_attention(
            query, key.astype(query.dtype), value.astype(query.dtype), mask=mask, is_causal=is_causal,
            implementation=self.implementation,
        )  # (B, T, N, H)
        return self.out(rearrange(attended, "b t n h -> b t (n h)"))


def position_indices(positions: slice | jax.Array, batch: int, length: int) -> jax.Array:
    """(B, P) int32 indices in [0, length) of `positions`: a slice, or (B, P) / (P,) indices (negative count from the end)."""
    if isinstance(positions, slice):
        indices = jnp.arange(length, dtype=jnp.int32)[positions]
    else:
        indices = jnp.asarray(positions, jnp.int32)
        indices = jnp.where(indices < 0, indices + length, indices)
    return jnp.broadcast_to(indices, (batch, indices.shape[-1]))


def take_positions(x: jax.Array, positions: slice | jax.Array) -> jax.Array:
    """x[:, positions] for (B, T, ...) `x`: a plain slice, or a per-row gather with (B, P) / (P,) indices."""
    if isinstance(positions, slice):
        return x[:, positions]
    indices = position_indices(positions, x.shape[0], x.shape[1])
    return jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), axis=1)


def _attend_to_cache(query: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax attention of (B, T, N, H) queries over a cache laid out for the two matmuls.

    Keys are stored (B, N, H, S) and values (B, N, S, H): both matmuls then read the cache as it lies. Caching
    in the (B, S, N, H) layout of the uncached path made XLA transpose every layer's whole cache on every
    decoding step, a third of the decoding time (benchmarks/NOTES.md).
    """
    scores = jnp.einsum("btnh,bnhs->bnts", query, keys.astype(query.dtype), preferred_element_type=jnp.float32)
    scores = jnp.where(mask, scores / jnp.sqrt(query.shape[-1]).astype(jnp.float32), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(query.dtype)
    return jnp.einsum("bnts,bnsh->btnh", probs, values.astype(query.dtype))
