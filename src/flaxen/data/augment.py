"""On-device image augmentation: pure, jittable, static shapes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("pad", "flip", "padding_mode"))
def augment_images(
    images: jax.Array, key: jax.Array, *, pad: int = 4, flip: bool = True, padding_mode: str = "reflect"
) -> jax.Array:
    """Random (H, W) crop of each image padded by `pad` ("reflect" or "constant" zeros), then a random left-right flip.

    images: (B, H, W, C). Every image gets its own crop offset and coin flip from `key`; output shape = input shape.
    """
    batch, height, width, channels = images.shape
    crop_key, flip_key = jax.random.split(key)
    if pad > 0:
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=padding_mode)
        offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1)  # (B, 2): top, left
        images = jax.vmap(
            lambda image, offset: jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))
        )(padded, offsets)
    if flip:
        flipped = jax.random.bernoulli(flip_key, 0.5, (batch,))
        images = jnp.where(flipped[:, None, None, None], images[:, :, ::-1, :], images)
    return images
