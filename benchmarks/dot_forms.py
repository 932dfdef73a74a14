#!/usr/bin/env python
"""GFLOP/s of the three dot forms a training step uses (forward NN, input-gradient NT, weight-gradient TN), for
the transformer shapes of the benchmark, in JAX (YNN on = default, YNN off = Eigen) and torch, alternating.

    python benchmarks/dot_forms.py
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import run as bench  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)
# (label, M, K, N): activations (M tokens, K in), weight (K, N)
SHAPES = [
    ("mlp in 2048x256x1024", 2048, 256, 1024),
    ("mlp out 2048x1024x256", 2048, 1024, 256),
    ("qkv 2048x256x768", 2048, 256, 768),
    ("lm head 2048x256x8192", 2048, 256, 8192),
]
FORMS = {  # name: (lhs shape, rhs shape, dimension numbers, torch function)
    "NN  x@W": (lambda M, K, N: ((M, K), (K, N), (((1,), (0,)), ((), ()))), lambda a, b: a @ b),
    "NT  g@Wᵀ": (lambda M, K, N: ((M, N), (K, N), (((1,), (1,)), ((), ()))), lambda a, b: a @ b.t()),
    "TN  xᵀ@g": (lambda M, K, N: ((M, K), (M, N), (((0,), (0,)), ((), ()))), lambda a, b: a.t() @ b),
}
OPTIONS = {"jax ynn": {}, "jax eigen": {"xla_cpu_experimental_ynn_fusion_type": ""}}

rows = []
for label, M, K, N in SHAPES:
    flops = 2 * M * K * N
    for form, (shapes, torch_fn) in FORMS.items():
        a_shape, b_shape, dims = shapes(M, K, N)
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal(a_shape, dtype=np.float32), rng.standard_normal(b_shape, dtype=np.float32)
        fn = jax.jit(lambda x, y: jax.lax.dot_general(x, y, dims))
        lowered = fn.lower(jnp.asarray(a), jnp.asarray(b))
        calls = {}
        for name, options in OPTIONS.items():
            compiled = lowered.compile(compiler_options=options)
            ja, jb = jnp.asarray(a), jnp.asarray(b)

            def call(compiled=compiled, ja=ja, jb=jb):
                start = time.perf_counter()
                for _ in range(5):
                    out = compiled(ja, jb)
                out.block_until_ready()
                return (time.perf_counter() - start) / 5

            calls[name] = call
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)

        def torch_call():
            start = time.perf_counter()
            for _ in range(5):
                torch_fn(ta, tb)
            return (time.perf_counter() - start) / 5

        calls["torch"] = torch_call
        timings = bench.interleaved(calls, warmup=2, timed=10, per_round=1, wait_quiet=10)
        stats, basis = bench.chosen_stats(timings)
        rates = {name: flops / st["median_s"] / 1e9 for name, st in stats.items()}
        rows.append((label, form, rates, basis["other_cores_busy"]))
        print(label, form, {k: round(v) for k, v in rates.items()}, basis["basis"], file=sys.stderr, flush=True)

print("| shape | form | JAX YNN | JAX Eigen | torch | others (cores) |\n|---|---|---:|---:|---:|---:|")
for label, form, rates, others in rows:
    print(f"| {label} | {form} | {rates['jax ynn']:.0f} | {rates['jax eigen']:.0f} | {rates['torch']:.0f} | {others} |")
