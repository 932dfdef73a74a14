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


@functools.partial(jax.jit, static_argnames=("degrees", "scale", "translate"))
def random_affine(
    images: jax.Array,
    key: jax.Array,
    *,
    degrees: float = 15.0,
    scale: tuple[float, float] = (0.9, 1.1),
    translate: float = 0.1,
) -> jax.Array:
    """Each image rotated, scaled and shifted at random about its centre, resampled bilinearly.

    images: (B, H, W, C). Angles are uniform in ±`degrees`, zoom in `scale`, shifts in ±`translate` of the side.
    Pixels sampled from outside the image take the nearest edge pixel, so a plain background stays plain.
    """
    batch, height, width, _ = images.shape
    angle_key, zoom_key, shift_key = jax.random.split(key, 3)
    angle = jnp.deg2rad(jax.random.uniform(angle_key, (batch,), minval=-degrees, maxval=degrees))
    zoom = jax.random.uniform(zoom_key, (batch,), minval=scale[0], maxval=scale[1])
    shift = jax.random.uniform(shift_key, (batch, 2), minval=-translate, maxval=translate) * jnp.array(
        [height, width], jnp.float32
    )
    rows, cols = jnp.meshgrid(
        jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
    )
    centre = jnp.array([(height - 1) / 2, (width - 1) / 2], jnp.float32)
    # Output pixel p reads input pixel R(-angle)·(p - centre - shift)/zoom + centre.
    y = rows[None] - centre[0] - shift[:, 0, None, None]
    x = cols[None] - centre[1] - shift[:, 1, None, None]
    cos, sin = (jnp.cos(angle) / zoom)[:, None, None], (jnp.sin(angle) / zoom)[:, None, None]
    source_y = jnp.clip(cos * y - sin * x + centre[0], 0, height - 1)
    source_x = jnp.clip(sin * y + cos * x + centre[1], 0, width - 1)
    return jax.vmap(_bilinear)(images, source_y, source_x).astype(images.dtype)


@functools.partial(jax.jit, static_argnames=("scale", "ratio", "flip"))
def random_resized_crop(
    images: jax.Array,
    key: jax.Array,
    *,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> jax.Array:
    """Each image's random crop resized (bilinearly) back to the image's size, then flipped left-right at random.

    images: (B, H, W, C). A crop covers a fraction of the area uniform in `scale`, with an aspect ratio log-uniform in
    `ratio` (clipped to the image), at a uniform position: torchvision's RandomResizedCrop, taken from the prepared
    (already centre-cropped) image.
    """
    batch, height, width, _ = images.shape
    area_key, ratio_key, top_key, left_key, flip_key = jax.random.split(key, 5)
    area = jax.random.uniform(area_key, (batch,), minval=scale[0], maxval=scale[1])
    log_ratio = jax.random.uniform(ratio_key, (batch,), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1]))
    crop_height = jnp.minimum(jnp.sqrt(area / jnp.exp(log_ratio)), 1.0) * height
    crop_width = jnp.minimum(jnp.sqrt(area * jnp.exp(log_ratio)), 1.0) * width
    top = jax.random.uniform(top_key, (batch,)) * (height - crop_height)
    left = jax.random.uniform(left_key, (batch,)) * (width - crop_width)
    if flip:
        flipped = jax.random.bernoulli(flip_key, 0.5, (batch,))
        left, crop_width = jnp.where(flipped, left + crop_width, left), jnp.where(flipped, -crop_width, crop_width)
    # Output pixel (i, j) reads the crop at ((i + 0.5) / H, (j + 0.5) / W) of its extent (pixel centres).
    rows = (jnp.arange(height, dtype=jnp.float32) + 0.5) / height
    cols = (jnp.arange(width, dtype=jnp.float32) + 0.5) / width
    source_y = top[:, None] + rows[None, :] * crop_height[:, None] - 0.5
    source_x = left[:, None] + cols[None, :] * crop_width[:, None] - 0.5
    source_y = jnp.clip(jnp.broadcast_to(source_y[:, :, None], (batch, height, width)), 0, height - 1)
    source_x = jnp.clip(jnp.broadcast_to(source_x[:, None, :], (batch, height, width)), 0, width - 1)
    return jax.vmap(_bilinear)(images, source_y, source_x).astype(images.dtype)


def _bilinear(image: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
    """image (H, W, C) read at fractional in-range coordinates y, x (H, W) -> (H, W, C)."""
    height, width, _ = image.shape
    top, left = jnp.floor(y), jnp.floor(x)
    fy, fx = (y - top)[..., None], (x - left)[..., None]
    top, left = top.astype(jnp.int32), left.astype(jnp.int32)
    bottom, right = jnp.minimum(top + 1, height - 1), jnp.minimum(left + 1, width - 1)
    upper = image[top, left] * (1 - fx) + image[top, right] * fx
    lower = image[bottom, left] * (1 - fx) + image[bottom, right] * fx
    return upper * (1 - fy) + lower * fy


def one_hot_targets(labels: jax.Array, num_labels: int, smoothing: float = 0.0) -> jax.Array:
    """(B,) integer labels -> (B, num_labels) float32 targets, `smoothing` of the mass spread over every class."""
    return jax.nn.one_hot(labels, num_labels, dtype=jnp.float32) * (1 - smoothing) + smoothing / num_labels


@functools.partial(jax.jit, static_argnames=("mixup_alpha", "cutmix_alpha"))
def mix_images(
    images: jax.Array, targets: jax.Array, key: jax.Array, *, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """Mixup or CutMix (a coin flip per batch, as DeiT does) of each image with its neighbour in the batch.

    images (B, H, W, C), targets (B, K) probabilities -> both mixed in the same proportion: mixup blends whole
    images with weight λ ~ Beta(mixup_alpha, mixup_alpha); CutMix pastes a box covering 1 - λ of the image, λ ~
    Beta(cutmix_alpha, cutmix_alpha), and the targets follow the box's exact area. An alpha of 0 turns that kind off.
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, targets
    batch, height, width, _ = images.shape
    coin_key, mixup_key, cutmix_key, box_key = jax.random.split(key, 4)
    partner_images, partner_targets = jnp.roll(images, 1, axis=0), jnp.roll(targets, 1, axis=0)

    def mixup():
        lam = jax.random.beta(mixup_key, mixup_alpha, mixup_alpha)
        return lam * images + (1 - lam) * partner_images, lam

    def cutmix():
        lam = jax.random.beta(cutmix_key, cutmix_alpha, cutmix_alpha)
        cut = jnp.sqrt(1 - lam)
        centre = jax.random.uniform(box_key, (2,)) * jnp.array([height, width])
        top, bottom = (
            jnp.clip(centre[0] - cut * height / 2, 0, height),
            jnp.clip(centre[0] + cut * height / 2, 0, height),
        )
        left, right = jnp.clip(centre[1] - cut * width / 2, 0, width), jnp.clip(centre[1] + cut * width / 2, 0, width)
        rows = jnp.arange(height)[:, None] + 0.5
        cols = jnp.arange(width)[None, :] + 0.5
        inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
        mixed = jnp.where(inside[None, :, :, None], partner_images, images)
        return mixed, 1 - jnp.mean(inside.astype(jnp.float32))

    if mixup_alpha <= 0:
        mixed, lam = cutmix()
    elif cutmix_alpha <= 0:
        mixed, lam = mixup()
    else:
        mixed, lam = jax.lax.cond(jax.random.bernoulli(coin_key), cutmix, mixup)
    return mixed.astype(images.dtype), lam * targets + (1 - lam) * partner_targets
