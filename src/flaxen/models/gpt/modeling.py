"""GPT: a pre-LN causal transformer with tied input/output embeddings (GPT-2 layout)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from flaxen.core import PositionEmbedding, TransformerConfig, TransformerStack, as_rngs, masks
from flaxen.core.kv_cache import KVCache
from flaxen.core.linear import Linear
from flaxen.core.losses import position_weights, scored
from flaxen.core.pretrained import PretrainedMixin
from flaxen.core.validation import check_same_shape, check_token_ids
from flaxen.models.gpt import params


@dataclasses.dataclass(frozen=True)
class GPTConfig(TransformerConfig):
    vocab_size: int = 50257
    context_length: int = 1024
    num_labels: int = 2  # used by GPTForSequenceClassification
    activation: str = "gelu_tanh"
    dropout: float = 0.0

    @classmethod
    def tiny(cls, **overrides) -> GPTConfig:
        """2 layers, 64 wide: for tests."""
        return cls(**{"vocab_size": 512, "context_length": 64, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "mlp_dim": 256} | overrides)

    @classmethod
    def small(cls, **overrides) -> GPTConfig:
        """4 layers, 256 wide, context 128: trains on a CPU in minutes."""
        return cls(**{"vocab_size": 8192, "context_length": 128, "hidden_size": 256, "num_layers": 4, "num_heads": 4, "mlp_dim": 1024} | overrides)

    @classmethod
    def gpt2(cls, **overrides) -> GPTConfig:
        """GPT-2 small (124M)."""
        return cls(**{"vocab_size": 50257, "context_length": 1024, "hidden_size": 768, "num_layers": 12, "num_heads": 12, "mlp_dim": 3072} | overrides)


class GPT(PretrainedMixin, nnx.Module):
    """Backbone: token + position embeddings, causal pre-LN blocks, final LayerNorm -> (B, T, D)."""

    params_table = params.GPT2

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        self.config = config
        init = nnx.initializers.normal(config.initializer_range)
        # nanoGPT / GPT-2: residual projections scaled so the residual stream's variance does not grow with depth.
        residual_init = nnx.initializers.normal(config.initializer_range / math.sqrt(2 * config.num_layers))
        dtype = jnp.dtype(config.dtype)
        self.token_embedding = nnx.Embed(config.vocab_size, config.hidden_size, embedding_init=init, dtype=dtype, rngs=rngs)
        self.position_embedding = PositionEmbedding(config.context_length, config.hidden_size, init=init, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout)
        self.stack = TransformerStack(config, norm_first=True, kernel_init=init, out_kernel_init=residual_init, rngs=rngs)
        self.final_norm = nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        token_ids: jax.Array,
        padding_mask: jax.Array | None = None,
        *,
        rngs: nnx.Rngs | None = None,
        return_hidden_states: bool = False,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        output_positions: slice | jax.Array | None = None,
    ):
        """(B, T) ids -> (B, T, D); with return_hidden_states also every block's input and the final output.

        Decoding: `positions` (B, T) name each token's position (left-padded prompts); with `cache` the tokens
        are written into it at `cache.index` and `(hidden, updated cache)` is returned.
        `output_positions` (a slice, or (B, P) indices): the last layer computes only those rows, (B, P, D).
        """
        check_token_ids(token_ids, vocab_size=self.config.vocab_size, context_length=self.config.context_length)
        check_same_shape("padding_mask", padding_mask, "token_ids", token_ids)
        rngs = as_rngs(rngs)
        x = self.dropout(self.position_embedding(self.token_embedding(token_ids), positions), rngs=rngs)
        if cache is not None:
            cache = cache.with_written(jnp.ones(token_ids.shape, bool) if padding_mask is None else padding_mask)
            x, cache = self.stack(x, mask=masks.padding(cache.valid), rngs=rngs, cache=cache, output_positions=output_positions)
            return self.final_norm(x), cache
        mask = None if padding_mask is None else masks.padding(padding_mask)
        x, hidden_states = self.stack(
            x, mask=mask, is_causal=True, rngs=rngs, return_hidden_states=True, output_positions=output_positions,
        )
        x = self.final_norm(x)
        return (x, hidden_states[:-1] + [x]) if return_hidden_states else x

    def empty_cache(self, batch: int, length: int) -> KVCache:
        """A zeroed KV cache for `batch` rows of up to `length` positions."""
        config = self.config
        return KVCache.empty(
            num_layers=config.num_layers, batch=batch, length=length, num_heads=config.num_heads,
            head_dim=config.head_dim, dtype=jnp.dtype(config.dtype),
        )


class GPTForCausalLM(PretrainedMixin, nnx.Module):
    """Pretrain head: next-token logits from the token embedding itself (tied weights)."""

    params_table = params.GPT2

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.gpt = GPT(config, rngs=rngs)

    def __call__(self, token_ids: jax.Array, padding_mask: jax.Array | None = None, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """(B, T) ids -> (B, T, V) logits."""
        return self.gpt.token_embedding.attend(self.gpt(token_ids, padding_mask, rngs=rngs))

    def loss(self, batch: dict[str, jax.Array], *, rngs: nnx.Rngs | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Next-token cross-entropy: position t predicts token t+1; padding (if given) is not scored."""
        token_ids = batch["token_ids"]
        padding_mask = batch.get("padding_mask")
        inputs, targets = token_ids[:, :-1], token_ids[:, 1:]
        weights = position_weights(batch, padding_mask=None if padding_mask is None else padding_mask[:, 1:])
        logits = self(inputs, None if padding_mask is None else padding_mask[:, :-1], rngs=rngs)
        return scored(logits, targets, weights)


class GPTForSequenceClassification(PretrainedMixin, nnx.Module):
    """Finetune head: a linear classifier on each row's last non-padding position."""

    params_table = params.GPT2

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.gpt = GPT(config, rngs=rngs)
        init = nnx.initializers.normal(config.initializer_range)
        self.score = Linear(config.hidden_size, config.num_labels, use_bias=False, kernel_init=init, rngs=rngs)

    def __call__(self, token_ids: jax.Array, padding_mask: jax.Array | None = None, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """(B, T) ids -> (B, num_labels) logits."""
        if padding_mask is None:
            last = slice(-1, None)
        else:
            last = jnp.maximum(jnp.sum(padding_mask, axis=1) - 1, 0)[:, None].astype(jnp.int32)
        # The last layer runs only at the position scored (its output elsewhere would be discarded).
        return self.score(self.gpt(token_ids, padding_mask, rngs=rngs, output_positions=last)[:, 0])

    def loss(self, batch: dict[str, jax.Array], *, rngs: nnx.Rngs | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Cross-entropy on `labels`; rows with `weights` 0 (evaluation padding) are not counted."""
        logits = self(batch["token_ids"], batch.get("padding_mask"), rngs=rngs)
        return scored(logits, batch["labels"], batch.get("weights"))
