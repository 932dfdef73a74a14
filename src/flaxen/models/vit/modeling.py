"""ViT: patch embedding + [CLS] + learned positions, pre-LN blocks, classification from [CLS] (big_vision layout)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxen.core import PatchEmbedding, TransformerConfig, TransformerStack, as_rngs
from flaxen.core.blocks import layer_norm
from flaxen.core.linear import Linear
from flaxen.core.losses import loss_and_metrics
from flaxen.hf import PretrainedMixin
from flaxen.models.vit import params
from flaxen.models.vit.resample import resample_grid

# width, depth, heads, MLP width (ViT paper, big_vision).
VARIANTS = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "M": (512, 12, 8, 2048),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}


@dataclasses.dataclass(frozen=True)
class ViTConfig(TransformerConfig):
    image_size: int = 224
    patch_size: int = 16
    channels: int = 3
    num_labels: int = 1000
    label_names: tuple[str, ...] = ()  # the classes' names, in id order (empty: unnamed)
    # Pretrain head: a tanh "pre-logits" layer of this width before the classifier (None: no such layer).
    representation_size: int | None = None
    # Finetune head: the classifier starts at zero, so a new head begins from uniform predictions.
    head_zero_init: bool = False
    layer_norm_eps: float = 1e-12
    dropout: float = 0.0

    PRESETS: ClassVar = {
        "tiny": (
            "16×16×3 images in 4×4 patches, 2 layers, 64 wide: for tests",
            {
                "image_size": 16,
                "patch_size": 4,
                "hidden_size": 64,
                "num_layers": 2,
                "num_heads": 4,
                "mlp_dim": 256,
                "num_labels": 10,
            },
        ),
        "small": (
            "32×32×3 images in 4×4 patches, 4 layers, 256 wide: trains on a CPU in minutes",
            {
                "image_size": 32,
                "patch_size": 4,
                "hidden_size": 256,
                "num_layers": 4,
                "num_heads": 4,
                "mlp_dim": 1024,
                "num_labels": 10,
            },
        ),
    }

    def __post_init__(self):
        super().__post_init__()
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}; "
                "choose a patch size that divides the image size"
            )

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ViTConfig:
        """A preset ("tiny", "small") or a variant string ("Ti/16", "S/16", ...) with some fields changed."""
        return cls.from_variant(name, **overrides) if "/" in name else super().from_preset(name, **overrides)

    @classmethod
    def preset_help(cls) -> str:
        return f"{super().preset_help()}; or a variant NAME/PATCH with NAME in {', '.join(VARIANTS)}, e.g. Ti/4, S/16"

    def weight_init(self, scale: float = 1.0) -> nnx.Initializer:
        """Truncated normal with std `scale · initializer_range` (big_vision, Hugging Face ViT)."""
        return nnx.initializers.truncated_normal(self.initializer_range * scale)

    @classmethod
    def from_variant(cls, variant: str, **overrides) -> ViTConfig:
        """From a variant string such as "Ti/16", "S/16", "B/32" (width/depth/heads by name, patch size by number)."""
        match = re.fullmatch(r"(\w+?)/(\d+)", variant)
        if match is None or match.group(1) not in VARIANTS:
            raise ValueError(
                f"unknown ViT variant {variant!r}; use NAME/PATCH with NAME in {', '.join(VARIANTS)}, e.g. 'S/16'"
            )
        width, depth, heads, mlp_dim = VARIANTS[match.group(1)]
        base = {
            "hidden_size": width,
            "num_layers": depth,
            "num_heads": heads,
            "mlp_dim": mlp_dim,
            "patch_size": int(match.group(2)),
        }
        return cls(**base | overrides)

    @classmethod
    def tiny(cls, **overrides) -> ViTConfig:
        return cls.from_preset("tiny", **overrides)

    @classmethod
    def small(cls, **overrides) -> ViTConfig:
        return cls.from_preset("small", **overrides)


class ViT(PretrainedMixin, nnx.Module):
    """Backbone: (B, H, W, C) images -> (B, 1 + patches, D) after the final LayerNorm; index 0 is [CLS]."""

    config_class = ViTConfig
    params_table = params.VIT

    def for_hugging_face(self):
        """What a Hugging Face folder holds of this model: transformers reads every image as RGB (`with_rgb_input`)."""
        return with_rgb_input(self)

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.config = config
        init, width = config.weight_init(), config.hidden_size
        self.patch_embedding = PatchEmbedding(
            config.patch_size, config.channels, width, kernel_init=init, dtype=config.compute_dtype, rngs=rngs
        )
        self.cls_token = nnx.Param(jnp.zeros((1, 1, width), jnp.float32))
        self.position_embedding = nnx.Param(init(rngs.params(), (1 + config.grid_size**2, width), jnp.float32))
        self.dropout = nnx.Dropout(config.dropout)
        self.stack = TransformerStack(config, norm_first=True, kernel_init=init, out_kernel_init=init, rngs=rngs)
        self.final_norm = layer_norm(config, rngs=rngs)

    def __call__(
        self,
        images: jax.Array,
        *,
        rngs: nnx.Rngs | None = None,
        interpolate_position_embeddings: bool = False,
        return_hidden_states: bool = False,
        output_positions: slice | jax.Array | None = None,
    ):
        """With interpolate_position_embeddings, images of another size (a multiple of the patch) are accepted.

        `output_positions` (a slice, or (B, P) indices): the last layer computes only those rows, (B, P, D).
        """
        height, width = self._check_images(images, interpolate_position_embeddings)
        rngs = as_rngs(rngs)
        patches = self.patch_embedding(images.astype(self.config.compute_dtype))
        cls = jnp.broadcast_to(self.cls_token[...].astype(patches.dtype), (patches.shape[0], 1, patches.shape[2]))
        positions = self.position_embedding[...]
        grid = (height // self.config.patch_size, width // self.config.patch_size)
        if grid != (self.config.grid_size,) * 2:
            positions = resample_position_embeddings(positions, grid)
        x = jnp.concatenate([cls, patches], axis=1) + positions.astype(patches.dtype)[None]
        x, hidden_states = self.stack(
            self.dropout(x, rngs=rngs), rngs=rngs, return_hidden_states=True, output_positions=output_positions
        )
        x = self.final_norm(x)
        return (x, hidden_states[:-1] + [x]) if return_hidden_states else x

    def _check_images(self, images, allow_other_size: bool) -> tuple[int, int]:
        config = self.config
        if images.ndim != 4:
            raise ValueError(f"images must be (batch, height, width, channels), got shape {tuple(images.shape)}")
        _, height, width, channels = images.shape
        if channels != config.channels:
            raise ValueError(
                f"images have {channels} channel(s) but the model expects {config.channels}; "
                "convert the images or set ViTConfig.channels"
            )
        if height % config.patch_size or width % config.patch_size:
            raise ValueError(
                f"image size {height}×{width} is not a multiple of the patch size {config.patch_size}; "
                "resize or crop the images"
            )
        if not allow_other_size and (height, width) != (config.image_size, config.image_size):
            raise ValueError(
                f"images are {height}×{width} but the model was built for {config.image_size}×{config.image_size}; "
                "resize them, pass interpolate_position_embeddings=True, or use to_finetune(..., image_size=...)"
            )
        return height, width


def resample_position_embeddings(position_embedding: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """(1 + g·g, D) -> (1 + gh·gw, D): the patch positions resampled bicubically (PyTorch's kernel), [CLS] kept."""
    cls, patches = position_embedding[:1], position_embedding[1:]
    side = int(round(np.sqrt(patches.shape[0])))
    resampled = resample_grid(patches.reshape(side, side, -1), grid)
    return jnp.concatenate([cls, resampled.reshape(grid[0] * grid[1], -1)], axis=0)


class ViTForImageClassification(PretrainedMixin, nnx.Module):
    """Classifier on [CLS]: with `representation_size`, the pretrain pre-logits tanh layer comes first."""

    config_class = ViTConfig
    params_table = params.VIT

    def for_hugging_face(self):
        """What a Hugging Face folder holds of this model: transformers reads every image as RGB (`with_rgb_input`)."""
        return with_rgb_input(self)

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.vit = ViT(config, rngs=rngs)
        init = config.weight_init()
        features = config.hidden_size
        self.pre_logits = nnx.data(None)
        if config.representation_size is not None:
            self.pre_logits = nnx.data(Linear(features, config.representation_size, kernel_init=init, rngs=rngs))
            features = config.representation_size
        head_init = nnx.initializers.zeros if config.head_zero_init else init
        self.head = Linear(features, config.num_labels, kernel_init=head_init, rngs=rngs)

    def __call__(
        self, images: jax.Array, *, rngs: nnx.Rngs | None = None, interpolate_position_embeddings: bool = False
    ) -> jax.Array:
        """(B, H, W, C) float images -> (B, num_labels) logits."""
        # The last layer runs only at [CLS], the one position the classifier reads.
        features = self.vit(
            images,
            rngs=rngs,
            interpolate_position_embeddings=interpolate_position_embeddings,
            output_positions=slice(0, 1),
        )[:, 0]
        if self.pre_logits is not None:
            features = jnp.tanh(self.pre_logits(features))
        return self.head(features)

    def loss(
        self, batch: dict[str, jax.Array], *, rngs: nnx.Rngs | None = None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Cross-entropy on `labels`, or on `targets` probabilities when the batch has them (smoothed or mixed
        labels); rows with `weights` 0 (evaluation padding) are not counted."""
        logits = self(batch["images"], rngs=rngs)
        return loss_and_metrics(logits, batch["labels"], batch.get("weights"), batch.get("targets"))


def to_finetune(
    model: ViT | ViTForImageClassification,
    *,
    num_labels: int,
    image_size: int | None = None,
    rngs: nnx.Rngs,
    **overrides,
) -> ViTForImageClassification:
    """A finetune model from a pretrained one (a classifier or a bare backbone): same backbone, no pre-logits, a
    zero-initialised head for `num_labels`, position embeddings resampled (not cropped) for `image_size`, and any
    other config fields in `overrides` (e.g. `label_names`, `dropout`)."""
    backbone = model.vit if isinstance(model, ViTForImageClassification) else model
    old = model.config
    config = old.replace(
        num_labels=num_labels,
        image_size=image_size or old.image_size,
        representation_size=None,
        head_zero_init=True,
        **{"label_names": (), **overrides},
    )
    finetune = ViTForImageClassification(config, rngs=rngs)
    nnx.update(finetune.vit, nnx.state(backbone, nnx.Param))
    grid = (config.grid_size, config.grid_size)
    finetune.vit.position_embedding.set_value(resample_position_embeddings(backbone.position_embedding[...], grid))
    return finetune


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert("L") and flaxen's grey-scale reading weigh R, G, B


def with_rgb_input(model: ViT | ViTForImageClassification) -> ViT | ViTForImageClassification:
    """The same model for three-channel input: on an RGB image it computes what `model` (one channel) computes on the
    image's luma, so on a grey image (R = G = B) exactly what it computes on that grey image. The patch kernel's
    one input channel becomes three, weighted by LUMA; the per-channel normalisation must be the same for all three.
    """
    if model.config.channels != 1:
        return model
    rgb = type(model)(model.config.replace(channels=3), rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    nnx.update(rgb, state)  # every parameter but the patch kernel, whose shape differs, is replaced below too
    backbone, rgb_backbone = (model, rgb) if isinstance(model, ViT) else (model.vit, rgb.vit)
    patch, features = model.config.patch_size, model.config.hidden_size
    kernel = backbone.patch_embedding.projection.kernel[...].reshape(patch, patch, 1, features)
    weights = jnp.asarray(LUMA, kernel.dtype)[None, None, :, None]
    rgb_backbone.patch_embedding.projection.kernel.set_value((kernel * weights).reshape(patch * patch * 3, features))
    return rgb
