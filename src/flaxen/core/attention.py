"""The one multi-head attention all families share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from flaxen.core import blockwise, masks
from flaxen.core.config import TransformerConfig
from flaxen.core.linear import Linear

BLOCKWISE_MIN_LENGTH = 256  # causal attention this long (two blocks) skips its masked half (core/blockwise.py)
BLOCK_SIZE = 128


class MultiHeadAttention(nnx.Module):
    """Fused QKV projection, heads laid out (B, T, N, H), arithmetic by `jax.nn.dot_product_attention`."""

    def __init__(self, config: TransformerConfig, *, kernel_init, out_kernel_init, rngs: nnx.Rngs):
        self.num_heads = config.num_heads
        self.attention_dropout = config.attention_dropout
        self.implementation = config.attention_implementation
        self.deterministic = False
        # Output columns are [q | k | v], each (num_heads · head_dim): the layout of GPT-2's c_attn.
        width, dtype = config.hidden_size, config.compute_dtype
        self.qkv = Linear(width, 3 * width, kernel_init=kernel_init, dtype=dtype, rngs=rngs)
        self.out = Linear(width, width, kernel_init=out_kernel_init, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        is_causal: bool = False,
        rngs: nnx.Rngs | None = None,
        output_positions: slice | jax.Array | None = None,
    ) -> jax.Array:
        """(B, T, D) -> (B, T, D); `mask` is boolean, True = may attend, broadcastable to (B, N, T, S).

        With `output_positions` (a slice, or (B, P) indices) only those positions query: the output is (B, P, D),
        the same as those rows of the full output; `mask` still describes all T queries.
        """
        query, key, value = self._heads(x)
        query_at = None  # (B, P) positions of the queries, when only some positions query
        if output_positions is not None:
            query_at = position_indices(output_positions, x.shape[0], x.shape[1])
            query = take_positions(query, output_positions)
            mask = _query_rows(mask, query_at, x.shape[1])
            if is_causal:
                mask, is_causal = masks.combine(mask, masks.causal_at(query_at, x.shape[1])), False
        if self.attention_dropout > 0 and not self.deterministic:
            mask = masks.combine(mask, self._drop_keys(rngs, query.shape[:2], x.shape[1], query_at))
        if is_causal and self._blockwise(x.shape[1], mask):
            key_valid = None if mask is None else mask[:, 0, 0, :]
            attended = blockwise.causal_attention(query, key, value, key_valid, block_size=BLOCK_SIZE)
        else:
            attended = jax.nn.dot_product_attention(
                query, key, value, mask=mask, is_causal=is_causal, implementation=self._jax_implementation
            )
        return self.out(rearrange(attended, "b t n h -> b t (n h)"))

    @property
    def _jax_implementation(self) -> str | None:
        """What `jax.nn.dot_product_attention` is asked for: "blockwise" is flaxen's own, so JAX chooses then."""
        return None if self.implementation == "blockwise" else self.implementation

    def _blockwise(self, length: int, mask: jax.Array | None) -> bool:
        """Whether causal attention over `length` tokens with `mask` takes the blockwise path.

        "blockwise" asks for it; None (auto) takes it from BLOCKWISE_MIN_LENGTH tokens where no fused kernel
        exists (not on GPU, whose cuDNN kernel is the better choice). Either way only a padding mask (B, 1, 1, S)
        or none: other masks (DropKey's) take `jax.nn.dot_product_attention`.
        """
        padding_only = mask is None or (mask.ndim == 4 and mask.shape[1:3] == (1, 1))
        if self.implementation == "blockwise":
            return padding_only
        auto = self.implementation is None and jax.default_backend() != "gpu"
        return auto and padding_only and length >= BLOCKWISE_MIN_LENGTH

    def decode(
        self, x: jax.Array, kv_cache: tuple[jax.Array, jax.Array], cache_index: jax.Array, mask: jax.Array
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Write this step's keys and values into `kv_cache` at `cache_index`; queries attend causally over it.

        `kv_cache` is (keys (B·N, H, S), values (B·N, S, H)): the layouts the two matmuls read as they are, with
        one batch axis, so XLA needs no reshaped copy of the updated cache. Returns (B, T, D) and the updated cache.
        """
        query, key, value = self._heads(x)
        keys, values = kv_cache
        keys = jax.lax.dynamic_update_slice_in_dim(
            keys, rearrange(key, "b t n h -> (b n) h t").astype(keys.dtype), cache_index, axis=2
        )
        values = jax.lax.dynamic_update_slice_in_dim(
            values, rearrange(value, "b t n h -> (b n) t h").astype(values.dtype), cache_index, axis=1
        )
        mask = masks.combine(mask, masks.causal(x.shape[1], keys.shape[2], query_offset=cache_index))
        attended = _attend_to_cache(query, keys, values, mask)
        return self.out(rearrange(attended, "b t n h -> b t (n h)")), (keys, values)

    def _heads(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Queries, keys and values, each (B, T, N, H)."""
        return rearrange(self.qkv(x), "b t (three n h) -> three b t n h", three=3, n=self.num_heads)

    def _drop_keys(
        self, rngs: nnx.Rngs | None, batch_and_queries: tuple[int, int], key_length: int, query_at: jax.Array | None
    ) -> jax.Array:
        """DropKey: a random (B, N, P, S) mask dropping keys before the softmax, so the fused kernel stays on."""
        if rngs is None:
            raise ValueError("attention_dropout in training mode needs rngs=; call model.eval() for inference")
        batch, queries = batch_and_queries
        shape = (batch, self.num_heads, queries, key_length)
        return masks.random(rngs.dropout(), shape, self.attention_dropout, query_positions=query_at)


def position_indices(positions: slice | jax.Array, batch: int, length: int) -> jax.Array:
    """(B, P) int32 indices in [0, length) of `positions`: a slice, or (B, P) / (P,) indices (negative from the end)."""
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


def _query_rows(mask: jax.Array | None, query_at: jax.Array, length: int) -> jax.Array | None:
    """The rows of a mask with per-query rows (…, T, S) at the (B, P) query positions; other masks as they are."""
    if mask is None or mask.ndim < 2 or mask.shape[-2] == 1:
        return mask
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    mask = jnp.broadcast_to(mask, (query_at.shape[0], mask.shape[1], length, length))
    return jnp.take_along_axis(mask, query_at[:, None, :, None], axis=2)


def _attend_to_cache(query: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax attention of (B, T, N, H) queries over keys (B·N, H, S) and values (B·N, S, H)."""
    batch, length, heads, _ = query.shape
    rows = rearrange(query, "b t n h -> (b n) t h")
    mask = rearrange(jnp.broadcast_to(mask, (batch, heads, length, keys.shape[2])), "b n t s -> (b n) t s")
    scores = jnp.einsum("xth,xhs->xts", rows, keys.astype(query.dtype), preferred_element_type=jnp.float32)
    scores = jnp.where(mask, scores / jnp.sqrt(query.shape[-1]).astype(jnp.float32), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(query.dtype)
    attended = jnp.einsum("xts,xsh->xth", probs, values.astype(query.dtype))
    return rearrange(attended, "(b n) t h -> b t n h", b=batch)
