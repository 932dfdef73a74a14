import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxen.core import Activation, cross_entropy
from flaxen.core.rng import as_rngs
from flaxen.hf.table import activation_from_hf, activation_to_hf

X = np.linspace(-4, 4, 41).astype(np.float32)


@pytest.mark.parametrize(
    "name, reference",
    [
        ("relu", lambda x: max(x, 0.0)),
        ("gelu", lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2)))),
        ("gelu_tanh", lambda x: 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))),
        ("swish", lambda x: x / (1 + math.exp(-x))),
        ("mish", lambda x: x * math.tanh(math.log1p(math.exp(x)))),
    ],
)
def test_stateless_activations_match_their_formulas(name, reference):
    out = np.asarray(Activation(name, 1)(jnp.asarray(X)))
    np.testing.assert_allclose(out, [reference(float(x)) for x in X], atol=1e-6)


def test_hugging_face_names_map_both_ways_and_unknown_names_are_refused():
    assert activation_from_hf("gelu_new") == "gelu_tanh" and activation_from_hf("silu") == "swish"
    assert activation_from_hf("gelu_pytorch_tanh") == "gelu_tanh" and activation_to_hf("gelu_tanh") == "gelu_new"
    assert activation_to_hf("prelu") is None
    with pytest.raises(ValueError, match="unknown activation 'gelu2'"):
        Activation("gelu2", 4)
    with pytest.raises(ValueError, match="unknown activation 'gelu_new'"):  # our configs take flaxen's names only
        Activation("gelu_new", 4)


def test_prelu_has_a_learnable_slope_per_channel():
    act = Activation("prelu", 3)
    x = -jnp.ones((2, 3))
    np.testing.assert_allclose(act(x), -0.25 * np.ones((2, 3)))
    grads = nnx.grad(lambda a: a(x * jnp.array([1.0, 2.0, 3.0])).sum())(act)
    np.testing.assert_allclose(grads["learned"]["slope"][...], [-2.0, -4.0, -6.0])


def test_rrelu_draws_random_slopes_in_training_and_uses_the_mean_in_eval():
    act = Activation("rrelu", 1)
    x = -jnp.ones((10_000,))
    train_out = -np.asarray(act(x, rngs=as_rngs(0)))
    assert train_out.min() >= 1 / 8 and train_out.max() <= 1 / 3
    assert train_out.std() > 0.03
    with pytest.raises(ValueError, match="rngs"):
        act(x)
    act.eval()
    np.testing.assert_allclose(act(x), -(1 / 8 + 1 / 3) / 2 * np.ones(10_000), rtol=1e-6)
    np.testing.assert_array_equal(act(jnp.ones(3)), np.ones(3))


def test_cross_entropy_is_exact_and_stable_for_huge_logits():
    logits = jnp.array([[1e4, -1e4], [1e4, -1e4]])
    labels = jnp.array([0, 1])
    loss, grads = jax.value_and_grad(lambda z: cross_entropy(z, labels))(logits)
    np.testing.assert_allclose(loss, 1e4)  # mean of 0 and 2e4
    assert np.isfinite(np.asarray(grads)).all()


def test_weighted_cross_entropy_ignores_zero_weights_and_handles_all_zero():
    logits = jnp.array([[2.0, 0.0], [0.0, 50.0]])
    labels = jnp.array([0, 0])
    expected = math.log(1 + math.exp(-2.0))
    np.testing.assert_allclose(cross_entropy(logits, labels, jnp.array([1.0, 0.0])), expected, rtol=1e-6)
    assert float(cross_entropy(logits, labels, jnp.zeros(2))) == 0.0


def test_per_row_weights_apply_to_every_position_of_the_row():
    logits = jnp.zeros((2, 3, 4)).at[0, :, 1].set(3.0)
    labels = jnp.ones((2, 3), jnp.int32)
    row_weights = jnp.array([[1.0], [0.0]])
    np.testing.assert_allclose(
        cross_entropy(logits, labels, row_weights), cross_entropy(logits[:1], labels[:1]), rtol=1e-6
    )


def test_accuracy_matches_argmax_and_counts_ties_and_bad_labels_as_wrong():
    from flaxen.core.losses import accuracy

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 16, 50)).astype(np.float32)  # continuous draws: no exact ties
    labels = rng.integers(0, 50, (4, 16))
    labels[:, ::3] = logits.argmax(-1)[:, ::3]  # make a third of them correct
    weights = rng.integers(0, 2, (4, 16)).astype(np.float32)
    hits = (logits.argmax(-1) == labels).astype(np.float32)
    np.testing.assert_allclose(accuracy(jnp.asarray(logits), jnp.asarray(labels)), hits.mean(), rtol=1e-6)
    np.testing.assert_allclose(
        accuracy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights)),
        (hits * weights).sum() / weights.sum(),
        rtol=1e-6,
    )
    tied = jnp.asarray([[1.0, 3.0, 3.0]])
    assert float(accuracy(tied, jnp.asarray([2]))) == 0.0 and float(accuracy(tied, jnp.asarray([1]))) == 0.0
    assert float(accuracy(jnp.zeros((4, 10)), jnp.arange(4))) == 0.0  # a zero-initialised head has learned nothing
    peaked = jnp.asarray([[0.0, 1.0, 5.0], [3.0, 1.0, 0.0]])
    assert float(accuracy(peaked, jnp.asarray([-1, -3]))) == 0.0  # no wrap-around of negative labels
    assert float(accuracy(peaked, jnp.asarray([2, 3]))) == 0.5
    assert float(accuracy(peaked.astype(jnp.bfloat16), jnp.asarray([2, 0]))) == 1.0


def test_soft_targets_give_the_integer_loss_when_one_hot_and_leave_accuracy_to_the_labels():
    from flaxen.core.losses import loss_and_metrics

    logits = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4)), jnp.float32)
    labels = jnp.array([0, 3, 1, 1, 2])
    weights = jnp.array([1.0, 1.0, 0.0, 1.0, 1.0])
    hard, hard_metrics = loss_and_metrics(logits, labels, weights)
    soft, soft_metrics = loss_and_metrics(logits, labels, weights, jax.nn.one_hot(labels, 4))
    np.testing.assert_allclose(soft, hard, rtol=1e-6)
    smoothed = jax.nn.one_hot(labels, 4) * 0.9 + 0.025
    loss, metrics = loss_and_metrics(logits, labels, weights, smoothed)
    log_probs = np.asarray(jax.nn.log_softmax(logits))
    expected = -(np.asarray(smoothed) * log_probs).sum(axis=1)
    np.testing.assert_allclose(loss, (expected * np.asarray(weights)).sum() / 4, rtol=1e-5)
    assert metrics["accuracy"] == soft_metrics["accuracy"] == hard_metrics["accuracy"]


@pytest.mark.parametrize("fused", [False, True])  # autodiff's gradient (CPU) and the hand-written one (GPU)
def test_cross_entropy_and_its_gradient_equal_optax_and_autodiff(fused, monkeypatch):
    import optax

    from flaxen.core import losses

    monkeypatch.setattr(losses, "FUSED_LOSS_BACKENDS", (jax.default_backend(),) if fused else ())
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 5, 40)) * 4, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 40, (3, 5)), jnp.int32)
    probe = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    reference = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    np.testing.assert_allclose(losses.scored_labels(logits, labels, 40)[0], reference, rtol=1e-6, atol=1e-6)
    ours = jax.grad(lambda z: jnp.sum(losses.scored_labels(z, labels, 40)[0] * probe))(logits)
    theirs = jax.grad(lambda z: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(z, labels) * probe))(logits)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    # bf16 logits (a 16-bit LM head): the loss in float32, the gradient back in bf16
    low = logits.astype(jnp.bfloat16)
    grad = jax.grad(lambda z: jnp.sum(losses.scored_labels(z, labels, 40)[0]))(low)
    expected = jax.grad(lambda z: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(z, labels)))(
        low.astype(jnp.float32)
    )
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(grad.astype(jnp.float32), expected, atol=4e-3)
    accuracy = losses.accuracy(logits, labels)
    np.testing.assert_allclose(accuracy, np.mean(np.argmax(logits, -1) == np.asarray(labels)), rtol=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_columns_past_num_classes_are_never_predicted_nor_given_gradient(fused, monkeypatch):
    from flaxen.core import losses
    from flaxen.core.losses import accuracy, loss_and_metrics

    monkeypatch.setattr(losses, "FUSED_LOSS_BACKENDS", (jax.default_backend(),) if fused else ())
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(6, 7)), jnp.float32)
    labels = jnp.asarray([0, 1, 2, 3, 4, 2], jnp.int32)
    padded = jnp.concatenate([logits, jnp.full((6, 3), 50.0)], axis=-1)  # padding columns that would win
    loss, metrics = loss_and_metrics(padded, labels, num_classes=7)
    expected_loss, expected_metrics = loss_and_metrics(logits, labels)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    assert metrics["accuracy"] == expected_metrics["accuracy"] == accuracy(padded, labels, num_classes=7)
    grad = jax.grad(lambda z: loss_and_metrics(z, labels, num_classes=7)[0])(padded)
    np.testing.assert_array_equal(grad[:, 7:], 0.0)
    np.testing.assert_allclose(grad[:, :7], jax.grad(lambda z: loss_and_metrics(z, labels)[0])(logits), atol=1e-7)
