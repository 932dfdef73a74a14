"""`output_positions`: the last layer computes only the rows a head reads, and those rows equal the full output's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxen import (
    GPT,
    Bert,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    GPTConfig,
    GPTForSequenceClassification,
    ViT,
    ViTConfig,
    ViTForImageClassification,
)
from flaxen.core import masks

EXECUTION = [{}, {"scan_layers": True}, {"remat": True}, {"scan_layers": True, "remat": True}]


def token_batch(vocab_size, seed=0):
    rng = np.random.default_rng(seed)
    valid = np.ones((3, 12), bool)
    valid[1, 7:] = False  # right padding in row 1
    return jnp.asarray(rng.integers(5, vocab_size, (3, 12)), jnp.int32), jnp.asarray(valid)


def backbones(execution):
    gpt = GPT(GPTConfig.tiny(num_layers=3, dropout=0.0, **execution), rngs=nnx.Rngs(0))
    bert = Bert(BertConfig.tiny(num_layers=3, dropout=0.0, **execution), rngs=nnx.Rngs(0))
    vit = ViT(ViTConfig.tiny(dropout=0.0, **execution), rngs=nnx.Rngs(0))
    images = jnp.asarray(np.random.default_rng(0).normal(size=(3, 16, 16, 3)), jnp.float32)
    ids, valid = token_batch(gpt.config.vocab_size)
    return {
        "gpt (causal, padded)": lambda **kw: gpt(ids, valid, **kw),
        "bert (post-LN, padded)": lambda **kw: bert(ids, valid, **kw),
        "vit (pre-LN)": lambda **kw: vit(images, **kw),
    }


@pytest.mark.parametrize("execution", EXECUTION, ids=lambda e: "+".join(e) or "layer loop")
@pytest.mark.parametrize("name", list(backbones({})))
def test_chosen_rows_equal_the_full_output(name, execution):
    run = backbones(execution)[name]
    full = run()
    np.testing.assert_allclose(run(output_positions=slice(0, 1)), full[:, :1], atol=2e-6)
    np.testing.assert_allclose(run(output_positions=slice(-1, None)), full[:, -1:], atol=2e-6)
    rows = jnp.asarray([[0, 5, 3], [6, 6, 0], [11, 2, 9]], jnp.int32)  # (B, P) per-row indices, repeats allowed
    np.testing.assert_allclose(
        run(output_positions=rows), jnp.take_along_axis(full, rows[..., None], axis=1), atol=2e-6
    )


def test_negative_indices_count_from_the_end():
    run = backbones({})["gpt (causal, padded)"]
    np.testing.assert_allclose(run(output_positions=jnp.asarray([[-1, -12]])), run()[:, [11, 0]], atol=2e-6)


@pytest.mark.parametrize("execution", EXECUTION, ids=lambda e: "+".join(e) or "layer loop")
def test_hidden_states_end_with_the_chosen_rows(execution):
    run = backbones(execution)["vit (pre-LN)"]
    _, full_states = run(return_hidden_states=True)
    _, states = run(return_hidden_states=True, output_positions=slice(0, 1))
    assert len(states) == len(full_states)
    for got, expected in zip(states[:-1], full_states[:-1]):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(states[-1], full_states[-1][:, :1], atol=2e-6)


@pytest.mark.parametrize("execution", EXECUTION, ids=lambda e: "+".join(e) or "layer loop")
def test_a_one_layer_stack(execution):
    gpt = GPT(GPTConfig.tiny(num_layers=1, dropout=0.0, **execution), rngs=nnx.Rngs(0))
    ids, valid = token_batch(gpt.config.vocab_size)
    np.testing.assert_allclose(gpt(ids, valid, output_positions=slice(2, 5)), gpt(ids, valid)[:, 2:5], atol=2e-6)


def test_dropkey_in_training_keeps_each_chosen_query_own_key(monkeypatch):
    """With every random key dropped, a query sees only its own position: the chosen rows must match the full run."""
    monkeypatch.setattr(jax.random, "bernoulli", lambda key, p, shape: jnp.zeros(shape, bool))
    config = BertConfig.tiny(num_layers=2, dropout=0.0, attention_dropout=0.5)
    stack = Bert(config, rngs=nnx.Rngs(0)).stack
    stack.train()
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, config.hidden_size)), jnp.float32)
    rows = jnp.asarray([[4, 1], [0, 5]], jnp.int32)
    full = stack(x, rngs=nnx.Rngs(dropout=0))
    np.testing.assert_allclose(
        stack(x, rngs=nnx.Rngs(dropout=0), output_positions=rows),
        jnp.take_along_axis(full, rows[..., None], axis=1),
        atol=2e-6,
    )


@pytest.mark.parametrize("execution", EXECUTION, ids=lambda e: "+".join(e) or "layer loop")
def test_training_with_dropout_gives_finite_loss_and_gradients(execution):
    config = BertConfig.tiny(num_layers=2, dropout=0.1, attention_dropout=0.1, num_labels=2, **execution)
    model = BertForSequenceClassification(config, rngs=nnx.Rngs(0))
    ids, valid = token_batch(config.vocab_size)
    batch = {"token_ids": ids, "padding_mask": valid, "labels": jnp.asarray([0, 1, 1])}
    loss, grads = nnx.value_and_grad(lambda m: m.loss(batch, rngs=nnx.Rngs(dropout=1))[0])(model)
    assert np.isfinite(float(loss)) and all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    assert float(model.loss(batch, rngs=nnx.Rngs(dropout=1))[0]) == float(loss)  # the same keys, the same drops
    assert float(model.loss(batch, rngs=nnx.Rngs(dropout=2))[0]) != float(loss)  # dropout is really drawn
    model.eval()
    assert float(model.loss(batch)[0]) != float(loss)


@pytest.mark.parametrize("mask_shape", [(2, 1, 6, 6), (6, 6)], ids=["(B, 1, T, S)", "(T, S)"])
def test_a_per_query_mask_keeps_the_chosen_queries_rows(mask_shape):
    """A mask with a query axis is indexed by query: the chosen queries must keep their own rows of it."""
    config = BertConfig.tiny(num_layers=1, dropout=0.0)
    stack = Bert(config, rngs=nnx.Rngs(0)).stack
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, config.hidden_size)), jnp.float32)
    mask = jnp.asarray(np.random.default_rng(2).random(mask_shape) < 0.6) | jnp.eye(6, dtype=bool)
    rows = jnp.asarray([[4, 1], [0, 5]], jnp.int32)
    np.testing.assert_allclose(
        stack(x, mask=mask, output_positions=rows),
        jnp.take_along_axis(stack(x, mask=mask), rows[..., None], axis=1),
        atol=2e-6,
    )


def classifier_reference(model, kind, batch):
    """The heads' logits computed from the FULL last layer, as before output_positions existed."""
    if kind == "vit":
        features = model.vit(batch["images"])[:, 0]
        return model.head(features)
    if kind == "bert":
        pooled = model.bert.pool(model.bert(batch["token_ids"], batch["padding_mask"]))
        return model.classifier(pooled)
    hidden = model.gpt(batch["token_ids"], batch["padding_mask"])
    last = jnp.sum(batch["padding_mask"], axis=1) - 1
    return model.score(jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0])


@pytest.mark.parametrize("kind", ["vit", "bert", "gpt"])
def test_classifier_logits_and_gradients_equal_the_full_computation(kind):
    ids, valid = token_batch(BertConfig.tiny().vocab_size)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(3, 16, 16, 3)), jnp.float32)
    labels = jnp.asarray([0, 1, 1])
    if kind == "vit":
        model, batch = (
            ViTForImageClassification(ViTConfig.tiny(dropout=0.0, num_labels=2), rngs=nnx.Rngs(0)),
            {"images": images},
        )
    elif kind == "bert":
        model, batch = (
            BertForSequenceClassification(BertConfig.tiny(dropout=0.0, num_labels=2), rngs=nnx.Rngs(0)),
            {"token_ids": ids, "padding_mask": valid},
        )
    else:
        model, batch = (
            GPTForSequenceClassification(GPTConfig.tiny(dropout=0.0, num_labels=2), rngs=nnx.Rngs(0)),
            {"token_ids": ids, "padding_mask": valid},
        )
    batch = batch | {"labels": labels}

    def reference_loss(m):
        logits = classifier_reference(m, kind, batch)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

    np.testing.assert_allclose(
        model(**{k: v for k, v in batch.items() if k != "labels"}), classifier_reference(model, kind, batch), atol=2e-6
    )
    loss, grads = nnx.value_and_grad(lambda m: m.loss(batch)[0])(model)
    expected_loss, expected_grads = nnx.value_and_grad(reference_loss)(model)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    for got, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads), strict=True):
        np.testing.assert_allclose(got, expected, atol=2e-6, rtol=1e-5)


def test_mlm_loss_and_gradients_equal_gathering_the_full_last_layer(monkeypatch):
    config = BertConfig.tiny(dropout=0.0)
    model = BertForMaskedLM(config, rngs=nnx.Rngs(0))
    ids, valid = token_batch(config.vocab_size)
    batch = {"token_ids": ids, "padding_mask": valid}

    def loss_and_grads():
        return nnx.value_and_grad(lambda m: m.loss(batch, rngs=nnx.Rngs(masking=3))[0])(model)

    loss, grads = loss_and_grads()
    full_call = Bert.__call__

    def full_then_gather(self, *args, output_positions=None, **kwargs):  # the way before output_positions
        hidden = full_call(self, *args, **kwargs)
        return hidden if output_positions is None else jnp.take_along_axis(hidden, output_positions[..., None], axis=1)

    monkeypatch.setattr(Bert, "__call__", full_then_gather)
    expected_loss, expected_grads = loss_and_grads()
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    for got, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads), strict=True):
        np.testing.assert_allclose(got, expected, atol=2e-6, rtol=1e-5)


def test_dropkey_keeps_each_chosen_query_own_position():
    keep = masks.random(jax.random.key(0), (2, 3, 2, 8), 0.99, query_positions=jnp.asarray([[5, 0], [7, 2]]))
    assert keep.shape == (2, 3, 2, 8)
    assert bool(keep[0, :, 0, 5].all() & keep[0, :, 1, 0].all() & keep[1, :, 0, 7].all() & keep[1, :, 1, 2].all())
    assert int(keep.sum()) < keep.size // 4  # most keys dropped at rate 0.99
