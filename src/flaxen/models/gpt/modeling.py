"""GPT: a pre-LN causal transformer with tied input/output embeddings (GPT-2 layout)."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from flaxen.core import Embed, PositionEmbedding, TransformerConfig, TransformerStack, as_rngs, masks
from flaxen.core.blocks import layer_norm
from flaxen.core.kv_cache import KVCache
from flaxen.core.linear import Linear
from flaxen.core.losses import loss_and_metrics, position_weights
from flaxen.core.validation import check_right_padded, check_same_shape, check_token_ids
from flaxen.hf import PretrainedMixin
from flaxen.models.gpt import params


@dataclasses.dataclass(frozen=True)
class GPTConfig(TransformerConfig):
    vocab_size: int = 50257
    context_length: int = 1024
    num_labels: int = 2  # used by GPTForSequenceClassification
    label_names: tuple[str, ...] = ()  # the classes' names, in id order (empty: unnamed)
    activation: str = "gelu_tanh"
    dropout: float = 0.0

    PRESETS: ClassVar = {
        "tiny": (
            "2 layers, 64 wide: for tests",
            {
                "vocab_size": 512,
                "context_length": 64,
                "hidden_size": 64,
                "num_layers": 2,
                "num_heads": 4,
                "mlp_dim": 256,
            },
        ),
        "mini": (
            "4 layers, 128 wide, context 128: the most a CPU learns in minutes",
            {
                "vocab_size": 4096,
                "context_length": 128,
                "hidden_size": 128,
                "num_layers": 4,
                "num_heads": 4,
                "mlp_dim": 512,
            },
        ),
        "small": (
            "4 layers, 256 wide, context 128: for an hour or more on a CPU",
            {
                "vocab_size": 8192,
                "context_length": 128,
                "hidden_size": 256,
                "num_layers": 4,
                "num_heads": 4,
                "mlp_dim": 1024,
            },
        ),
        "gpt2": (
            "GPT-2 small, 124M",
            {
                "vocab_size": 50257,
                "context_length": 1024,
                "hidden_size": 768,
                "num_layers": 12,
                "num_heads": 12,
                "mlp_dim": 3072,
            },
        ),
    }

    @classmethod
    def tiny(cls, **overrides) -> GPTConfig:
        return cls.from_preset("tiny", **overrides)

    @classmethod
    def mini(cls, **overrides) -> GPTConfig:
        return cls.from_preset("mini", **overrides)

    @classmethod
    def small(cls, **overrides) -> GPTConfig:
        return cls.from_preset("small", **overrides)

    @classmethod
    def gpt2(cls, **overrides) -> GPTConfig:
        return cls.from_preset("gpt2", **overrides)


class GPT(PretrainedMixin, nnx.Module):
    """Backbone: token + position embeddings, causal pre-LN blocks, final LayerNorm -> (B, T, D)."""

    config_class = GPTConfig
    params_table = params.GPT2

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        self.config = config
        init = config.weight_init()
        # nanoGPT / GPT-2: residual projections scaled so the residual stream's variance does not grow with depth.
        residual_init = config.weight_init(scale=1 / math.sqrt(2 * config.num_layers))
        width = config.hidden_size
        self.token_embedding = Embed(
            config.vocab_size, width, embedding_init=init, dtype=config.compute_dtype, rngs=rngs
        )
        self.position_embedding = PositionEmbedding(config.context_length, width, init=init, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout)
        self.stack = TransformerStack(
            config, norm_first=True, kernel_init=init, out_kernel_init=residual_init, rngs=rngs
        )
        self.final_norm = layer_norm(config, rngs=rngs)

    def __call__(
        self,
        token_ids: jax.Array,
        padding_mask: jax.Array | None = None,
        *,
        rngs: nnx.Rngs | None = None,
        return_hidden_states: bool = False,
        output_positions: slice | jax.Array | None = None,
    ):
        """(B, T) ids -> (B, T, D); with return_hidden_states also every block's input and the final output.

        `output_positions` (a slice, or (B, P) indices): the last layer computes only those rows, (B, P, D).
        """
        check_same_shape("padding_mask", padding_mask, "token_ids", token_ids)
        check_right_padded(padding_mask)
        rngs = as_rngs(rngs)
        x = self.dropout(self._embed(token_ids), rngs=rngs)
        mask = None if padding_mask is None else masks.padding(padding_mask)
        x, hidden_states = self.stack(
            x, mask=mask, is_causal=True, rngs=rngs, return_hidden_states=True, output_positions=output_positions
        )
        x = self.final_norm(x)
        return (x, hidden_states[:-1] + [x]) if return_hidden_states else x

    def decode(
        self, token_ids: jax.Array, cache: KVCache, *, positions: jax.Array, padding_mask: jax.Array | None = None
    ) -> tuple[jax.Array, KVCache]:
        """(B, T) ids written into `cache` at `cache.index` -> ((B, T, D), the updated cache); eval mode.

        `positions` (B, T) name each token's position (left-padded prompts); `padding_mask` marks real tokens.
        """
        if not self.stack.blocks[0].attention.deterministic:
            raise ValueError("decoding runs in eval mode: call model.eval() first (flaxen.generate does)")
        check_same_shape("padding_mask", padding_mask, "token_ids", token_ids)
        written = jnp.ones(token_ids.shape, bool) if padding_mask is None else padding_mask
        cache = cache.with_written(written)
        x, cache = self.stack.decode(self._embed(token_ids, positions), cache, masks.padding(cache.valid))
        return self.final_norm(x), cache

    def empty_cache(self, batch: int, length: int) -> KVCache:
        """A zeroed KV cache for `batch` rows of up to `length` positions."""
        config = self.config
        return KVCache.empty(
            num_layers=config.num_layers,
            batch=batch,
            length=length,
            num_heads=config.num_heads,
            head_dim=config.head_dim,
            dtype=config.compute_dtype,
        )

    def _embed(self, token_ids: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        check_token_ids(token_ids, vocab_size=self.config.vocab_size, context_length=self.config.context_length)
        return self.position_embedding(self.token_embedding(token_ids), positions)


class GPTForCausalLM(PretrainedMixin, nnx.Module):
    """Pretrain head: next-token logits from the token embedding itself (tied weights)."""

    config_class = GPTConfig
    params_table = params.GPT2

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.gpt = GPT(config, rngs=rngs)

    def __call__(
        self, token_ids: jax.Array, padding_mask: jax.Array | None = None, *, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """(B, T) ids -> (B, T, V) logits."""
        return self.gpt.token_embedding.attend(self.gpt(token_ids, padding_mask, rngs=rngs))

    def loss(
        self, batch: dict[str, jax.Array], *, rngs: nnx.Rngs | None = None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Next-token cross-entropy: position t predicts token t+1; padding (if given) is not scored."""
        token_ids = batch["token_ids"]
        padding_mask = batch.get("padding_mask")
        inputs, targets = token_ids[:, :-1], token_ids[:, 1:]
        weights = position_weights(batch, padding_mask=None if padding_mask is None else padding_mask[:, 1:])
        hidden = self.gpt(inputs, None if padding_mask is None else padding_mask[:, :-1], rngs=rngs)
        logits = self.gpt.token_embedding.padded_attend(hidden)
        return loss_and_metrics(logits, targets, weights, num_classes=self.config.vocab_size)


class GPTForSequenceClassification(PretrainedMixin, nnx.Module):
    """Finetune head: a linear classifier on each row's last non-padding position."""

    config_class = GPTConfig
    params_table = params.GPT2

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.gpt = GPT(config, rngs=rngs)
        self.score = Linear(
            config.hidden_size, config.num_labels, use_bias=False, kernel_init=config.weight_init(), rngs=rngs
        )

    def __call__(
        self, token_ids: jax.Array, padding_mask: jax.Array | None = None, *, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """(B, T) ids -> (B, num_labels) logits."""
        if padding_mask is None:
            last = slice(-1, None)
        else:
            last = jnp.maximum(jnp.sum(padding_mask, axis=1) - 1, 0)[:, None].astype(jnp.int32)
        # The last layer runs only at the position scored (its output elsewhere would be discarded).
        return self.score(self.gpt(token_ids, padding_mask, rngs=rngs, output_positions=last)[:, 0])

    def loss(
        self, batch: dict[str, jax.Array], *, rngs: nnx.Rngs | None = None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Cross-entropy on `labels`; rows with `weights` 0 (evaluation padding) are not counted."""
        logits = self(batch["token_ids"], batch.get("padding_mask"), rngs=rngs)
        return loss_and_metrics(logits, batch["labels"], batch.get("weights"))
