"""BERT: a post-LN bidirectional encoder with token-type embeddings and a tanh pooler on [CLS]."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from flaxen.core import Activation, Embed, PositionEmbedding, TransformerConfig, TransformerStack, as_rngs, masks
from flaxen.core.blocks import layer_norm
from flaxen.core.linear import Linear
from flaxen.core.losses import loss_and_metrics, position_weights
from flaxen.core.mlm import mask_tokens
from flaxen.core.validation import check_right_padded, check_same_shape, check_token_ids
from flaxen.hf import PretrainedMixin
from flaxen.models.bert import params


@dataclasses.dataclass(frozen=True)
class BertConfig(TransformerConfig):
    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    num_labels: int = 2  # used by BertForSequenceClassification
    label_names: tuple[str, ...] = ()  # the classes' names, in id order (empty: unnamed)
    layer_norm_eps: float = 1e-12
    # Token ids MLM needs; the defaults are flaxen's WordPiece layout ([PAD] [UNK] [CLS] [SEP] [MASK] = 0..4).
    pad_token_id: int = 0
    mask_token_id: int = 4
    special_token_ids: tuple[int, ...] = (0, 1, 2, 3, 4)
    mask_rate: float = 0.15

    PRESETS: ClassVar = {
        "tiny": (
            "2 layers, 64 wide: for tests",
            {
                "vocab_size": 512,
                "max_positions": 64,
                "hidden_size": 64,
                "num_layers": 2,
                "num_heads": 4,
                "mlp_dim": 256,
            },
        ),
        "small": (
            "4 layers, 256 wide, 128 positions: trains on a CPU in minutes",
            {
                "vocab_size": 8192,
                "max_positions": 128,
                "hidden_size": 256,
                "num_layers": 4,
                "num_heads": 4,
                "mlp_dim": 1024,
            },
        ),
        "bert_base": (
            "BERT-base, 110M, with the bert-base-uncased vocabulary's special ids",
            {
                "vocab_size": 30522,
                "max_positions": 512,
                "pad_token_id": 0,
                "mask_token_id": 103,
                "special_token_ids": (0, 100, 101, 102, 103),
            },
        ),
    }

    @classmethod
    def tiny(cls, **overrides) -> BertConfig:
        return cls.from_preset("tiny", **overrides)

    @classmethod
    def small(cls, **overrides) -> BertConfig:
        return cls.from_preset("small", **overrides)

    @classmethod
    def bert_base(cls, **overrides) -> BertConfig:
        return cls.from_preset("bert_base", **overrides)


class Bert(PretrainedMixin, nnx.Module):
    """Backbone: word + position + token-type embeddings, LayerNorm, post-LN blocks -> (B, T, D); `pool` gives [CLS]."""

    config_class = BertConfig
    params_table = params.BERT

    def __init__(self, config: BertConfig, *, add_pooler: bool = True, rngs: nnx.Rngs):
        self.config = config
        init, dtype, width = config.weight_init(), config.compute_dtype, config.hidden_size
        self.token_embedding = Embed(config.vocab_size, width, embedding_init=init, dtype=dtype, rngs=rngs)
        self.position_embedding = PositionEmbedding(config.max_positions, width, init=init, rngs=rngs)
        self.token_type_embedding = Embed(config.type_vocab_size, width, embedding_init=init, dtype=dtype, rngs=rngs)
        self.embedding_norm = layer_norm(config, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout)
        self.stack = TransformerStack(config, norm_first=False, kernel_init=init, out_kernel_init=init, rngs=rngs)
        pooler = Linear(width, width, kernel_init=init, dtype=dtype, rngs=rngs) if add_pooler else None
        self.pooler = nnx.data(pooler)

    def __call__(
        self,
        token_ids: jax.Array,
        padding_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        *,
        rngs: nnx.Rngs | None = None,
        return_hidden_states: bool = False,
        output_positions: slice | jax.Array | None = None,
    ):
        """(B, T) ids -> (B, T, D); with return_hidden_states also the embeddings and every block's output.

        `output_positions` (a slice, or (B, P) indices): the last layer computes only those rows, (B, P, D).
        """
        check_token_ids(token_ids, vocab_size=self.config.vocab_size, context_length=self.config.max_positions)
        check_same_shape("padding_mask", padding_mask, "token_ids", token_ids)
        check_same_shape("token_type_ids", token_type_ids, "token_ids", token_ids)
        check_right_padded(padding_mask)
        rngs = as_rngs(rngs)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(token_ids)
        x = self.position_embedding(self.token_embedding(token_ids) + self.token_type_embedding(token_type_ids))
        x = self.dropout(self.embedding_norm(x), rngs=rngs)
        mask = None if padding_mask is None else masks.padding(padding_mask)
        return self.stack(
            x, mask=mask, rngs=rngs, return_hidden_states=return_hidden_states, output_positions=output_positions
        )

    def pool(self, sequence: jax.Array) -> jax.Array:
        """tanh(W · h[CLS] + b): (B, T, D) -> (B, D)."""
        if self.pooler is None:
            raise ValueError("this Bert was built with add_pooler=False")
        return jnp.tanh(self.pooler(sequence[:, 0]))


class MaskedLMHead(nnx.Module):
    """Transform (dense, activation, LayerNorm), then the tied word embedding plus a per-token bias."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        width = config.hidden_size
        self.transform = Linear(width, width, kernel_init=config.weight_init(), dtype=config.compute_dtype, rngs=rngs)
        self.activation = Activation(config.activation, width)
        self.norm = layer_norm(config, rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32))

    def __call__(self, hidden: jax.Array, token_embedding: Embed, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        hidden = self.norm(self.activation(self.transform(hidden), rngs=rngs))
        logits = token_embedding.attend(hidden)
        return logits + self.bias[...].astype(logits.dtype)


class BertForMaskedLM(PretrainedMixin, nnx.Module):
    """Pretrain head: masked-token prediction; `loss` masks on the device and scores only the chosen slots."""

    config_class = BertConfig
    params_table = params.BERT

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.bert = Bert(config, add_pooler=False, rngs=rngs)
        self.lm_head = MaskedLMHead(config, rngs=rngs)

    def __call__(self, token_ids, padding_mask=None, token_type_ids=None, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """(B, T) ids -> (B, T, V) logits at every position."""
        rngs = as_rngs(rngs)
        hidden = self.bert(token_ids, padding_mask, token_type_ids, rngs=rngs)
        return self.lm_head(hidden, self.bert.token_embedding, rngs=rngs)

    def loss(
        self, batch: dict[str, jax.Array], *, rngs: nnx.Rngs | None = None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """MLM cross-entropy at `mask_rate` of non-special positions, masked with rngs' `masking` stream.

        Without rngs (evaluation) the masking key is fixed, so validation losses are comparable across steps.
        """
        config = self.config
        rngs = as_rngs(rngs)
        token_ids = batch["token_ids"]
        padding_mask = batch.get("padding_mask")
        special_mask = jnp.isin(token_ids, jnp.asarray(config.special_token_ids))
        if padding_mask is not None:
            special_mask = special_mask | ~padding_mask
        masking_key = rngs.masking() if rngs is not None else jax.random.key(0)
        masked = mask_tokens(
            token_ids,
            special_mask,
            masking_key,
            mask_token_id=config.mask_token_id,
            vocab_size=config.vocab_size,
            special_token_ids=config.special_token_ids,
            mask_rate=config.mask_rate,
        )
        # The last layer, like the head, runs only at the prediction slots: (B, P, D).
        slots = self.bert(
            masked.token_ids, padding_mask, batch.get("token_type_ids"), rngs=rngs, output_positions=masked.positions
        )
        logits = self.lm_head(slots, self.bert.token_embedding, rngs=rngs)
        return loss_and_metrics(logits, masked.labels, position_weights(batch, padding_mask=masked.weights))


class BertForSequenceClassification(PretrainedMixin, nnx.Module):
    """Finetune head: dropout and a linear classifier on the pooled [CLS]."""

    config_class = BertConfig
    params_table = params.BERT

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.bert = Bert(config, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout)
        self.classifier = Linear(config.hidden_size, config.num_labels, kernel_init=config.weight_init(), rngs=rngs)

    def __call__(self, token_ids, padding_mask=None, token_type_ids=None, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """(B, T) ids -> (B, num_labels) logits."""
        rngs = as_rngs(rngs)
        # The last layer runs only at [CLS], the one position the pooler reads.
        cls = self.bert(token_ids, padding_mask, token_type_ids, rngs=rngs, output_positions=slice(0, 1))
        pooled = self.bert.pool(cls)
        return self.classifier(self.dropout(pooled, rngs=rngs))

    def loss(
        self, batch: dict[str, jax.Array], *, rngs: nnx.Rngs | None = None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Cross-entropy on `labels`, or on `targets` probabilities when the batch has them (smoothed or mixed
        labels); rows with `weights` 0 (evaluation padding) are not counted."""
        logits = self(batch["token_ids"], batch.get("padding_mask"), batch.get("token_type_ids"), rngs=rngs)
        return loss_and_metrics(logits, batch["labels"], batch.get("weights"), batch.get("targets"))
