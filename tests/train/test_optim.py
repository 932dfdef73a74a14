"""AdamW recipe: schedule shape, weight-decay mask, gradient accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from flaxen.train import adamw, learning_rate_schedule
from flaxen.train.optim import current_learning_rate


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(4, 6, rngs=rngs)
        self.norm = nnx.LayerNorm(6, rngs=rngs)
        self.embedding = nnx.Embed(10, 4, rngs=rngs)


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    schedule = learning_rate_schedule(1.0, warmup=10, total=110, min_lr_ratio=0.1)
    rates = np.array([float(schedule(step)) for step in range(120)])
    np.testing.assert_allclose(rates[:11], np.arange(11) / 10, atol=1e-6)
    assert np.all(np.diff(rates[10:111]) <= 1e-7), "decays monotonically after warmup"
    np.testing.assert_allclose(rates[60], 0.1 + 0.9 * 0.5, atol=1e-5)  # cosine midpoint
    np.testing.assert_allclose(rates[110:], 0.1, atol=1e-6)


def test_schedule_without_total_stays_at_peak():
    schedule = learning_rate_schedule(3e-4, warmup=5)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == float(schedule(10_000)) == pytest.approx(3e-4)


def test_linear_and_constant_schedules_after_the_same_warm_up():
    linear = learning_rate_schedule(1.0, warmup=10, total=110, min_lr_ratio=0.1, schedule="linear")
    constant = learning_rate_schedule(1.0, warmup=10, total=110, schedule="constant")
    for schedule in (linear, constant):
        np.testing.assert_allclose([float(schedule(step)) for step in range(11)], np.arange(11) / 10, atol=1e-6)
    np.testing.assert_allclose(float(linear(60)), 0.55, atol=1e-6)  # halfway from 1.0 to the floor 0.1
    np.testing.assert_allclose([float(linear(step)) for step in (110, 150)], [0.1, 0.1], atol=1e-6)
    assert {float(constant(step)) for step in (10, 60, 110, 500)} == {1.0}
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        learning_rate_schedule(1.0, schedule="step")


def test_weight_decay_touches_matrices_but_not_biases_or_norm_scales():
    params = nnx.state(Block(nnx.Rngs(0)), nnx.Param)
    learning_rate, weight_decay = 0.1, 0.5
    optimizer = adamw(learning_rate, weight_decay=weight_decay)
    params = jax.tree.map(lambda p: p + 1.0, params)  # biases start at 0, which would hide decay
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(optimizer.update)(zero_grads, optimizer.init(params), params)
    new_params = optax.apply_updates(params, updates)

    for (path, old), new in zip(jax.tree.leaves_with_path(params), jax.tree.leaves(new_params)):
        expected = old * (1 - learning_rate * weight_decay) if old.ndim >= 2 else old
        np.testing.assert_allclose(new, expected, rtol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_learning_rate_is_readable_from_the_optimizer_state():
    params = {"w": jnp.ones((2, 2))}
    optimizer = adamw(1.0, warmup=4, total=20)
    state = optimizer.init(params)
    seen = []
    for _ in range(3):
        _, state = optimizer.update({"w": jnp.ones((2, 2))}, state, params)
        seen.append(float(current_learning_rate(state)))
    assert seen == pytest.approx([0.0, 0.25, 0.5])


def test_accumulation_applies_one_update_with_the_mean_gradient():
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    grads = [jax.tree.map(lambda p, i=i: jnp.full_like(p, i + 1.0), params) for i in range(2)]
    mean_grad = jax.tree.map(lambda a, b: (a + b) / 2, *grads)

    plain = adamw(0.1, clip_norm=None)
    updates, _ = plain.update(mean_grad, plain.init(params), params)
    expected = optax.apply_updates(params, updates)

    accumulating = adamw(0.1, clip_norm=None, accumulate_steps=2)
    state = accumulating.init(params)
    updates, state = accumulating.update(grads[0], state, params)
    after_first = optax.apply_updates(params, updates)
    jax.tree.map(np.testing.assert_array_equal, after_first, params)  # nothing applied yet
    updates, state = accumulating.update(grads[1], state, after_first)
    after_second = optax.apply_updates(after_first, updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), after_second, expected)


def test_accumulation_schedule_counts_batches():
    params = {"w": jnp.ones((2, 2))}
    optimizer = adamw(1.0, warmup=8, total=100, accumulate_steps=4)
    state = optimizer.init(params)
    for _ in range(8):  # two updates, at batches 0 and 4
        _, state = optimizer.update({"w": jnp.ones((2, 2))}, state, params)
    assert float(current_learning_rate(state)) == pytest.approx(0.5)
