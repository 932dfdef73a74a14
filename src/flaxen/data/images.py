"""Image classification datasets from numpy arrays or class-subfolder layouts, normalised per channel."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from einops import rearrange
from PIL import Image, UnidentifiedImageError

from flaxen.data.arrays import ArrayDataset, DataSplits, random_split
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

    channels = stacked.shape[-1]
    train_pixels = train["images"].astype(np.float32) * scale
    mean = per_channel(mean, channels, "mean") if mean is not None else train_pixels.mean(axis=(0, 1, 2))
    std = per_channel(std, channels, "std") if std is not None else train_pixels.std(axis=(0, 1, 2))
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    info = {
        "label_names": [str(label) for label in label_set],
        "num_labels": len(label_set),
        "image_shape": list(stacked.shape[1:]),
        "scale": scale,
        "mean": mean.tolist(),
        "std": std.tolist(),
    }

    def normalised(split: ArrayDataset) -> ArrayDataset:
        pixels = normalize_images(split["images"], mean=info["mean"], std=info["std"], scale=scale)
        return ArrayDataset({"images": pixels, "labels": split["labels"]})

    return DataSplits(normalised(train), normalised(validation) if validation is not None else None, info)


def image_folder(
    path: PathLike,
    *,
    validation_fraction: float = 0.1,
    seed: int = 0,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
) -> DataSplits:
    """Images in `path/<class name>/*.png|jpg|...`, class ids in sorted folder order; see `image_classification`."""
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
    images, labels, files = [], [], []
    for folder in class_folders:
        folder_files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not folder_files:
            raise ValueError(f"class folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
        for file in folder_files:
            try:
                with Image.open(file) as image:
                    mode = _PIL_MODE_CONVERSIONS.get(image.mode, image.mode)
                    images.append(np.asarray(image.convert(mode)))
            except (UnidentifiedImageError, OSError) as err:
                raise ValueError(f"cannot read image {file}: {err}") from None
            labels.append(folder.name)
            files.append(file)
    return image_classification(
        _stack_images(images, names=files),
        labels,
        validation_fraction=validation_fraction,
        seed=seed,
        mean=mean,
        std=std,
    )


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
