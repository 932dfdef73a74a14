#!/usr/bin/env python
"""Where a training step's time goes, op by op: flaxen (XLA thunks) and the HF peer (torch profiler).

    python benchmarks/profile_step.py [--model gpt|bert|vit] [--steps 5] [--top 25]

flaxen: the real Trainer step compiled with `xla_cpu_enable_xprof_traceme=True`, run under `jax.profiler.trace`;
each XLA thunk's wall time is summed by HLO instruction name and grouped into classes (matmul / YNN fusion,
elementwise fusion, reduce, copy/transpose, ...). Times are per step. Thunks of one step may run concurrently on the
two cores, so the sum can exceed the step's wall time.
HF: `torch.profiler` self-CPU time per aten op over the same number of steps (eager).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import levers  # noqa: E402
import torch  # noqa: E402


def classify(name: str, hlo: dict[str, str]) -> str:
    line = hlo.get(name, "")
    if "__ynn_fusion" in line or " dot(" in line or "custom-call" in line:
        return "matmul (dot / YNN fusion)"
    if "kind=kLoop" in line or "kind=kInput" in line or "kind=kOutput" in line:
        return "reduce fusion" if "reduce" in line else "elementwise fusion"
    for op in ("reduce", "copy", "transpose", "scatter", "gather", "sort", "dynamic-update-slice", "while", "rng"):
        if f" {op}(" in line or f" {op}-" in line:
            return op
    return "other"


def dot_flops(name: str, text: str, hlo: dict[str, str]) -> tuple[float, str]:
    """FLOPs of the dot inside a YNN fusion (2 · output elements · contracted size) and its form, e.g. 'NT'."""
    called = re.search(r"calls=%([\w.\-]+)", hlo.get(name, ""))
    if not called:
        return 0.0, ""
    start = text.find(f"%{called.group(1)} ")
    body = text[start : text.find("\n}", start)]
    dot = re.search(
        r"= f32\[([\d,]*)\][^=]*? dot\(%([\w.\-]+), %([\w.\-]+)\), "
        r"(?:lhs_batch_dims=\{[\d,]*\}, rhs_batch_dims=\{[\d,]*\}, )?"
        r"lhs_contracting_dims=\{([\d,]*)\}, rhs_contracting_dims=\{([\d,]*)\}",
        body,
    )
    if not dot:
        return 0.0, ""
    out = [int(x) for x in dot.group(1).split(",") if x]
    lhs = re.search(rf"%{re.escape(dot.group(2))} = f32\[([\d,]*)\]", body)
    lhs_dims = [int(x) for x in lhs.group(1).split(",")] if lhs else []
    contracting = [int(x) for x in dot.group(4).split(",") if x]
    size = 1
    for axis in contracting:
        size *= lhs_dims[axis] if axis < len(lhs_dims) else 1
    elements = 1
    for d in out:
        elements *= d
    lhs_form = "T" if contracting and contracting[-1] != len(lhs_dims) - 1 else "N"
    rhs_c = [int(x) for x in dot.group(5).split(",") if x]
    rhs_form = "T" if rhs_c and rhs_c[0] != (len(lhs_dims) - 2 if "batch" in dot.group(0) else 0) else "N"
    return 2.0 * elements * size, lhs_form + rhs_form


def profile_flaxen(model_name: str, steps: int, top: int) -> float:
    model, batches, _ = levers.build(model_name)
    opt = levers.optimizer()
    step = levers.Step(None, model, batches, opt)
    lowered = levers.trainer_step(model, opt).lower(*step.args())
    compiled = lowered.compile(compiler_options={"xla_cpu_enable_xprof_traceme": True})
    step.fn = compiled
    # HLO instruction name -> its line in the optimized module, to classify thunks
    hlo = {}
    for line in compiled.as_text().splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
        if match:
            hlo[match.group(1)] = line
    for _ in range(3):
        step()
    with tempfile.TemporaryDirectory() as trace_dir:
        start = time.perf_counter()
        with jax.profiler.trace(trace_dir):
            for _ in range(steps):
                step()
        wall = (time.perf_counter() - start) / steps
        from jax._src.lib import _profile_data

        path = next(Path(trace_dir).rglob("*.xplane.pb"))
        data = _profile_data.ProfileData.from_file(str(path))
    by_name: dict[str, float] = collections.defaultdict(float)
    for plane in data.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for event in line.events:
                if event.name in hlo:
                    by_name[event.name] += event.duration_ns / 1e9 / steps
    by_class: dict[str, float] = collections.defaultdict(float)
    for name, seconds in by_name.items():
        by_class[classify(name, hlo)] += seconds
    total = sum(by_name.values())
    print(f"\n## flaxen {model_name}: {wall * 1e3:.0f} ms per step (profiled), thunk time {total * 1e3:.0f} ms\n")
    print("| class | ms/step | share |\n|---|---:|---:|")
    for cls, seconds in sorted(by_class.items(), key=lambda kv: -kv[1]):
        print(f"| {cls} | {seconds * 1e3:.1f} | {seconds / total:.0%} |")
    text = compiled.as_text()
    matmul_time = matmul_flops = 0.0
    by_form: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for name, seconds in by_name.items():
        flops, form = dot_flops(name, text, hlo)
        if flops:
            matmul_time += seconds
            matmul_flops += flops
            by_form[form][0] += seconds
            by_form[form][1] += flops
    if matmul_time:
        print(
            f"\nmatmuls: {matmul_flops / 1e9:.1f} GFLOP in {matmul_time * 1e3:.0f} ms = "
            f"{matmul_flops / matmul_time / 1e9:.0f} GFLOP/s; by form: "
            + ", ".join(
                f"{form or '?'} {f / 1e9:.1f} GFLOP at {f / t / 1e9:.0f}" for form, (t, f) in sorted(by_form.items())
            )
        )
    for title, keep in (
        ("matmuls", lambda n: classify(n, hlo).startswith("matmul")),
        ("everything else", lambda n: not classify(n, hlo).startswith("matmul")),
    ):
        print(
            f"\n| top HLO instructions: {title} | ms/step | class | shape | GFLOP/s (form) | op |"
            "\n|---|---:|---|---|---|---|"
        )
        chosen = [(n, s) for n, s in by_name.items() if keep(n)]
        for name, seconds in sorted(chosen, key=lambda kv: -kv[1])[:top]:
            shape = re.search(r"= (\S+\[[^\]]*\])", hlo[name])
            op = re.search(r'op_name="([^"]+)"', hlo[name])
            flops, form = dot_flops(name, text, hlo)
            rate = f"{flops / seconds / 1e9:.0f} ({form})" if flops else ""
            print(
                f"| {name} | {seconds * 1e3:.1f} | {classify(name, hlo)} | "
                f"{shape.group(1) if shape else ''} | {rate} | "
                f"{op.group(1).replace('jit(train_step)/', '') if op else ''} |"
            )
    return wall


def profile_peer(model_name: str, steps: int, top: int) -> None:
    _, _, full = levers._peer_parts(model_name)
    for _ in range(3):
        full()
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            full()
    wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6 / steps
    print(f"\n## HF eager {model_name}: {wall * 1e3:.0f} ms per step (profiled), op self time {total * 1e3:.0f} ms\n")
    print("| aten op | ms/step | calls/step |\n|---|---:|---:|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        print(f"| {e.key} | {e.self_cpu_time_total / 1e3 / steps:.1f} | {e.count / steps:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt", choices=["gpt", "bert", "vit"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    profile_flaxen(args.model, args.steps, args.top)
    if not args.no_peer:
        profile_peer(args.model, args.steps, args.top)


if __name__ == "__main__":
    main()
