"""Token, learned-position and patch embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from flaxen.core.linear import Linear


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
