import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxen import ViTConfig, ViTForImageClassification
from flaxen.models.vit import resample_position_embeddings, to_finetune


def images(size=16, channels=3, batch=2, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, size, size, channels)), jnp.float32)


def pretrained():
    model = ViTForImageClassification(ViTConfig.tiny(representation_size=48), rngs=nnx.Rngs(0))
    model.eval()
    return model


def test_variant_strings_give_the_paper_sizes_and_any_patch():
    s16 = ViTConfig.from_variant("S/16")
    assert (s16.hidden_size, s16.num_layers, s16.num_heads, s16.mlp_dim, s16.patch_size) == (384, 12, 6, 1536, 16)
    ti4 = ViTConfig.from_variant("Ti/4", image_size=28, channels=1, num_labels=10)
    assert (ti4.hidden_size, ti4.patch_size, ti4.grid_size, ti4.channels) == (192, 4, 7, 1)
    with pytest.raises(ValueError, match="unknown ViT variant"):
        ViTConfig.from_variant("XL/16")


def test_pretrain_head_has_a_tanh_pre_logits_layer():
    model = pretrained()
    cls = model.vit(images())[:, 0]
    expected = jnp.tanh(model.pre_logits(cls)) @ model.head.kernel[...] + model.head.bias[...]
    np.testing.assert_allclose(model(images()), expected, atol=1e-5)


def test_finetune_model_has_a_zero_head_and_keeps_the_backbone():
    model = pretrained()
    finetune = to_finetune(model, num_labels=3, rngs=nnx.Rngs(1))
    finetune.eval()
    assert finetune.pre_logits is None
    assert not np.asarray(finetune.head.kernel[...]).any() and not np.asarray(finetune.head.bias[...]).any()
    np.testing.assert_array_equal(finetune(images()), np.zeros((2, 3)))
    np.testing.assert_array_equal(finetune.vit(images()), model.vit(images()))


def test_finetune_at_a_new_image_size_resamples_position_embeddings():
    model = pretrained()
    old = np.asarray(model.vit.position_embedding[...])
    finetune = to_finetune(model, num_labels=3, image_size=24, rngs=nnx.Rngs(1))
    np.testing.assert_array_equal(model.vit.position_embedding[...], old)  # the pretrained model is untouched
    new = np.asarray(finetune.vit.position_embedding[...])
    assert new.shape == (1 + 36, 64)
    np.testing.assert_array_equal(new[0], old[0])  # [CLS] position is kept
    assert not np.allclose(new[1:17], old[1:17])  # resampled, not cropped
    # A smooth (linear) position field stays smooth and spans the same range after resampling.
    ramp = np.concatenate([np.zeros((1, 1)), np.arange(16, dtype=np.float32).reshape(16, 1) % 4], axis=0)
    resampled = np.asarray(resample_position_embeddings(jnp.asarray(ramp), (8, 8)))[1:].reshape(8, 8)
    assert np.all(np.diff(resampled[0, 1:-1]) > 0)


def test_resampling_to_the_same_grid_is_the_identity():
    table = jnp.asarray(np.random.default_rng(0).normal(size=(17, 8)), jnp.float32)
    np.testing.assert_array_equal(resample_position_embeddings(table, (4, 4)), table)


def test_other_image_sizes_need_interpolation_to_be_asked_for():
    model = pretrained()
    with pytest.raises(ValueError, match="built for 16×16"):
        model(images(size=24))
    assert model(images(size=24), interpolate_position_embeddings=True).shape == (2, 10)


@pytest.mark.parametrize(
    "bad_images, message",
    [
        (images(size=18), "not a multiple of the patch size 4"),
        (images(channels=1), "1 channel"),
        (jnp.zeros((16, 16, 3)), r"\(batch, height, width, channels\)"),
    ],
)
def test_bad_images_are_refused_with_a_clear_message(bad_images, message):
    with pytest.raises(ValueError, match=message):
        pretrained()(bad_images)


def test_config_refuses_an_image_size_that_is_not_a_multiple_of_the_patch():
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        ViTConfig.tiny(image_size=18)
