#!/usr/bin/env python
"""How cost grows with the work: GPT training at long contexts, the gpt2 preset, and decoding with it (issue 15).

    python benchmarks/long_context.py [--only train,gpt2,decode] [--contexts 128,512,1024,2048] [--steps 6]

- train: `benchmarks/run.py`'s GPT (4 layers, 256 wide, vocabulary 8192) at 2,048 tokens per step with the context
  raised (batch 2048/T); flaxen's default attention (blockwise causal from 256 tokens), flaxen with the full-matrix
  reference path (`attention_implementation="xla"`), HF eager and HF torch.compile. Tokens/s (median of timed
  steps) and peak memory (the process's RSS high-water mark).
- gpt2: the `gpt2` preset (124M) training step at T=1024, batch 2, the same four columns.
- decode: greedy decoding of 128 tokens after a 16-token prompt with the gpt2 preset, batch 1 and 8, against
  transformers `generate` (KV cache, sdpa). Batch-1 decoding is bound by memory reads: every token reads every
  weight once, so its ceiling is `read bandwidth / weight bytes`, where the bandwidth is measured in the same run
  (the best of 5 jitted sums over a 1 GiB float32 array, both cores) and the weight bytes are 4 × the preset's
  parameters less its position table (of which a step reads one row; the tied token table is read whole, as the
  LM head). The KV cache (under 11 MB at 144 tokens) is left out, so the ceiling is slightly generous.
Every (case, implementation) runs in its own process, so each RSS high-water mark is its own; the parent prints one
JSON line per case (with ratios) and a Markdown table. Measure on a quiet machine: a second busy process halves
the matmul rate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENS_PER_STEP = 2048
IMPLEMENTATIONS = ("flaxen", "flaxen_xla", "hf_eager", "hf_compile")
DECODE_IMPLEMENTATIONS = ("flaxen", "hf_eager")
PROMPT, NEW_TOKENS = 16, 128


def info(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ------------------------------------------------------------------------------------------------ child processes


def timed(step, warmup: int, steps: int, *, tokens: int) -> dict:
    """`step(index)` (returning its seconds) `warmup` times, then `steps` timed times: rate, times, peak memory."""
    first = step(0)
    for index in range(1, warmup):
        step(index)
    times = [step(warmup + index) for index in range(steps)]
    median = statistics.median(times)
    return {
        "tokens_per_s": round(tokens / median, 1),
        "median_s": round(median, 4),
        "first_step_s": round(first, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "times": [round(t, 4) for t in times],
    }


def child_train(implementation: str, preset: str, context: int, batch: int, warmup: int, steps: int) -> dict:
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")  # cold torch.compile, as flaxen compiles cold here
    import numpy as np

    vocab = 8192 if preset == "bench" else 50257
    rng = np.random.default_rng(0)
    host = [rng.integers(0, vocab, (batch, context + 1), dtype=np.int32) for _ in range(2)]
    if implementation.startswith("flaxen"):
        import jax
        from flax import nnx

        from flaxen import GPTConfig, GPTForCausalLM
        from flaxen.train import Trainer, adamw

        attention = {"attention_implementation": "xla"} if implementation == "flaxen_xla" else {}
        if preset == "bench":
            config = GPTConfig.small(dropout=0.0, context_length=context, **attention)
        else:
            config = GPTConfig.gpt2(dropout=0.0, context_length=context, **attention)
        model = GPTForCausalLM(config, rngs=nnx.Rngs(0))
        optimizer = adamw(3e-4, weight_decay=0.01, b1=0.9, b2=0.95, clip_norm=1.0)
        import tempfile

        trainer = Trainer(model, optimizer, tempfile.mkdtemp(prefix="flaxen-long-"), progress=False)
        params, other = nnx.state(model, nnx.Param, ...)
        opt_state = optimizer.init(params)
        key = jax.random.key(0)
        del model

        def step(index: int) -> float:
            nonlocal params, opt_state, other
            start = time.perf_counter()
            batch_ = jax.device_put({"token_ids": host[index % 2]})
            params, opt_state, other, metrics = trainer._train_step(params, opt_state, other, batch_, key, index)
            jax.block_until_ready(metrics)
            return time.perf_counter() - start
    else:
        import torch
        import torch.nn.functional as F
        from transformers import GPT2Config, GPT2LMHeadModel

        if preset == "bench":
            config = GPT2Config(vocab_size=vocab, n_positions=context, n_embd=256, n_layer=4, n_head=4, n_inner=1024)
        else:
            config = GPT2Config(n_positions=context)
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            setattr(config, name, 0.0)
        config.activation_function = "gelu_new"
        torch.manual_seed(0)
        model = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").train()
        decay = [p for p in model.parameters() if p.ndim >= 2]
        rest = [p for p in model.parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=3e-4, betas=(0.9, 0.95)
        )
        forward = torch.compile(model) if implementation == "hf_compile" else model
        batches = [torch.from_numpy(ids.astype(np.int64)) for ids in host]

        def step(index: int) -> float:
            ids = batches[index % 2]
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            logits = forward(input_ids=ids[:, :-1]).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            return time.perf_counter() - start

    return timed(step, warmup, steps, tokens=batch * context)


def child_decode(implementation: str, batch: int, warmup: int, steps: int) -> dict:
    import numpy as np

    prompt = np.random.default_rng(0).integers(0, 50257, (batch, PROMPT), dtype=np.int32)
    if implementation == "flaxen":
        from flax import nnx

        import flaxen
        from flaxen import GPTConfig, GPTForCausalLM

        model = GPTForCausalLM(GPTConfig.gpt2(dropout=0.0), rngs=nnx.Rngs(0))
        model.eval()

        def call() -> float:
            start = time.perf_counter()
            out = flaxen.generate_ids(model, prompt, max_new_tokens=NEW_TOKENS, temperature=0.0)
            assert out.shape == (batch, NEW_TOKENS)
            return time.perf_counter() - start
    else:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        peer = GPT2LMHeadModel._from_config(GPT2Config(), attn_implementation="sdpa").eval()
        peer.generation_config.eos_token_id = None
        peer.generation_config.pad_token_id = 0
        ids = torch.from_numpy(prompt.astype(np.int64))

        def call() -> float:
            start = time.perf_counter()
            with torch.inference_mode():
                out = peer.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False
                )
            assert out.shape == (batch, PROMPT + NEW_TOKENS)
            return time.perf_counter() - start

    return timed(lambda _: call(), warmup, steps, tokens=batch * NEW_TOKENS)


# ---------------------------------------------------------------------------------------------------------- parent


def child_bandwidth() -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from flaxen import GPTConfig, GPTForCausalLM

    array = jax.random.uniform(jax.random.key(0), (256, 1024, 1024), jnp.float32)  # 1 GiB
    total = jax.jit(jnp.sum)
    total(array).block_until_ready()
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        total(array).block_until_ready()
        seconds.append(time.perf_counter() - start)
    bandwidth = array.nbytes / min(seconds)
    config = GPTConfig.gpt2(dropout=0.0)
    shapes = nnx.eval_shape(lambda: GPTForCausalLM(config, rngs=nnx.Rngs(0)))
    parameters = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(shapes, nnx.Param)))
    weight_bytes = 4 * (parameters - config.context_length * config.hidden_size)
    return {
        "read_gb_per_s": round(bandwidth / 1e9, 2),
        "weight_bytes": weight_bytes,
        "ceiling_tokens_per_s": round(bandwidth / weight_bytes, 1),
    }


def run_child(arguments: list[str]) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", *arguments]
    # Both sides under the huge-page tunable the `flaxen` command relaunches with (benchmarks/run.py does the same).
    environ = os.environ | {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "FLAXEN_ALLOCATOR": "system"}
    done = subprocess.run(command, capture_output=True, text=True, env=environ)
    if done.returncode != 0:
        info(f"child {' '.join(arguments)} failed: {done.stderr.strip().splitlines()[-1:]}")
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratio(a: dict, b: dict) -> float | None:
    if "tokens_per_s" not in a or "tokens_per_s" not in b:
        return None
    return round(a["tokens_per_s"] / b["tokens_per_s"], 3)


def memory_ratio(a: dict, b: dict) -> float | None:
    if "peak_rss_mb" not in a or "peak_rss_mb" not in b:
        return None
    return round(a["peak_rss_mb"] / b["peak_rss_mb"], 3)


def training_row(name: str, preset: str, context: int, batch: int, args, steps: int | None = None) -> dict:
    results = {}
    steps = steps or args.steps
    for implementation in IMPLEMENTATIONS:
        if implementation == "hf_compile" and args.no_compile:
            continue
        info(f"{name}: {implementation}, T={context}, batch {batch}")
        results[implementation] = run_child(
            ["train", implementation, preset, str(context), str(batch), str(args.warmup), str(steps)]
        )
    flaxen = results["flaxen"]
    return {
        "bench": name,
        "context": context,
        "batch": batch,
        **{f"{impl}_tokens_per_s": r.get("tokens_per_s") for impl, r in results.items()},
        **{f"{impl}_peak_rss_mb": r.get("peak_rss_mb") for impl, r in results.items()},
        "ratio_vs_eager": ratio(flaxen, results["hf_eager"]),
        "ratio_vs_compile": ratio(flaxen, results["hf_compile"]) if "hf_compile" in results else None,
        "ratio_vs_flaxen_xla": ratio(flaxen, results["flaxen_xla"]),
        "memory_vs_eager": memory_ratio(flaxen, results["hf_eager"]),
        "details": results,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        if kind == "train":
            implementation, preset, context, batch, warmup, steps = rest
            result = child_train(implementation, preset, int(context), int(batch), int(warmup), int(steps))
        elif kind == "bandwidth":
            result = child_bandwidth()
        else:
            implementation, batch, warmup, steps = rest
            result = child_decode(implementation, int(batch), int(warmup), int(steps))
        print(json.dumps(result), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="train,gpt2,decode")
    parser.add_argument("--contexts", default="128,512,1024,2048")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per implementation (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    args = parser.parse_args()
    rows = []
    if "train" in args.only:
        for context in map(int, args.contexts.split(",")):
            rows.append(training_row("train gpt", "bench", context, TOKENS_PER_STEP // context, args))
            print(json.dumps(rows[-1]), flush=True)
    if "gpt2" in args.only:
        rows.append(training_row("train gpt2 preset", "gpt2", 1024, 2, args, steps=max(2, args.steps // 2)))
        print(json.dumps(rows[-1]), flush=True)
    if "decode" in args.only:
        info("read bandwidth and the batch-1 decoding ceiling")
        ceiling = run_child(["bandwidth"])
        for batch in (1, 8):
            results = {}
            for implementation in DECODE_IMPLEMENTATIONS:
                info(f"decode gpt2 preset: {implementation}, batch {batch}")
                results[implementation] = run_child(["decode", implementation, str(batch), "1", str(args.steps)])
            rows.append(
                {
                    "bench": "decode gpt2 preset",
                    "batch": batch,
                    **{f"{impl}_tokens_per_s": r.get("tokens_per_s") for impl, r in results.items()},
                    "ratio_vs_eager": ratio(results["flaxen"], results["hf_eager"]),
                    **(
                        {
                            **ceiling,
                            "fraction_of_ceiling": round(
                                results["flaxen"]["tokens_per_s"] / ceiling["ceiling_tokens_per_s"], 3
                            ),
                        }
                        if batch == 1 and "tokens_per_s" in results["flaxen"] and "ceiling_tokens_per_s" in ceiling
                        else {}
                    ),
                    "details": results,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| bench | T | batch | flaxen tok/s | full-matrix flaxen | HF eager | HF compile | ×eager | ×compile | "
        "RSS flaxen / eager (MB) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    for row in rows:
        print(
            f"| {row['bench']} | {row.get('context', PROMPT + NEW_TOKENS)} | {row['batch']} | "
            f"{row.get('flaxen_tokens_per_s')} | {row.get('flaxen_xla_tokens_per_s', '–')} | "
            f"{row.get('hf_eager_tokens_per_s')} | {row.get('hf_compile_tokens_per_s', '–')} | "
            f"{row.get('ratio_vs_eager')} | {row.get('ratio_vs_compile', '–')} | "
            f"{row.get('flaxen_peak_rss_mb', '–')} / {row.get('hf_eager_peak_rss_mb', '–')} |"
        )


if __name__ == "__main__":
    main()
