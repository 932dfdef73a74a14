"""flaxen.core.linear: the hand-written backward pass gives autodiff's gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxen.core.linear import Linear, matmul


@pytest.mark.parametrize("shape", [(5, 8), (3, 7, 8), (2, 3, 4, 8)])
def test_matmul_gradients_equal_autodiff(shape):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((8, 6)), jnp.float32)
    weights = jnp.asarray(rng.standard_normal((*shape[:-1], 6)), jnp.float32)  # a non-uniform cotangent
    ours = jax.grad(lambda x, k: jnp.sum(jnp.sin(matmul(x, k)) * weights), argnums=(0, 1))(x, kernel)
    reference = jax.grad(lambda x, k: jnp.sum(jnp.sin(x @ k) * weights), argnums=(0, 1))(x, kernel)
    for a, b in zip(ours, reference):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_linear_is_an_nnx_linear_with_the_same_forward_and_gradients():
    layer = Linear(8, 6, rngs=nnx.Rngs(0))
    plain = nnx.Linear(8, 6, rngs=nnx.Rngs(0))
    assert isinstance(layer, nnx.Linear)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 3, 8)), jnp.bfloat16)
    np.testing.assert_array_equal(layer(x), plain(x))  # forward untouched, any dtype

    def loss(m):
        return jnp.sum(m(x.astype(jnp.float32)) ** 2)

    ours, reference = nnx.grad(loss)(layer), nnx.grad(loss)(plain)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
