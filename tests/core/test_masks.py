import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen.core import masks


def test_causal_is_lower_triangular_and_offsets_queries_to_the_end():
    np.testing.assert_array_equal(masks.causal(4)[0, 0], np.tril(np.ones((4, 4), bool)))
    # Two queries that are the last two of five positions (decoding with a cache).
    np.testing.assert_array_equal(masks.causal(2, 5)[0, 0], [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])


def test_padding_from_validity_mask_and_from_lengths_agree():
    valid = np.array([[1, 1, 0], [1, 1, 1]], bool)
    from_mask = masks.padding(valid)
    from_lengths = masks.padding(lengths=jnp.array([2, 3]), key_length=3)
    assert from_mask.shape == (2, 1, 1, 3)
    np.testing.assert_array_equal(from_mask, from_lengths)
    with pytest.raises(ValueError, match="either"):
        masks.padding(valid, lengths=jnp.array([2, 3]))


@pytest.mark.parametrize("drop_rate", [0.0, 0.5, 0.99])
def test_random_mask_never_empties_a_row_and_drops_at_the_rate(drop_rate):
    shape = (8, 4, 32, 32)
    keep = np.asarray(masks.random(jax.random.key(1), shape, drop_rate))
    assert keep.any(axis=-1).all()
    assert keep[..., np.arange(32), np.arange(32)].all()  # each query keeps its own position
    off_diagonal = keep[..., ~np.eye(32, dtype=bool)]
    assert abs(1 - off_diagonal.mean() - drop_rate) < 0.02


def test_random_mask_keeps_own_position_when_queries_are_a_suffix():
    keep = np.asarray(masks.random(jax.random.key(0), (1, 1, 2, 6), 0.999))
    assert keep[0, 0, 0, 4] and keep[0, 0, 1, 5]


def test_random_mask_rejects_a_rate_of_one():
    with pytest.raises(ValueError, match="drop_rate"):
        masks.random(jax.random.key(0), (1, 1, 2, 2), 1.0)


def test_combine_is_logical_and_and_ignores_none():
    a = jnp.array([[True, False, True]])
    b = jnp.array([[True, True, False]])
    np.testing.assert_array_equal(masks.combine(a, None, b), [[True, False, False]])
    assert masks.combine(None, None) is None
