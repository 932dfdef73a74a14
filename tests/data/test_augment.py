"""The small-data image augmentation: random affine, smoothed targets, Mixup/CutMix; jittable and exact in what
it promises (a mix's targets are the mix of its pixels)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen.data import mix_images, one_hot_targets, random_affine, random_resized_crop


def images(batch=8, side=12, channels=1, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, side, side, channels)), jnp.float32)


def test_the_identity_transform_returns_the_images():
    original = images()
    same = random_affine(original, jax.random.key(0), degrees=0.0, scale=(1.0, 1.0), translate=0.0)
    np.testing.assert_allclose(same, original, atol=1e-6)


def test_a_shift_moves_the_image_and_fills_with_the_edge():
    row = jnp.arange(10, dtype=jnp.float32)
    image = jnp.broadcast_to(row[None, :, None], (10, 10, 1))[None]  # each column holds its index
    # translate is a fraction of the side: 0.3 of 10 px, so shifts up to 3 px each way.
    for seed in range(4):
        out = np.asarray(random_affine(image, jax.random.key(seed), degrees=0.0, scale=(1.0, 1.0), translate=0.3))[
            0, :, :, 0
        ]
        inside = (out[0] > 1e-4) & (out[0] < 9 - 1e-4)
        shift = float(np.mean(np.arange(10)[inside] - out[0][inside]))
        assert abs(shift) <= 3.0 + 1e-5
        # Every row reads the same columns, moved by the shift, with the edge pixel beyond the image.
        np.testing.assert_allclose(out, np.clip(np.arange(10) - shift, 0, 9)[None].repeat(10, axis=0), atol=1e-4)


def test_a_plain_image_stays_plain_and_keys_decide_the_transform():
    plain = jnp.full((4, 10, 10, 3), 0.25, jnp.float32)
    np.testing.assert_allclose(random_affine(plain, jax.random.key(0), degrees=30.0), plain, atol=1e-6)
    varied = images(channels=3)
    first = random_affine(varied, jax.random.key(0))
    np.testing.assert_array_equal(first, random_affine(varied, jax.random.key(0)))
    assert not np.allclose(first, random_affine(varied, jax.random.key(1)))
    assert first.shape == varied.shape and first.dtype == varied.dtype


def test_rotation_turns_about_the_centre():
    # A round blob at the centre looks the same at any angle: only a rotation about the centre keeps it so.
    side, centre = 33, 16.0
    rows, cols = np.mgrid[:side, :side]
    radius2 = (rows - centre) ** 2 + (cols - centre) ** 2
    blob = jnp.asarray(np.exp(-radius2 / (2 * 6.0**2))[None, :, :, None], jnp.float32)
    for seed in range(4):
        turned = np.asarray(random_affine(blob, jax.random.key(seed), degrees=180.0, scale=(1.0, 1.0), translate=0.0))
        np.testing.assert_allclose(
            turned[0, ..., 0][radius2 < 144], np.asarray(blob)[0, ..., 0][radius2 < 144], atol=0.01
        )
    off_centre = jnp.asarray(np.exp(-((rows - 8.0) ** 2 + (cols - 16.0) ** 2) / 8.0)[None, :, :, None], jnp.float32)
    moved = np.asarray(random_affine(off_centre, jax.random.key(0), degrees=180.0, scale=(1.0, 1.0), translate=0.0))
    peak = np.unravel_index(moved[0, ..., 0].argmax(), (side, side))
    assert abs(np.hypot(peak[0] - centre, peak[1] - centre) - 8.0) <= 1.0  # it moved on its circle


def test_smoothed_targets_are_probabilities_with_the_label_on_top():
    targets = np.asarray(one_hot_targets(jnp.array([0, 2]), 4, smoothing=0.1))
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(targets[0], [0.925, 0.025, 0.025, 0.025], rtol=1e-6)
    np.testing.assert_allclose(one_hot_targets(jnp.array([1]), 3), [[0.0, 1.0, 0.0]])


@pytest.mark.parametrize(
    "alphas", [{"mixup_alpha": 0.8, "cutmix_alpha": 0.0}, {"mixup_alpha": 0.0, "cutmix_alpha": 1.0}, {}]
)
def test_the_mixed_targets_are_the_mixed_pixels(alphas):
    # Each image is one constant value, its class's: then an image's mean pixel is its targets' expectation.
    labels = jnp.array([0, 1, 2, 3, 4, 5])
    values = jnp.array([0.0, 10.0, 20.0, 30.0, 40.0, 50.0])
    batch = jnp.broadcast_to(values[labels][:, None, None, None], (6, 8, 8, 2))
    for seed in range(6):
        mixed, targets = mix_images(batch, one_hot_targets(labels, 6), jax.random.key(seed), **alphas)
        np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(mixed.mean(axis=(1, 2, 3)), targets @ values, rtol=1e-5, atol=1e-4)
        assert not np.allclose(mixed, batch)  # something was mixed


def test_cutmix_pastes_a_box_and_both_alphas_zero_change_nothing():
    batch, targets = images(batch=4, side=16), one_hot_targets(jnp.arange(4), 4)
    mixed, _ = mix_images(batch, targets, jax.random.key(1), mixup_alpha=0.0, cutmix_alpha=1.0)
    from_partner = np.isclose(np.asarray(mixed), np.asarray(jnp.roll(batch, 1, axis=0)))[..., 0]
    rows, cols = np.nonzero(from_partner[0])
    assert rows.size  # this key pastes a box: its pixels form one rectangle, the same in every image
    box = from_partner[0][rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert box.all() and (from_partner == from_partner[0]).all()
    unchanged = mix_images(batch, targets, jax.random.key(1), mixup_alpha=0.0, cutmix_alpha=0.0)
    np.testing.assert_array_equal(unchanged[0], batch)
    np.testing.assert_array_equal(unchanged[1], targets)


def test_a_resized_crop_of_the_whole_image_is_the_image_or_its_mirror():
    original = images(batch=64, channels=3)
    whole = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0))
    unflipped = random_resized_crop(original, jax.random.key(0), flip=False, **whole)
    np.testing.assert_allclose(unflipped, original, atol=1e-5)
    results = np.asarray(random_resized_crop(original, jax.random.key(1), **whole))
    flipped = [np.allclose(result, image[:, ::-1], atol=1e-5) for result, image in zip(results, np.asarray(original))]
    same = [np.allclose(result, image, atol=1e-5) for result, image in zip(results, np.asarray(original))]
    assert all(f != s for f, s in zip(flipped, same)) and 16 < sum(flipped) < 48


def test_a_quarter_area_square_crop_is_stretched_to_twice_its_side():
    ramp = jnp.broadcast_to(jnp.arange(16, dtype=jnp.float32)[None, :, None], (16, 16, 1))  # columns hold their index
    crops = np.asarray(random_resized_crop(jnp.stack([ramp] * 8), jax.random.key(2), scale=(0.25, 0.25), ratio=(1, 1)))
    for crop in crops[..., 0]:
        steps = np.diff(crop, axis=1)
        np.testing.assert_allclose(np.abs(steps[:, 1:-1]), 0.5, atol=1e-5)  # 8 columns spread over 16
        np.testing.assert_allclose(np.ptp(crop, axis=1), 7.5, atol=0.26)  # minus at most half a pixel of edge clipping
        np.testing.assert_allclose(crop, np.broadcast_to(crop[0], crop.shape), atol=1e-6)  # rows stay equal
        assert 0 <= crop.min() and crop.max() <= 15
