#!/usr/bin/env python
"""flaxen vs Hugging Face PyTorch, side by side on this CPU (issue 5).

    python benchmarks/run.py [--only gpt,bert,vit,decode,matmul] [--steps N] [--quick]

stdout: one JSON line per measurement (every comparison row carries its flaxen/peer ratio), then a Markdown table.
stderr: progress. See benchmarks/README.md for what is timed and the FLOP formulas.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

BENCHES = ("matmul", "gpt", "bert", "vit", "decode")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {','.join(BENCHES)}")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per implementation (default 20; 3 with --quick)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up steps per implementation (default 3; 1 with --quick)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 warm-up + 3 steps, no torch.compile column (about 2 minutes on a quiet machine)",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer column")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (JAX uses every core: 2 here)")
    parser.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS before JAX starts (levers)")
    parser.add_argument(
        "--compute-dtype", default=None, help="flaxen Trainer compute_dtype (e.g. bfloat16, fp32 master weights)"
    )
    parser.add_argument(
        "--peer-dtype",
        default=None,
        choices=("float32", "bfloat16"),
        help="the HF peer's compute dtype: bfloat16 runs its forward and loss under torch.autocast (fp32 "
        "master weights, the same policy); default: the same as --compute-dtype",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each benchmark and each round, wait up to SECONDS for other processes to use < 0.25 cores",
    )
    parser.add_argument(
        "--allocator",
        choices=("huge-pages", "system"),
        default="huge-pages",
        help="huge-pages: relaunch with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 as the flaxen command does "
        "(flaxen.runtime; both sides run under it); system: the C allocator's defaults",
    )
    parser.add_argument(
        "--settle",
        type=int,
        default=1,
        help="untimed steps at the start of each implementation's turn in a round (default: %(default)s)",
    )
    parser.add_argument("--tag", default="", help="free text copied into every JSON row (e.g. the lever being tried)")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    args.steps = args.steps or (3 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.compile = not (args.quick or args.no_compile)
    args.peer_dtype = args.peer_dtype or args.compute_dtype or "float32"
    return args


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # before anything else: the relaunch starts this script over (flaxen.runtime)
    if ARGS.allocator == "system":
        os.environ["FLAXEN_ALLOCATOR"] = "system"
    else:
        from flaxen.runtime import relaunch_with_fast_allocator

        relaunch_with_fast_allocator()
if ARGS is not None and ARGS.xla_flags:  # XLA reads XLA_FLAGS when the backend starts, so before `import jax`
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {ARGS.xla_flags}".strip()

# Cold torch.compile every run (flaxen has no persistent compilation cache either), so compile times compare.
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from flax import nnx  # noqa: E402

import flaxen  # noqa: E402
from flaxen import BertConfig, BertForMaskedLM, GPTConfig, GPTForCausalLM, ViTConfig, ViTForImageClassification  # noqa: E402
from flaxen.train import Trainer, adamw  # noqa: E402

# The benchmark sizes (issue 5).
VOCAB, WIDTH, LAYERS, HEADS, MLP, CONTEXT = 8192, 256, 4, 4, 1024, 128
LM_BATCH = 16
VIT_IMAGE, VIT_PATCH, VIT_CLASSES, VIT_BATCH = 32, 4, 10, 64
LR, WEIGHT_DECAY, BETAS, CLIP = 3e-4, 0.01, (0.9, 0.95), 1.0
PROMPT, NEW_TOKENS, DECODE_CONTEXT = 16, 128, 256  # 16 + 128 > 128, so the decoding models have 256 positions
SWITCH_PAUSE = 0.05  # seconds of rest when switching implementation, so one's spinning threads do not tax the other
QUIET_CORES = 0.25  # a round is "quiet" when other processes used less than this many cores during it


# ----------------------------------------------------------------------------------------------------------- output
ROWS: list[dict[str, Any]] = []


def info(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def emit(row: dict[str, Any]) -> None:
    if ARGS is not None and ARGS.tag:
        row["tag"] = ARGS.tag
    ROWS.append(row)
    print(json.dumps(row, default=_json_default), flush=True)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON: {type(value)}")


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 3)


# ----------------------------------------------------------------------------------------------------------- timing
class OtherLoad:
    """Cores kept busy by OTHER processes between `start()` and `stop()`: machine busy time from /proc/stat minus
    this process's own CPU time. About 0 on a quiet machine; 1.0 means another process took a whole core."""

    def __init__(self):
        self._start = None
        self.cores: float | None = None

    @staticmethod
    def _snapshot() -> tuple[float, float, float]:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), busy, usage.ru_utime + usage.ru_stime

    def start(self) -> OtherLoad:
        self._start = self._snapshot()
        return self

    def stop(self) -> float:
        end = self._snapshot()
        wall, busy, own = (e - s for e, s in zip(end, self._start))
        self.cores = round(max(0.0, (busy - own) / wall), 2) if wall > 0 else None
        return self.cores


def wait_for_quiet(max_wait: float, threshold: float = QUIET_CORES, verbose: bool = True) -> float | None:
    """Sample other processes' CPU use over 2 s; while above `threshold` cores, wait (up to `max_wait` seconds)."""
    deadline = time.perf_counter() + max_wait
    while True:
        probe = OtherLoad().start()
        time.sleep(2.0)
        cores = probe.stop()
        if cores is None or cores < threshold or time.perf_counter() >= deadline:
            if verbose and cores and cores >= threshold:
                info(f"machine still busy ({cores:.2f} cores used by others); measuring anyway")
            return cores
        if verbose:
            info(f"other processes use {cores:.2f} cores; waiting for a quieter machine")
        time.sleep(3.0)


@dataclasses.dataclass
class Timings:
    """Per-step seconds of each implementation, the round each step ran in, and other processes' CPU use per round."""

    times: dict[str, list[float]]
    rounds: dict[str, list[int]]
    round_other_cores: list[float]

    def stats(self, quiet_only: bool = False) -> dict[str, dict[str, float]]:
        keep = {i for i, cores in enumerate(self.round_other_cores) if not quiet_only or cores < QUIET_CORES}
        return {
            name: summary([t for t, r in zip(times, self.rounds[name]) if r in keep])
            for name, times in self.times.items()
            if any(r in keep for r in self.rounds[name])
        }

    @property
    def other_cores(self) -> float:
        return round(float(np.mean(self.round_other_cores)), 2) if self.round_other_cores else None

    @property
    def quiet_rounds(self) -> str:
        return f"{sum(c < QUIET_CORES for c in self.round_other_cores)}/{len(self.round_other_cores)}"


def interleaved(
    steps: dict[str, Callable[[], float]],
    *,
    warmup: int,
    timed: int,
    per_round: int,
    wait_quiet: float = 0.0,
    settle: int | None = None,
) -> Timings:
    """Run each implementation's step function `warmup` times, then `timed` times, alternating in small rounds.

    Each step function does one unit of work, waits for it to finish and returns its own elapsed seconds. The order
    rotates every round so no implementation always runs right after another. Other processes' CPU use is measured
    per round; with `wait_quiet`, each round first waits (up to that many seconds) for the machine to be quiet.
    Each turn starts with `settle` untimed steps (default: ARGS.settle): the first step after the other library
    ran is slower than a training loop's steady state (flaxen's by 5-45% after torch, NOTES.md §9).
    """
    settle = (ARGS.settle if ARGS is not None else 0) if settle is None else settle
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
        time.sleep(SWITCH_PAUSE)
    result = Timings({name: [] for name in names}, {name: [] for name in names}, [])
    for index in range(math.ceil(timed / per_round)):
        if wait_quiet > 0:
            wait_for_quiet(wait_quiet, verbose=False)
        other = OtherLoad().start()
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            for _ in range(settle if len(result.times[name]) < timed else 0):
                steps[name]()
            for _ in range(min(per_round, timed - len(result.times[name]))):
                result.times[name].append(steps[name]())
                result.rounds[name].append(index)
            time.sleep(SWITCH_PAUSE)
        result.round_other_cores.append(other.stop())
    return result


def summary(times: list[float]) -> dict[str, float]:
    q = np.percentile(times, [25, 50, 75])
    return {"median_s": float(q[1]), "p25_s": float(q[0]), "p75_s": float(q[2]), "n": len(times)}


def chosen_stats(timings: Timings) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Medians from the quiet rounds when at least half the rounds were quiet, else from all rounds.

    Rounds hold every implementation, so dropping a busy round keeps the comparison paired. The row also carries
    the all-rounds medians and how many rounds were quiet.
    """
    quiet, total = (int(x) for x in timings.quiet_rounds.split("/"))
    use_quiet = total > 0 and quiet * 2 >= total
    stats = timings.stats(quiet_only=use_quiet)
    fields = {
        "basis": f"quiet rounds ({timings.quiet_rounds})"
        if use_quiet
        else f"all rounds (only {timings.quiet_rounds} quiet)",
        "other_cores_busy": timings.other_cores,
        "round_other_cores": timings.round_other_cores,
        "all_rounds_median_s": {name: round(st["median_s"], 4) for name, st in timings.stats().items()},
    }
    return stats, fields


class CompileClock:
    """Sums JAX's own trace / lowering / XLA-compile durations reported while the context is open."""

    EVENTS = ("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration", "backend_compile_duration")

    def __init__(self):
        self.seconds = {name: 0.0 for name in self.EVENTS}
        self._on = False
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **_) -> None:
        if self._on:
            for name in self.EVENTS:
                if event.endswith(name):
                    self.seconds[name] += duration

    @contextlib.contextmanager
    def measure(self):
        self.seconds = {name: 0.0 for name in self.EVENTS}
        self._on = True
        try:
            yield self
        finally:
            self._on = False

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


COMPILE_CLOCK: CompileClock | None = None


# ----------------------------------------------------------------------------------------------------------- FLOPs
def transformer_train_flops(
    *,
    layers: int,
    width: int,
    mlp: int,
    seq_len: int,
    sequences: int,
    last_layer_outputs: float | None = None,
    queries_everywhere: bool = False,
) -> dict[str, float]:
    """Forward + backward FLOPs of the blocks: 6·N·tokens for the N = L·(4D² + 2DF) block weights, plus attention
    12·L·T²·D per sequence (QKᵀ and AV, 2·T²·D each forward, ×3 with the backward; the full T×T square, as every
    implementation here computes it even when causal).

    With `last_layer_outputs` = P, the last block's queries, output projection and MLP run at P positions per
    sequence (keys and values still at all T; attention P×T); `queries_everywhere`: its fused QKV projection still
    computes the queries at all T positions (what flaxen's `output_positions` executes)."""
    d, f, t = width, mlp, seq_len
    full_layer = 6 * (4 * d * d + 2 * d * f) * t
    blocks, attention = layers * full_layer, 12 * layers * t * t * d
    if last_layer_outputs is not None:
        p = last_layer_outputs
        query_rows = t if queries_everywhere else p
        blocks += 6 * (2 * d * d * t + d * d * query_rows + (d * d + 2 * d * f) * p) - full_layer
        attention += 12 * (p * t - t * t) * d
    return {"blocks": blocks * sequences, "attention": attention * sequences}


def gflop(flops: dict[str, float]) -> float:
    return sum(flops.values()) / 1e9


# ----------------------------------------------------------------------------------------------------------- matmul
def bench_matmul(args) -> float:
    """JAX vs torch GFLOP/s on a few shapes; returns JAX's fp32 2048³ rate (the reference for model GFLOP/s)."""
    shapes = [
        ("square 2048x2048x2048", (), 2048, 2048, 2048, "float32"),
        ("mlp 2048x256x1024", (), 2048, 256, 1024, "float32"),
        ("lm-head 2048x256x8192", (), 2048, 256, 8192, "float32"),
        ("attention 64x(128x64x128)", (64,), 128, 64, 128, "float32"),
        ("square 2048x2048x2048", (), 2048, 2048, 2048, "bfloat16"),
        ("mlp 2048x256x1024", (), 2048, 256, 1024, "bfloat16"),
    ]
    reference = None
    for label, batch, m, k, n, dtype in shapes:
        flops = 2 * m * k * n * math.prod(batch)
        rng = np.random.default_rng(0)
        a_host = rng.standard_normal((*batch, m, k), dtype=np.float32)
        b_host = rng.standard_normal((*batch, k, n), dtype=np.float32)
        a_jax, b_jax = jnp.asarray(a_host, dtype), jnp.asarray(b_host, dtype)
        a_torch = torch.from_numpy(a_host).to(getattr(torch, dtype))
        b_torch = torch.from_numpy(b_host).to(getattr(torch, dtype))
        matmul = jax.jit(jnp.matmul)
        matmul(a_jax, b_jax).block_until_ready()
        inner = max(1, int(0.05 / (flops / 150e9)))  # about 50 ms of work per timed sample

        def jax_step():
            start = time.perf_counter()
            for _ in range(inner):
                out = matmul(a_jax, b_jax)
            out.block_until_ready()
            return (time.perf_counter() - start) / inner

        def torch_step():
            start = time.perf_counter()
            for _ in range(inner):
                torch.matmul(a_torch, b_torch)
            return (time.perf_counter() - start) / inner

        maybe_wait(args)
        load_start = loadavg()
        samples = 3 if args.quick else 15
        timings = interleaved(
            {"jax": jax_step, "torch": torch_step},
            warmup=2,
            timed=samples,
            per_round=1,
            wait_quiet=min(args.wait_quiet, 30),
        )
        stats, basis = chosen_stats(timings)
        rates = {name: flops / st["median_s"] / 1e9 for name, st in stats.items()}
        if label.startswith("square") and dtype == "float32":
            reference = rates["jax"]
        emit(
            {
                "bench": f"matmul {dtype} {label}",
                "unit": "GFLOP/s",
                "jax": round(rates["jax"], 1),
                "torch": round(rates["torch"], 1),
                "ratio": ratio(rates["jax"], rates["torch"]),
                "median_s": {name: st["median_s"] for name, st in stats.items()},
                "samples": samples,
                "calls_per_sample": inner,
                **basis,
                "loadavg_start": load_start,
                "loadavg_end": loadavg(),
            }
        )
    return reference


# ----------------------------------------------------------------------------------------------------------- training
class FlaxenStep:
    """The real `flaxen.train.Trainer` step (`Trainer._train_step`, jitted, state donated), called as `fit` calls it."""

    def __init__(self, model: nnx.Module, host_batches: list[dict[str, np.ndarray]], compute_dtype: str | None):
        self._out_dir = tempfile.TemporaryDirectory(prefix="flaxen-bench-")
        optimizer = adamw(LR, weight_decay=WEIGHT_DECAY, b1=BETAS[0], b2=BETAS[1], clip_norm=CLIP)
        self.trainer = Trainer(model, optimizer, self._out_dir.name, progress=False, compute_dtype=compute_dtype)
        self.params, self.other = nnx.state(model, nnx.Param, ...)
        self.opt_state = optimizer.init(self.params)
        self.key = jax.random.key(0)
        self.host_batches = host_batches
        self.step_index = 0
        self.first_step_s = self.compile_s = None
        self.compile_detail: dict[str, float] = {}
        self.last_loss = None

    def __call__(self) -> float:
        batch = self.host_batches[self.step_index % len(self.host_batches)]
        first = self.step_index == 0
        clock = COMPILE_CLOCK.measure() if first else contextlib.nullcontext()
        with clock:
            start = time.perf_counter()
            self.params, self.opt_state, self.other, metrics = self.trainer._train_step(
                self.params, self.opt_state, self.other, jax.device_put(batch), self.key, self.step_index
            )
            jax.block_until_ready(metrics)
            elapsed = time.perf_counter() - start
        if first:
            self.first_step_s = elapsed
            self.compile_s = COMPILE_CLOCK.total
            self.compile_detail = {k: round(v, 3) for k, v in COMPILE_CLOCK.seconds.items()}
        self.step_index += 1
        self.last_loss = metrics["loss"]
        return elapsed


def torch_adamw(model: torch.nn.Module) -> tuple[torch.optim.Optimizer, str]:
    """AdamW with weight decay on ≥2-D parameters only (as flaxen's `matrices_only`); fused if this torch allows it."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS, fused=True)
        mode = "fused"
        probe = [p for p in model.parameters()][0]
        probe.grad = torch.zeros_like(probe)
        optimizer.step()  # a zero-gradient step fails early if fused is unsupported on this device
        optimizer.zero_grad(set_to_none=True)
    except (RuntimeError, TypeError):
        optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS, foreach=True)
        mode = "foreach"
    return optimizer, mode


class TorchStep:
    """zero_grad, forward + loss, backward, clip_grad_norm_(1.0), AdamW step: what HF's Trainer does per batch."""

    def __init__(
        self, model: torch.nn.Module, loss_fn: Callable, batches: list, *, compile: bool, dtype: str = "float32"
    ):
        self.model = model.train()
        # bfloat16: mixed precision as torch users run it (autocast over forward and loss; fp32 weights and AdamW)
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
        self.optimizer, self.optimizer_mode = torch_adamw(model)
        self.forward = torch.compile(model) if compile else model
        self.loss_fn = loss_fn
        self.batches = batches
        self.step_index = 0
        self.first_step_s = None
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __call__(self) -> float:
        batch = self.batches[self.step_index % len(self.batches)]
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            loss = self.loss_fn(self.forward, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, CLIP, foreach=True)
        self.optimizer.step()
        elapsed = time.perf_counter() - start
        if self.step_index == 0:
            self.first_step_s = elapsed
        self.step_index += 1
        self.last_loss = float(loss.detach())
        return elapsed


def hf_peer(model_class, hf_config, loss_fn: Callable, batches: list, *, dtype: str) -> Callable[[bool], TorchStep]:
    """`peer(compile)`: a fresh, seeded HF model with sdpa attention wrapped in a TorchStep (eager or compiled)."""

    def peer(compile: bool) -> TorchStep:
        torch.manual_seed(0)
        model = model_class._from_config(hf_config, attn_implementation="sdpa")
        return TorchStep(model, loss_fn, batches, compile=compile, dtype=dtype)

    return peer


def maybe_wait(args) -> None:
    if args.wait_quiet > 0:
        wait_for_quiet(args.wait_quiet)


def run_training(
    args,
    name: str,
    *,
    unit: str,
    items_per_step: int,
    flaxen_step: FlaxenStep,
    peer_builder: Callable[[bool], TorchStep],
    flops: dict[str, Any],
    matmul_ref: float | None,
    notes: str,
) -> None:
    """Time flaxen, HF eager and (unless skipped) HF torch.compile in alternation; emit one row."""
    maybe_wait(args)
    load_start = loadavg()
    steps: dict[str, Callable[[], float]] = {"flaxen": flaxen_step}
    peers = {"hf_eager": peer_builder(False)}
    if args.compile:
        peers["hf_compile"] = peer_builder(True)
    steps.update(peers)
    info(f"{name}: {args.warmup} warm-up + {args.steps} timed steps each of {', '.join(steps)}")
    timings = interleaved(steps, warmup=args.warmup, timed=args.steps, per_round=2, wait_quiet=min(args.wait_quiet, 60))
    stats, basis = chosen_stats(timings)
    rate = {impl: items_per_step / s["median_s"] for impl, s in stats.items()}
    model_gflop = flops["model_gflop"]
    executed = flops["executed_gflop"]
    row = {
        "bench": f"train {name}"
        + (
            ""
            if (args.compute_dtype or "float32") == args.peer_dtype == "float32"
            else f" [flaxen {args.compute_dtype or 'float32'}, HF {args.peer_dtype}]"
        ),
        "unit": unit,
        "flaxen": round(rate["flaxen"], 1),
        "hf_eager": round(rate["hf_eager"], 1),
        "hf_compile": round(rate["hf_compile"], 1) if "hf_compile" in rate else None,
        "ratio_vs_eager": ratio(rate["flaxen"], rate["hf_eager"]),
        "ratio_vs_compile": ratio(rate["flaxen"], rate.get("hf_compile")),
        "step_time": stats,
        "first_step_s": {
            "flaxen": round(flaxen_step.first_step_s, 3),
            **{k: round(p.first_step_s, 3) for k, p in peers.items()},
        },
        "compile_s": {
            "flaxen": round(flaxen_step.compile_s, 3),
            "flaxen_detail": flaxen_step.compile_detail,
            # torch.compile compiles lazily inside its first step(s): first step minus a steady step
            **(
                {"hf_compile": round(peers["hf_compile"].first_step_s - stats["hf_compile"]["median_s"], 3)}
                if "hf_compile" in peers
                else {}
            ),
        },
        "model_gflop_per_step": round(model_gflop, 2),
        "flops": flops["parts"],
        "model_gflops": {impl: round(model_gflop / s["median_s"], 1) for impl, s in stats.items()},
        "executed_gflop_per_step": {"flaxen": round(executed["flaxen"], 2), "hf": round(executed["hf"], 2)},
        "executed_gflops": {
            impl: round(executed["flaxen" if impl == "flaxen" else "hf"] / s["median_s"], 1)
            for impl, s in stats.items()
        },
        "matmul_ref_gflops": round(matmul_ref, 1) if matmul_ref else None,
        "model_over_matmul": {impl: round(model_gflop / s["median_s"] / matmul_ref, 3) for impl, s in stats.items()}
        if matmul_ref
        else None,
        "optimizer": {
            "flaxen": "optax adamw (flaxen.train.adamw, clip 1.0)",
            **{k: f"torch AdamW {p.optimizer_mode}, clip_grad_norm_ foreach" for k, p in peers.items()},
        },
        "last_loss": {"flaxen": float(flaxen_step.last_loss), **{k: p.last_loss for k, p in peers.items()}},
        "compute_dtype": args.compute_dtype or "float32",
        "peer_dtype": args.peer_dtype,
        "timed": "flaxen: device_put(batch) + Trainer._train_step + block_until_ready; peer: zero_grad..optimizer.step",
        "notes": notes,
        **basis,
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
    }
    emit(row)


def bench_gpt(args, matmul_ref):
    rng = np.random.default_rng(0)
    host = [rng.integers(0, VOCAB, (LM_BATCH, CONTEXT + 1), dtype=np.int32) for _ in range(4)]
    model = GPTForCausalLM(GPTConfig.small(dropout=0.0), rngs=nnx.Rngs(0))
    flaxen_step = FlaxenStep(model, [{"token_ids": ids} for ids in host], args.compute_dtype)

    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=CONTEXT,
        n_embd=WIDTH,
        n_layer=LAYERS,
        n_head=HEADS,
        n_inner=MLP,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    batches = [torch.from_numpy(ids.astype(np.int64)) for ids in host]

    def loss_fn(forward, ids):  # next-token CE over all 128 positions, as flaxen's GPTForCausalLM.loss
        logits = forward(input_ids=ids[:, :-1]).logits
        return F.cross_entropy(logits.reshape(-1, VOCAB).float(), ids[:, 1:].reshape(-1))

    peer = hf_peer(GPT2LMHeadModel, config, loss_fn, batches, dtype=args.peer_dtype)

    tokens = LM_BATCH * CONTEXT
    parts = transformer_train_flops(layers=LAYERS, width=WIDTH, mlp=MLP, seq_len=CONTEXT, sequences=LM_BATCH)
    parts["lm_head"] = 6 * VOCAB * WIDTH * tokens
    flops = {
        "parts": parts,
        "model_gflop": gflop(parts),
        "executed_gflop": {"flaxen": gflop(parts), "hf": gflop(parts)},
    }
    run_training(
        args,
        "gpt",
        unit="tokens/s",
        items_per_step=tokens,
        flaxen_step=flaxen_step,
        peer_builder=peer,
        flops=flops,
        matmul_ref=matmul_ref,
        notes="both: logits at all 128 positions, fp32 CE; flaxen also computes accuracy and grad_norm metrics",
    )


def bench_bert(args, matmul_ref):
    from flaxen.core.mlm import num_prediction_slots

    config = BertConfig.small(dropout=0.0)
    rng = np.random.default_rng(0)
    special = set(config.special_token_ids)
    host = []
    for _ in range(4):
        ids = rng.integers(max(special) + 1, VOCAB, (LM_BATCH, CONTEXT), dtype=np.int32)
        ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
        host.append(ids)
    model = BertForMaskedLM(config, rngs=nnx.Rngs(0))
    flaxen_step = FlaxenStep(model, [{"token_ids": ids} for ids in host], args.compute_dtype)

    from transformers import BertConfig as HFBertConfig
    from transformers import BertForMaskedLM as HFBertForMaskedLM

    hf_config = HFBertConfig(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=MLP,
        max_position_embeddings=CONTEXT,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        hidden_act="gelu",
        pad_token_id=0,
    )

    def collate(ids):  # DataCollatorForLanguageModeling's recipe, done here outside the timed step (favours the peer)
        ids = torch.from_numpy(ids.astype(np.int64))
        labels = ids.clone()
        probability = torch.full(ids.shape, config.mask_rate)
        probability[:, 0] = probability[:, -1] = 0.0
        chosen = torch.bernoulli(probability).bool()
        labels[~chosen] = -100
        inputs = ids.clone()
        masked = torch.bernoulli(torch.full(ids.shape, 0.8)).bool() & chosen
        inputs[masked] = config.mask_token_id
        randomised = torch.bernoulli(torch.full(ids.shape, 0.5)).bool() & chosen & ~masked
        inputs[randomised] = torch.randint(max(special) + 1, VOCAB, ids.shape)[randomised]
        return inputs, labels

    torch.manual_seed(0)
    batches = [collate(ids) for ids in host]

    def loss_fn(forward, batch):
        inputs, labels = batch
        return forward(input_ids=inputs, labels=labels).loss

    peer = hf_peer(HFBertForMaskedLM, hf_config, loss_fn, batches, dtype=args.peer_dtype)

    tokens = LM_BATCH * CONTEXT
    slots = num_prediction_slots(CONTEXT, config.mask_rate)  # flaxen's static prediction slots per row
    predicted = config.mask_rate * (CONTEXT - 2)  # expected masked positions per row
    shape = dict(layers=LAYERS, width=WIDTH, mlp=MLP, seq_len=CONTEXT, sequences=LM_BATCH)
    head_per_position = 6 * (WIDTH * WIDTH + VOCAB * WIDTH)  # transform dense + tied decoder, fwd + bwd
    # Needed: the last layer's outputs and the head only at the masked positions.
    model_parts = transformer_train_flops(**shape, last_layer_outputs=predicted) | {
        "mlm_head": head_per_position * predicted * LM_BATCH
    }
    executed = {
        "flaxen": gflop(
            transformer_train_flops(**shape, last_layer_outputs=slots, queries_everywhere=True)
            | {"mlm_head": head_per_position * slots * LM_BATCH}
        ),
        "hf": gflop(transformer_train_flops(**shape) | {"mlm_head": head_per_position * CONTEXT * LM_BATCH}),
    }
    flops = {"parts": model_parts, "model_gflop": gflop(model_parts), "executed_gflop": executed}
    run_training(
        args,
        "bert-mlm",
        unit="tokens/s",
        items_per_step=tokens,
        flaxen_step=flaxen_step,
        peer_builder=peer,
        flops=flops,
        matmul_ref=matmul_ref,
        notes=(
            f"flaxen masks on device inside the step and runs the last layer's outputs and the MLM head at "
            f"{slots} slots/row; HF peer gets labels (-100 elsewhere) made outside the timed step and runs both "
            "at all 128 positions; model FLOPs count them at the 15% masked positions"
        ),
    )


def bench_vit(args, matmul_ref):
    rng = np.random.default_rng(0)
    images = [rng.standard_normal((VIT_BATCH, VIT_IMAGE, VIT_IMAGE, 3), dtype=np.float32) for _ in range(4)]
    labels = [rng.integers(0, VIT_CLASSES, (VIT_BATCH,), dtype=np.int32) for _ in range(4)]
    model = ViTForImageClassification(ViTConfig.small(dropout=0.0), rngs=nnx.Rngs(0))
    flaxen_step = FlaxenStep(model, [{"images": x, "labels": y} for x, y in zip(images, labels)], args.compute_dtype)

    from transformers import ViTConfig as HFViTConfig
    from transformers import ViTForImageClassification as HFViT

    hf_config = HFViTConfig(
        image_size=VIT_IMAGE,
        patch_size=VIT_PATCH,
        num_channels=3,
        hidden_size=WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=MLP,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=VIT_CLASSES,
        layer_norm_eps=1e-12,
    )
    batches = [
        (torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y.astype(np.int64)))
        for x, y in zip(images, labels)
    ]

    def loss_fn(forward, batch):
        pixels, targets = batch
        return forward(pixel_values=pixels, labels=targets).loss

    peer = hf_peer(HFViT, hf_config, loss_fn, batches, dtype=args.peer_dtype)

    patches = (VIT_IMAGE // VIT_PATCH) ** 2
    seq = patches + 1
    shape = dict(layers=LAYERS, width=WIDTH, mlp=MLP, seq_len=seq, sequences=VIT_BATCH)
    others = {
        "patch_embedding": 4 * VIT_PATCH * VIT_PATCH * 3 * WIDTH * patches * VIT_BATCH,  # no gradient into the images
        "classifier": 6 * WIDTH * VIT_CLASSES * VIT_BATCH,
    }
    parts = transformer_train_flops(**shape, last_layer_outputs=1) | others  # needed: the last layer at [CLS] only
    executed = {
        "flaxen": gflop(transformer_train_flops(**shape, last_layer_outputs=1, queries_everywhere=True) | others),
        "hf": gflop(transformer_train_flops(**shape) | others),
    }
    flops = {"parts": parts, "model_gflop": gflop(parts), "executed_gflop": executed}
    run_training(
        args,
        "vit",
        unit="images/s",
        items_per_step=VIT_BATCH,
        flaxen_step=flaxen_step,
        peer_builder=peer,
        flops=flops,
        matmul_ref=matmul_ref,
        notes=(
            "65 tokens per image (64 patches + [CLS]); HF patchifies with Conv2d; flaxen's last layer computes "
            "only the [CLS] output the classifier reads, HF's all 65; model FLOPs count the [CLS]-only last layer"
        ),
    )


# ----------------------------------------------------------------------------------------------------------- decoding
def bench_decode(args):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPTForCausalLM(GPTConfig.small(dropout=0.0, context_length=DECODE_CONTEXT), rngs=nnx.Rngs(0))
    model.eval()
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=DECODE_CONTEXT,
        n_embd=WIDTH,
        n_layer=LAYERS,
        n_head=HEADS,
        n_inner=MLP,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    peer = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").eval()
    peer.generation_config.eos_token_id = None
    peer.generation_config.pad_token_id = 0
    rng = np.random.default_rng(0)
    for batch in (1, 8):
        prompt = rng.integers(0, VOCAB, (batch, PROMPT), dtype=np.int32)
        prompt_torch = torch.from_numpy(prompt.astype(np.int64))
        mask_torch = torch.ones_like(prompt_torch)
        first = {}

        def flaxen_call():
            start = time.perf_counter()
            out = flaxen.generate_ids(model, prompt, max_new_tokens=NEW_TOKENS, temperature=0.0)
            elapsed = time.perf_counter() - start
            assert out.shape == (batch, NEW_TOKENS)
            first.setdefault("flaxen", elapsed)
            return elapsed

        def hf_call(threads: int = args.threads, name: str = "hf_eager"):
            torch.set_num_threads(threads)
            try:
                start = time.perf_counter()
                with torch.inference_mode():
                    out = peer.generate(
                        prompt_torch, attention_mask=mask_torch, max_new_tokens=NEW_TOKENS, do_sample=False
                    )
                elapsed = time.perf_counter() - start
            finally:
                torch.set_num_threads(args.threads)
            assert out.shape == (batch, PROMPT + NEW_TOKENS), out.shape
            first.setdefault(name, elapsed)
            return elapsed

        maybe_wait(args)
        load_start = loadavg()
        with COMPILE_CLOCK.measure():
            flaxen_call()
        compile_s = COMPILE_CLOCK.total
        hf_call()
        info(f"decode batch {batch}: {args.warmup} warm-up + {args.steps} timed calls each")
        calls = {"flaxen": flaxen_call, "hf_eager": hf_call}
        if not args.quick:
            calls["hf_eager_1thread"] = lambda: hf_call(1, "hf_eager_1thread")
        timings = interleaved(
            calls, warmup=args.warmup, timed=args.steps, per_round=2, wait_quiet=min(args.wait_quiet, 60)
        )
        stats, basis = chosen_stats(timings)
        rate = {impl: batch * NEW_TOKENS / s["median_s"] for impl, s in stats.items()}
        emit(
            {
                "bench": f"decode batch {batch}",
                "unit": "tokens/s",
                "flaxen": round(rate["flaxen"], 1),
                "hf_eager": round(rate["hf_eager"], 1),
                "hf_compile": None,
                "ratio_vs_eager": ratio(rate["flaxen"], rate["hf_eager"]),
                "ratio_vs_compile": None,
                **(
                    {
                        "hf_eager_1thread": round(rate["hf_eager_1thread"], 1),
                        "ratio_vs_eager_1thread": ratio(rate["flaxen"], rate["hf_eager_1thread"]),
                    }
                    if "hf_eager_1thread" in rate
                    else {}
                ),
                "step_time": stats,
                "first_step_s": {k: round(v, 3) for k, v in first.items()},
                "compile_s": {"flaxen": round(compile_s, 3)},
                "timed": (
                    f"one call generating {NEW_TOKENS} new tokens greedily from a {PROMPT}-token prompt: "
                    "flaxen.generate_ids (returns numpy) vs HF generate (KV cache, do_sample=False, inference_mode)"
                ),
                "notes": (
                    f"models of the GPT training size with {DECODE_CONTEXT} positions (16 + 128 > 128); "
                    "hf_eager_1thread: the same generate with torch.set_num_threads(1), informational (tiny per-token "
                    "ops: one thread avoids OpenMP barriers, and is far less hurt by other processes)"
                ),
                **basis,
                "loadavg_start": load_start,
                "loadavg_end": loadavg(),
            }
        )


# ----------------------------------------------------------------------------------------------------------- table
def fmt(value, digits=1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def quiet_cell(row: dict[str, Any]) -> str:
    """'8/10 used' when the medians come from the quiet rounds, '3/10 (all used)' otherwise."""
    basis = row.get("basis", "")
    count = basis[basis.index("(") + 1 :].split(")")[0].replace("only ", "").replace(" quiet", "")
    return f"{count} used" if basis.startswith("quiet") else f"{count} (all used)"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as Markdown: matmul rates, then the flaxen-vs-peer rows; `others` = cores busy with other processes."""
    lines = []
    matmuls = [r for r in rows if r["bench"].startswith("matmul")]
    if matmuls:
        lines += [
            "| matmul | JAX GFLOP/s | torch GFLOP/s | JAX/torch | quiet rounds | others (cores) | load 1 min |",
            "|---|---:|---:|---:|---|---:|---:|",
        ]
        for r in matmuls:
            lines.append(
                f"| {r['bench'][7:]} | {fmt(r['jax'])} | {fmt(r['torch'])} | {fmt(r['ratio'], 2)} | {quiet_cell(r)} | "
                f"{fmt(r.get('other_cores_busy'), 2)} | {fmt(r['loadavg_start'][0], 2)} |"
            )
        lines.append("")
    others = [r for r in rows if r["bench"].startswith(("train", "decode"))]
    if others:
        lines += [
            "| benchmark | unit | flaxen | HF eager | HF compile | flaxen/eager | flaxen/compile "
            "| model GFLOP/s flaxen / eager / compile (÷ JAX matmul) | compile s flaxen / HF "
            "| first step s flaxen | quiet rounds | others (cores) | load 1 min |",
            "|---|---|---:|---:|---:|---:|---:|---|---|---:|---|---:|---:|",
        ]
        for r in others:
            gf = r.get("model_gflops") or {}
            over = r.get("model_over_matmul") or {}
            gflops = " / ".join(fmt(gf.get(k)) for k in ("flaxen", "hf_eager", "hf_compile")) if gf else "–"
            if over:
                gflops += " (" + " / ".join(fmt(over.get(k), 2) for k in ("flaxen", "hf_eager", "hf_compile")) + ")"
            comp = r.get("compile_s") or {}
            lines.append(
                f"| {r['bench']} | {r['unit']} | {fmt(r['flaxen'])} | {fmt(r['hf_eager'])} | {fmt(r['hf_compile'])} | "
                f"{fmt(r['ratio_vs_eager'], 2)} | {fmt(r['ratio_vs_compile'], 2)} | {gflops} | "
                f"{fmt(comp.get('flaxen'), 1)} / {fmt(comp.get('hf_compile'), 1)} | "
                f"{fmt(r['first_step_s'].get('flaxen'), 2)} | "
                f"{quiet_cell(r)} | {fmt(r.get('other_cores_busy'), 2)} | {fmt(r['loadavg_start'][0], 2)} |"
            )
        for r in others:
            if "hf_eager_1thread" in r:
                lines.append(
                    f"\n{r['bench']}: HF eager with torch.set_num_threads(1): {fmt(r['hf_eager_1thread'])} {r['unit']} "
                    f"(flaxen/that = {fmt(r['ratio_vs_eager_1thread'], 2)})"
                )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------- main
def environment(args) -> dict[str, Any]:
    import optax
    import transformers

    return {
        "bench": "env",
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": __import__("flax").__version__,
        "optax": optax.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "jax_devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "allocator": args.allocator,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
        "compute_dtype": args.compute_dtype or "float32",
        "steps": args.steps,
        "warmup": args.warmup,
        "settle": args.settle,
        "quick": args.quick,
        "torch_compile": args.compile,
        "loadavg": loadavg(),
    }


def main(args) -> None:
    global COMPILE_CLOCK
    torch.set_num_threads(args.threads)
    COMPILE_CLOCK = CompileClock()
    started = time.perf_counter()
    emit(environment(args))
    load = os.getloadavg()[0]
    if load > 0.5:
        info(
            f"warning: 1-minute load average is {load:.2f} before starting; numbers will be noisy (ratios stay paired)"
        )
    matmul_ref = None
    if "matmul" in args.only:
        info("matmul reference")
        matmul_ref = bench_matmul(args)
    for name, bench in (("gpt", bench_gpt), ("bert", bench_bert), ("vit", bench_vit)):
        if name in args.only:
            bench(args, matmul_ref)
    if "decode" in args.only:
        bench_decode(args)
    info(f"done in {time.perf_counter() - started:.0f} s")
    print()
    print(markdown_table(ROWS))


if __name__ == "__main__":
    main(ARGS)
