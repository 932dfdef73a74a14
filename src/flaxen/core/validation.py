"""Input checks at the API boundary: cheap, and skipped for traced values inside jit."""

from __future__ import annotations

import jax
import numpy as np


def is_concrete(x) -> bool:
    """True when `x` holds values we can inspect without tracing (not inside jit/grad)."""
    return not isinstance(x, jax.core.Tracer)


def check_token_ids(token_ids, *, vocab_size: int, context_length: int) -> None:
    """ValueError for a wrong rank, a sequence longer than the context, or ids outside the vocabulary."""
    if token_ids.ndim != 2:
        raise ValueError(f"token_ids must be (batch, length), got shape {tuple(token_ids.shape)}")
    if token_ids.shape[1] > context_length:
        raise ValueError(
            f"sequence length {token_ids.shape[1]} is longer than the model's context of {context_length} tokens; "
            "truncate the input or use a config with a larger context_length"
        )
    if not np.issubdtype(token_ids.dtype, np.integer):
        raise ValueError(f"token_ids must be integers, got dtype {token_ids.dtype}")
    if is_concrete(token_ids) and token_ids.size:
        values = np.asarray(token_ids)  # numpy, so no operation is staged when called under a trace
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"token id {high if high >= vocab_size else low} is outside the vocabulary [0, {vocab_size}); "
                "the tokenizer and the model's vocab_size do not match"
            )


def check_same_shape(name: str, array, reference_name: str, reference) -> None:
    """ValueError unless `array` has the same shape as `reference`."""
    if array is not None and tuple(array.shape) != tuple(reference.shape):
        raise ValueError(
            f"{name} has shape {tuple(array.shape)} but {reference_name} has shape {tuple(reference.shape)}; "
            "they must match"
        )


def check_right_padded(padding_mask) -> None:
    """ValueError unless each row of a (B, T) `padding_mask` marks its real tokens first, then only padding
    (attention hands padding to fused kernels as per-row lengths)."""
    if padding_mask is None or not is_concrete(padding_mask):
        return
    valid = np.asarray(padding_mask, bool)
    prefix = np.arange(valid.shape[-1]) < valid.sum(axis=-1, keepdims=True)
    if not np.array_equal(valid, prefix):
        row = int(np.argmax(np.any(valid != prefix, axis=-1)))
        raise ValueError(
            f"padding_mask row {row} is not right-padded: mark each row's real tokens first, then padding "
            "(tokenizers pad on the right by default; for left-padded prompts use flaxen.generate)"
        )
