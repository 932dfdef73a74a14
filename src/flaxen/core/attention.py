"""The one multi-head attention all families share, and the one function that decides how its arithmetic runs."""

from __future__ import annotations

import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from flaxen.core import blockwise, masks
from flaxen.core.config import TransformerConfig
from flaxen.core.linear import Linear

BLOCKWISE_MIN_LENGTH = 256  # causal attention this long (two blocks) skips its masked half (core/blockwise.py)
BLOCK_SIZE = 128
# cuDNN's sequences are zero-padded to a multiple of this, the padded keys excluded by per-row key lengths:
# its fused attention trains on even lengths only (ViT's 197 tokens, GPT's 1023 inputs are refused).
CUDNN_LENGTH_MULTIPLE = 2
CUDNN_MIN_COMPUTE_CAPABILITY = (8, 0)  # cuDNN's fused flash attention runs on Ampere and later
CUDNN_DTYPES = ("bfloat16", "float16")

logger = logging.getLogger(__name__)


class Device(NamedTuple):
    """What the kernel choice needs to know of a device."""

    platform: str  # "cpu", "cuda", "rocm" or "tpu"
    compute_capability: tuple[int, int] | None = None  # CUDA only


class AttentionChoice(NamedTuple):
    """How one attention call runs, and why."""

    implementation: str  # "cudnn", "xla" or "blockwise"
    padded_length: int  # the sequences' length as the kernel sees them (more than the real length: zero-padded)
    reason: str


def current_device() -> Device:
    """The default backend's first device, as `choose_implementation` reads it."""
    backend = jax.default_backend()
    if backend != "gpu":
        return Device(backend)
    device = jax.devices()[0]
    if "rocm" in str(getattr(getattr(device, "client", None), "platform_version", "")).lower():
        return Device("rocm")
    major, _, minor = str(getattr(device, "compute_capability", "0.0")).partition(".")
    return Device("cuda", (int(major), int(minor or 0)))


def mask_kind(mask: jax.Array | None) -> str:
    """The kind of a boolean mask: none, padding (a (B, 1, 1, S) key mask, real tokens first) or general."""
    if mask is None:
        return "none"
    return "padding" if mask.ndim == 4 and mask.shape[1:3] == (1, 1) else "general"


def choose_implementation(
    requested: str | None,
    *,
    device: Device,
    dtype,
    head_dim: int,
    query_length: int,
    key_length: int,
    is_causal: bool,
    mask: str,
) -> AttentionChoice:
    """The implementation one attention call takes: `requested` (a config's `attention_implementation`) or, for
    None, the fastest correct one for this device, compute dtype, shape and mask kind (see `mask_kind`).

    Automatic: on a CUDA GPU cuDNN's fused flash attention wherever it applies (Ampere or later, 16-bit compute,
    head dim a multiple of 8 up to 256 (128 before Hopper), self-attention, no mask or a padding mask given as key
    lengths; lengths padded to a multiple of CUDNN_LENGTH_MULTIPLE), XLA's otherwise; on CPUs and TPUs causal
    self-attention from BLOCKWISE_MIN_LENGTH tokens is blockwise (core/blockwise.py), the rest XLA's.
    """
    self_attention = query_length == key_length
    if requested == "xla":
        return AttentionChoice("xla", query_length, "asked for")
    if requested == "blockwise":
        if is_causal and self_attention and mask != "general":
            return AttentionChoice("blockwise", query_length, "asked for")
        return AttentionChoice("xla", query_length, "blockwise takes causal self-attention with at most padding")
    if requested == "cudnn":
        return AttentionChoice("cudnn", _padded(query_length, CUDNN_LENGTH_MULTIPLE, self_attention), "asked for")
    if requested is not None:
        raise ValueError(f"unknown attention implementation {requested!r}")
    if device.platform != "cuda":
        if device.platform != "rocm" and is_causal and self_attention and mask != "general":
            if query_length >= BLOCKWISE_MIN_LENGTH:
                return AttentionChoice("blockwise", query_length, f"causal, {query_length} >= {BLOCKWISE_MIN_LENGTH}")
        return AttentionChoice("xla", query_length, f"no fused kernel chosen on {device.platform}")
    head_dim_limit = 256 if device.compute_capability >= (9, 0) else 128
    dtype_name = jnp.dtype(dtype).name
    unsupported = [
        (device.compute_capability < CUDNN_MIN_COMPUTE_CAPABILITY, f"compute capability {device.compute_capability}"),
        (dtype_name not in CUDNN_DTYPES, f"{dtype_name} compute (cuDNN takes 16-bit inputs)"),
        (head_dim % 8 or head_dim > head_dim_limit, f"head dim {head_dim} (cuDNN: multiples of 8 to {head_dim_limit})"),
        (mask == "general", "a mask other than padding (DropKey's)"),
        (not self_attention, f"{query_length} queries over {key_length} keys (a head's few positions)"),
    ]
    reasons = [reason for failed, reason in unsupported if failed]
    if reasons:
        return AttentionChoice("xla", query_length, "not cuDNN: " + "; ".join(reasons))
    padded = _padded(query_length, CUDNN_LENGTH_MULTIPLE, self_attention)
    padding = ", padding as key lengths" if mask == "padding" else ""
    return AttentionChoice("cudnn", padded, f"fused flash attention{padding}")


def explain(
    config: TransformerConfig,
    query_length: int,
    *,
    key_length: int | None = None,
    is_causal: bool = False,
    mask: str = "none",
    device: Device | None = None,
) -> str:
    """What attention in a model of `config` runs as for these shapes on `device` (default: this process's), and why."""
    choice = choose_implementation(
        config.attention_implementation,
        device=device or current_device(),
        dtype=config.compute_dtype,
        head_dim=config.head_dim,
        query_length=query_length,
        key_length=query_length if key_length is None else key_length,
        is_causal=is_causal,
        mask=mask,
    )
    padding = f", padded to {choice.padded_length}" if choice.padded_length != query_length else ""
    return f"{choice.implementation}{padding}: {choice.reason}"


def _padded(length: int, multiple: int, self_attention: bool) -> int:
    return -(-length // multiple) * multiple if self_attention else length


class MultiHeadAttention(nnx.Module):
    """Fused QKV projection, heads laid out (B, T, N, H), the arithmetic as `choose_implementation` decides."""

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
        choice = choose_implementation(
            self.implementation,
            device=current_device(),
            dtype=query.dtype,
            head_dim=query.shape[-1],
            query_length=query.shape[1],
            key_length=key.shape[1],
            is_causal=is_causal,
            mask=mask_kind(mask),
        )
        logger.debug("attention over %s keys: %s (%s)", key.shape[1], choice.implementation, choice.reason)
        attended = attend(query, key, value, mask=mask, is_causal=is_causal, choice=choice)
        return self.out(rearrange(attended, "b t n h -> b t (n h)"))

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


def attend(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    mask: jax.Array | None,
    is_causal: bool,
    choice: AttentionChoice,
) -> jax.Array:
    """Softmax attention of (B, T, N, H) queries over (B, S, N, H) keys and values as `choice` says -> (B, T, N, H)."""
    if choice.implementation == "blockwise":
        key_valid = None if mask is None else mask[:, 0, 0, :]
        return blockwise.causal_attention(query, key, value, key_valid, block_size=BLOCK_SIZE)
    if choice.implementation == "cudnn":
        return attention_by_lengths(
            query,
            key,
            value,
            mask=mask,
            is_causal=is_causal,
            padded_length=choice.padded_length,
            implementation="cudnn",
        )
    return jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=is_causal, implementation="xla")


def attention_by_lengths(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    mask: jax.Array | None,
    is_causal: bool,
    padded_length: int,
    implementation: str,
) -> jax.Array:
    """`jax.nn.dot_product_attention` with a padding mask handed over as per-row key lengths (which fused kernels
    take without a bias), and the sequences zero-padded to `padded_length` with the added keys excluded.

    A padding mask must mark a prefix of each row (right padding); a row without any real key attends to its first.
    Another (general) mask is passed on as it is, padded with excluded keys (and padded queries that see every key).
    """
    length = query.shape[1]
    key_lengths = None
    if mask_kind(mask) == "padding":
        valid_keys = jnp.sum(mask[:, 0, 0, :], axis=-1, dtype=jnp.int32)
        key_lengths = jnp.broadcast_to(jnp.maximum(valid_keys, 1), (query.shape[0],))
        mask = None
    if padded_length > length:
        widths = [(0, 0), (0, padded_length - length), (0, 0), (0, 0)]
        query, key, value = (jnp.pad(x, widths) for x in (query, key, value))
        if mask is not None:
            extra = padded_length - length
            mask = jnp.pad(mask, [(0, 0), (0, 0), (0, 0), (0, extra)], constant_values=False)
            mask = jnp.pad(mask, [(0, 0), (0, 0), (0, extra if mask.shape[2] > 1 else 0), (0, 0)], constant_values=True)
        elif key_lengths is None:
            key_lengths = jnp.full((query.shape[0],), length, jnp.int32)
    attended = jax.nn.dot_product_attention(
        query,
        key,
        value,
        mask=mask,
        is_causal=is_causal,
        key_value_seq_lengths=key_lengths,
        implementation=implementation,
    )
    return attended[:, :length]


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
