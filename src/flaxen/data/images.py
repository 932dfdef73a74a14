"""Image classification datasets from numpy arrays or class-subfolder layouts, normalised per channel."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from einops import rearrange
from PIL import Image, UnidentifiedImageError

from flaxen.data.arrays import ArrayDataset, DataSplits, random_split
from flaxen.data.indexed import IndexedDataset
from flaxen.data.labels import check_several_labels, label_ids, label_values
from flaxen.text.files import PathLike

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_PIL_MODE_CONVERSIONS = {"P": "RGB", "CMYK": "RGB", "1": "L"}  # palette, print and 1-bit images -> pixels


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
    lazy: bool | None = None,
) -> DataSplits:
    """Images in `path/<class name>/*.png|jpg|...`, class ids in sorted folder order; see `image_classification`.

    With `lazy` (default: above LAZY_IMAGES images) the files are listed and their headers checked up front, but
    decoded only when a batch needs them (`ImageFiles`, through grain), so memory and start-up do not grow with the
    folder; mean/std then come from up to STATISTICS_SAMPLE training images. The split, the statistics (for a
    training split within the sample) and the batches are those of the decoded path.
    """
    files, labels = _listed_images(path)
    if lazy is None:
        lazy = len(files) > LAZY_IMAGES
    if lazy:
        return _lazy_image_folder(files, labels, validation_fraction=validation_fraction, seed=seed, mean=mean, std=std)
    return image_classification(
        _stack_images([_decode(file) for file in files], names=files),
        labels,
        validation_fraction=validation_fraction,
        seed=seed,
        mean=mean,
        std=std,
    )


def _listed_images(path: PathLike) -> tuple[list[Path], list[str]]:
    """(image files, their class names) of a class-subfolder layout, sorted by class, then by file name."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"no such folder: {root}")
    class_folders = sorted(folder for folder in root.iterdir() if folder.is_dir())
    if not class_folders:
        raise ValueError(f"{root} has no class subfolders; expected {root}/<class name>/<image files>")
    if len(class_folders) == 1:
        raise ValueError(
            f"{root} has one class folder ({class_folders[0].name}); a classifier needs a subfolder of images for "
            "each of at least two classes"
        )
    files, labels = [], []
    for folder in class_folders:
        folder_files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not folder_files:
            raise ValueError(f"class folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
        files += folder_files
        labels += [folder.name] * len(folder_files)
    return files, labels


def _decode(file: Path) -> np.ndarray:
    return _read_image(file, lambda image, mode: np.asarray(image.convert(mode)))


def _header(file: Path) -> tuple[tuple[int, int], str]:
    """(width, height) and the mode it decodes to, read from the file's header only."""
    return _read_image(file, lambda image, mode: (image.size, mode))


def _read_image(file: Path, read: Callable[[Image.Image, str], Any]) -> Any:
    """`read(image, the mode its pixels are taken in)` of the opened file; ValueError naming an unreadable file."""
    try:
        with Image.open(file) as image:
            return read(image, _PIL_MODE_CONVERSIONS.get(image.mode, image.mode))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {file}: {err}") from None


def _lazy_image_folder(
    files: list[Path], labels: list[str], *, validation_fraction: float, seed: int, mean, std
) -> DataSplits:
    first = _stack_images([_decode(files[0])])[0]
    expected = _header(files[0])
    for file in files[1:]:
        if (header := _header(file)) != expected:
            (width, height), mode = header
            raise ValueError(
                f"images differ in size or channels: {file} is {width}×{height} {mode} but {files[0]} is "
                f"{expected[0][0]}×{expected[0][1]} {expected[1]}; resize/convert them to one format"
            )
    label_set = label_values(labels)
    check_several_labels(label_set, "the image labels")
    ids, _ = label_ids(labels, label_set)
    # The same rows as the decoded path's split: random_split only looks at the number of rows and the seed.
    rows = ArrayDataset({"file": np.asarray([str(file) for file in files]), "labels": ids})
    train, validation = random_split(rows, validation_fraction, seed)

    def sample_chunks() -> Iterator[np.ndarray]:
        sample = np.arange(len(train))
        if len(train) > STATISTICS_SAMPLE:
            sample = np.sort(np.random.default_rng(seed).choice(len(train), STATISTICS_SAMPLE, replace=False))
        for start in range(0, len(sample), STATISTICS_CHUNK):
            yield _stack_images(
                [_decode(Path(file)) for file in train["file"][sample[start : start + STATISTICS_CHUNK]]]
            )

    scale = 1.0 / 255.0 if first.dtype == np.uint8 else 1.0
    info = _image_info(label_set, first.shape, scale, mean, std, sample_chunks)

    def files_of(split: ArrayDataset | None) -> ImageFiles | None:
        return None if split is None else ImageFiles(split["file"], split["labels"], info)

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
    """Image files with labels, decoded and normalised (by `info`'s mean, std and scale) when a batch needs them."""

    def __init__(self, files: np.ndarray, labels: np.ndarray, info: dict[str, Any]):
        self.files, self.labels, self.info = files, labels, info

    def __len__(self) -> int:
        return len(self.files)

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        images = _stack_images([_decode(Path(file)) for file in self.files[rows]], names=list(self.files[rows]))
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
