"""Activations selectable by config name, including the learnable PReLU and the randomised RReLU."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx


def mish(x: jax.Array) -> jax.Array:
    """x * tanh(softplus(x))."""
    return x * jnp.tanh(jax.nn.softplus(x))


_STATELESS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "swish": jax.nn.silu,
    "mish": mish,
}
NAMES = (*_STATELESS, "prelu", "rrelu")


def check_activation_name(name: str) -> str:
    """`name` if it is one of flaxen's activations; ValueError listing them otherwise."""
    if name not in NAMES:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(NAMES)}")
    return name


class PReLU(nnx.Module):
    """Parametric ReLU with one learnable negative slope per channel (last axis)."""

    def __init__(self, num_features: int, *, initial_slope: float = 0.25):
        self.slope = nnx.Param(jnp.full((num_features,), initial_slope, jnp.float32))

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        return jnp.where(x >= 0, x, self.slope[...].astype(x.dtype) * x)


class RReLU(nnx.Module):
    """Randomised leaky ReLU: slope ~ U(lower, upper) per element in training, the mean slope in eval."""

    def __init__(self, *, lower: float = 1 / 8, upper: float = 1 / 3):
        self.lower, self.upper = lower, upper
        self.deterministic = False

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        if self.deterministic:
            slope = (self.lower + self.upper) / 2
        else:
            if rngs is None:
                raise ValueError(
                    "RReLU in training mode needs rngs= (a 'dropout' stream); call model.eval() for inference"
                )
            slope = jax.random.uniform(rngs.dropout(), x.shape, x.dtype, self.lower, self.upper)
        return jnp.where(x >= 0, x, slope * x)


class Activation(nnx.Module):
    """An activation chosen by name; the learnable/random ones hold their own state."""

    def __init__(self, name: str, num_features: int):
        self.name = check_activation_name(name)
        if self.name == "prelu":
            self.learned = nnx.data(PReLU(num_features))
        elif self.name == "rrelu":
            self.learned = nnx.data(RReLU())
        else:
            self.learned = nnx.data(None)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        if self.learned is not None:
            return self.learned(x, rngs=rngs)
        return _STATELESS[self.name](x)
