#!/usr/bin/env python
"""Time to the first step: the `flaxen` command with a cold and a warm compilation cache, and compile times (issue 15).

    python benchmarks/startup.py [--only cli,compile]

- cli: `flaxen pretrain gpt --preset small --steps 1` on three plays (a one-step run: launch, train the tokenizer,
  tokenize, compile, one step, evaluate, save) with an empty compilation cache, then again with the cache it filled
  (`--overwrite`), then `--resume` to step 2, then with the cache off; wall seconds launch to exit, and the
  training clock at the first logged step (compiling the step included: what the cache saves).
- compile: lowering + compiling the `gpt2` preset's (124M) training step at T=1024, batch 2, with and without
  `scan_layers` (no cache).
stdout: one JSON line per measurement, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def info(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cli_rows() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache, run = Path(tmp) / "xla-cache", Path(tmp) / "run"
        environ = os.environ | {"FLAXEN_COMPILATION_CACHE": str(cache)}
        from flaxen.data import shakespeare_files

        base = [sys.executable, "-m", "flaxen.cli", "pretrain", "gpt", "--preset", "small", "--out", str(run)]
        base += ["--batch-size", "16", "--no-progress", "--data", *map(str, shakespeare_files()[:3])]
        for name, extra in (
            ("cold cache", ["--steps", "1"]),
            ("warm cache", ["--steps", "1", "--overwrite"]),
            ("resume, warm cache", ["--steps", "2", "--resume"]),
            ("cache off", ["--steps", "1", "--overwrite"]),
        ):
            env = environ | ({"FLAXEN_COMPILATION_CACHE": "off"} if name == "cache off" else {})
            info(f"cli: {name}")
            start = time.perf_counter()
            done = subprocess.run(base + extra, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                raise SystemExit(f"{name} failed: {done.stderr.strip().splitlines()[-1:]}")
            entries = len([f for f in cache.glob("*") if not f.name.startswith(".")]) if cache.exists() else 0
            records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            first = next(r for r in records if r["split"] == "train")  # its elapsed: compiling + the steps to it
            rows.append(
                {
                    "bench": "launch to exit",
                    "case": name,
                    "seconds": round(seconds, 2),
                    "first_logged_step": first["step"],
                    "seconds_to_it": round(first["elapsed"], 2),
                    "cache_files": entries,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def compile_rows() -> list[dict]:
    import jax
    import numpy as np
    from flax import nnx

    from flaxen import GPTConfig, GPTForCausalLM
    from flaxen.train import Trainer, adamw

    rows = []
    for scan in (False, True):
        info(f"compile: gpt2 preset, scan_layers={scan}")
        model = GPTForCausalLM(GPTConfig.gpt2(dropout=0.0, scan_layers=scan), rngs=nnx.Rngs(0))
        optimizer = adamw(3e-4)
        trainer = Trainer(model, optimizer, tempfile.mkdtemp(prefix="flaxen-compile-"), progress=False)
        params, other = nnx.state(model, nnx.Param, ...)
        opt_state = optimizer.init(params)
        batch = {"token_ids": np.zeros((2, 1025), np.int32)}
        start = time.perf_counter()
        lowered = trainer._train_step.lower(params, opt_state, other, batch, jax.random.key(0), 0)
        lowering = time.perf_counter() - start
        lowered.compile()
        total = time.perf_counter() - start
        rows.append(
            {
                "bench": "compile gpt2 train step",
                "case": f"scan_layers={scan}",
                "seconds": round(total, 2),
                "lowering_seconds": round(lowering, 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        del model, trainer, params, other, opt_state
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="cli,compile")
    args = parser.parse_args()
    rows = (cli_rows() if "cli" in args.only else []) + (compile_rows() if "compile" in args.only else [])
    print("\n| what | case | seconds | training seconds to the first logged step |\n|---|---|---:|---:|")
    for row in rows:
        print(f"| {row['bench']} | {row['case']} | {row['seconds']} | {row.get('seconds_to_it', '–')} |")


if __name__ == "__main__":
    main()
