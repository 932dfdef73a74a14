import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxen import BertConfig, BertForMaskedLM, BertForSequenceClassification

CONFIG = BertConfig.tiny()


def model(cls, **overrides):
    m = cls(CONFIG.replace(**overrides), rngs=nnx.Rngs(0))
    m.eval()
    return m


def random_ids(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(5, CONFIG.vocab_size, shape), jnp.int32)


def right_padded(token_ids, extra):
    batch, length = token_ids.shape
    padded = jnp.concatenate([token_ids, jnp.zeros((batch, extra), jnp.int32)], axis=1)
    return padded, jnp.broadcast_to(jnp.arange(length + extra)[None, :] < length, padded.shape)


def test_right_padding_leaves_real_positions_and_the_pooled_output_unchanged():
    classifier = model(BertForSequenceClassification)
    token_ids = random_ids((2, 10))
    padded, padding_mask = right_padded(token_ids, 7)
    np.testing.assert_allclose(
        classifier.bert(padded, padding_mask)[:, :10], classifier.bert(token_ids), atol=1e-5, rtol=1e-5
    )
    np.testing.assert_allclose(classifier(padded, padding_mask), classifier(token_ids), atol=1e-5, rtol=1e-5)


def test_attention_is_bidirectional_and_token_types_matter():
    encoder = model(BertForSequenceClassification).bert
    token_ids = random_ids((1, 8))
    changed = token_ids.at[:, 7].set(9)
    assert not np.allclose(encoder(token_ids)[:, 0], encoder(changed)[:, 0])
    types = jnp.array([[0] * 4 + [1] * 4])
    assert not np.allclose(encoder(token_ids), encoder(token_ids, token_type_ids=types))


def test_pooler_is_tanh_of_a_dense_layer_on_cls():
    encoder = model(BertForSequenceClassification).bert
    sequence = encoder(random_ids((2, 6)))
    expected = jnp.tanh(sequence[:, 0] @ encoder.pooler.kernel[...] + encoder.pooler.bias[...])
    np.testing.assert_allclose(encoder.pool(sequence), expected, atol=1e-6)


def test_mlm_decoder_is_tied_to_the_word_embedding():
    mlm = model(BertForMaskedLM)
    flat = nnx.to_flat_state(nnx.state(mlm, nnx.Param))
    assert [p for p, v in flat if v.shape == (CONFIG.vocab_size, CONFIG.hidden_size)] == [
        ("bert", "token_embedding", "embedding")
    ]
    assert not any("pooler" in p for p, _ in flat)


def test_mlm_loss_is_the_cross_entropy_at_the_masked_slots_only(monkeypatch):
    """With the masking fixed by hand (so nothing here comes from flaxen's masking code), the loss is the mean
    negative log-likelihood of the original tokens at the weighted slots, computed from full-sequence logits."""
    from flaxen.core.mlm import MaskedTokens
    from flaxen.models.bert import modeling

    mlm = model(BertForMaskedLM)
    token_ids = np.asarray(random_ids((2, 12)))
    padding_mask = np.arange(12)[None, :] < np.array([[12], [8]])
    corrupted = token_ids.copy()
    corrupted[0, [2, 7]] = CONFIG.mask_token_id  # row 0: two [MASK]s and one slot whose token is kept as it was
    corrupted[1, 3] = 17  # row 1: one random replacement; its second slot is unused (weight 0)
    fixed = MaskedTokens(
        token_ids=jnp.asarray(corrupted),
        positions=jnp.asarray([[2, 5, 7], [3, 0, 0]], jnp.int32),
        labels=jnp.asarray([token_ids[0, [2, 5, 7]], [token_ids[1, 3], 0, 0]], jnp.int32),
        weights=jnp.asarray([[1, 1, 1], [1, 0, 0]], jnp.float32),
    )
    monkeypatch.setattr(modeling, "mask_tokens", lambda *args, **kwargs: fixed)
    loss, _ = mlm.loss({"token_ids": jnp.asarray(token_ids), "padding_mask": jnp.asarray(padding_mask)})

    logits = np.asarray(mlm(jnp.asarray(corrupted), jnp.asarray(padding_mask)), np.float64)
    slots = [(0, 2), (0, 5), (0, 7), (1, 3)]
    nll = []
    for row, position in slots:
        row_logits = logits[row, position]
        log_z = np.log(np.sum(np.exp(row_logits - row_logits.max()))) + row_logits.max()
        nll.append(log_z - row_logits[token_ids[row, position]])
    np.testing.assert_allclose(float(loss), np.mean(nll), rtol=1e-5)


def test_mlm_loss_draws_new_masks_from_the_masking_stream():
    mlm = model(BertForMaskedLM)
    batch = {"token_ids": random_ids((2, 32))}
    a, _ = mlm.loss(batch, rngs=jax.random.key(1))
    b, _ = mlm.loss(batch, rngs=jax.random.key(2))
    assert float(a) != float(b)


def test_sequence_longer_than_positions_is_refused():
    with pytest.raises(ValueError, match="longer than the model's context of 64"):
        model(BertForSequenceClassification)(jnp.zeros((1, 65), jnp.int32))
    with pytest.raises(ValueError, match="token_type_ids has shape"):
        model(BertForSequenceClassification)(jnp.zeros((1, 6), jnp.int32), token_type_ids=jnp.zeros((1, 5), jnp.int32))
