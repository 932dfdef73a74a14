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


def test_mlm_loss_scores_only_the_masked_slots():
    mlm = model(BertForMaskedLM)
    token_ids = random_ids((4, 20))
    padding_mask = jnp.arange(20)[None, :] < jnp.array([[20], [12], [8], [20]])
    token_ids = jnp.where(padding_mask, token_ids, CONFIG.pad_token_id)
    loss, metrics = mlm.loss({"token_ids": token_ids, "padding_mask": padding_mask})
    # Same key as the loss's evaluation masking: recompute the expected value from full-sequence logits.
    from flaxen.core.mlm import mask_tokens

    special = jnp.isin(token_ids, jnp.asarray(CONFIG.special_token_ids)) | ~padding_mask
    masked = mask_tokens(
        token_ids,
        special,
        jax.random.key(0),
        mask_token_id=CONFIG.mask_token_id,
        vocab_size=CONFIG.vocab_size,
        special_token_ids=CONFIG.special_token_ids,
    )
    log_probs = jax.nn.log_softmax(mlm(masked.token_ids, padding_mask))
    at_slots = jnp.take_along_axis(log_probs, masked.positions[..., None], axis=1)
    nll = -jnp.take_along_axis(at_slots, masked.labels[..., None], axis=-1)[..., 0]
    expected = (nll * masked.weights).sum() / masked.weights.sum()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert float(masked.weights.sum()) > 0


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
