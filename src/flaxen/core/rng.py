"""Call-time randomness: models take `rngs=` per call and keep no RNG state."""

from __future__ import annotations

import jax
from flax import nnx


def as_rngs(rngs: nnx.Rngs | jax.Array | int | None) -> nnx.Rngs | None:
    """Accept an `nnx.Rngs`, a PRNG key or a seed; keys and seeds become one `dropout` + `masking` stream pair."""
    if rngs is None or isinstance(rngs, nnx.Rngs):
        return rngs
    key = jax.random.key(rngs) if isinstance(rngs, int) else rngs
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    dropout_key, masking_key = jax.random.split(key)
    return nnx.Rngs(dropout=dropout_key, masking=masking_key)
