"""The transformer block, pre-LN (GPT, ViT) or post-LN (BERT), and the stack of them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flaxen.core.activations import Activation
from flaxen.core.attention import MultiHeadAttention, take_positions
from flaxen.core.config import TransformerConfig
from flaxen.core.kv_cache import KVCache
from flaxen.core.linear import Linear


def layer_norm(config: TransformerConfig, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """A LayerNorm over the hidden size, with the config's epsilon and compute dtype."""
    return nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, dtype=config.compute_dtype, rngs=rngs)


class MLP(nnx.Module):
    """Linear -> activation -> Linear."""

    def __init__(self, config: TransformerConfig, *, kernel_init, out_kernel_init, rngs: nnx.Rngs):
        dtype = config.compute_dtype
        self.fc_in = Linear(config.hidden_size, config.mlp_dim, kernel_init=kernel_init, dtype=dtype, rngs=rngs)
        self.activation = Activation(config.activation, config.mlp_dim)
        self.fc_out = Linear(config.mlp_dim, config.hidden_size, kernel_init=out_kernel_init, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        return self.fc_out(self.activation(self.fc_in(x), rngs=rngs))


class TransformerBlock(nnx.Module):
    """Attention and MLP sublayers with residuals; `norm_first` picks pre-LN, otherwise post-LN."""

    def __init__(self, config: TransformerConfig, *, norm_first: bool, kernel_init, out_kernel_init, rngs: nnx.Rngs):
        self.norm_first = norm_first
        self.attention_norm = layer_norm(config, rngs=rngs)
        self.attention = MultiHeadAttention(config, kernel_init=kernel_init, out_kernel_init=out_kernel_init, rngs=rngs)
        self.mlp_norm = layer_norm(config, rngs=rngs)
        self.mlp = MLP(config, kernel_init=kernel_init, out_kernel_init=out_kernel_init, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout)
        self.deterministic = False  # model.eval() sets it: no stochastic depth in evaluation

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        is_causal: bool = False,
        rngs: nnx.Rngs | None = None,
        output_positions: slice | jax.Array | None = None,
        skip_rate: float | jax.Array = 0.0,
    ) -> jax.Array:
        """(B, T, D) -> (B, T, D), or (B, P, D) at `output_positions` (a slice, or (B, P) indices).

        With `output_positions` every position still serves as a key, but only these query and pass the MLP.
        `skip_rate` is stochastic depth: in training each example skips each residual branch with this probability.
        """
        attended = self.attention(
            self.attention_norm(x) if self.norm_first else x,
            mask=mask,
            is_causal=is_causal,
            rngs=rngs,
            output_positions=output_positions,
        )
        if output_positions is not None:
            x = take_positions(x, output_positions)
        return self._add_sublayers(x, attended, rngs, skip_rate)

    def decode(
        self, x: jax.Array, kv_cache: tuple[jax.Array, jax.Array], cache_index: jax.Array, mask: jax.Array
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """One decoding step (eval mode) over this layer's KV cache: (B, T, D) -> (B, T, D), the updated cache."""
        attended, kv_cache = self.attention.decode(
            self.attention_norm(x) if self.norm_first else x, kv_cache, cache_index, mask
        )
        return self._add_sublayers(x, attended, rngs=None), kv_cache

    def _add_sublayers(
        self, x: jax.Array, attended: jax.Array, rngs: nnx.Rngs | None, skip_rate: float | jax.Array = 0.0
    ) -> jax.Array:
        """The attention output's residual, then the MLP's, each with its LayerNorm before (pre-LN) or after."""

        def branch(y: jax.Array) -> jax.Array:
            return self._skip_examples(self.dropout(y, rngs=rngs), rngs, skip_rate)

        if self.norm_first:
            x = x + branch(attended)
            return x + branch(self.mlp(self.mlp_norm(x), rngs=rngs))
        x = self.attention_norm(x + branch(attended))
        return self.mlp_norm(x + branch(self.mlp(x, rngs=rngs)))

    def _skip_examples(self, branch: jax.Array, rngs: nnx.Rngs | None, skip_rate: float | jax.Array) -> jax.Array:
        """Stochastic depth: zero the branch for a `skip_rate` fraction of the examples, scale the rest up."""
        if self.deterministic or (isinstance(skip_rate, float) and skip_rate == 0.0):
            return branch
        if rngs is None:
            raise ValueError("stochastic_depth in training mode needs rngs=; call model.eval() for inference")
        keep = jax.random.bernoulli(rngs.dropout(), 1.0 - skip_rate, (branch.shape[0],) + (1,) * (branch.ndim - 1))
        return jnp.where(keep, branch / (1.0 - skip_rate), 0).astype(branch.dtype)


class TransformerStack(nnx.Module):
    """`num_layers` blocks applied in order; optionally returns every layer's output for inspection.

    `config.scan_layers` runs the blocks as one `lax.scan` over their stacked parameters; `config.remat` wraps
    each block in `jax.checkpoint` (its activations recomputed in the backward pass instead of stored).
    Parameters stay one module per layer either way, so checkpoints and Hugging Face tables do not depend on them.
    """

    def __init__(self, config: TransformerConfig, *, norm_first: bool, kernel_init, out_kernel_init, rngs: nnx.Rngs):
        self.scan_layers = config.scan_layers
        self.remat = config.remat
        # Stochastic depth grows linearly with depth, from 0 at the first block to the config's rate at the last.
        last = max(1, config.num_layers - 1)
        self.skip_rates = tuple(config.stochastic_depth * layer / last for layer in range(config.num_layers))
        self.blocks = nnx.List(
            TransformerBlock(
                config, norm_first=norm_first, kernel_init=kernel_init, out_kernel_init=out_kernel_init, rngs=rngs
            )
            for _ in range(config.num_layers)
        )

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        is_causal: bool = False,
        rngs: nnx.Rngs | None = None,
        return_hidden_states: bool = False,
        output_positions: slice | jax.Array | None = None,
    ):
        """(B, T, D) -> (B, T, D), plus every layer's input and output with `return_hidden_states`.

        With `output_positions` (a slice, or (B, P) indices) the last block computes only those rows, (B, P, D):
        what a head reading [CLS] or a few slots needs (the last hidden state is then (B, P, D), the others
        (B, T, D)).
        """
        if self.scan_layers or self.remat:
            x, hidden_states = self._call_transformed(
                x, mask, is_causal, rngs, return_hidden_states=return_hidden_states, output_positions=output_positions
            )
        else:
            hidden_states = [x]
            last = len(self.blocks) - 1
            for layer, block in enumerate(self.blocks):
                positions = output_positions if layer == last else None
                x = block(
                    x,
                    mask=mask,
                    is_causal=is_causal,
                    rngs=rngs,
                    output_positions=positions,
                    skip_rate=self.skip_rates[layer],
                )
                hidden_states.append(x)
        return (x, hidden_states) if return_hidden_states else x

    def decode(self, x: jax.Array, cache: KVCache, mask: jax.Array) -> tuple[jax.Array, KVCache]:
        """(B, T, D) -> (B, T, D) for tokens written at `cache.index` (its `valid` covers them), and the new cache."""
        keys, values = [], []
        for layer, block in enumerate(self.blocks):
            x, (layer_keys, layer_values) = block.decode(x, (cache.keys[layer], cache.values[layer]), cache.index, mask)
            keys.append(layer_keys)
            values.append(layer_values)
        return x, cache._replace(keys=tuple(keys), values=tuple(values), index=cache.index + x.shape[1])

    def _call_transformed(
        self,
        x: jax.Array,
        mask,
        is_causal: bool,
        rngs: nnx.Rngs | None,
        *,
        return_hidden_states: bool,
        output_positions,
    ) -> tuple[jax.Array, list[jax.Array]]:
        """The blocks as pure functions of their parameters, rematerialised and/or scanned."""
        splits = [nnx.split(block) for block in self.blocks]
        graphdef = splits[0][0]
        stochastic = any(self.skip_rates)  # static: without stochastic depth no rate is traced
        # Each layer draws its own dropout key up front: a scanned body cannot advance the caller's Rngs. Like
        # the plain loop, need no key when nothing is random (evaluation, or an Rngs without a dropout stream).
        random = rngs is not None and ("dropout" in rngs or "default" in rngs)
        layer_keys = jax.random.split(rngs.dropout(), len(splits)) if random else [None] * len(splits)

        def block_function(positions, *, in_scan: bool):
            def apply(state, x, key, skip_rate):
                block_rngs = None if key is None else nnx.Rngs(dropout=key)
                block = nnx.merge(graphdef, state)
                return block(
                    x,
                    mask=mask,
                    is_causal=is_causal,
                    rngs=block_rngs,
                    output_positions=positions,
                    skip_rate=skip_rate if stochastic else 0.0,
                )

            return jax.checkpoint(apply, prevent_cse=not in_scan) if self.remat else apply  # scan keeps CSE out

        # With output_positions under scan_layers, the last block runs on its own after the scan over the others.
        last_in_scan = self.scan_layers and output_positions is None
        apply = block_function(None, in_scan=self.scan_layers)
        apply_last = block_function(output_positions, in_scan=last_in_scan)
        hidden_states = [x]
        if not self.scan_layers:
            for layer, (_, state) in enumerate(splits):
                x = (apply_last if layer == len(splits) - 1 else apply)(
                    state, x, layer_keys[layer], self.skip_rates[layer]
                )
                hidden_states.append(x)
            return x, hidden_states
        if any(other != graphdef for other, _ in splits[1:]):
            raise ValueError("scan_layers needs identical blocks; these differ in structure or static settings")
        scanned = len(splits) if last_in_scan else len(splits) - 1
        if scanned:
            stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(state for _, state in splits[:scanned]))

            def body(x, layer_inputs):
                state, key, skip_rate = layer_inputs
                x = apply(state, x, key, skip_rate)
                return x, x if return_hidden_states else None

            scanned_keys = None if layer_keys[0] is None else layer_keys[:scanned]
            scanned_rates = jnp.asarray(self.skip_rates[:scanned], jnp.float32)
            x, outputs = jax.lax.scan(body, x, (stacked, scanned_keys, scanned_rates))
            hidden_states += [outputs[layer] for layer in range(scanned)] if return_hidden_states else []
        if not last_in_scan:
            x = apply_last(splits[-1][1], x, layer_keys[-1], self.skip_rates[-1])
            hidden_states.append(x)
        return x, hidden_states if return_hidden_states else []
