#!/usr/bin/env python
"""Can bf16 or int8 weights make batch-1 decoding faster on XLA:CPU? (issue 15; NOTES §26)

    python benchmarks/weight_only_matvec.py [--batch 1] [--steps 32]

The matmuls of one `gpt2`-preset decoding step (12 × [768×2304, 768×768, 768×3072, 3072×768] and the 768×50257 LM
head) applied to a (batch, 768) activation inside a compiled loop, with the weights stored as fp32, as bf16, or as
int8 with one fp32 scale per output column. An optimization barrier joins the weights to the loop's carry, as they
would be in a real decoder whose dequantisation must happen per step (otherwise XLA hoists the conversion out of
the loop and the loop reads fp32 again). If XLA fused the conversion into the matmul, the narrow weights would halve
or quarter the bytes read per step; one JSON line per storage format says whether it does.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

WIDTH, LAYERS, VOCABULARY = 768, 12, 50257


def weights(storage: str) -> list[tuple[jax.Array, jax.Array | None]]:
    shapes = [(WIDTH, 3 * WIDTH), (WIDTH, WIDTH), (WIDTH, 4 * WIDTH), (4 * WIDTH, WIDTH)] * LAYERS
    shapes.append((WIDTH, VOCABULARY))
    rng = np.random.default_rng(0)
    out = []
    for shape in shapes:
        kernel = jnp.asarray(rng.standard_normal(shape, dtype=np.float32) * 0.02)
        if storage == "int8":
            scale = jnp.max(jnp.abs(kernel), axis=0) / 127.0
            out.append((jnp.round(kernel / scale).astype(jnp.int8), scale))
        else:
            out.append((kernel.astype(storage), None))
    return out


def step(x: jax.Array, layers) -> jax.Array:
    for kernel, scale in layers:
        rows = kernel.shape[0]
        inputs = jnp.tile(x, (1, rows // WIDTH))
        y = jax.lax.dot_general(
            inputs.astype(kernel.dtype) if kernel.dtype == jnp.bfloat16 else inputs,
            kernel if kernel.dtype == jnp.bfloat16 else kernel.astype(jnp.float32),
            (((1,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        if scale is not None:
            y = y * scale
        x = jnp.tanh(y[:, :WIDTH]) + x
    return x


def measure(storage: str, batch: int, steps: int) -> dict:
    layers = weights(storage)

    @jax.jit
    def loop(x, layers):
        def body(_, x):
            joined, x = jax.lax.optimization_barrier((layers, x))
            return step(x, joined)

        return jax.lax.fori_loop(0, steps, body, x)

    x = jnp.full((batch, WIDTH), 0.01, jnp.float32)
    loop(x, layers).block_until_ready()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        loop(x, layers).block_until_ready()
        best = min(best, time.perf_counter() - start)
    weight_bytes = sum(k.nbytes + (0 if s is None else s.nbytes) for k, s in layers)
    return {
        "storage": storage,
        "batch": batch,
        "steps_per_s": round(steps / best, 1),
        "weight_mb": round(weight_bytes / 1e6, 1),
        "effective_gb_per_s": round(weight_bytes * steps / best / 1e9, 1),
        "jax": jax.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args()
    for storage in ("float32", "bfloat16", "int8"):
        print(json.dumps(measure(storage, args.batch, args.steps)), flush=True)


if __name__ == "__main__":
    main()
