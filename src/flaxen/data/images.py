"""Image classification datasets from numpy arrays or class-subfolder layouts, normalised per channel, and the one
preparation of an image (read, orient, convert, resize, crop) that training, predict and eval share."""

from __future__ import annotations

import concurrent.futures
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from einops import rearrange
from PIL import Image, ImageOps, UnidentifiedImageError

from flaxen.data.arrays import ArrayDataset, DataSplits, random_split
from flaxen.data.indexed import IndexedDataset
from flaxen.data.labels import check_several_labels, label_ids, label_values
from flaxen.text.files import PathLike

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")  # PIL modes with one colour channel
CHANNEL_MODES = {1: "L", 3: "RGB"}  # what an image is converted to for a model of that many channels
EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the picture by 90 degrees


def image_classification(
    images: np.ndarray | Sequence[np.ndarray],
    labels: Sequence[Any] | np.ndarray,
    *,
    validation_fraction: float = 0.1,
    seed: int = 0,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
) -> DataSplits:
    """Images (N, H, W) or (N, H, W, C) with labels -> `images` float32 (N, H, W, C) normalised, `labels` int32.

    uint8 images are first scaled to [0, 1]; other dtypes are used as they are. `mean`/`std` (per channel, in that
    scale) default to the training split's statistics; both are recorded in `info`. The validation split is a
    seeded random `validation_fraction` of the rows. String labels become ids in sorted order.
    """
    stacked = _stack_images(images)
    if len(stacked) != len(labels):
        raise ValueError(f"got {len(stacked)} images but {len(labels)} labels")
    label_set = label_values(labels)
    check_several_labels(label_set, "the image labels")
    ids, _ = label_ids(labels, label_set)
    scale = 1.0 / 255.0 if stacked.dtype == np.uint8 else 1.0
    raw = ArrayDataset({"images": stacked, "labels": ids})
    train, validation = random_split(raw, validation_fraction, seed)

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, len(train), STATISTICS_CHUNK):
            yield train["images"][start : start + STATISTICS_CHUNK]

    info = _image_info(label_set, stacked.shape[1:], scale, mean, std, chunks)

    def normalised(split: ArrayDataset) -> ArrayDataset:
        pixels = normalize_images(split["images"], mean=info["mean"], std=info["std"], scale=scale)
        return ArrayDataset({"images": pixels, "labels": split["labels"]})

    return DataSplits(normalised(train), normalised(validation) if validation is not None else None, info)


LAZY_IMAGES = 20_000  # a folder with more images than this is decoded batch by batch, not up front
STATISTICS_SAMPLE = 10_000  # a lazily read training split's mean/std come from this many of its images (seeded)
STATISTICS_CHUNK = 256  # images decoded and summed at a time for the mean/std


def image_folder(
    path: PathLike,
    *,
    validation_fraction: float = 0.1,
    seed: int = 0,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    image_size: int | None = None,
    default_image_size: int | None = None,
    channels: int | None = None,
    skip_bad_images: bool = False,
    lazy: bool | None = None,
) -> DataSplits:
    """Images in `path/<class name>/...` (any PIL format, nested folders too), class ids in sorted folder order.

    Every image is read as `prepare_image` reads it for predict and eval: EXIF orientation applied, converted to
    `channels` (default: 1 when every image is grey-scale, else 3; alpha dropped), its shorter side resized to
    `image_size` and the centre cropped. Without `image_size`, a folder whose images share one square size keeps it;
    other folders take `default_image_size`, or need an `image_size`. An unreadable image is a ValueError naming
    it, or with `skip_bad_images` left out (the names are in `info["skipped_images"]`). See `image_classification`
    for the split and the normalisation.

    With `lazy` (default: above LAZY_IMAGES images) the files are listed and their headers checked up front, but
    decoded only when a batch needs them (`ImageFiles`, through grain), so memory and start-up do not grow with the
    folder; mean/std then come from up to STATISTICS_SAMPLE training images. The split, the statistics (for a
    training split within the sample) and the batches are those of the decoded path. A lazily read file that
    decodes badly past its header stops training with its name.
    """
    files, labels = labelled_image_files(path, training=True)
    headers, skipped = _headers(files, skip_bad_images)
    if skipped:
        kept = [index for index, file in enumerate(files) if file not in skipped]
        files, labels = [files[index] for index in kept], [labels[index] for index in kept]
    channels = channels or (1 if all(mode in GREY_MODES for _, mode in headers.values()) else 3)
    image_size = image_size or _common_square_size(headers, default_image_size)
    if lazy is None:
        lazy = len(files) > LAZY_IMAGES
    prepare = functools.partial(prepare_image, channels=channels, image_size=image_size)
    if lazy:
        splits = _lazy_image_folder(
            files, labels, prepare, validation_fraction=validation_fraction, seed=seed, mean=mean, std=std
        )
    else:
        pixels = _prepared(files, prepare, skip_bad_images)
        if len(pixels) < len(files):
            kept = [index for index, file in enumerate(files) if file in pixels]
            skipped += [file for file in files if file not in pixels]
            files, labels = [files[index] for index in kept], [labels[index] for index in kept]
        splits = image_classification(
            _stack_images([pixels[file] for file in files], names=files),
            labels,
            validation_fraction=validation_fraction,
            seed=seed,
            mean=mean,
            std=std,
        )
    if skipped:
        splits.info["skipped_images"] = [str(file) for file in skipped]
    return splits


def labelled_image_files(root: PathLike, *, training: bool = False) -> tuple[list[Path], list[str]]:
    """(every image file below `root/<class name>/`, its class name), by class, then by path: the layout training,
    `flaxen eval --images` and `evaluate_held_out` read. A class folder without images is an error, and so is one
    class alone for `training`."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"no such folder: {root}")
    class_folders = sorted(folder for folder in root.iterdir() if folder.is_dir())
    if not class_folders:
        raise ValueError(f"{root} has no class subfolders; expected {root}/<class name>/<image files>")
    if training and len(class_folders) == 1:
        raise ValueError(
            f"{root} has one class folder ({class_folders[0].name}); a classifier needs a subfolder of images for "
            "each of at least two classes"
        )
    files, labels = [], []
    for folder in class_folders:
        found = image_files(folder)
        if not found:
            raise ValueError(f"class folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
        files += found
        labels += [folder.name] * len(found)
    return files, labels


def image_pixels(image: Any, channels: int) -> np.ndarray:
    """(H, W, channels) pixels of a file, PIL image or array, as a model of `channels` takes them.

    Files: EXIF orientation applied, then converted by PIL ("L" for one channel, "RGB" for three: palettes expanded,
    CMYK converted, alpha dropped). Arrays (H, W) or (H, W, C) keep their dtype: alpha dropped, grey repeated into
    RGB, RGB to grey by ITU-R 601 luma (as PIL's "L").
    """
    if isinstance(image, (str, Path)):
        return _read_image(Path(image), lambda opened: image_pixels(ImageOps.exif_transpose(opened), channels))
    if isinstance(image, Image.Image):
        return _channel_axis(np.asarray(image.convert(CHANNEL_MODES.get(channels, "RGB"))))
    pixels = _channel_axis(np.asarray(image))
    if pixels.ndim != 3:
        raise ValueError(f"an image must be (H, W) or (H, W, C), got shape {pixels.shape}")
    have = pixels.shape[-1]
    if have == 4:  # drop alpha
        pixels, have = pixels[..., :3], 3
    if have == channels:
        return pixels
    if have == 1 and channels == 3:
        return np.repeat(pixels, 3, axis=-1)
    if have == 3 and channels == 1:
        luma = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return (np.round(luma) if pixels.dtype == np.uint8 else luma)[..., None].astype(pixels.dtype)
    raise ValueError(f"an image with {have} channels cannot feed a model of {channels}")


def resize_and_center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) -> (size, size, C): the shorter side resized to `size` (PIL's bilinear, antialiased when shrinking),
    then the centre cropped; an image of that size as it is. uint8 stays uint8; other dtypes become float32."""
    height, width, channels = pixels.shape
    if (height, width) == (size, size):
        return pixels
    short = min(height, width)  # the longer side's new length is truncated, as torchvision and transformers do
    new_size = (
        size if width == short else int(size * width / short),
        size if height == short else int(size * height / short),
    )
    if pixels.dtype == np.uint8:
        image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
        resized = _channel_axis(np.asarray(image.resize(new_size, Image.Resampling.BILINEAR)))
    else:
        planes = [
            Image.fromarray(pixels[..., c].astype(np.float32), mode="F").resize(new_size, Image.Resampling.BILINEAR)
            for c in range(channels)
        ]
        resized = np.stack([np.asarray(plane) for plane in planes], axis=-1)
    top, left = (new_size[1] - size) // 2, (new_size[0] - size) // 2
    return resized[top : top + size, left : left + size]


def prepare_image(image: Any, *, channels: int, image_size: int) -> np.ndarray:
    """One image (file, PIL image or array) -> (image_size, image_size, channels), unnormalised: what training,
    predict and eval feed a model of that size after `normalize_images`."""
    return resize_and_center_crop(image_pixels(image, channels), image_size)


def _channel_axis(pixels: np.ndarray) -> np.ndarray:
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _read_image(file: Path, read: Callable[[Image.Image], Any]) -> Any:
    """`read(the opened image)`; a ValueError naming a file PIL cannot open or decode (truncated, not an image)."""
    try:
        with Image.open(file) as image:
            return read(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image {file}: {err}") from None


def _header(file: Path) -> tuple[tuple[int, int], str]:
    """(height, width) as oriented by EXIF, and the PIL mode, from the file's header only."""

    def read(image: Image.Image) -> tuple[tuple[int, int], str]:
        width, height = image.size
        if image.getexif().get(EXIF_ORIENTATION) in _SWAPPING_ORIENTATIONS:
            width, height = height, width
        return (height, width), image.mode

    return _read_image(file, read)


def _headers(files: list[Path], skip_bad: bool) -> tuple[dict[Path, tuple[tuple[int, int], str]], list[Path]]:
    """Every readable file's header; the unreadable ones skipped (with `skip_bad`) or a ValueError naming the first."""
    headers, skipped = {}, []
    for file in files:
        try:
            headers[file] = _header(file)
        except ValueError:
            if not skip_bad:
                raise
            skipped.append(file)
    if not headers:
        raise ValueError(f"none of the {len(files)} images could be read")
    return headers, skipped


def _common_square_size(headers: dict[Path, tuple[tuple[int, int], str]], default: int | None) -> int:
    """The side every image shares, when they are all one square size; else `default`, or a ValueError asking for
    a size."""
    (first, (size, _)), *_ = headers.items()
    for file, (other, _) in headers.items():
        if other != size or size[0] != size[1]:
            if default is not None:
                return default
            odd = file if other != size else first
            height, width = headers[odd][0]
            raise ValueError(
                f"images differ in size or are not square ({odd} is {width}×{height}): give an image size "
                "(--image-size, or image_size=) to resize their shorter side to and crop the centre"
            )
    return size[0]


def _prepared(files: list[Path], prepare: Callable[[Path], np.ndarray], skip_bad: bool) -> dict[Path, np.ndarray]:
    """Every file prepared, in a thread pool (PIL decodes and resizes without the GIL); bad files skipped or raised."""

    def attempt(file: Path) -> np.ndarray | None:
        try:
            return prepare(file)
        except ValueError:
            if not skip_bad:
                raise
            return None

    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(attempt, files))
    return {file: pixels for file, pixels in zip(files, results) if pixels is not None}


def _lazy_image_folder(
    files: list[Path], labels: list[str], prepare: Callable[[Path], np.ndarray], *, validation_fraction, seed, mean, std
) -> DataSplits:
    label_set = label_values(labels)
    ids, _ = label_ids(labels, label_set)
    # The same rows as the decoded path's split: random_split only looks at the number of rows and the seed.
    rows = ArrayDataset({"file": np.asarray([str(file) for file in files]), "labels": ids})
    train, validation = random_split(rows, validation_fraction, seed)

    def sample_chunks() -> Iterator[np.ndarray]:
        sample = np.arange(len(train))
        if len(train) > STATISTICS_SAMPLE:
            sample = np.sort(np.random.default_rng(seed).choice(len(train), STATISTICS_SAMPLE, replace=False))
        for start in range(0, len(sample), STATISTICS_CHUNK):
            yield np.stack([prepare(Path(file)) for file in train["file"][sample[start : start + STATISTICS_CHUNK]]])

    info = _image_info(label_set, prepare(files[0]).shape, 1.0 / 255.0, mean, std, sample_chunks)

    def files_of(split: ArrayDataset | None) -> ImageFiles | None:
        return None if split is None else ImageFiles(split["file"], split["labels"], info, prepare)

    return DataSplits(files_of(train), files_of(validation), info)


def _image_info(
    label_set, image_shape, scale: float, mean, std, training_images: Callable[[], Iterator[np.ndarray]]
) -> dict:
    """What a run records of its images: labels, shape, and the normalisation, whose mean/std (per channel, in the
    scaled range) default to those of the (N, H, W, C) chunks `training_images()` yields (only called when one of
    them is not given; summed in float64, so a chunk at a time is all that is held)."""
    channels = image_shape[-1]
    if mean is None or std is None:
        count, total, squares = 0, np.zeros(channels), np.zeros(channels)
        for chunk in training_images():
            pixels = chunk.astype(np.float64) * scale
            count += pixels.size // channels
            total += pixels.sum(axis=(0, 1, 2))
            squares += np.square(pixels).sum(axis=(0, 1, 2))
        sample_mean = total / count
        mean = sample_mean if mean is None else mean
        std = np.sqrt(np.maximum(squares / count - np.square(sample_mean), 0.0)) if std is None else std
    mean, std = per_channel(mean, channels, "mean"), per_channel(std, channels, "std")
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    return {
        "label_names": [str(label) for label in label_set],
        "num_labels": len(label_set),
        "image_shape": list(image_shape),
        "scale": scale,
        "mean": mean.tolist(),
        "std": std.tolist(),
    }


class ImageFiles(IndexedDataset):
    """Image files with labels, prepared (`prepare(file)`) and normalised by `info`'s mean, std and scale when a
    batch needs them."""

    def __init__(
        self, files: np.ndarray, labels: np.ndarray, info: dict[str, Any], prepare: Callable[[Path], np.ndarray]
    ):
        self.files, self.labels, self.info, self.prepare = files, labels, info, prepare

    def __len__(self) -> int:
        return len(self.files)

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        images = np.stack([self.prepare(Path(file)) for file in self.files[rows]])
        pixels = normalize_images(images, mean=self.info["mean"], std=self.info["std"], scale=self.info["scale"])
        return {"images": pixels, "labels": self.labels[rows]}


def image_files(folder: PathLike) -> list[Path]:
    """Every image file (by suffix) below `folder`, in subfolders too, sorted."""
    return sorted(path for path in Path(folder).rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def normalize_images(
    images: np.ndarray, *, mean: Sequence[float], std: Sequence[float], scale: float = 1.0
) -> np.ndarray:
    """float32 (N, H, W, C) `(images * scale - mean) / std`; (N, H, W) gains a channel axis. Use `info`'s values."""
    pixels = images.astype(np.float32) * np.float32(scale)
    if pixels.ndim == 3:
        pixels = rearrange(pixels, "n h w -> n h w 1")
    return (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def _stack_images(images: np.ndarray | Sequence[np.ndarray], names: Sequence[Any] | None = None) -> np.ndarray:
    """(N, H, W, C) from an array or a list of same-shaped images; the error names the first odd one out."""
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got shape {images.shape}")
        return rearrange(images, "n h w -> n h w 1") if images.ndim == 3 else images
    if len(images) == 0:
        raise ValueError("no images given")
    names = names if names is not None else [f"index {i}" for i in range(len(images))]
    arrays = [np.asarray(image) for image in images]
    arrays = [rearrange(a, "h w -> h w 1") if a.ndim == 2 else a for a in arrays]
    for name, array in zip(names, arrays):
        if array.shape != arrays[0].shape or array.dtype != arrays[0].dtype:
            raise ValueError(
                f"images differ in size, channels or dtype: {name} is {array.shape} {array.dtype} but "
                f"{names[0]} is {arrays[0].shape} {arrays[0].dtype} (H, W, C); resize/convert them to one format"
            )
    return np.stack(arrays)


def per_channel(value: float | Sequence[float], channels: int, name: str) -> np.ndarray:
    """(channels,) float32 from one value or one per channel; ValueError naming `name` otherwise."""
    values = np.asarray(value, dtype=np.float32).reshape(-1)
    if values.size == 1:
        values = np.repeat(values, channels)
    if values.shape != (channels,):
        raise ValueError(f"{name} needs 1 or {channels} values (one per channel), got {np.size(value)}")
    return values
