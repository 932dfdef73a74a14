from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from flaxen.data import ArrayDataset, augment_images, image_classification, image_folder, normalize_images
from flaxen.data import images as images_module
from flaxen.data.images import ImageFiles


def labelled_images(num_images=40, shape=(6, 5), channels=None):
    """uint8 images whose every pixel equals 20 * label (+ channel), so image-label pairing can be checked."""
    labels = np.arange(num_images) % 4
    images = np.broadcast_to((20 * labels)[:, None, None], (num_images, *shape)).astype(np.uint8)
    if channels is not None:
        images = np.stack([images + c for c in range(channels)], axis=-1)
    return images, labels


def test_uint8_grayscale_gets_a_channel_and_train_statistics():
    images, labels = labelled_images()
    splits = image_classification(images, labels, validation_fraction=0.25, seed=0)
    train = splits.train["images"]
    assert train.shape == (30, 6, 5, 1) and train.dtype == np.float32
    assert len(splits.validation) == 10
    np.testing.assert_allclose(train.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=(0, 1, 2)), 1.0, atol=1e-5)
    assert splits.info["scale"] == pytest.approx(1 / 255)
    assert splits.info["image_shape"] == [6, 5, 1] and splits.info["num_labels"] == 4


def test_every_image_keeps_its_label_through_split_and_normalisation():
    images, labels = labelled_images(channels=3)
    splits = image_classification(images, labels, validation_fraction=0.2, seed=1)
    mean, std = np.array(splits.info["mean"]), np.array(splits.info["std"])
    for split in (splits.train, splits.validation):
        pixels = (split["images"] * std + mean) * 255  # undo the normalisation
        expected = 20 * split["labels"][:, None, None, None] + np.arange(3)
        np.testing.assert_allclose(pixels, np.broadcast_to(expected, pixels.shape), atol=1e-3)


def test_given_mean_and_std_are_used_as_they_are():
    images, labels = labelled_images()
    splits = image_classification(images.astype(np.float32), labels, mean=10.0, std=2.0, validation_fraction=0.0)
    assert splits.info["mean"] == [10.0] and splits.info["std"] == [2.0] and splits.info["scale"] == 1.0
    np.testing.assert_allclose(splits.train["images"][..., 0], (images - 10.0) / 2.0)
    with pytest.raises(ValueError, match="mean needs 1 or 3 values"):
        image_classification(np.zeros((4, 2, 2, 3)), [0, 1, 0, 1], mean=[0.5, 0.5])


def test_normalize_images_matches_the_split_normalisation():
    images, labels = labelled_images(channels=2)
    splits = image_classification(images, labels, validation_fraction=0.0)
    again = normalize_images(images, mean=splits.info["mean"], std=splits.info["std"], scale=splits.info["scale"])
    np.testing.assert_allclose(again, splits.train["images"], rtol=1e-6)


def test_string_labels_become_sorted_ids():
    images = np.zeros((4, 2, 2), np.uint8)
    splits = image_classification(images, ["dog", "cat", "emu", "cat"], validation_fraction=0.0)
    assert splits.info["label_names"] == ["cat", "dog", "emu"]
    assert splits.train["labels"].tolist() == [1, 0, 2, 0]


def test_mixed_image_sizes_name_the_first_odd_one():
    images = [np.zeros((4, 4), np.uint8)] * 3 + [np.zeros((4, 5), np.uint8)]
    with pytest.raises(ValueError, match=r"index 3 is \(4, 5, 1\) uint8 but index 0 is \(4, 4, 1\)"):
        image_classification(images, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="got 4 images but 3 labels"):
        image_classification(np.zeros((4, 2, 2)), [0, 1, 0])


def write_image_folder(root, mode="L"):
    """root/cat/*.png dark, root/dog/*.png bright."""
    for name, value in (("cat", 10), ("dog", 240)):
        (root / name).mkdir(parents=True)
        for index in range(5):
            pixels = np.full((8, 8) if mode == "L" else (8, 8, 3), value + index, np.uint8)
            Image.fromarray(pixels, mode=mode).save(root / name / f"{index}.png")
    return root


def test_image_folder_reads_class_subfolders(tmp_path):
    splits = image_folder(write_image_folder(tmp_path / "pets"), validation_fraction=0.2, seed=0)
    assert splits.info["label_names"] == ["cat", "dog"]
    assert splits.train["images"].shape == (8, 8, 8, 1) and len(splits.validation) == 2
    for split in (splits.train, splits.validation):
        brightness = split["images"].mean(axis=(1, 2, 3))
        assert np.all((brightness > 0) == (split["labels"] == 1))  # dogs are the bright ones


def test_a_colour_image_among_grey_ones_makes_the_folder_colour(tmp_path):
    root = write_image_folder(tmp_path / "pets")
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour, mode="RGB").save(root / "dog" / "odd.png")
    splits = image_folder(root, validation_fraction=0, lazy=True)
    assert splits.info["image_shape"] == [8, 8, 3]
    files = [str(file) for file in splits.train.files]
    pixels = splits.train.read(np.arange(len(files)))["images"] * splits.info["std"] + splits.info["mean"]
    np.testing.assert_allclose(pixels[files.index(str(root / "dog" / "odd.png"))], colour / 255, atol=1e-6)
    grey = pixels[files.index(str(root / "cat" / "0.png"))]
    np.testing.assert_allclose(grey, np.full((8, 8, 3), 10 / 255), atol=1e-6)  # one grey level in every channel


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        image_folder(tmp_path / "absent")
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="has no class subfolders"):
        image_folder(tmp_path / "flat")
    (tmp_path / "flat" / "cat").mkdir()
    with pytest.raises(ValueError, match=r"has one class folder \(cat\); a classifier needs a subfolder"):
        image_folder(tmp_path / "flat")
    (tmp_path / "flat" / "dog").mkdir()
    with pytest.raises(ValueError, match="class folder .*cat has no images"):
        image_folder(tmp_path / "flat")
    (tmp_path / "flat" / "cat" / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "flat" / "dog" / "fine.png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        image_folder(tmp_path / "flat")


def windows(image, pad, mode):
    """All (H, W) crops of the padded image and of its mirror image."""
    height, width, _ = image.shape
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode=mode)
    offsets = range(2 * pad + 1)
    crops = [padded[top : top + height, left : left + width] for top in offsets for left in offsets]
    return crops + [crop[:, ::-1] for crop in crops]


@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_augmented_images_are_crops_of_the_padded_image_or_their_mirror(mode):
    images = jax.random.normal(jax.random.key(1), (16, 6, 7, 2))
    augmented = np.asarray(augment_images(images, jax.random.key(2), pad=2, padding_mode=mode))
    assert augmented.shape == images.shape
    for image, result in zip(np.asarray(images), augmented):
        assert any(np.array_equal(result, crop) for crop in windows(image, 2, mode))


def test_augmentation_varies_per_image_and_is_reproducible_per_key():
    images = jnp.broadcast_to(jnp.arange(36.0).reshape(1, 6, 6, 1), (64, 6, 6, 1))
    first = augment_images(images, jax.random.key(0))
    np.testing.assert_array_equal(first, augment_images(images, jax.random.key(0)))
    assert not np.array_equal(first, augment_images(images, jax.random.key(1)))
    assert len({np.asarray(image).tobytes() for image in first}) > 10


def test_about_half_the_images_are_flipped():
    image = np.arange(36.0).reshape(6, 6, 1)
    results = np.asarray(augment_images(jnp.broadcast_to(image, (64, 6, 6, 1)), jax.random.key(0), pad=0))
    flipped = [np.array_equal(result, image[:, ::-1]) for result in results]
    unchanged = [np.array_equal(result, image) for result in results]
    assert all(f != u for f, u in zip(flipped, unchanged))
    assert 16 < sum(flipped) < 48


def test_augmentation_is_identity_without_padding_or_flip_and_jits():
    images = jax.random.normal(jax.random.key(3), (4, 5, 5, 3))
    np.testing.assert_array_equal(augment_images(images, jax.random.key(0), pad=0, flip=False), images)
    flipped_only = augment_images(images, jax.random.key(0), pad=0)
    for image, result in zip(np.asarray(images), np.asarray(flipped_only)):
        assert np.array_equal(result, image) or np.array_equal(result, image[:, ::-1])
    inside_a_step = jax.jit(lambda images, key: augment_images(images, key) * 2.0)
    expected = augment_images(images, jax.random.key(5)) * 2.0
    np.testing.assert_array_equal(inside_a_step(images, jax.random.key(5)), expected)


@pytest.fixture
def varied_folder(tmp_path):
    """Three classes of 9 random RGB images: statistics and batches that a mix-up of rows would change."""
    rng = np.random.default_rng(0)
    for name in ("ant", "bee", "cow"):
        (tmp_path / "pics" / name).mkdir(parents=True)
        for index in range(9):
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(
                tmp_path / "pics" / name / f"{index}.png"
            )
    return tmp_path / "pics"


def test_a_lazily_read_folder_gives_the_decoded_paths_splits_statistics_and_batches(varied_folder):
    decoded = image_folder(varied_folder, validation_fraction=0.2, seed=3, lazy=False)
    lazy = image_folder(varied_folder, validation_fraction=0.2, seed=3, lazy=True)
    assert isinstance(lazy.train, ImageFiles) and isinstance(decoded.train, ArrayDataset)
    assert lazy.info == decoded.info
    for split in ("train", "validation"):
        for key in ("images", "labels"):
            np.testing.assert_array_equal(getattr(lazy, split)[key], getattr(decoded, split)[key])
    expected, got = decoded.train.batches(4, seed=1), lazy.train.batches(4, seed=1)
    for _ in range(12):  # across epochs
        want, have = next(expected), next(got)
        np.testing.assert_array_equal(have["images"], want["images"])
        np.testing.assert_array_equal(have["labels"], want["labels"])
    for want, have in zip(decoded.validation.epoch_batches(4), lazy.validation.epoch_batches(4), strict=True):
        for key in want:
            np.testing.assert_array_equal(have[key], want[key])


def test_large_folders_are_read_lazily_with_statistics_from_a_sample(varied_folder, monkeypatch):
    monkeypatch.setattr(images_module, "LAZY_IMAGES", 20)
    monkeypatch.setattr(images_module, "STATISTICS_SAMPLE", 12)
    splits = image_folder(varied_folder, validation_fraction=0.2, seed=3)  # 27 images: above the threshold
    assert isinstance(splits.train, ImageFiles)
    full = image_folder(varied_folder, validation_fraction=0.2, seed=3, lazy=False).info
    assert splits.info["mean"] != full["mean"]  # 12 of the 22 training images
    np.testing.assert_allclose(splits.info["mean"], full["mean"], atol=0.05)  # uniform noise: close to 0.5 anyway


def test_a_lazily_read_folder_checks_every_header_up_front(varied_folder):
    Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(varied_folder / "cow" / "wide.png")
    with pytest.raises(ValueError, match=r"differ in size or are not square \(.*cow/wide\.png is 7×6\): give an image"):
        image_folder(varied_folder, lazy=True)
    assert image_folder(varied_folder, lazy=True, image_size=6).info["image_shape"] == [6, 6, 3]
    (varied_folder / "cow" / "wide.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*wide\.png"):
        image_folder(varied_folder, lazy=True)


def reference_pixels(file, size):
    """An independent reading of a photo: PIL decodes it, numpy turns it as its EXIF says, PIL resamples the centre
    square of the shorter side (a box in source coordinates) straight to size×size."""
    with Image.open(file) as image:
        orientation = image.getexif().get(0x0112)
        pixels = np.asarray(image.convert("RGB"))
    if orientation == 6:
        pixels = np.rot90(pixels, k=-1)
    height, width, _ = pixels.shape
    side = min(height, width)
    new_height, new_width = (size * height) // side, (size * width) // side
    top, left = (new_height - size) // 2, (new_width - size) // 2
    box = (left * width / new_width, top * height / new_height)
    box += (box[0] + size * width / new_width, box[1] + size * height / new_height)
    image = Image.fromarray(np.ascontiguousarray(pixels))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=box)).astype(np.float32)


def test_photos_of_any_size_and_mode_are_read_as_an_independent_reference(mixed_photos):
    lazy = image_folder(mixed_photos, image_size=12, validation_fraction=0, lazy=True)
    decoded = image_folder(mixed_photos, image_size=12, validation_fraction=0, lazy=False)
    info = lazy.info
    assert info["image_shape"] == [12, 12, 3] and info == decoded.info  # a colour folder: RGB
    batch = lazy.train.read(np.arange(len(lazy.train)))
    np.testing.assert_array_equal(batch["images"], decoded.train["images"])
    pixels = (batch["images"] * np.asarray(info["std"]) + np.asarray(info["mean"])) * 255
    for file, got in zip(lazy.train.files, pixels, strict=True):
        np.testing.assert_allclose(got, reference_pixels(file, 12), atol=1.0 + 1e-3, err_msg=file)
    rotated = pixels[list(lazy.train.files).index(str(mixed_photos / "pear" / "rotated.jpg"))]
    assert rotated[0].mean() < 60 < 200 < rotated[-1].mean()  # turned: the gradient now runs from top to bottom


def test_validation_and_predict_read_a_file_into_the_same_array(mixed_photos):
    from flaxen.models.vit import ViTConfig, ViTForImageClassification
    from flaxen.predict import ImageClassificationPipeline

    splits = image_folder(mixed_photos, image_size=12, validation_fraction=0.5, lazy=True)
    config = ViTConfig.from_preset("tiny", image_size=12, patch_size=4, channels=3, num_labels=2)
    pipeline = ImageClassificationPipeline(
        ViTForImageClassification(config, rngs=nnx.Rngs(0)), mean=splits.info["mean"], std=splits.info["std"]
    )
    validation = splits.validation.read(np.arange(len(splits.validation)))["images"]
    for file, pixels in zip(splits.validation.files, validation, strict=True):
        np.testing.assert_array_equal(pipeline.preprocess(Path(file)), pixels)


def test_a_truncated_image_is_named_or_skipped(mixed_photos):
    whole = (mixed_photos / "apple" / "0.jpg").read_bytes()
    (mixed_photos / "apple" / "0.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"cannot read image .*apple/0\.jpg"):
        image_folder(mixed_photos, image_size=12)
    splits = image_folder(mixed_photos, image_size=12, validation_fraction=0, skip_bad_images=True)
    assert splits.info["skipped_images"] == [str(mixed_photos / "apple" / "0.jpg")] and len(splits.train) == 12
