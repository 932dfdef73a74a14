"""Bicubic resampling of a 2-D grid, matching PyTorch's `interpolate(mode="bicubic", align_corners=False)`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_CUBIC_A = -0.75  # PyTorch's bicubic coefficient (Keys' kernel); jax.image uses -0.5.


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """(n,) fractional offsets -> (n, 4) weights for the taps at floor-1 .. floor+2."""
    a = _CUBIC_A

    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)


def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) matrix M such that M @ signal is the bicubic resampling of a length-`in_size` signal."""
    source = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    floor = np.floor(source)
    weights = _cubic_weights(source - floor)
    matrix = np.zeros((out_size, in_size))
    for tap in range(4):
        index = np.clip(floor.astype(int) - 1 + tap, 0, in_size - 1)  # border taps repeat the edge, as in PyTorch
        np.add.at(matrix, (np.arange(out_size), index), weights[:, tap])
    return matrix


def resample_grid(grid: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(H, W, D) -> (size[0], size[1], D), separably, in float32."""
    rows = jnp.asarray(interpolation_matrix(grid.shape[0], size[0]), jnp.float32)
    cols = jnp.asarray(interpolation_matrix(grid.shape[1], size[1]), jnp.float32)
    precision = jax.lax.Precision.HIGHEST
    return jnp.einsum("ih,hwd,jw->ijd", rows, grid.astype(jnp.float32), cols, precision=precision).astype(grid.dtype)
