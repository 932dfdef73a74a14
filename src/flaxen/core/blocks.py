"""The transformer block, pre-LN (GPT, ViT) or post-LN (BERT)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flaxen.core.activations import Activation
from flaxen.core.attention import MultiHeadAttention, take_positions
from flaxen.core.config import TransformerConfig
from flaxen.core.kv_cache import KVCache
from flaxen.core.linear import Linear


class MLP(nnx.Module):
    """Linear -> activation -> Linear."""

    def __init__(self, config: TransformerConfig, *, kernel_init, out_kernel_init, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.dtype)
        self.fc_in = Linear(config.hidden_size, config.mlp_dim, kernel_init=kernel_init, dtype=dtype, rngs=rngs)
        self.activation = Activation(config.activation, config.mlp_dim)
        self.fc_out = Linear(config.mlp_dim, config.hidden_size, kernel_init=out_kernel_init, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        return self.fc_out(self.activation(self.fc_in(x), rngs=rngs))


class TransformerBlock(nnx.Module):
    """Attention and MLP sublayers with residuals; `norm_first` picks pre-LN, otherwise post-LN."""

    def __init__(self, config: TransformerConfig, *, norm_first: bool, kernel_init, out_kernel_init, rngs: nnx.Rngs):
        self.norm_first = norm_first
        norm = lambda: nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, dtype=jnp.dtype(config.dtype), rngs=rngs)
        self.attention_norm = norm()
        self.attention = MultiHeadAttention(config, kernel_init=kernel_init, out_kernel_init=out_kernel_init, rngs=rngs)
        self.mlp_norm = norm()
        self.mlp = MLP(config, kernel_init=kernel_init, out_kernel_init=out_kernel_init, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout)

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        is_causal: bool = False,
        rngs: nnx.Rngs | None = None,
        kv_cache: tuple[jax.Array, jax.Array] | None = None,
        cache_index: jax.Array | None = None,
        output_positions: slice | jax.Array | None = None,
    ):
        """(B, T, D) -> (B, T, D); with `kv_cache` also returns the updated (keys, values).

        With `output_positions` (a slice, or (B, P) indices) the block computes only those rows of its output,
        (B, P, D): every position still serves as a key, but only these query and pass through the MLP.
        """
        attended = self.attention(
            self.attention_norm(x) if self.norm_first else x,
            mask=mask, is_causal=is_causal, rngs=rngs, kv_cache=kv_cache, cache_index=cache_index,
            query_positions=output_positions,
        )
        if kv_cache is not None:
            attended, kv_cache = attended
        if output_positions is not None:
            x = take_positions(x, output_positions)
        if self.norm_first:
            x = x + self.dropout(attended, rngs=rngs)
            x = x + self.dropout(self.mlp(self.mlp_norm(x), rngs=rngs), rngs=rngs)
        else:
            x = self.attention_norm(x + self.dropout(attended, rngs=rngs))
            x = self.mlp_norm(x + self.dropout(self.mlp(x, rngs=rngs), rngs=rngs))
        return x if kv_cache is None else (x, kv_cache)


class TransformerStack(nnx.Module):
    """`num_layers` blocks applied in order; optionally returns every layer's output for inspection.

    `config.scan_layers` runs the blocks (without a KV cache) as one `lax.scan` over their stacked parameters;
    `config.remat` wraps each block in `jax.checkpoint`, trading a second forward pass in the backward pass for
    not storing the block's activations. Together they cut XLA:CPU's temporary memory 2-5x; scanning does not
    shorten XLA:CPU's compiles (benchmarks/NOTES.md §8d). Parameters stay one
    module per layer either way, so checkpoints and Hugging Face key tables do not depend on these switches.
    """

    def __init__(self, config: TransformerConfig, *, norm_first: bool, kernel_init, out_kernel_init, rngs: nnx.Rngs):
        self.scan_layers = config.scan_layers
        self.remat = config.remat
        self.blocks = nnx.List(
            TransformerBlock(config, norm_first=norm_first, kernel_init=kernel_init, out_kernel_init=out_kernel_init, rngs=rngs)
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
        cache: KVCache | None = None,
        output_positions: slice | jax.Array | None = None,
    ):
        """(B, T, D) -> (B, T, D), plus every layer's input and output with `return_hidden_states`.

        With `cache`, the blocks read and extend it (its `valid` already covers this step) and
        `(x, updated cache)` is returned. With `output_positions` (a slice, or (B, P) indices), the last block
        computes only those rows, (B, P, D): what a head that reads [CLS] or a few slots needs, for a fraction
        of the last layer's work (the last hidden state is then (B, P, D), the others (B, T, D)).
        """
        if cache is not None and output_positions is not None:
            raise ValueError("output_positions cannot be combined with a KV cache")
        if cache is None and (self.scan_layers or self.remat):
            x, hidden_states = self._functional(
                x, mask=mask, is_causal=is_causal, rngs=rngs, keep=return_hidden_states, output_positions=output_positions,
            )
            return (x, hidden_states) if return_hidden_states else x
        hidden_states = [x]
        keys, values = [], []
        last = len(self.blocks) - 1
        for layer, block in enumerate(self.blocks):
            if cache is None:
                x = block(x, mask=mask, is_causal=is_causal, rngs=rngs, output_positions=output_positions if layer == last else None)
            else:
                layer_cache = (cache.keys[layer], cache.values[layer])
                x, (k, v) = block(x, mask=mask, rngs=rngs, kv_cache=layer_cache, cache_index=cache.index)
                keys.append(k)
                values.append(v)
            hidden_states.append(x)
        if cache is not None:
            return x, cache._replace(keys=tuple(keys), values=tuple(values), index=cache.index + x.shape[1])
        return (x, hidden_states) if return_hidden_states else x

    def _functional(
        self, x: jax.Array, *, mask, is_causal: bool, rngs: nnx.Rngs | None, keep: bool, output_positions=None,
    ) -> tuple[jax.Array, list[jax.Array]]:
        """The blocks as a pure function of their parameters (scanned and/or rematerialised); `keep`: every output."""
        splits = [nnx.split(block) for block in self.blocks]
        graphdef = splits[0][0]
        # Each layer draws its own dropout key up front: the scanned body cannot advance the caller's Rngs. Like
        # the layer loop, need no key when nothing is random (evaluation, or an Rngs without a dropout stream).
        random = rngs is not None and ("dropout" in rngs or "default" in rngs)
        layer_keys = jax.random.split(rngs.dropout(), len(splits)) if random else None

        def block_function(positions, *, in_scan: bool):
            def apply(state, x, key):
                block_rngs = None if key is None else nnx.Rngs(dropout=key)
                return nnx.merge(graphdef, state)(x, mask=mask, is_causal=is_causal, rngs=block_rngs, output_positions=positions)

            return jax.checkpoint(apply, prevent_cse=not in_scan) if self.remat else apply  # scan already keeps CSE out

        # With output_positions under scan_layers, the last block runs on its own after the scan over the others.
        last_in_scan = self.scan_layers and output_positions is None
        apply, apply_last = block_function(None, in_scan=self.scan_layers), block_function(output_positions, in_scan=last_in_scan)
        key_of = lambda layer: None if layer_keys is None else layer_keys[layer]
        last = len(splits) - 1
        if not self.scan_layers:
            hidden_states = [x]
            for layer, (_, state) in enumerate(splits):
                x = (apply_last if layer == last else apply)(state, x, key_of(layer))
                hidden_states.append(x)
            return x, hidden_states
        if any(other != graphdef for other, _ in splits[1:]):
            raise ValueError("scan_layers needs identical blocks; these differ in structure or static settings")
        scanned = splits if last_in_scan else splits[:-1]
        hidden_states = [x]
        if scanned:
            stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(state for _, state in scanned))
            scanned_keys = None if layer_keys is None else layer_keys[: len(scanned)]

            def body(x, layer_inputs):
                state, key = layer_inputs
                x = apply(state, x, key)
                return x, x if keep else None

            x, outputs = jax.lax.scan(body, x, (stacked, scanned_keys))
            hidden_states += [outputs[layer] for layer in range(len(scanned))] if keep else []
        if not last_in_scan:
            x = apply_last(splits[-1][1], x, key_of(last))
            hidden_states.append(x)
        return x, hidden_states if keep else []
