"""Low-rank adapters (LoRA, Hu et al. 2021) on a transformer's projections, built from Flax NNX's `nnx.LoRA`.

`add_lora(model, rank)` wraps each attention projection (`qkv`, `out`) and MLP layer (`fc_in`, `fc_out`) of every
block in an `nnx.LoRA` whose `base_module` is the original layer: y = base(x) + x·A·B, with A (in, rank) drawn at
random and B (rank, out) zero, so the adapted model starts out computing exactly what the base model did.
`trainable(model)` is the Trainer filter that trains only the adapters (`nnx.LoRAParam`) and the task head;
`merge_lora` folds A·B into the base kernels, leaving a plain model (what exports and predictions use).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from flaxen.core.attention import MultiHeadAttention
from flaxen.core.blocks import MLP
from flaxen.core.linear import matmul

# The layers adapted by default, by the module that holds them: every weight matrix of every block.
TARGETS = {MultiHeadAttention: ("qkv", "out"), MLP: ("fc_in", "fc_out")}
# A finetune model's task head, by attribute name, trained in full beside the adapters: the new classifier, and
# BERT's pooler, which a classifier started from a masked-LM run gets freshly initialised.
HEADS = ("classifier", "score", "head", "pooler")


class LoRA(nnx.LoRA):
    """`nnx.LoRA` (same parameters, same output) whose x·A·B goes through `flaxen.core.linear.matmul`, so its
    backward pass forms A's and B's gradients as 2-D matmuls over the flattened rows, like the base layer's."""

    def __call__(self, x: jax.Array, **kwargs) -> jax.Array:
        x, lora_a, lora_b = self.promote_dtype((x, self.lora_a[...], self.lora_b[...]), dtype=self.dtype)
        return self.base_module(x, **kwargs) + matmul(matmul(x, lora_a), lora_b)


def add_lora(model: nnx.Module, rank: int, *, rngs: nnx.Rngs, layers: Sequence[str] | None = None) -> nnx.Module:
    """Wrap the model's block projections (all of TARGETS, or those named in `layers`) in rank-`rank` adapters,
    in place; returns the model. Its outputs are unchanged until the adapters train."""
    if not (isinstance(rank, int) and rank >= 1):
        raise ValueError(f"LoRA rank must be a whole number of at least 1, got {rank!r}")
    if has_lora(model):
        raise ValueError("the model already has LoRA adapters; merge_lora first to add new ones")
    wrapped = 0
    for _, module in list(nnx.iter_modules(model)):
        for name in _target_names(module, layers):
            base = getattr(module, name)
            if not isinstance(base, nnx.Linear):
                continue
            in_features, out_features = base.kernel.shape
            if rank > min(in_features, out_features):
                raise ValueError(f"LoRA rank {rank} exceeds the {in_features}×{out_features} layer {name!r} it adapts")
            adapter = LoRA(in_features, rank, out_features, base_module=base, dtype=base.dtype, rngs=rngs)
            setattr(module, name, adapter)
            wrapped += 1
    if wrapped == 0:
        raise ValueError(f"no layer to adapt in {type(model).__name__} (looked for {_all_names()})")
    return model


def has_lora(model: nnx.Module) -> bool:
    return any(isinstance(module, nnx.LoRA) for _, module in nnx.iter_modules(model))


def lora_rank(model: nnx.Module) -> int | None:
    """The rank of the model's adapters, or None without any."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.LoRA):
            return module.lora_a.shape[-1]
    return None


def adapted_layers(model: nnx.Module) -> list[str]:
    """The attribute names of the layers the model's adapters wrap (e.g. ["fc_in", "fc_out", "out", "qkv"])."""
    names = {
        name
        for _, module in nnx.iter_modules(model)
        for name, child in vars(module).items()
        if isinstance(child, nnx.LoRA)
    }
    return sorted(names)


def trainable(model: nnx.Module) -> nnx.filterlib.Filter:
    """The Trainer filter for a LoRA finetune: the adapters, and the parameters of any task head (HEADS)."""
    del model  # the same filter serves every model; the argument keeps call sites explicit about what they filter
    return nnx.Any(nnx.LoRAParam, *(nnx.PathContains(name) for name in HEADS))


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Fold every adapter into its base layer (kernel + A·B) and put the plain layer back, in place; the model."""
    for _, module in list(nnx.iter_modules(model)):
        for name, child in list(vars(module).items()):
            if isinstance(child, nnx.LoRA) and isinstance(child.base_module, nnx.Linear):
                base = child.base_module
                update = jnp.matmul(child.lora_a[...], child.lora_b[...], precision="highest")
                base.kernel[...] = base.kernel[...] + update.astype(base.kernel.dtype)
                setattr(module, name, base)
    return model


def merged(model: nnx.Module) -> nnx.Module:
    """The model itself without adapters; with them, a merged copy (the model keeps its adapters)."""
    return merge_lora(nnx.clone(model)) if has_lora(model) else model


def _target_names(module: nnx.Module, layers: Sequence[str] | None) -> tuple[str, ...]:
    names = next((names for kind, names in TARGETS.items() if isinstance(module, kind)), ())
    return names if layers is None else tuple(name for name in names if name in layers)


def _all_names() -> str:
    return ", ".join(name for names in TARGETS.values() for name in names)
