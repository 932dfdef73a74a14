#!/usr/bin/env python3
"""flaxen against Hugging Face PyTorch on one GPU: training steps and greedy decoding, side by side in one run.

    python benchmarks/gpu.py                          # every case that fits in --budget (default 450 s), by priority
    python benchmarks/gpu.py --tiny                   # tiny models on any device, the CPU too (CI runs this)
    python benchmarks/gpu.py --only gpt-16x1024,decode --out results.jsonl
    python benchmarks/gpu.py --profile                # also: where each flaxen training step's device time goes
    python benchmarks/gpu.py --cases gpt-16x1024/flaxen,gpt-16x1024/flaxen+xla_attention   # A/B of a lever

Cases, in priority order: the device's ceilings (a bf16 matmul rate and a copy bandwidth, measured here); training
GPT-2 124M (16 × 1024 tokens), BERT-base MLM (64 × 128) and ViT-B/16 at 224 (64 images), each by flaxen, HF eager
and HF torch.compile; greedy decoding of GPT-2 at batch 1, 8 and 64 (flaxen `generate_ids`, HF `generate`); then
GPT-2 at 32 × 1024 and ViT-B/16 at 128 images. Each case runs in a process of its own (one library's compiler and
allocator never touch another's numbers); a case that does not fit the budget is reported as skipped. Every result
is a JSON line (on stdout, and appended to --out as it finishes); a Markdown table closes the run.

Both sides train alike: bf16 compute with fp32 master weights and optimizer state (flaxen's `compute_dtype="auto"`
on a GPU; the peer under `torch.autocast`, sdpa attention, fused AdamW), dropout 0, AdamW with weight decay on
matrices, gradients clipped at 1.0; batches already on the device. A step rate is the median over windows of
back-to-back steps (one sync per window), after warm-up steps that include compiling. MFU: the model FLOPs a step
needs (3 × forward matmuls, attention's full square, the LM head) per second over the bf16 matmul rate measured in
the same run. Decoding: bf16 weights on both sides, 128 new tokens after a 16-token prompt, against the ceiling of
reading every weight once per token at the measured copy bandwidth.

Imports only jax, flax, optax, torch and transformers (the GPU machine's standard stack) besides flaxen.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

PROCESS_START = time.perf_counter()
HERE = Path(__file__).resolve()
LR, BETAS, WEIGHT_DECAY, CLIP = 1e-4, (0.9, 0.95), 0.01, 1.0
PROMPT, NEW_TOKENS = 16, 128
SETTINGS_VARIABLE = "FLAXEN_GPU_BENCH"  # the parent hands its settings to each case's process through this


@dataclasses.dataclass(frozen=True)
class Task:
    kind: str  # "ceilings", "gpt", "bert", "vit" or "decode"
    batch: int = 0
    length: int = 0  # tokens per row (GPT: the model sees this many; the row carries one more for the targets)
    implementations: tuple[str, ...] = ("flaxen", "hf_compile", "hf_eager")


TASKS = {
    "ceilings": Task("ceilings", implementations=("jax",)),
    "gpt-16x1024": Task("gpt", 16, 1024),
    "bert-64x128": Task("bert", 64, 128, ("flaxen", "hf_eager", "hf_compile")),
    "vit-64": Task("vit", 64, 197, ("flaxen", "hf_eager", "hf_compile")),
    "decode": Task("decode", implementations=("flaxen", "hf_eager")),
    "gpt-32x1024": Task("gpt", 32, 1024),
    "vit-128": Task("vit", 128, 197),
}
TINY = {"gpt": (2, 64), "bert": (4, 32), "vit": (4, 17)}  # batch and tokens per row in --tiny runs
DECODE_BATCHES = (1, 8, 64)

# A/B levers for a flaxen case ("TASK/flaxen+LEVER"): config fields, module constants set before the model is
# built, or XLA flags for that process alone.
LEVERS: dict[str, dict[str, Any]] = {
    "xla_attention": {"config": {"attention_implementation": "xla"}},
    "cudnn_even": {"constants": {"flaxen.core.attention.CUDNN_LENGTH_MULTIPLE": 2}},
    "cudnn_pad64": {"constants": {"flaxen.core.attention.CUDNN_LENGTH_MULTIPLE": 64}},
    "unpadded_logits": {"constants": {"flaxen.core.embeddings.LOGITS_PAD_MULTIPLE": {}}},
    "scatter_token_types": {"constants": {"flaxen.core.embeddings.ONE_HOT_MAX_ROWS": 0}},
    "float32": {"compute_dtype": "float32"},
    "scan_remat": {"config": {"scan_layers": True, "remat": True}},
    "decode_every_token": {"constants": {"flaxen.generate.DECODE_CHUNK": 1}},
    "command_buffers": {
        "xla_flags": "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
    },
    "no_command_buffers": {"xla_flags": "--xla_gpu_enable_command_buffer="},
    "no_triton_gemm": {"xla_flags": "--xla_gpu_enable_triton_gemm=false"},
    # decoding's vector × matrix products as cuBLAS calls, not XLA's multiply + reduce fusions (NOTES §32)
    "no_dot_strength_reduction": {"xla_flags": "--xla_gpu_enable_dot_strength_reduction=false"},
    # the embedding lookup as nnx.Embed does it: the table cast to bf16 first, its gradient summed in bf16
    "bf16_gather": {"patches": {"flaxen.core.embeddings:Embed.__call__": "flax.nnx:Embed.__call__"}},
    # the loss's gradient by autodiff instead of its hand-written backward pass
    "autodiff_cross_entropy": {"constants": {"flaxen.core.losses.FUSED_LOSS_BACKENDS": ()}},
    "profile": {"profile": True},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models and few steps: checks every path on a CPU")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run (default: %(default)s)")
    parser.add_argument("--only", help="comma-separated tasks (" + ", ".join(TASKS) + ")")
    parser.add_argument("--cases", help="comma-separated cases TASK/IMPLEMENTATION[+LEVER], run in this order")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile cases")
    parser.add_argument("--steps", type=int, help="steps per timed window (default: 10; --tiny: 2)")
    parser.add_argument("--windows", type=int, help="timed windows per case (default: 3; --tiny: 1)")
    parser.add_argument("--profile", action="store_true", help="trace flaxen's training steps: top device kernels")
    parser.add_argument("--profile-dir", help="keep the traces (perfetto json.gz) in this folder")
    parser.add_argument("--out", help="append each result as a JSON line to this file as it finishes")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.tiny else 10)
    args.windows = args.windows or (1 if args.tiny else 3)
    return args


# ----------------------------------------------------------------------------------------------------------- plan
def planned_cases(args) -> list[str]:
    """The cases of this run in priority order (ceilings first: every other row is read against them)."""
    if args.cases:
        cases = [case.strip() for case in args.cases.split(",") if case.strip()]
        return cases if any(case.startswith("ceilings") for case in cases) else ["ceilings/jax", *cases]
    tasks = list(TASKS) if not args.only else ["ceilings", *[t for t in args.only.split(",") if t != "ceilings"]]
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise SystemExit(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    return [
        f"{task}/{implementation}"
        for task in tasks
        for implementation in TASKS[task].implementations
        if not (args.no_compile and implementation == "hf_compile")
    ]


def split_case(case: str) -> tuple[str, Task, str, dict[str, Any]]:
    """(task name, task, implementation, lever settings) of "TASK/IMPLEMENTATION[+LEVER...]"."""
    task_name, _, rest = case.partition("/")
    implementation, *levers = rest.split("+")
    if task_name not in TASKS or implementation not in (*TASKS[task_name].implementations, "hf_compile"):
        raise SystemExit(f"unknown case {case!r}: TASK/IMPLEMENTATION with TASK in {', '.join(TASKS)}")
    unknown = [lever for lever in levers if lever not in LEVERS]
    if unknown:
        raise SystemExit(f"unknown lever(s) {', '.join(unknown)}; choose from {', '.join(LEVERS)}")
    settings: dict[str, Any] = {}
    for lever in levers:
        for name, value in LEVERS[lever].items():
            if isinstance(value, dict):
                settings[name] = settings.get(name, {}) | value
            elif name == "xla_flags":
                settings[name] = f"{settings.get(name, '')} {value}".strip()
            else:
                settings[name] = value
    return task_name, TASKS[task_name], implementation, settings


def run_all(args) -> None:
    cases = planned_cases(args)
    for case in cases:
        split_case(case)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for index, case in enumerate(cases):
        remaining = args.budget - (time.perf_counter() - started)
        if remaining < 20:
            rows += [emit({"case": skipped, "skipped": "over the time budget"}, args) for skipped in cases[index:]]
            break
        info(f"[{time.perf_counter() - started:5.0f} s] {case}")
        rows.append(emit(run_case_process(case, args, timeout=remaining + 30), args))
    info(f"done in {time.perf_counter() - started:.0f} s")
    print(markdown_table(rows, args), flush=True)


def run_case_process(case: str, args, *, timeout: float) -> dict[str, Any]:
    """One case in a fresh process; its last stdout line is its JSON result."""
    _, _, _, lever = split_case(case)
    env = os.environ | {SETTINGS_VARIABLE: json.dumps(vars(args) | {"case": case})}
    if lever.get("xla_flags"):
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {lever['xla_flags']}".strip()
    src = str(HERE.parent.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, str(HERE), "--case", case],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"case": case, "error": f"timed out after {timeout:.0f} s", "wall_s": round(time.perf_counter() - start)}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])[-600:]
        return {"case": case, "error": f"exit {done.returncode}: {tail}", "wall_s": round(time.perf_counter() - start)}
    return json.loads(lines[-1]) | {"wall_s": round(time.perf_counter() - start, 1)}


CEILINGS: dict[str, float] = {}


def emit(row: dict[str, Any], args) -> dict[str, Any]:
    if row.get("case", "").startswith("ceilings") and "matmul_tflops" in row:
        CEILINGS.update(matmul_tflops=row["matmul_tflops"], copy_gbps=row["copy_gbps"])
    if "model_tflops" in row and CEILINGS:
        row["mfu"] = float(f"{row['model_tflops'] / CEILINGS['matmul_tflops']:.3g}")  # tiny CPU runs are far below 1e-3
    if "ceiling_weight_bytes" in row and CEILINGS:
        seconds_per_token = row["ceiling_weight_bytes"] / (CEILINGS["copy_gbps"] * 1e9)
        row["ceiling_tokens_per_s"] = {b: round(int(b) / seconds_per_token) for b in row["tokens_per_s"]}
    line = json.dumps(row, default=str)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as results:
            results.write(line + "\n")
    return row


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------- FLOPs
def model_flops_per_step(task: Task, *, layers, width, mlp, vocab, batch, length, tiny_patch=None) -> float:
    """3 × the forward matmul FLOPs a step needs: the blocks (6 per weight per token), attention's full T×T square
    (12·L·T²·D per row), the LM head; BERT's last layer and head at the 15% masked positions, ViT's at [CLS]."""
    d, f, t = width, mlp, length
    per_token_layer = 6 * (4 * d * d + 2 * d * f)
    attention_per_row = 12 * t * t * d  # one layer
    if task.kind == "gpt":
        return batch * (layers * (per_token_layer * t + attention_per_row) + 6 * d * vocab * t)
    if task.kind == "bert":
        masked = 0.15 * (t - 2)
        full = (layers - 1) * (per_token_layer * t + attention_per_row)
        last = 6 * 2 * d * d * t + 6 * (2 * d * d + 2 * d * f) * masked + 12 * masked * t * d  # k, v everywhere
        head = 6 * (d * d + d * vocab) * masked
        return batch * (full + last + head)
    if task.kind == "vit":
        patches = t - 1
        full = (layers - 1) * (per_token_layer * t + attention_per_row)
        last = 6 * 2 * d * d * t + 6 * (2 * d * d + 2 * d * f) + 12 * t * d
        patch_embedding = 4 * (tiny_patch or 16) ** 2 * 3 * d * patches  # no gradient into the images
        return batch * (full + last + patch_embedding)
    raise ValueError(task.kind)


# ----------------------------------------------------------------------------------------------------------- sizes
@dataclasses.dataclass(frozen=True)
class Size:
    layers: int
    width: int
    heads: int
    mlp: int
    vocab: int
    image: int = 224
    patch: int = 16
    classes: int = 1000


def size_of(task: Task, tiny: bool) -> Size:
    if tiny:
        return Size(layers=2, width=64, heads=4, mlp=256, vocab=512, image=16, patch=4, classes=10)
    vocab = {"bert": 30522}.get(task.kind, 50257)
    return Size(layers=12, width=768, heads=12, mlp=3072, vocab=vocab)


def batch_and_length(task: Task, tiny: bool) -> tuple[int, int]:
    return TINY[task.kind] if tiny else (task.batch, task.length)


# ----------------------------------------------------------------------------------------------------------- one case
def run_case(args) -> dict[str, Any]:
    task_name, task, implementation, lever = split_case(args.case)
    row: dict[str, Any] = {"case": args.case, "task": task_name, "implementation": implementation}
    if task.kind == "ceilings":
        return row | ceilings(args)
    if task.kind == "decode":
        return row | (decode_flaxen(args, lever) if implementation == "flaxen" else decode_hf(args))
    size = size_of(task, args.tiny)
    batch, length = batch_and_length(task, args.tiny)
    items = batch * length if task.kind in ("gpt", "bert") else batch
    flops = model_flops_per_step(
        task,
        layers=size.layers,
        width=size.width,
        mlp=size.mlp,
        vocab=size.vocab,
        batch=batch,
        length=length,
        tiny_patch=size.patch,
    )
    if implementation == "flaxen":
        timing = train_flaxen(args, task, size, batch, length, lever)
    else:
        timing = train_hf(args, task, size, batch, length, compile=implementation == "hf_compile")
    step_s = timing.pop("step_s")
    unit = "tokens/s" if task.kind in ("gpt", "bert") else "images/s"
    return row | {
        "unit": unit,
        "rate": round(items / step_s, 1),
        "step_ms": round(step_s * 1e3, 2),
        "model_tflops": float(f"{flops / step_s / 1e12:.4g}"),
        "model_tflop_per_step": round(flops / 1e12, 4),
        "batch": batch,
        "length": length,
        **timing,
        "startup_s": round(time.perf_counter() - PROCESS_START, 1),
    }


def timed_windows(step, sync, *, warmup: int, steps: int, windows: int) -> dict[str, Any]:
    """Warm-up steps (the first timed alone: compiling included), then `windows` runs of `steps` back-to-back steps
    with one sync each; the median window's seconds per step."""
    start = time.perf_counter()
    sync(step())
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        sync(step())
    per_step = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps):
            out = step()
        sync(out)
        per_step.append((time.perf_counter() - start) / steps)
    return {
        "step_s": statistics.median(per_step),
        "window_step_ms": [round(s * 1e3, 2) for s in per_step],
        "first_step_s": round(first, 2),
    }


# --- flaxen
def apply_lever(lever: dict[str, Any]) -> None:
    import importlib

    for dotted, value in lever.get("constants", {}).items():
        module, _, name = dotted.rpartition(".")
        setattr(importlib.import_module(module), name, value)

    def resolve(path: str) -> tuple[Any, str]:  # "module:Owner.attribute" -> (owner, "attribute")
        module, _, qualified = path.partition(":")
        owner = importlib.import_module(module)
        *parents, attribute = qualified.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        return owner, attribute

    for target, source in lever.get("patches", {}).items():
        owner, attribute = resolve(target)
        setattr(owner, attribute, getattr(*resolve(source)))


def jax_peak_bytes() -> int | None:
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def flaxen_model(task: Task, size: Size, length: int, lever: dict[str, Any]):
    from flax import nnx

    from flaxen import BertConfig, BertForMaskedLM, GPTConfig, GPTForCausalLM, ViTConfig, ViTForImageClassification

    shape = dict(
        hidden_size=size.width, num_layers=size.layers, num_heads=size.heads, mlp_dim=size.mlp, dropout=0.0
    ) | lever.get("config", {})
    if task.kind == "gpt":
        config = GPTConfig(vocab_size=size.vocab, context_length=max(length, PROMPT + NEW_TOKENS), **shape)
        return GPTForCausalLM(config, rngs=nnx.Rngs(0))
    if task.kind == "bert":
        config = BertConfig.bert_base(vocab_size=size.vocab, max_positions=max(length, 512), **shape)
        if size.vocab < 30522:  # the tiny vocabulary: flaxen's WordPiece special ids
            config = config.replace(mask_token_id=4, special_token_ids=(0, 1, 2, 3, 4))
        return BertForMaskedLM(config, rngs=nnx.Rngs(0))
    config = ViTConfig(image_size=size.image, patch_size=size.patch, num_labels=size.classes, **shape)
    return ViTForImageClassification(config, rngs=nnx.Rngs(0))


def host_batches(task: Task, size: Size, batch: int, length: int, count: int = 2) -> list[dict[str, Any]]:
    """Random batches as numpy arrays (`token_ids` (B, T+1) for GPT, (B, T) for BERT; images NHWC for ViT)."""
    import numpy as np

    rng = np.random.default_rng(0)
    batches = []
    for _ in range(count):
        if task.kind == "gpt":
            batches.append({"token_ids": rng.integers(0, size.vocab, (batch, length + 1), dtype=np.int32)})
        elif task.kind == "bert":
            ids = rng.integers(5 if size.vocab < 30522 else 1000, size.vocab, (batch, length), dtype=np.int32)
            ids[:, 0], ids[:, -1] = (2, 3) if size.vocab < 30522 else (101, 102)  # [CLS] … [SEP]
            batches.append({"token_ids": ids})
        else:
            images = rng.standard_normal((batch, size.image, size.image, 3), dtype=np.float32)
            batches.append({"images": images, "labels": rng.integers(0, size.classes, (batch,), dtype=np.int32)})
    return batches


def train_flaxen(args, task: Task, size: Size, batch: int, length: int, lever: dict[str, Any]) -> dict[str, Any]:
    import jax
    from flax import nnx

    apply_lever(lever)
    from flaxen.train import Trainer, adamw

    attention_choices = recorded_attention_choices()

    model = flaxen_model(task, size, length, lever)
    optimizer = adamw(LR, weight_decay=WEIGHT_DECAY, b1=BETAS[0], b2=BETAS[1], clip_norm=CLIP)
    compute_dtype = lever.get("compute_dtype", "auto")
    with tempfile.TemporaryDirectory(prefix="flaxen-gpu-bench-") as out_dir:
        trainer = Trainer(model, optimizer, out_dir, progress=False, tensorboard=False, compute_dtype=compute_dtype)
        params, others = nnx.state(model, nnx.Param, ...)
        state = {"params": params, "opt": jax.jit(optimizer.init)(params), "others": others, "step": 0}
        batches = [jax.device_put(b) for b in host_batches(task, size, batch, length)]
        key = jax.random.key(0)

        def step():
            index = state["step"]
            state["params"], state["opt"], state["others"], metrics = trainer._train_step(
                state["params"], state["opt"], state["others"], batches[index % len(batches)], key, index
            )
            state["step"] += 1
            return metrics

        timing = timed_windows(step, jax.block_until_ready, warmup=3, steps=args.steps, windows=args.windows)
        last = jax.device_get(step())
        result = timing | {
            "last_loss": round(float(last["loss"]), 4),
            "peak_memory_gb": _gb(jax_peak_bytes()),
            "compute_dtype": str(trainer.compute_dtype),
            "attention": sorted(attention_choices),
            "device": jax.devices()[0].device_kind,
        }
        if args.profile or lever.get("profile"):
            try:
                result["profile"] = profile_steps(step, args, name=args.case)
            except Exception as error:  # a profiler that cannot start must not lose the timing
                result["profile"] = {"error": f"{type(error).__name__}: {error}"[:300]}
    return result


def recorded_attention_choices() -> set[str]:
    """The attention implementations this process's programs trace to (flaxen's debug log), as they are traced."""
    import logging

    from flaxen.core import attention

    choices: set[str] = set()

    class Record(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            choices.add(record.getMessage())

    attention.logger.addHandler(Record())
    attention.logger.setLevel(logging.DEBUG)
    return choices


def profile_steps(step, args, *, name: str, steps: int = 3, calls: int | None = None, top: int = 14) -> dict:
    """A jax.profiler trace of `steps` steps (or of `calls` calls of `step` that take `steps` steps in all): the
    device kernels that took the most time per step, and how busy the device was (kernel time over wall time)."""
    import jax

    trace_dir = Path(tempfile.mkdtemp(prefix="flaxen-trace-")) / name.replace("/", "_").replace("+", "-")
    jax.block_until_ready(step())
    start = time.perf_counter()
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0  # device kernels and XLA's host events only
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True, profiler_options=options):
        for _ in range(steps if calls is None else calls):
            out = step()
        jax.block_until_ready(out)
    wall = time.perf_counter() - start
    traces = sorted(trace_dir.rglob("perfetto_trace.json.gz")) or sorted(trace_dir.rglob("*.trace.json.gz"))
    if not traces:
        return {"error": f"no trace written under {trace_dir}"}
    if args.profile_dir:  # one file per case, side by side
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
        shutil.copy(traces[-1], Path(args.profile_dir) / f"{trace_dir.name}.trace.json.gz")
    return summarise_trace(traces[-1], steps=steps, wall_s=wall, top=top)


def summarise_trace(path: Path, *, steps: int, wall_s: float, top: int) -> dict[str, Any]:
    """Device-side events of a trace (Chrome/perfetto JSON), summed by name, per step."""
    with gzip.open(path, "rt") as trace_file:
        trace = json.load(trace_file)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    process_names = {
        event["pid"]: event.get("args", {}).get("name", "")
        for event in events
        if event.get("ph") == "M" and event.get("name") == "process_name"
    }
    device_pids = {pid for pid, name in process_names.items() if "GPU" in name or "/device:" in name}
    totals: dict[str, float] = defaultdict(float)
    kernels = 0
    for event in events:
        if event.get("ph") == "X" and event.get("pid") in device_pids and "dur" in event:
            totals[event["name"]] += float(event["dur"])
            kernels += 1
    busy_us = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:top]
    categories: dict[str, float] = defaultdict(float)
    for name, us in totals.items():
        categories[kernel_category(name)] += us / 1e3 / steps
    return {
        "trace": str(path),
        "device_busy_ms_per_step": round(busy_us / 1e3 / steps, 2),
        "categories_ms_per_step": {name: round(ms, 2) for name, ms in sorted(categories.items(), key=lambda c: -c[1])},
        "wall_ms_per_step": round(wall_s * 1e3 / steps, 3),
        "kernels_per_step": round(kernels / steps, 1),
        "top_kernels_ms_per_step": {name[:90]: round(us / 1e3 / steps, 3) for name, us in ranked},
        "device_processes": sorted(process_names[pid] for pid in device_pids) or sorted(process_names.values()),
    }


KERNEL_CATEGORIES = (  # the first whose words occur in a kernel's (lower-cased) name
    ("attention (cuDNN)", ("cudnn", "fmha", "flash", "sdpa")),
    ("matmul", ("gemm", "xmma", "cutlass", "cublas", "sm90_", "sm80_", "triton_gemm", "wgmma", "dot")),
    ("scatter/gather", ("scatter", "gather", "dynamic-update", "dynamic_update")),
    ("reduction fusion", ("reduce", "reduction")),
    ("copy/transpose", ("copy", "transpose", "memcpy", "memset")),
    ("elementwise fusion", ("fusion", "loop", "convert", "add", "multiply")),
)


def kernel_category(name: str) -> str:
    lowered = name.lower()
    return next((category for category, words in KERNEL_CATEGORIES if any(w in lowered for w in words)), "other")


# --- Hugging Face
def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def hf_model(task: Task, size: Size, length: int):
    import torch
    import transformers

    torch.manual_seed(0)
    if task.kind == "gpt":
        config = transformers.GPT2Config(
            vocab_size=size.vocab,
            n_positions=max(length, PROMPT + NEW_TOKENS),
            n_embd=size.width,
            n_layer=size.layers,
            n_head=size.heads,
            n_inner=size.mlp,
            activation_function="gelu_new",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        model_class = transformers.GPT2LMHeadModel
    elif task.kind == "bert":
        config = transformers.BertConfig(
            vocab_size=size.vocab,
            hidden_size=size.width,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            intermediate_size=size.mlp,
            max_position_embeddings=max(length, 512),
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        model_class = transformers.BertForMaskedLM
    else:
        config = transformers.ViTConfig(
            image_size=size.image,
            patch_size=size.patch,
            hidden_size=size.width,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            intermediate_size=size.mlp,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            num_labels=size.classes,
        )
        model_class = transformers.ViTForImageClassification
    return model_class._from_config(config, attn_implementation="sdpa")


def hf_batches(task: Task, size: Size, batch: int, length: int, device) -> list[tuple]:
    """The same random batches as flaxen's; BERT's labels masked here, outside the timed step, as a collator does."""
    import numpy as np
    import torch

    batches = []
    generator = torch.Generator().manual_seed(0)
    for host in host_batches(task, size, batch, length):
        if task.kind == "gpt":
            batches.append((torch.from_numpy(host["token_ids"].astype(np.int64)).to(device),))
        elif task.kind == "bert":
            ids = torch.from_numpy(host["token_ids"].astype(np.int64))
            chosen = torch.rand(ids.shape, generator=generator) < 0.15
            chosen[:, 0] = chosen[:, -1] = False
            labels = torch.where(chosen, ids, torch.full_like(ids, -100))
            action = torch.rand(ids.shape, generator=generator)
            mask_id = 4 if size.vocab < 30522 else 103
            inputs = torch.where(chosen & (action < 0.8), torch.full_like(ids, mask_id), ids)
            random_ids = torch.randint(5, size.vocab, ids.shape, generator=generator)
            inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
            batches.append((inputs.to(device), labels.to(device)))
        else:
            pixels = torch.from_numpy(host["images"]).permute(0, 3, 1, 2).contiguous()
            batches.append((pixels.to(device), torch.from_numpy(host["labels"].astype(np.int64)).to(device)))
    return batches


def hf_loss(task: Task, forward, batch):
    import torch.nn.functional as F

    if task.kind == "gpt":
        (ids,) = batch
        logits = forward(input_ids=ids[:, :-1]).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
    if task.kind == "bert":
        inputs, labels = batch
        return forward(input_ids=inputs, labels=labels).loss
    pixels, labels = batch
    return forward(pixel_values=pixels, labels=labels).loss


def train_hf(args, task: Task, size: Size, batch: int, length: int, *, compile: bool) -> dict[str, Any]:
    import torch

    device = torch_device()
    model = hf_model(task, size, length).to(device).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS, fused=fused, foreach=not fused)
    forward = torch.compile(model) if compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    batches = hf_batches(task, size, batch, length, device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    state = {"step": 0}

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = hf_loss(task, forward, batches[state["step"] % len(batches)])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, CLIP, foreach=True)
        optimizer.step()
        state["step"] += 1
        return loss

    def sync(loss):
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timing = timed_windows(step, sync, warmup=3, steps=args.steps, windows=args.windows)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return timing | {
        "last_loss": round(float(step().detach()), 4),
        "peak_memory_gb": _gb(peak),
        "optimizer": "fused AdamW" if fused else "foreach AdamW",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    }


# ----------------------------------------------------------------------------------------------------------- ceilings
def ceilings(args) -> dict[str, Any]:
    """A bf16 matmul's rate (random inputs; mean of 10 after 3 warm-ups) and a copy's bandwidth (bytes read plus
    written), through JAX on this device."""
    import jax
    import jax.numpy as jnp

    n = 512 if args.tiny else 8192
    keys = jax.random.split(jax.random.key(0), 2)
    a, b = (jax.random.normal(k, (n, n), jnp.bfloat16) for k in keys)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.bfloat16))
    for _ in range(3):
        matmul(a, b).block_until_ready()
    start = time.perf_counter()
    for _ in range(10):
        out = matmul(a, b)
    out.block_until_ready()
    matmul_s = (time.perf_counter() - start) / 10
    elements = (1 << 20) if args.tiny else (1 << 30)  # 2 GiB of bf16
    x = jax.random.normal(keys[0], (elements,), jnp.bfloat16)
    copy = jax.jit(lambda v: v * jnp.bfloat16(1.0001))
    for _ in range(3):
        copy(x).block_until_ready()
    start = time.perf_counter()
    for _ in range(10):
        y = copy(x)
    y.block_until_ready()
    copy_s = (time.perf_counter() - start) / 10
    return {
        "matmul_tflops": round(2 * n**3 / matmul_s / 1e12, 1),
        "matmul": f"{n}x{n}x{n} bf16, random",
        "copy_gbps": round(2 * x.nbytes / copy_s / 1e9, 1),
        "copy": f"{x.nbytes / 2**30:.2f} GiB read + written",
        "device": jax.devices()[0].device_kind,
        "versions": versions(),
        "cudnn_attention": cudnn_support() if jax.default_backend() == "gpu" else "no GPU",
    }


def cudnn_support() -> dict[str, str]:
    """Whether cuDNN's fused attention trains (forward and backward) at the shapes flaxen's models hand it."""
    import jax
    import jax.numpy as jnp

    from flaxen.core import masks
    from flaxen.core.attention import attention_by_lengths

    shapes = {  # name: (batch, length, causal, right-padded, padded length)
        "GPT T=1024 causal": (2, 1024, True, False, 1024),
        "GPT T=1023 causal (text blocks)": (2, 1023, True, False, 1023),
        "BERT T=128 padding as lengths": (4, 128, False, True, 128),
        "ViT T=197": (4, 197, False, False, 197),
        "ViT T=197 padded to 198": (4, 197, False, False, 198),
    }
    results = {}
    for name, (batch, length, causal, padded, padded_length) in shapes.items():
        q, k, v = (jax.random.normal(jax.random.key(i), (batch, length, 12, 64), jnp.bfloat16) for i in range(3))
        mask = masks.padding(lengths=jnp.full((batch,), length - 5), key_length=length) if padded else None

        def loss(q, k, v, mask=mask, causal=causal, padded_length=padded_length):
            out = attention_by_lengths(
                q, k, v, mask=mask, is_causal=causal, padded_length=padded_length, implementation="cudnn"
            )
            return jnp.sum(out.astype(jnp.float32))

        try:
            jax.block_until_ready(jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v))
            results[name] = "ok"
        except Exception as error:
            results[name] = f"{type(error).__name__}: {error}"[:200]
    return results


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("jax", "jaxlib", "flax", "optax", "torch", "transformers"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


# ----------------------------------------------------------------------------------------------------------- decoding
def decode_sizes(args) -> tuple[Size, tuple[int, ...]]:
    size = size_of(Task("gpt"), args.tiny)
    return size, (1, 2) if args.tiny else DECODE_BATCHES


def decode_context(args) -> int:
    """The decoding model's positions: GPT-2's 1024 (tiny: just the prompt and the new tokens)."""
    return PROMPT + NEW_TOKENS if args.tiny else 1024


def decode_calls(generate, batches, args) -> tuple[dict[str, float], dict[str, float]]:
    """tokens/s of `generate(batch)` (median of 5 calls after one that compiles) and each first call's seconds."""
    rates, first = {}, {}
    for batch in batches:
        start = time.perf_counter()
        generate(batch)
        first[str(batch)] = round(time.perf_counter() - start, 2)
        times = []
        for _ in range(2 if args.tiny else 5):
            start = time.perf_counter()
            generate(batch)
            times.append(time.perf_counter() - start)
        rates[str(batch)] = round(batch * NEW_TOKENS / statistics.median(times), 1)
    return rates, first


def decode_flaxen(args, lever: dict[str, Any]) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    apply_lever(lever)
    from flaxen import generate_ids

    size, batches = decode_sizes(args)
    dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    config = lever.get("config", {}) | {"dtype": dtype}
    model = flaxen_model(Task("gpt"), size, decode_context(args), lever | {"config": config})
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda p: p.astype(dtype), params))  # weights stored in the compute dtype
    weight_bytes = sum(p.nbytes for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    rng = np.random.default_rng(0)
    prompts = {b: rng.integers(0, size.vocab, (b, PROMPT), dtype=np.int32) for b in batches}

    def generate(batch):
        tokens = generate_ids(model, prompts[batch], max_new_tokens=NEW_TOKENS, temperature=0.0)
        assert tokens.shape == (batch, NEW_TOKENS)

    rates, first = decode_calls(generate, batches, args)
    profile = {}
    if args.profile or lever.get("profile"):
        try:
            one_call = lambda: generate_ids(model, prompts[1], max_new_tokens=NEW_TOKENS, temperature=0.0)  # noqa: E731
            profile = {"profile_batch_1": profile_steps(one_call, args, name=args.case, steps=NEW_TOKENS, calls=1)}
        except Exception as error:
            profile = {"profile_batch_1": {"error": f"{type(error).__name__}: {error}"[:300]}}
    return profile | {
        "unit": "tokens/s",
        "tokens_per_s": rates,
        "first_call_s": first,
        "dtype": str(jnp.dtype(dtype)),
        "ceiling_weight_bytes": weight_bytes,
        "peak_memory_gb": _gb(jax_peak_bytes()),
        "startup_s": round(time.perf_counter() - PROCESS_START, 1),
    }


def decode_hf(args) -> dict[str, Any]:
    import numpy as np
    import torch

    size, batches = decode_sizes(args)
    device = torch_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = hf_model(Task("gpt"), size, decode_context(args)).to(device, dtype).eval()
    rng = np.random.default_rng(0)
    prompts = {
        b: torch.from_numpy(rng.integers(0, size.vocab, (b, PROMPT)).astype(np.int64)).to(device) for b in batches
    }

    def generate(batch):
        with torch.inference_mode():
            out = model.generate(
                prompts[batch],
                attention_mask=torch.ones_like(prompts[batch]),
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )
        if device.type == "cuda":
            torch.cuda.synchronize()
        assert out.shape == (batch, PROMPT + NEW_TOKENS)

    rates, first = decode_calls(generate, batches, args)
    return {
        "unit": "tokens/s",
        "tokens_per_s": rates,
        "first_call_s": first,
        "dtype": str(dtype),
        "peak_memory_gb": _gb(torch.cuda.max_memory_allocated() if device.type == "cuda" else None),
        "startup_s": round(time.perf_counter() - PROCESS_START, 1),
    }


def _gb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**30, 2)


# ----------------------------------------------------------------------------------------------------------- table
def markdown_table(rows: list[dict[str, Any]], args) -> str:
    """One line per task: each implementation's rate (and MFU), flaxen's ratios to the peers."""
    by_task: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        task, _, implementation = row["case"].partition("/")
        by_task[task][implementation] = row
    lines = [
        f"gpu.py{' --tiny' if args.tiny else ''}: " + json.dumps(CEILINGS),
        "",
        "| case | flaxen | HF eager | HF torch.compile | flaxen ÷ eager | flaxen ÷ compile | first step s (flaxen) |"
        " peak GB (flaxen / eager / compile) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for task, implementations in by_task.items():
        if task == "ceilings":
            continue
        if task == "decode":
            hf = implementations.get("hf_eager", {})
            for name, flaxen in implementations.items():
                if not name.startswith("flaxen"):
                    continue
                lever = "" if name == "flaxen" else f" {name}"
                for batch in map(str, DECODE_BATCHES if not args.tiny else (1, 2)):
                    ours = flaxen.get("tokens_per_s", {}).get(batch)
                    theirs = hf.get("tokens_per_s", {}).get(batch)
                    ceiling = flaxen.get("ceiling_tokens_per_s", {}).get(batch)
                    lines.append(
                        f"| decode batch {batch}{lever} (tokens/s; ceiling {_cell(ceiling)}) | {_cell(ours)} | "
                        f"{_cell(theirs)} | – | {_ratio(ours, theirs)} | – | "
                        f"{flaxen.get('first_call_s', {}).get(batch, '–')} | "
                        f"{_cell(flaxen.get('peak_memory_gb'))} / {_cell(hf.get('peak_memory_gb'))} / – |"
                    )
            continue
        for implementation, row in implementations.items():
            if implementation.startswith("flaxen+"):
                vs_eager = _ratio(row.get("rate"), _get(implementations, "hf_eager"))
                vs_compile = _ratio(row.get("rate"), _get(implementations, "hf_compile"))
                lines.append(
                    f"| {task} {implementation} | {_rate(row)} | | | {vs_eager} | {vs_compile} | "
                    f"{row.get('first_step_s', '–')} | {_cell(row.get('peak_memory_gb'))} |"
                )
        flaxen = implementations.get("flaxen", {})
        unit = next((r.get("unit") for r in implementations.values() if r.get("unit")), "")
        peaks = " / ".join(_cell(implementations.get(i, {}).get("peak_memory_gb")) for i in TASKS[task].implementations)
        lines.append(
            f"| {task} ({unit}) | {_rate(flaxen)} | {_rate(implementations.get('hf_eager', {}))} | "
            f"{_rate(implementations.get('hf_compile', {}))} | "
            f"{_ratio(flaxen.get('rate'), _get(implementations, 'hf_eager'))} | "
            f"{_ratio(flaxen.get('rate'), _get(implementations, 'hf_compile'))} | {flaxen.get('first_step_s', '–')} | "
            f"{peaks} |"
        )
    skipped = [row["case"] for row in rows if "skipped" in row]
    failed = [f"{row['case']}: {row['error']}" for row in rows if "error" in row]
    if skipped:
        lines.append(f"\nskipped (budget): {', '.join(skipped)}")
    if failed:
        lines += ["", "failed:", *failed]
    return "\n".join(lines)


def _get(implementations: dict[str, dict[str, Any]], name: str) -> float | None:
    return implementations.get(name, {}).get("rate")


def _rate(row: dict[str, Any]) -> str:
    if "rate" not in row:
        return "skipped" if "skipped" in row else ("failed" if "error" in row else "–")
    mfu = f" ({row['mfu']:.2f})" if "mfu" in row else ""
    return f"{row['rate']:,.0f}{mfu}"


def _cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if isinstance(value, (int, float)) and value >= 100 else str(value)


def _ratio(a, b) -> str:
    return "–" if not a or not b else f"{a / b:.2f}"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.case:
        settings = json.loads(os.environ.get(SETTINGS_VARIABLE, "{}"))
        args = argparse.Namespace(**(settings | {"case": args.case}))
        print(json.dumps(run_case(args), default=str), flush=True)
        return
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if math.isfinite(args.budget) and args.budget <= 0:
        raise SystemExit("--budget must be positive seconds")
    run_all(args)


if __name__ == "__main__":
    main()
