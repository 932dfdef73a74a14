#!/usr/bin/env python
"""Pretraining from a corpus larger than memory allows: `flaxen tokenize`, then `flaxen pretrain gpt` from the folder.

    python benchmarks/large_corpus.py [--gigabytes 2] [--steps 30] [--in-memory-megabytes 100] [--keep-tokens]
    python benchmarks/large_corpus.py --reuse-tokens        # the pretraining rows again, from the kept folder

- corpus: Shakespeare's plays, their lines shuffled (seeded) into 100 MB files until --gigabytes is reached
  (kept in benchmarks/.data/large-corpus for the next run).
- tokenize: `flaxen tokenize` of the whole corpus with a BPE trained on the plays (--tokenizer): seconds, MB/s of
  text and peak RSS.
- pretrain from the token folder: `flaxen pretrain gpt --preset mini` for --steps: seconds from launch to the first
  logged training step (step 10: imports, opening the folder, compiling, ten steps), to exit, and peak RSS.
- the text-files path for scale: the same command on --in-memory-megabytes of the text files themselves
  (tokenizer training and tokenizing included, as that path does).
Each command runs in its own process; peak RSS is that process's (os.wait4). stdout: one JSON line per
measurement, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PART_BYTES = 100_000_000
CORPUS = Path(__file__).parent / ".data" / "large-corpus"
TOKENS = Path(__file__).parent / ".data" / "large-corpus-tokens"
FLAXEN = Path(sys.executable).with_name("flaxen")


def info(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_corpus(gigabytes: float) -> list[Path]:
    from flaxen.data import shakespeare_files

    parts = max(1, round(gigabytes * 1e9 / PART_BYTES))
    CORPUS.mkdir(parents=True, exist_ok=True)
    lines = [line for path in shakespeare_files() for line in path.read_text().splitlines() if line.strip()]
    paths = []
    for index in range(parts):
        path = CORPUS / f"part-{index:03d}.txt"
        if not path.is_file() or path.stat().st_size < PART_BYTES:
            info(f"writing {path}")
            rng, size = random.Random(index), 0
            with open(path, "w") as handle:
                while size < PART_BYTES:
                    block = "\n".join(rng.sample(lines, 2000)) + "\n"
                    handle.write(block)
                    size += len(block.encode())
        paths.append(path)
    return paths


def run_measured(command: list[str], *, first_log: Path | None = None) -> dict:
    """Wall seconds, peak RSS (MB), the command's last stdout line as JSON and, with `first_log`, seconds until
    that metrics.jsonl has its first record."""
    output = tempfile.TemporaryFile()
    errors = tempfile.TemporaryFile()
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=output, stderr=errors)
    first_record = None
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if first_log is not None and first_record is None and first_log.is_file() and first_log.read_text().strip():
            first_record = time.perf_counter() - start
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    output.seek(0)
    errors.seek(0)
    stdout, stderr = output.read().decode(), errors.read().decode()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed: {stderr.strip().splitlines()[-3:]}")
    result = {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}
    if first_log is not None:
        result["seconds_to_first_log"] = None if first_record is None else round(first_record, 1)
    last = stdout.strip().splitlines()[-1]
    return result | {"report": json.loads(last)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--in-memory-megabytes", type=int, default=100)
    parser.add_argument("--keep-tokens", action="store_true", help=f"keep the token folder in {TOKENS}")
    parser.add_argument("--reuse-tokens", action="store_true", help="skip tokenizing: use the kept token folder")
    args = parser.parse_args()

    from flaxen.data import shakespeare_files
    from flaxen.text import save_tokenizer, train_bpe

    parts = make_corpus(args.gigabytes)
    corpus_bytes = sum(path.stat().st_size for path in parts)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokens = TOKENS if args.reuse_tokens and TOKENS.is_dir() else tmp / "tokens"
        if tokens != TOKENS:
            tokenizer = save_tokenizer(train_bpe(shakespeare_files(), vocab_size=4096), tmp / "tokenizer")
            info(f"tokenizing {corpus_bytes / 1e9:.2f} GB")
            command = [str(FLAXEN), "tokenize", *map(str, parts), "--tokenizer", str(tokenizer), "--out", str(tokens)]
            measured = run_measured([*command, "--no-progress"])
            report = measured.pop("report")
            rows.append(
                {
                    "bench": "tokenize",
                    "corpus_gb": round(corpus_bytes / 1e9, 2),
                    "tokens": report["num_tokens"],
                    "megabytes_per_second": round(corpus_bytes / 1e6 / measured["seconds"], 1),
                    **measured,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            if args.keep_tokens:
                shutil.rmtree(TOKENS, ignore_errors=True)
                shutil.copytree(tokens, TOKENS)

        train = [str(FLAXEN), "pretrain", "gpt", "--preset", "mini", "--steps", str(args.steps), "--batch-size", "16"]
        train += ["--eval-every", str(args.steps), "--no-progress", "--no-tensorboard"]
        info("pretraining from the token folder")
        out = tmp / "run-tokens"
        measured = run_measured([*train, "--data", str(tokens), "--out", str(out)], first_log=out / "metrics.jsonl")
        measured.pop("report")
        rows.append({"bench": "pretrain gpt", "data": f"token folder, {corpus_bytes / 1e9:.2f} GB", **measured})
        print(json.dumps(rows[-1]), flush=True)

        in_memory = []
        for path in parts:
            if sum(p.stat().st_size for p in in_memory) >= args.in_memory_megabytes * 1e6:
                break
            in_memory.append(path)
        size = sum(p.stat().st_size for p in in_memory)
        info(f"pretraining from {size / 1e6:.0f} MB of text files")
        out = tmp / "run-files"
        measured = run_measured(
            [*train, "--data", *map(str, in_memory), "--out", str(out)], first_log=out / "metrics.jsonl"
        )
        measured.pop("report")
        rows.append({"bench": "pretrain gpt", "data": f"text files in memory, {size / 1e9:.2f} GB", **measured})
        print(json.dumps(rows[-1]), flush=True)

    print("\n| measurement | data | seconds to first log (step 10) | seconds | peak RSS MB | MB/s |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['bench']} | {row.get('data', str(row.get('corpus_gb')) + ' GB')} | "
            f"{row.get('seconds_to_first_log', '')} | {row['seconds']} | {row['peak_rss_mb']} | "
            f"{row.get('megabytes_per_second', '')} |"
        )


if __name__ == "__main__":
    main()
