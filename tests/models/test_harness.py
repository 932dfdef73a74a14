"""One harness for every model's tiny preset: shapes, dtypes, finite values, jit == eager, JSON, learning."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from flaxen import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    GPTConfig,
    GPTForCausalLM,
    GPTForSequenceClassification,
    ViTConfig,
    ViTForImageClassification,
)

BATCH, LENGTH = 3, 12


def token_batch(vocab_size, *, labels=None, seed=0):
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(5, vocab_size, (BATCH, LENGTH), dtype=np.int32)
    padding_mask = np.ones((BATCH, LENGTH), bool)
    padding_mask[1, 8:] = False
    batch = {"token_ids": jnp.asarray(token_ids), "padding_mask": jnp.asarray(padding_mask)}
    if labels is not None:
        batch["labels"] = jnp.asarray(rng.integers(0, labels, (BATCH,), dtype=np.int32))
    return batch


def image_batch(config, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(BATCH, config.image_size, config.image_size, config.channels)).astype(np.float32)
    return {
        "images": jnp.asarray(images),
        "labels": jnp.asarray(rng.integers(0, config.num_labels, (BATCH,), dtype=np.int32)),
    }


@dataclasses.dataclass
class Case:
    model_class: type
    config: object
    batch: dict
    output_shape: tuple

    def call(self, model):
        if "images" in self.batch:
            return model(self.batch["images"])
        return model(self.batch["token_ids"], self.batch["padding_mask"])


def cases():
    gpt, bert, vit = GPTConfig.tiny(), BertConfig.tiny(dropout=0.1), ViTConfig.tiny()
    return {
        "gpt-causal-lm": Case(GPTForCausalLM, gpt, token_batch(gpt.vocab_size), (BATCH, LENGTH, gpt.vocab_size)),
        "gpt-classifier": Case(GPTForSequenceClassification, gpt, token_batch(gpt.vocab_size, labels=2), (BATCH, 2)),
        "bert-mlm": Case(BertForMaskedLM, bert, token_batch(bert.vocab_size), (BATCH, LENGTH, bert.vocab_size)),
        "bert-classifier": Case(
            BertForSequenceClassification, bert, token_batch(bert.vocab_size, labels=2), (BATCH, 2)
        ),
        "vit-pretrain-head": Case(
            ViTForImageClassification, dataclasses.replace(vit, representation_size=32), image_batch(vit), (BATCH, 10)
        ),
        "vit-finetune-head": Case(
            ViTForImageClassification, dataclasses.replace(vit, head_zero_init=True), image_batch(vit), (BATCH, 10)
        ),
        "vit-prelu-grayscale": Case(
            ViTForImageClassification,
            dataclasses.replace(vit, activation="prelu", channels=1),
            image_batch(dataclasses.replace(vit, channels=1)),
            (BATCH, 10),
        ),
    }


CASES = cases()


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request):
    return CASES[request.param]


def test_shapes_dtypes_and_finite_outputs(case):
    model = case.model_class(case.config, rngs=nnx.Rngs(0))
    model.eval()
    out = case.call(model)
    assert out.shape == case.output_shape
    assert out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()


def test_jit_equals_eager(case):
    model = case.model_class(case.config, rngs=nnx.Rngs(0))
    model.eval()
    eager = case.call(model)
    jitted = nnx.jit(lambda m: case.call(m))(model)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-5, rtol=1e-5)


def test_config_round_trips_through_json(case):
    config = case.config
    assert type(config).from_json(config.to_json()) == config


def test_loss_is_finite_and_falls_when_overfitting_one_batch(case):
    model = case.model_class(case.config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, key):
        def loss_fn(params):
            return nnx.merge(graphdef, params).loss(case.batch, rngs=key)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for i in range(60):
        params, opt_state, loss = step(params, opt_state, jax.random.key(i))
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.5 * losses[0], losses


def test_dropout_uses_call_time_keys_and_eval_is_deterministic():
    config = BertConfig.tiny(dropout=0.2, attention_dropout=0.2)
    model = BertForSequenceClassification(config, rngs=nnx.Rngs(0))
    batch = token_batch(config.vocab_size)
    a = model(batch["token_ids"], rngs=jax.random.key(1))
    b = model(batch["token_ids"], rngs=jax.random.key(1))
    c = model(batch["token_ids"], rngs=jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    model.eval()
    np.testing.assert_array_equal(np.asarray(model(batch["token_ids"])), np.asarray(model(batch["token_ids"])))
    assert not any(isinstance(v, nnx.RngState) for _, v in nnx.to_flat_state(nnx.state(model)))
