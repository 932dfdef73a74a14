"""Blockwise causal attention equals the full-matrix reference: outputs and gradients, at lengths and block sizes
that do and do not divide, with right padding, and inside a GPT where the automatic choice takes it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxen import GPTConfig, GPTForCausalLM
from flaxen.core import attention, blockwise
from flaxen.core.blockwise import causal_attention


def reference(query, key, value, key_valid):
    mask = None if key_valid is None else key_valid[:, None, None, :]
    return jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=True, implementation="xla")


@pytest.mark.parametrize(
    ("length", "block_size", "padded"),
    [(32, 8, True), (37, 8, False), (50, 16, True), (24, 32, False)],  # blocks that divide T or not, one block
)
def test_outputs_and_gradients_equal_the_reference(length, block_size, padded):
    rng = np.random.default_rng(length)
    query, key, value = (jnp.asarray(rng.normal(size=(2, length, 3, 8)), jnp.float32) for _ in range(3))
    key_valid = jnp.asarray(np.arange(length)[None] < np.array([[length], [length - 7]])) if padded else None
    real = np.ones((2, length, 1, 1)) if key_valid is None else np.asarray(key_valid)[:, :, None, None]
    probe = jnp.asarray(rng.normal(size=(2, length, 3, 8)), jnp.float32) * real  # padded queries are not compared

    def loss(function):
        return lambda q, k, v: jnp.sum(function(q, k, v) * probe)

    blockwise = lambda q, k, v: causal_attention(q, k, v, key_valid, block_size=block_size)  # noqa: E731
    full = lambda q, k, v: reference(q, k, v, key_valid)  # noqa: E731
    np.testing.assert_allclose(jax.jit(blockwise)(query, key, value) * real, full(query, key, value) * real, atol=1e-5)
    ours = jax.jit(jax.grad(loss(blockwise), argnums=(0, 1, 2)))(query, key, value)
    theirs = jax.jit(jax.grad(loss(full), argnums=(0, 1, 2)))(query, key, value)
    for mine, expected in zip(ours, theirs):
        np.testing.assert_allclose(mine, expected, atol=1e-5)


def test_a_gpt_takes_the_blockwise_path_from_its_threshold_with_the_same_loss_and_gradients(monkeypatch):
    monkeypatch.setattr(attention, "BLOCKWISE_MIN_LENGTH", 16)
    monkeypatch.setattr(attention, "BLOCK_SIZE", 8)
    calls = []
    monkeypatch.setattr(blockwise, "causal_attention", lambda *a, **k: calls.append(1) or causal_attention(*a, **k))
    token_ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 21)), jnp.int32)
    padding_mask = jnp.arange(21)[None] < jnp.array([[21], [15]])
    batch = {"token_ids": token_ids, "padding_mask": padding_mask}
    results = {}
    for implementation in (None, "xla"):  # None: automatic, blockwise at T=20 >= 16 on this CPU
        config = GPTConfig.tiny(vocab_size=64, context_length=32, dropout=0.0, attention_implementation=implementation)
        model = GPTForCausalLM(config, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model, nnx.Param)

        def loss(params, graphdef=graphdef):
            return nnx.merge(graphdef, params).loss(batch)[0]

        calls.clear()
        results[implementation] = (jax.jit(jax.value_and_grad(loss))(params), bool(calls))
    (loss_auto, grads_auto), used_blockwise = results[None]
    (loss_xla, grads_xla), used_by_reference = results["xla"]
    assert used_blockwise and not used_by_reference
    np.testing.assert_allclose(loss_auto, loss_xla, rtol=1e-6)
    for mine, expected in zip(jax.tree.leaves(grads_auto), jax.tree.leaves(grads_xla)):
        np.testing.assert_allclose(mine, expected, atol=1e-5)


def test_blockwise_asked_for_with_a_mask_it_cannot_take_falls_back_to_the_reference():
    config = GPTConfig.tiny(vocab_size=64, attention_implementation="blockwise", attention_dropout=0.1)
    model = GPTForCausalLM(config, rngs=nnx.Rngs(0))  # DropKey's random mask is not a padding mask
    reference = GPTForCausalLM(config.replace(attention_implementation="xla"), rngs=nnx.Rngs(0))
    token_ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 8)), jnp.int32)
    loss, _ = model.loss({"token_ids": token_ids}, rngs=nnx.Rngs(1))
    expected, _ = reference.loss({"token_ids": token_ids}, rngs=nnx.Rngs(1))  # the same keys dropped
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
    reference.eval()
    without_dropkey, _ = reference.loss({"token_ids": token_ids})
    assert float(loss) != float(without_dropkey)  # DropKey was applied


def test_unknown_attention_implementations_are_refused():
    with pytest.raises(ValueError, match="unknown attention_implementation 'flash'"):
        GPTConfig.tiny(attention_implementation="flash")
