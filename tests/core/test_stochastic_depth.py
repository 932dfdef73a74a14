"""Stochastic depth skips whole residual branches per example in training, at the rate the layer's depth sets, and
never in evaluation."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxen import ViTConfig, ViTForImageClassification
from flaxen.core import TransformerStack
from flaxen.core.blocks import TransformerBlock


def pre_ln(module_class, config):
    init = config.weight_init()
    return module_class(config, norm_first=True, kernel_init=init, out_kernel_init=init, rngs=nnx.Rngs(0))


def test_a_block_skips_each_branch_for_its_rate_of_the_examples():
    config = ViTConfig.tiny(dropout=0.0)
    block = pre_ln(TransformerBlock, config)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4000, 3, config.hidden_size)), jnp.float32)
    out = np.asarray(block(x, rngs=nnx.Rngs(dropout=1), skip_rate=0.5))
    untouched = np.all(np.isclose(out, np.asarray(x), atol=1e-6), axis=(1, 2))
    assert abs(untouched.mean() - 0.25) < 0.03  # both branches skipped: 0.5 × 0.5 of the examples
    block.eval()
    np.testing.assert_allclose(block(x, skip_rate=0.5), block(x), atol=1e-6)


def test_rates_grow_with_depth_from_zero_to_the_configured_rate():
    config = ViTConfig.tiny(num_layers=5, stochastic_depth=0.2)
    stack = pre_ln(TransformerStack, config)
    np.testing.assert_allclose(stack.skip_rates, [0.0, 0.05, 0.1, 0.15, 0.2])
    with pytest.raises(ValueError, match="stochastic_depth"):
        ViTConfig.tiny(stochastic_depth=1.0)


@pytest.mark.parametrize("switches", [{}, {"scan_layers": True}, {"remat": True}, {"scan_layers": True, "remat": True}])
def test_training_is_random_evaluation_is_not(switches):
    config = dataclasses.replace(ViTConfig.tiny(dropout=0.0, num_layers=3, stochastic_depth=0.5), **switches)
    model = ViTForImageClassification(config, rngs=nnx.Rngs(0))
    images = jnp.asarray(np.random.default_rng(0).normal(size=(16, 16, 16, 3)), jnp.float32)
    first, second = model(images, rngs=nnx.Rngs(dropout=1)), model(images, rngs=nnx.Rngs(dropout=2))
    assert not np.allclose(first, second)
    model.eval()
    plain = ViTForImageClassification(config.replace(stochastic_depth=0.0), rngs=nnx.Rngs(0))
    plain.eval()
    np.testing.assert_allclose(model(images, rngs=nnx.Rngs(dropout=1)), plain(images), rtol=1e-5, atol=1e-6)
