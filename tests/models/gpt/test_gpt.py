import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxen import GPTConfig, GPTForCausalLM, GPTForSequenceClassification

CONFIG = GPTConfig.tiny()


def model(cls=GPTForCausalLM, **overrides):
    m = cls(CONFIG.replace(**overrides), rngs=nnx.Rngs(0))
    m.eval()
    return m


def random_ids(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, CONFIG.vocab_size, shape), jnp.int32)


@pytest.mark.parametrize("t", [0, 5, 11])
def test_causality_gradient_from_future_inputs_is_exactly_zero(t):
    # Position-embedding row s is added only to the input at s, so its gradient is d(output at t)/d(input at s).
    lm = model()
    token_ids = random_ids((2, 12))
    graphdef, params = nnx.split(lm)

    def output_at_t(params):
        return jnp.sum(nnx.merge(graphdef, params)(token_ids)[:, t] ** 2)

    grads = jax.grad(output_at_t)(params)
    per_position = np.abs(np.asarray(grads["gpt"]["position_embedding"]["embedding"][...])).sum(axis=1)
    assert (per_position[t + 1 :] == 0.0).all()
    assert (per_position[: t + 1] > 0.0).all()


def test_changing_later_tokens_leaves_earlier_logits_unchanged():
    lm = model()
    token_ids = random_ids((2, 16))
    changed = token_ids.at[:, 9:].set(random_ids((2, 7), seed=1))
    np.testing.assert_array_equal(np.asarray(lm(token_ids)[:, :9]), np.asarray(lm(changed)[:, :9]))


def test_right_padding_leaves_real_positions_unchanged():
    lm = model()
    token_ids = random_ids((2, 10))
    padded = jnp.concatenate([token_ids, jnp.zeros((2, 6), jnp.int32)], axis=1)
    padding_mask = jnp.arange(16)[None, :] < 10
    np.testing.assert_allclose(
        lm(padded, jnp.broadcast_to(padding_mask, (2, 16)))[:, :10], lm(token_ids), atol=1e-5, rtol=1e-5
    )


def test_classifier_pools_each_rows_last_real_token():
    classifier = model(GPTForSequenceClassification, num_labels=3)
    token_ids = random_ids((2, 10))
    padded = jnp.concatenate([token_ids, jnp.zeros((2, 6), jnp.int32)], axis=1)
    padding_mask = jnp.broadcast_to(jnp.arange(16)[None, :] < 10, (2, 16))
    np.testing.assert_allclose(classifier(padded, padding_mask), classifier(token_ids), atol=1e-5, rtol=1e-5)
    lengths = jnp.array([4, 10])
    ragged_mask = jnp.arange(10)[None, :] < lengths[:, None]
    np.testing.assert_allclose(
        classifier(token_ids, ragged_mask)[0], classifier(token_ids[:1, :4])[0], atol=1e-5, rtol=1e-5
    )


def test_output_embedding_is_the_input_embedding():
    lm = model()
    params = nnx.state(lm, nnx.Param)
    embedding_like = [
        path for path, v in nnx.to_flat_state(params) if v.shape == (CONFIG.vocab_size, CONFIG.hidden_size)
    ]
    assert embedding_like == [("gpt", "token_embedding", "embedding")]
    token_ids = random_ids((1, 5))
    hidden = lm.gpt(token_ids)
    np.testing.assert_allclose(lm(token_ids), hidden @ lm.gpt.token_embedding.embedding[...].T, atol=1e-5, rtol=1e-5)


def test_residual_projections_use_depth_scaled_init():
    big = GPTForCausalLM(GPTConfig.tiny(hidden_size=256, num_layers=8, mlp_dim=1024), rngs=nnx.Rngs(0))
    block = big.gpt.stack.blocks[0]
    assert abs(float(block.attention.qkv.kernel[...].std()) - 0.02) < 0.002
    assert abs(float(block.attention.out.kernel[...].std()) - 0.02 / 4) < 0.0005
    assert abs(float(block.mlp.fc_out.kernel[...].std()) - 0.02 / 4) < 0.0005


def test_language_model_loss_scores_next_tokens_only_on_real_positions():
    lm = model()
    token_ids = random_ids((2, 8))
    loss, metrics = lm.loss({"token_ids": token_ids})
    logits = lm(token_ids[:, :-1])
    log_probs = jax.nn.log_softmax(logits)
    expected = -jnp.take_along_axis(log_probs, token_ids[:, 1:, None], axis=-1).mean()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    padding_mask = jnp.array([[True] * 8, [True] * 3 + [False] * 5])
    loss_padded, _ = lm.loss({"token_ids": token_ids, "padding_mask": padding_mask})
    nll = -jnp.take_along_axis(log_probs, token_ids[:, 1:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(loss_padded, (nll[0].sum() + nll[1, :2].sum()) / 9, rtol=1e-5)


@pytest.mark.parametrize(
    "token_ids, message",
    [
        (jnp.zeros((1, 65), jnp.int32), "longer than the model's context of 64"),
        (jnp.full((1, 4), 512, jnp.int32), "outside the vocabulary"),
        (jnp.full((1, 4), -1, jnp.int32), "outside the vocabulary"),
        (jnp.zeros((4,), jnp.int32), r"\(batch, length\)"),
        (jnp.zeros((1, 4), jnp.float32), "integers"),
    ],
)
def test_bad_token_ids_are_refused_with_a_clear_message(token_ids, message):
    with pytest.raises(ValueError, match=message):
        model()(token_ids)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        GPTConfig.tiny(hidden_size=66)
    with pytest.raises(ValueError, match="unknown activation"):
        GPTConfig.tiny(activation="sigmoidish")
    with pytest.raises(ValueError, match="no field"):
        GPTConfig.from_dict({"hidden_size": 64, "n_embd": 64})
    with pytest.raises(ValueError, match="holds a BertConfig"):
        from flaxen import BertConfig

        GPTConfig.from_json(BertConfig.tiny().to_json())


def test_evaluation_row_weights_drop_filler_rows_from_the_language_model_loss():
    lm = model()
    token_ids = random_ids((3, 8))
    full, _ = lm.loss({"token_ids": token_ids[:2]})
    weighted, metrics = lm.loss({"token_ids": token_ids, "weights": jnp.array([1.0, 1.0, 0.0])})
    np.testing.assert_allclose(weighted, full, rtol=1e-6)
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0
