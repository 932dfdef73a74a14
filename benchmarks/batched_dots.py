#!/usr/bin/env python
"""GFLOP/s of the attention-shaped batched matmuls on one core and on all cores: JAX (YNN = default, Eigen) and
torch, alternating, with one dense matmul of the same step for reference.

    python benchmarks/batched_dots.py            # runs itself twice, pinned to 1 core and to all cores

Why it exists (benchmarks/NOTES.md §19): XLA:CPU's batched dots barely use the second core here, so attention
runs at a fraction of the machine's matmul rate whatever the formulation; this is the evidence for an upstream report.
Each turn of a library starts with 3 untimed calls (the first calls after the other library ran are slow, NOTES §9).
One JSON line per (shape, form, cores) on stdout, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# (label, batch dims, M, K, N): ViT's and GPT's attention at the benchmark sizes, and the ViT MLP's dense matmul.
SHAPES = [
    ("vit attention (64·4)×65×64×65", (64, 4), 65, 64, 65),
    ("gpt attention (16·4)×128×64×128", (16, 4), 128, 64, 128),
    ("dense 4160×256×1024", (), 4160, 256, 1024),
]
FORMS = {"q·kᵀ (NT)": "bmk,bnk->bmn", "p·v (NN)": "bmk,bkn->bmn", "pᵀ·dO (TN)": "bkm,bkn->bmn"}


def _timer(call, repeats: int = 5):
    """A timing callable for run.interleaved: mean seconds of `repeats` calls."""

    def timed() -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        return (time.perf_counter() - start) / repeats

    return timed


def measure(cores: int) -> list[dict]:
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))  # before jax/torch size their thread pools
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import jax
    import jax.numpy as jnp
    import numpy as np
    import run as bench
    import torch

    torch.set_num_threads(cores)
    rows = []
    for label, batch, m, k, n in SHAPES:
        b = int(np.prod(batch))
        for form, spec in FORMS.items() if batch else [("NN", FORMS["p·v (NN)"])]:
            spec = spec if batch else spec.replace("b", "")
            lhs_spec, rhs_spec = spec.split("->")[0].split(",")
            sizes = {"b": b, "m": m, "k": k, "n": n}
            rng = np.random.default_rng(0)
            a = rng.standard_normal([sizes[x] for x in lhs_spec], dtype=np.float32)
            c = rng.standard_normal([sizes[x] for x in rhs_spec], dtype=np.float32)
            ja, jc = jnp.asarray(a), jnp.asarray(c)
            lowered = jax.jit(lambda x, y, spec=spec: jnp.einsum(spec, x, y)).lower(ja, jc)
            calls = {}
            for name, options in {"jax ynn": {}, "jax eigen": {"xla_cpu_experimental_ynn_fusion_type": ""}}.items():
                compiled = lowered.compile(compiler_options=options)
                calls[name] = _timer(lambda compiled=compiled: compiled(ja, jc).block_until_ready())
            ta, tc = torch.from_numpy(a), torch.from_numpy(c)
            calls["torch"] = _timer(lambda spec=spec: torch.einsum(spec, ta, tc))
            stats, basis = bench.chosen_stats(
                bench.interleaved(calls, warmup=2, timed=12, per_round=4, wait_quiet=10, settle=3)
            )
            flops = 2 * b * m * k * n
            rows.append(
                {
                    "shape": label,
                    "form": form,
                    "cores": cores,
                    "other_cores_busy": basis["other_cores_busy"],
                    "gflop_per_s": {name: round(flops / st["median_s"] / 1e9, 1) for name, st in stats.items()},
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, help="measure pinned to this many cores only (default: 1, then all)")
    args = parser.parse_args()
    if args.cores:
        for row in measure(args.cores):
            print(json.dumps(row), flush=True)
        return
    rows = []
    for cores in (1, len(os.sched_getaffinity(0))):
        out = subprocess.run(
            [sys.executable, __file__, "--cores", str(cores)], check=True, capture_output=True, text=True
        ).stdout
        rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for row in rows:
        print(json.dumps(row))
    most = max(row["cores"] for row in rows)
    print(
        f"\n| shape | form | JAX YNN 1 core / {most} | JAX Eigen 1 / {most} | torch 1 / {most} "
        "| JAX YNN speed-up from more cores |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for one in (row for row in rows if row["cores"] == 1):
        many = next(r for r in rows if r["cores"] == most and (r["shape"], r["form"]) == (one["shape"], one["form"]))
        cells = " | ".join(
            f"{one['gflop_per_s'][name]:.0f} / {many['gflop_per_s'][name]:.0f}"
            for name in ("jax ynn", "jax eigen", "torch")
        )
        print(
            f"| {one['shape']} | {one['form']} | {cells} | "
            f"{many['gflop_per_s']['jax ynn'] / one['gflop_per_s']['jax ynn']:.2f}× |"
        )


if __name__ == "__main__":
    main()
