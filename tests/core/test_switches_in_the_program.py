"""The execution switches change the compiled program as they claim, not just its name: bf16 compute runs the
matmuls in bf16 with fp32 master weights, scan_layers compiles one scanned block, remat recomputes activations and
(with scan_layers) cuts the training step's temporary memory at least in half, as --scan-layers' help states."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxen import GPTConfig, GPTForCausalLM
from flaxen.train import Trainer, adamw


def gpt_batch(config, rows=8):
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (rows, config.context_length + 1))
    return {"token_ids": jnp.asarray(ids, jnp.int32)}


def loss_jaxpr(config) -> str:
    model = GPTForCausalLM(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    batch = gpt_batch(config, rows=2)

    def loss(params):
        return nnx.merge(graphdef, params).loss(batch)[0]

    return str(jax.make_jaxpr(jax.grad(loss))(params))


def temp_bytes(config) -> int:
    model = GPTForCausalLM(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    batch = gpt_batch(config)

    def step(params):
        return jax.grad(lambda p: nnx.merge(graphdef, p).loss(batch)[0])(params)

    return jax.jit(step).lower(params).compile().memory_analysis().temp_size_in_bytes


def test_scan_layers_and_remat_are_in_the_program():
    config = GPTConfig.tiny(num_layers=3, dropout=0.0)
    plain = loss_jaxpr(config)
    assert " scan[" not in plain and "remat" not in plain and "checkpoint" not in plain
    assert " scan[" in loss_jaxpr(config.replace(scan_layers=True))
    rematted = loss_jaxpr(config.replace(remat=True))
    assert "remat" in rematted or "checkpoint" in rematted


def test_scan_with_remat_at_least_halves_the_training_steps_temporary_memory():
    config = GPTConfig.tiny(num_layers=8, context_length=128, dropout=0.0)
    plain, lean = temp_bytes(config), temp_bytes(config.replace(scan_layers=True, remat=True))
    assert lean * 2 <= plain, (lean, plain)


def test_bfloat16_compute_runs_the_matmuls_in_bf16_and_keeps_fp32_state(tmp_path):
    config = GPTConfig.tiny(dropout=0.0)
    model = GPTForCausalLM(config, rngs=nnx.Rngs(0))
    trainer = Trainer(model, adamw(1e-3), tmp_path, batch_size=4, compute_dtype="bfloat16", progress=False)
    params, non_params = trainer._placed_model_state()
    opt_state = trainer.optimizer.init(params)
    batch = gpt_batch(config, rows=4)
    lowered = trainer._train_step.lower(params, opt_state, non_params, batch, jax.random.key(0), 0)
    dots = [line for line in lowered.as_text().splitlines() if "dot_general" in line]
    bf16_dots = [line for line in dots if "xbf16>" in line.split("->")[0]]
    # Every layer's forward matmuls (qkv, out, fc_in, fc_out per block, and the LM head) at least, and their
    # backward ones: the great majority of the step's matmuls read bf16.
    assert len(bf16_dots) >= 5 * config.num_layers + 1 and len(bf16_dots) >= 0.8 * len(dots), (
        len(bf16_dots),
        len(dots),
    )
    new_params, new_opt_state, _, _ = jax.eval_shape(
        trainer._train_step, params, opt_state, non_params, batch, jax.random.key(0), 0
    )
    for leaf in jax.tree.leaves((new_params, new_opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype  # master weights and Adam moments stay fp32
