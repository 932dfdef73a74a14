"""Causal attention that visits only the key blocks at or below the diagonal (flash-style, online softmax).

The sequence is cut into blocks of `block_size`; query block i needs key blocks 0..i only, so half of the T×T
score matrix is never computed. The work is ordered by diagonal: at offset d every query block i ≥ d meets key
block i − d in one batched matmul, so the program has T/block steps (not (T/block)² block pairs) and each step is
a large batched matmul. A running max and sum per query (online softmax) combine the key blocks; the backward pass
recomputes each block's probabilities from the saved log-sum-exp instead of storing them, so memory is
O(T · block) per head, not O(T²). Plain JAX: XLA compiles it for any device.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from einops import rearrange

MASKED = -1e30  # a masked score: finite, so a row that has seen only masked keys so far stays NaN-free


def causal_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, key_valid: jax.Array | None = None, *, block_size: int = 128
) -> jax.Array:
    """Causal softmax attention of (B, T, N, H) queries, keys and values -> (B, T, N, H).

    `key_valid` (B, T) bool marks real tokens (False: padding, never attended to). T need not divide by
    `block_size`: the tail block is padded with keys nobody may attend to. Equals
    `jax.nn.dot_product_attention(..., is_causal=True)` (with the padding mask) at every query that sees a key.
    """
    batch, length, _, _ = query.shape
    blocks = -(-length // block_size)
    padded = blocks * block_size
    if key_valid is None:
        key_valid = jnp.ones((batch, length), bool)
    if padded != length:
        widths = [(0, 0), (0, padded - length), (0, 0), (0, 0)]
        query, key, value = (jnp.pad(x, widths) for x in (query, key, value))
        key_valid = jnp.pad(key_valid, [(0, 0), (0, padded - length)])
    split = functools.partial(rearrange, pattern="b (c t) n h -> b n c t h", t=block_size)
    out = _attention(split(query), split(key), split(value), rearrange(key_valid, "b (c t) -> b c t", t=block_size))
    return rearrange(out, "b n c t h -> b (c t) n h")[:, :length]


@jax.custom_vjp
def _attention(q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array) -> jax.Array:
    """(B, N, C, t, H) blocks of queries, keys, values and (B, C, t) key validity -> (B, N, C, t, H)."""
    return _forward(q, k, v, key_valid)[0]


def _scores(q: jax.Array, k: jax.Array, key_valid: jax.Array, offset: int) -> jax.Array:
    """(B, N, C−d, t, t) scaled scores of query blocks d.. against key blocks ..C−d, masked."""
    scores = jnp.einsum("bncqh,bnckh->bncqk", q, k, preferred_element_type=jnp.float32)
    scores = scores * (1.0 / jnp.sqrt(jnp.float32(q.shape[-1])))
    allowed = key_valid[:, None, :, None, :]  # (B, 1, C−d, 1, t)
    if offset == 0:  # on the diagonal a query sees the keys up to its own position
        size = q.shape[-2]
        allowed = allowed & (jnp.arange(size)[:, None] >= jnp.arange(size)[None, :])
    return jnp.where(allowed, scores, MASKED)


def _forward(q, k, v, key_valid):
    blocks = q.shape[2]
    row_max = jnp.full(q.shape[:-1], MASKED, jnp.float32)  # (B, N, C, t)
    row_sum = jnp.zeros(q.shape[:-1], jnp.float32)
    total = jnp.zeros(q.shape, jnp.float32)
    for offset in range(blocks):
        rows = slice(offset, blocks)  # query blocks i ≥ d meet key blocks i − d
        keys = slice(0, blocks - offset)
        scores = _scores(q[:, :, rows], k[:, :, keys], key_valid[:, keys], offset)
        new_max = jnp.maximum(row_max[:, :, rows], scores.max(axis=-1))
        kept = jnp.exp(row_max[:, :, rows] - new_max)
        probabilities = jnp.exp(scores - new_max[..., None])
        row_sum = row_sum.at[:, :, rows].set(row_sum[:, :, rows] * kept + probabilities.sum(axis=-1))
        contribution = jnp.einsum(
            "bncqk,bnckh->bncqh", probabilities.astype(v.dtype), v[:, :, keys], preferred_element_type=jnp.float32
        )
        total = total.at[:, :, rows].set(total[:, :, rows] * kept[..., None] + contribution)
        row_max = row_max.at[:, :, rows].set(new_max)
    out = (total / row_sum[..., None]).astype(q.dtype)
    log_sum_exp = row_max + jnp.log(row_sum)
    return out, (q, k, v, key_valid, out, log_sum_exp)


def _backward(residuals, d_out):
    q, k, v, key_valid, out, log_sum_exp = residuals
    blocks = q.shape[2]
    scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
    # D_i = rowsum(dO ∘ O): the softmax Jacobian's correction term, one per query.
    correction = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
    d_q = jnp.zeros(q.shape, jnp.float32)
    d_k = jnp.zeros(k.shape, jnp.float32)
    d_v = jnp.zeros(v.shape, jnp.float32)
    for offset in range(blocks):
        rows, keys = slice(offset, blocks), slice(0, blocks - offset)
        q_rows, d_out_rows = q[:, :, rows], d_out[:, :, rows]
        scores = _scores(q_rows, k[:, :, keys], key_valid[:, keys], offset)
        probabilities = jnp.exp(scores - log_sum_exp[:, :, rows, :, None])  # (B, N, C−d, t, t)
        d_v = d_v.at[:, :, keys].add(
            jnp.einsum(
                "bncqk,bncqh->bnckh", probabilities.astype(v.dtype), d_out_rows, preferred_element_type=jnp.float32
            )
        )
        d_probabilities = jnp.einsum(
            "bncqh,bnckh->bncqk", d_out_rows, v[:, :, keys], preferred_element_type=jnp.float32
        )
        d_scores = (probabilities * (d_probabilities - correction[:, :, rows, :, None]) * scale).astype(q.dtype)
        d_q = d_q.at[:, :, rows].add(
            jnp.einsum("bncqk,bnckh->bncqh", d_scores, k[:, :, keys], preferred_element_type=jnp.float32)
        )
        d_k = d_k.at[:, :, keys].add(
            jnp.einsum("bncqk,bncqh->bnckh", d_scores, q_rows, preferred_element_type=jnp.float32)
        )
    return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), None


_attention.defvjp(_forward, _backward)
