"""The core's token lookup: rows gathered from the stored table then cast (gradients summed in float32), small
tables read by a one-hot matmul, and LM-head logits over a padded vocabulary that the loss never predicts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxen import GPTConfig, GPTForCausalLM
from flaxen.core import Embed, embeddings


@pytest.mark.parametrize("rows", [2, 40])  # a token-type table (one-hot matmul) and a vocabulary (gather)
def test_the_lookup_equals_a_gather_in_value_and_gradient_and_sums_gradients_in_float32(rows):
    embed = Embed(rows, 8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, rows, (64, 9)), jnp.int32)
    table = embed.embedding[...]
    out = embed(ids)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(out, jnp.take(table, ids, axis=0).astype(jnp.bfloat16))
    graphdef, state = nnx.split(embed)
    grad = jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)(ids).astype(jnp.float32)))(state)
    counts = np.bincount(np.asarray(ids).ravel(), minlength=rows).astype(np.float32)
    # 576 ones per table row summed in bf16 would stop at 256; in float32 they are exact
    np.testing.assert_array_equal(grad["embedding"][...], np.repeat(counts[:, None], 8, axis=1))


def test_gpt_loss_over_a_padded_vocabulary_equals_the_unpadded_loss(monkeypatch):
    monkeypatch.setattr(embeddings, "LOGITS_PAD_MULTIPLE", {jax.default_backend(): 128})  # as on a GPU
    config = GPTConfig.tiny(vocab_size=300, dropout=0.0)  # 300 is padded to 384
    model = GPTForCausalLM(config, rngs=nnx.Rngs(0))
    batch = {"token_ids": jnp.asarray(np.random.default_rng(0).integers(0, 300, (2, 17)), jnp.int32)}
    graphdef, params = nnx.split(model, nnx.Param)

    def loss_and_grads():
        return jax.jit(jax.value_and_grad(lambda p: nnx.merge(graphdef, p).loss(batch)[0]))(params)

    padded_loss, padded_grads = loss_and_grads()
    assert model.gpt.token_embedding.padded_attend(jnp.zeros((1, 64))).shape == (1, 384)
    monkeypatch.setattr(embeddings, "LOGITS_PAD_MULTIPLE", {})
    loss, grads = loss_and_grads()
    np.testing.assert_allclose(padded_loss, loss, rtol=1e-6)
    for mine, expected in zip(jax.tree.leaves(padded_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(mine, expected, atol=1e-6)
