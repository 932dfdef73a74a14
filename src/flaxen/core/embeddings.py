"""Token, learned-position and patch embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from flaxen.core.linear import Linear

ONE_HOT_MAX_ROWS = 16  # tables up to this many rows (token types) are read by a one-hot matmul, not a gather
# Training logits span the vocabulary rounded up to this multiple, per backend (the loss ignores the extra
# columns): on a GPU, matmul dimensions that tile evenly instead of a 50,257-wide output the compiler pads and
# slices every step; elsewhere no padding (nothing to gain, and the float rounding stays that of the plain head).
LOGITS_PAD_MULTIPLE = {"gpu": 128}


class Embed(nnx.Embed):
    """`nnx.Embed` (same parameters, same `attend`) whose lookup gathers rows of the stored table and then casts
    them to the compute dtype, so the table's gradient is summed in the parameters' precision.

    A table of a few rows is read by a one-hot matmul instead: the gradient of a gather is a scatter-add, and one
    whose every update lands on the same few rows is serialised on a GPU.
    """

    def __call__(self, ids: jax.Array) -> jax.Array:
        """(...) integer ids -> (..., features) rows in the compute dtype."""
        table = self.embedding[...]
        if table.shape[0] <= ONE_HOT_MAX_ROWS:
            one_hot = jax.nn.one_hot(ids, table.shape[0], dtype=table.dtype)
            rows = jnp.dot(one_hot, table, precision=jax.lax.Precision.HIGHEST)
        else:
            rows = jnp.take(table, ids, axis=0)
        return rows.astype(self.dtype or table.dtype)

    def padded_attend(self, query: jax.Array) -> jax.Array:
        """`attend` over the vocabulary padded with zero rows to this backend's LOGITS_PAD_MULTIPLE: (..., D) ->
        (..., V'); the columns past `num_embeddings` are not classes (pass `num_classes` to the loss)."""
        vocab, multiple = self.num_embeddings, LOGITS_PAD_MULTIPLE.get(jax.default_backend(), 1)
        padded = -(-vocab // multiple) * multiple
        if padded == vocab:
            return self.attend(query)
        (query, table) = self.promote_dtype((query, self.embedding[...]), dtype=self.dtype)
        return jnp.dot(query, jnp.pad(table, [(0, padded - vocab), (0, 0)]).T)


class PositionEmbedding(nnx.Module):
    """Learned absolute positions added to (B, T, D) inputs."""

    def __init__(self, max_positions: int, features: int, *, init, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.embedding = nnx.Param(init(rngs.params(), (max_positions, features), param_dtype))

    def __call__(self, x: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """Adds rows 0..T-1, or the rows named by `positions` (B, T) (left-padded prompts, decoding)."""
        table = self.embedding[...].astype(x.dtype)
        if positions is None:
            return x + table[None, : x.shape[1]]
        return x + jnp.take(table, positions, axis=0)


class PatchEmbedding(nnx.Module):
    """Non-overlapping P×P patches, flattened and projected: (B, H, W, C) -> (B, H/P · W/P, D).

    One matmul, equal to a stride-P convolution whose kernel is laid out (P, P, C, D).
    """

    def __init__(self, patch_size: int, channels: int, features: int, *, rngs: nnx.Rngs, kernel_init, dtype=None):
        self.patch_size = patch_size
        self.projection = Linear(
            patch_size * patch_size * channels, features, kernel_init=kernel_init, dtype=dtype, rngs=rngs
        )

    def __call__(self, images: jax.Array) -> jax.Array:
        p = self.patch_size
        patches = rearrange(images, "b (h p1) (w p2) c -> b (h w) (p1 p2 c)", p1=p, p2=p)
        return self.projection(patches)
