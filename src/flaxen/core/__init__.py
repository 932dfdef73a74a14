"""The shared core: attention and masks, transformer blocks, embeddings, activations, losses, MLM masking."""

from flaxen.core import masks
from flaxen.core.activations import Activation, PReLU, RReLU
from flaxen.core.attention import MultiHeadAttention
from flaxen.core.blocks import MLP, TransformerBlock, TransformerStack
from flaxen.core.config import ConfigMixin, TransformerConfig
from flaxen.core.embeddings import Embed, PatchEmbedding, PositionEmbedding
from flaxen.core.losses import accuracy, cross_entropy, weighted_mean
from flaxen.core.mlm import MaskedTokens, mask_tokens
from flaxen.core.rng import as_rngs

__all__ = [
    "MLP",
    "Activation",
    "ConfigMixin",
    "Embed",
    "MaskedTokens",
    "MultiHeadAttention",
    "PReLU",
    "PatchEmbedding",
    "PositionEmbedding",
    "RReLU",
    "TransformerBlock",
    "TransformerConfig",
    "TransformerStack",
    "accuracy",
    "as_rngs",
    "cross_entropy",
    "mask_tokens",
    "masks",
    "weighted_mean",
]
