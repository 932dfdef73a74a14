import jax
import jax.numpy as jnp
import numpy as np

from flaxen.core.mlm import mask_tokens

MASK_ID, VOCAB = 4, 200
SPECIALS = (0, 1, 2, 3, 4)


def draw(seed=0, rows=400, length=128):
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(5, VOCAB, (rows, length), dtype=np.int32)
    lengths = rng.integers(10, length + 1, rows)
    valid = np.arange(length)[None, :] < lengths[:, None]
    token_ids[:, 0] = 2  # [CLS]
    token_ids[np.arange(rows), lengths - 1] = 3  # [SEP]
    token_ids[~valid] = 0  # [PAD]
    special = np.isin(token_ids, SPECIALS) | ~valid
    masked = jax.jit(
        lambda ids, sp, key: mask_tokens(
            ids, sp, key, mask_token_id=MASK_ID, vocab_size=VOCAB, special_token_ids=SPECIALS
        )
    )(jnp.asarray(token_ids), jnp.asarray(special), jax.random.key(seed))
    return token_ids, special, masked


def chosen_positions(masked):
    positions, weights = np.asarray(masked.positions), np.asarray(masked.weights) > 0
    rows = np.repeat(np.arange(positions.shape[0])[:, None], positions.shape[1], axis=1)
    return rows[weights], positions[weights]


def test_selects_fifteen_percent_of_eligible_positions_and_never_a_special_token():
    token_ids, special, masked = draw()
    rows, cols = chosen_positions(masked)
    assert not special[rows, cols].any()
    assert len(set(zip(rows.tolist(), cols.tolist()))) == len(rows)  # no slot chosen twice
    assert abs(len(rows) / (~special).sum() - 0.15) < 0.01
    np.testing.assert_array_equal(np.asarray(masked.labels)[np.asarray(masked.weights) > 0], token_ids[rows, cols])


def test_splits_eighty_ten_ten_and_leaves_unchosen_positions_alone():
    token_ids, special, masked = draw(seed=1)
    corrupted = np.asarray(masked.token_ids)
    rows, cols = chosen_positions(masked)
    became_mask = corrupted[rows, cols] == MASK_ID
    unchanged = corrupted[rows, cols] == token_ids[rows, cols]
    became_random = ~became_mask & ~unchanged
    # A random draw equal to the original token counts as unchanged: expected 10% · 1/195 extra.
    assert abs(became_mask.mean() - 0.8) < 0.02
    assert abs(became_random.mean() - 0.1) < 0.02
    assert abs(unchanged.mean() - 0.1) < 0.02
    assert not np.isin(corrupted[rows, cols][became_random], SPECIALS).any()
    untouched = np.ones_like(token_ids, bool)
    untouched[rows, cols] = False
    np.testing.assert_array_equal(corrupted[untouched], token_ids[untouched])


def test_rows_without_eligible_positions_predict_nothing():
    token_ids = jnp.zeros((2, 16), jnp.int32)
    masked = mask_tokens(token_ids, jnp.ones((2, 16), bool), jax.random.key(0), mask_token_id=MASK_ID, vocab_size=VOCAB)
    assert float(masked.weights.sum()) == 0.0
    np.testing.assert_array_equal(masked.token_ids, token_ids)
