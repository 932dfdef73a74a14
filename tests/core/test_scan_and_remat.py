"""`scan_layers` and `remat` are execution switches: same numbers as the plain layer loop, dropout still random."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxen import (
    BertConfig,
    BertForMaskedLM,
    GPTConfig,
    GPTForCausalLM,
    ViTConfig,
    ViTForImageClassification,
    generate_ids,
)

SWITCHES = [{"scan_layers": True}, {"remat": True}, {"scan_layers": True, "remat": True}]


def tokens(vocab_size, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((3, 12), bool)
    mask[1, 7:] = False
    return {
        "token_ids": jnp.asarray(rng.integers(5, vocab_size, (3, 12)), jnp.int32),
        "padding_mask": jnp.asarray(mask),
    }


def cases():
    gpt, bert, vit = (
        GPTConfig.tiny(num_layers=3, dropout=0.0),
        BertConfig.tiny(num_layers=3, dropout=0.0),
        ViTConfig.tiny(dropout=0.0),
    )
    images = np.random.default_rng(0).normal(size=(3, 16, 16, 3)).astype(np.float32)
    return {
        "gpt": (GPTForCausalLM, gpt, tokens(gpt.vocab_size)),
        "bert-mlm": (BertForMaskedLM, bert, tokens(bert.vocab_size)),
        "vit": (ViTForImageClassification, vit, {"images": jnp.asarray(images), "labels": jnp.asarray([1, 2, 3])}),
    }


def loss_and_grads(model_class, config, batch):
    model = model_class(config, rngs=nnx.Rngs(0))
    return nnx.value_and_grad(lambda m: m.loss(batch, rngs=nnx.Rngs(dropout=1, masking=2))[0])(model)


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "+".join(s))
@pytest.mark.parametrize("name", list(cases()))
def test_loss_and_every_gradient_match_the_layer_loop(name, switches):
    model_class, config, batch = cases()[name]
    loss, grads = loss_and_grads(model_class, config, batch)
    switched_loss, switched_grads = loss_and_grads(model_class, dataclasses.replace(config, **switches), batch)
    np.testing.assert_allclose(switched_loss, loss, rtol=1e-6)
    for reference, switched in zip(jax.tree.leaves(grads), jax.tree.leaves(switched_grads), strict=True):
        np.testing.assert_allclose(switched, reference, atol=1e-6, rtol=1e-5)


def test_hidden_states_match_and_parameters_keep_one_module_per_layer():
    config = GPTConfig.tiny(num_layers=3)
    batch = tokens(config.vocab_size)
    plain = GPTForCausalLM(config, rngs=nnx.Rngs(0)).gpt
    scanned = GPTForCausalLM(config.replace(scan_layers=True), rngs=nnx.Rngs(0)).gpt
    assert jax.tree.structure(nnx.state(plain, nnx.Param)) == jax.tree.structure(nnx.state(scanned, nnx.Param))
    plain.eval(), scanned.eval()
    _, expected = plain(batch["token_ids"], batch["padding_mask"], return_hidden_states=True)
    _, hidden = scanned(batch["token_ids"], batch["padding_mask"], return_hidden_states=True)
    assert len(hidden) == len(expected) == 4
    for a, b in zip(hidden, expected):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_dropout_stays_random_and_seeded_when_scanned():
    config = GPTConfig.tiny(num_layers=3, dropout=0.2, scan_layers=True, remat=True)
    model = GPTForCausalLM(config, rngs=nnx.Rngs(0))
    batch = tokens(config.vocab_size)

    def loss(seed):
        return float(model.loss(batch, rngs=nnx.Rngs(dropout=seed))[0])

    first = loss(1)
    assert loss(1) == first and loss(2) != first
    model.eval()
    assert float(model.loss(batch)[0]) != first


def test_generation_ignores_the_switches():
    config = GPTConfig.tiny(dropout=0.0)
    prompt = tokens(config.vocab_size)["token_ids"][:, :5]
    plain = GPTForCausalLM(config, rngs=nnx.Rngs(0))
    scanned = GPTForCausalLM(config.replace(scan_layers=True, remat=True), rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(
        generate_ids(scanned, prompt, max_new_tokens=6, temperature=0),
        generate_ids(plain, prompt, max_new_tokens=6, temperature=0),
    )


def test_an_rngs_without_a_dropout_stream_works_when_nothing_is_random():
    config = BertConfig.tiny(num_layers=2, scan_layers=True, remat=True)
    model = BertForMaskedLM(config, rngs=nnx.Rngs(0))
    model.eval()
    loss, _ = model.loss(tokens(config.vocab_size), rngs=nnx.Rngs(masking=1))
    plain = BertForMaskedLM(config.replace(scan_layers=False, remat=False), rngs=nnx.Rngs(0))
    plain.eval()
    expected, _ = plain.loss(tokens(config.vocab_size), rngs=nnx.Rngs(masking=1))  # the same masks
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
