from flaxen.models.vit.modeling import (
    ViT,
    ViTConfig,
    ViTForImageClassification,
    resample_position_embeddings,
    to_finetune,
    with_rgb_input,
)

__all__ = [
    "ViT",
    "ViTConfig",
    "ViTForImageClassification",
    "resample_position_embeddings",
    "to_finetune",
    "with_rgb_input",
]
