#!/usr/bin/env python
"""A 100,000-file image folder: start-up, memory and training images/s, decoded per batch against decoded up front.

    python benchmarks/image_folder.py [--images 100000] [--steps 40] [--mixed]

The folder: MNIST-5k's digits written as 28x28 PNG files (each digit 20 times, shifted by a pixel or two so no
two files are the same), one subfolder per class, in benchmarks/.data/digit-folder (kept for the next run). With
--mixed, a second folder of the same digits as JPEGs of mixed sizes and aspect ratios (20 to 48 pixels a side, grey
as the digits) in benchmarks/.data/mixed-folder is read per batch too, resized and cropped to 28x28 (image_size=28),
so its model and steps are the fixed folder's and only the reading differs.
Each path runs `flaxen.recipes.train_vit` in its own process for --steps steps (batch 64, the default data-sized
ViT): seconds from launch to the first logged step (listing or decoding, statistics, compiling, ten steps), the
training images/s over the logged steps, and peak RSS. "decoded up front" is the path every folder took before
(forced with LAZY_IMAGES = inf). stdout: one JSON line per path, then a Markdown table.
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

FOLDER = Path(__file__).parent / ".data" / "digit-folder"
MIXED_FOLDER = Path(__file__).parent / ".data" / "mixed-folder"
RUN = """
import json, math, sys, time
start = time.perf_counter()
from flaxen import recipes
from flaxen.data import images
if sys.argv[1] == "up front":  # "per batch" and "per batch, mixed sizes" are the default above 20,000 images
    images.LAZY_IMAGES = math.inf
result = recipes.train_vit(sys.argv[2], images=sys.argv[3], steps=int(sys.argv[4]), batch_size=64, progress=False,
                           tensorboard=False, eval_every=int(sys.argv[4]), image_size=28, learning_rate=1e-3)
print(json.dumps(result))
"""


def info(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_folder(count: int) -> Path:
    import numpy as np
    from PIL import Image

    from flaxen.data import mnist_arrays

    marker = FOLDER / f".complete-{count}"
    if marker.exists():
        return FOLDER
    pixels, labels = mnist_arrays()
    info(f"writing {count} PNG files to {FOLDER}")
    for index in range(count):
        source = index % len(pixels)
        shift = (index // len(pixels)) % 5 - 2, (index // len(pixels)) // 5 % 5 - 2
        digit = np.roll(pixels[source], shift, axis=(0, 1))
        folder = FOLDER / str(labels[source])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digit.astype(np.uint8)).save(folder / f"{index:06d}.png")
    marker.touch()
    return FOLDER


def make_mixed_folder(count: int) -> Path:
    """The digits as grey JPEGs of random sizes and aspect ratios (a photo folder's variety, a digit's content)."""
    import numpy as np
    from PIL import Image

    from flaxen.data import mnist_arrays

    marker = MIXED_FOLDER / f".complete-{count}"
    if marker.exists():
        return MIXED_FOLDER
    pixels, labels = mnist_arrays()
    rng = np.random.default_rng(0)
    info(f"writing {count} JPEG files of mixed sizes to {MIXED_FOLDER}")
    for index in range(count):
        source = index % len(pixels)
        width, height = rng.integers(20, 49, 2)
        digit = Image.fromarray(pixels[source].astype(np.uint8)).resize((int(width), int(height)))
        folder = MIXED_FOLDER / str(labels[source])
        folder.mkdir(parents=True, exist_ok=True)
        digit.save(folder / f"{index:06d}.jpg", quality=90)
    marker.touch()
    return MIXED_FOLDER


def measure(path: str, folder: Path, steps: int, tmp: Path) -> dict:
    run = tmp / path.replace(" ", "-").replace(",", "")
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", RUN, path, str(run), str(folder), str(steps)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    first = None
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        metrics = run / "metrics.jsonl"
        if first is None and metrics.is_file() and metrics.read_text().strip():
            first = time.perf_counter() - start
        time.sleep(0.1)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{path} failed")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [record for record in records if record["split"] == "train"]
    return {
        "path": path,
        "images": sum(1 for file in folder.rglob("*") if file.suffix in (".png", ".jpg")),
        "seconds_to_first_log": None if first is None else round(first, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "train_images_per_second": round(sum(r["items_per_sec"] for r in train[1:]) / max(1, len(train) - 1), 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--mixed", action="store_true", help="also a folder of JPEGs of mixed sizes, per batch")
    parser.add_argument("--only-mixed", action="store_true", help="only the mixed folder and the fixed one per batch")
    args = parser.parse_args()
    folder = make_folder(args.images)
    paths = [("per batch", folder)] + ([] if args.only_mixed else [("up front", folder)])
    if args.mixed or args.only_mixed:
        paths.append(("per batch, mixed sizes", make_mixed_folder(args.images)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path, source in paths:
            info(f"training, images decoded {path}")
            rows.append(measure(path, source, args.steps, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| images decoded | files | seconds to first log (step 10) | seconds | train images/s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['path']} | {row['images']} | {row['seconds_to_first_log']} | {row['seconds']} | "
            f"{row['train_images_per_second']} | {row['peak_rss_mb']} |"
        )


if __name__ == "__main__":
    main()
