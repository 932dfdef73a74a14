"""The one multi-head attention all families share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from flaxen.core import masks
from flaxen.core.config import TransformerConfig


class MultiHeadAttention(nnx.Module):
    """Fused QKV projection, heads laid out (B, T, N, H), arithmetic by `jax.nn.dot_product_attention`."""

    def __init__(self, config: TransformerConfig, *, kernel_init, out_kernel_init, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.dtype)
        self.num_heads = config.num_heads
        self.drop_key_rate = config.attention_dropout
        self.implementation = config.attention_implementation
        self.deterministic = False
        # Output columns are [q | k | v], each (num_heads · head_dim): the layout of GPT-2's c_attn.
        self.qkv = nnx.Linear(config.hidden_size, 3 * config.hidden_size, kernel_init=kernel_init, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(config.hidden_size, config.hidden_size, kernel_init=out_kernel_init, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        is_causal: bool = False,
        rngs: nnx.Rngs | None = None,
        kv_cache: tuple[jax.Array, jax.Array] | None = None,
        cache_index: jax.Array | None = None,
    ):
        """(B, T, D) -> (B, T, D); `mask` is boolean, True = may attend, broadcastable to (B, N, T, S).

        With `kv_cache` = (keys, values), each (B, S, N, H), this step's keys and values are written at
        `cache_index`, queries attend causally over the cache, and the updated pair is returned as well.
        """
        query, key, value = rearrange(self.qkv(x), "b t (three n h) -> three b t n h", three=3, n=self.num_heads)
        if kv_cache is not None:
            key = jax.lax.dynamic_update_slice_in_dim(kv_cache[0], key.astype(kv_cache[0].dtype), cache_index, axis=1)
            value = jax.lax.dynamic_update_slice_in_dim(kv_cache[1], value.astype(kv_cache[1].dtype), cache_index, axis=1)
            mask = masks.combine(mask, masks.causal(x.shape[1], key.shape[1], query_offset=cache_index))
            is_causal = False
        if self.drop_key_rate > 0 and not self.deterministic:
            if rngs is None:
                raise ValueError("attention_dropout in training mode needs rngs=; call model.eval() for inference")
            shape = (x.shape[0], self.num_heads, x.shape[1], key.shape[1])
            mask = masks.combine(mask, masks.random(rngs.dropout(), shape, self.drop_key_rate))
        attended = jax.nn.dot_product_attention(
            query, key.astype(query.dtype), value.astype(query.dtype), mask=mask, is_causal=is_causal,
            implementation=self.implementation,
        )  # (B, T, N, H)
        out = self.out(rearrange(attended, "b t n h -> b t (n h)"))
        return out if kv_cache is None else (out, (key, value))
