"""The three journeys as library functions: pretrain GPT, pretrain/finetune BERT, train ViT; evaluate a run.

Each recipe checks every input before it writes anything, so a bad argument leaves the output folder as it was.
The command line (`flaxen.cli`) only parses arguments and calls these.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from flaxen import data as fdata
from flaxen import text as ftext
from flaxen.data import ArrayDataset, DataSplits
from flaxen.runs import RUN_FILE, TOKENIZER_FILE, check_tokenizer_fits, load_run, read_run_file
from flaxen.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification
from flaxen.models.gpt import GPTConfig, GPTForCausalLM
from flaxen.models.vit import ViTConfig, ViTForImageClassification
from flaxen.train import Trainer, adamw, make_mesh
from flaxen.train.checkpoints import PARTIAL_SUFFIX, write_atomically, write_run_files
from flaxen.train.sharding import check_batch_size

GPT_PRESETS = {"tiny": GPTConfig.tiny, "small": GPTConfig.small, "gpt2": GPTConfig.gpt2}
BERT_PRESETS = {"tiny": BertConfig.tiny, "small": BertConfig.small, "bert_base": BertConfig.bert_base}
VIT_PRESETS = {"tiny": ViTConfig.tiny, "small": ViTConfig.small}


def training_options(
    *,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 3e-4,
    warmup: int | None = None,
    weight_decay: float = 0.01,
    eval_every: int | None = None,
    seed: int = 0,
    compute_dtype: str | None = None,
    progress: bool = True,
    fsdp: int = 1,
) -> dict[str, Any]:
    """Trainer and optimizer settings shared by every recipe, checked up front.

    The run uses every device: `fsdp` of them split each parameter and its optimizer state, and all of them
    split each batch (so `batch_size` must divide by the device count).
    """
    if steps < 1 or batch_size < 1 or learning_rate <= 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1 and learning_rate > 0 (got {steps}, {batch_size}, {learning_rate})")
    mesh = make_mesh(fsdp=fsdp)
    check_batch_size(batch_size, mesh)
    return {
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "warmup": max(1, steps // 20) if warmup is None else warmup,
        "weight_decay": weight_decay,
        "eval_every": eval_every or max(1, steps // 5),
        "seed": seed,
        "compute_dtype": compute_dtype,
        "progress": progress,
        "mesh": mesh,
    }


def pretrain_gpt(
    files: Sequence[str | Path], out_dir: str | Path, *, preset: str = "small", vocab_size: int = 8192,
    context_length: int | None = None, encoding: str = "utf-8", resume: bool = False, overwrite: bool = False,
    config_overrides: dict[str, Any] | None = None, **options,
) -> dict[str, Any]:
    """Train a byte-level BPE on `files` (or reuse the run's), pack blocks, and pretrain GPTForCausalLM."""
    options = training_options(**options)
    out_dir = _check_out_dir(out_dir, GPTForCausalLM, resume=resume, overwrite=overwrite)
    tokenizer = _tokenizer_for(out_dir, resume, lambda: ftext.train_bpe(files, vocab_size=vocab_size, encoding=encoding))
    config = _preset(GPT_PRESETS, preset)(vocab_size=tokenizer.get_vocab_size(), **(config_overrides or {}))
    if context_length is not None:
        config = config.replace(context_length=context_length)
    # One token more than the context: the model reads T tokens and predicts each next one.
    splits = fdata.text_blocks(files, tokenizer, config.context_length + 1, encoding=encoding)
    model = GPTForCausalLM(config, rngs=nnx.Rngs(options["seed"]))
    run_info = {"journey": "pretrain-gpt", "data": {"files": [str(f) for f in files], "encoding": encoding}, **splits.info}
    return _fit(model, splits, out_dir, tokenizer, options, run_info, resume=resume, overwrite=overwrite)


def pretrain_bert(
    files: Sequence[str | Path], out_dir: str | Path, *, preset: str = "small", vocab_size: int = 8192,
    max_length: int = 128, encoding: str = "utf-8", resume: bool = False, overwrite: bool = False,
    config_overrides: dict[str, Any] | None = None, **options,
) -> dict[str, Any]:
    """Train a WordPiece on `files` (or reuse the run's) and pretrain BertForMaskedLM on [CLS] block [SEP] rows."""
    options = training_options(**options)
    out_dir = _check_out_dir(out_dir, BertForMaskedLM, resume=resume, overwrite=overwrite)
    tokenizer = _tokenizer_for(out_dir, resume, lambda: ftext.train_wordpiece(files, vocab_size=vocab_size, encoding=encoding))
    splits = mlm_blocks(files, tokenizer, max_length, encoding=encoding)
    config = _preset(BERT_PRESETS, preset)(**_bert_token_fields(tokenizer), **(config_overrides or {}))
    config = config.replace(max_positions=max(config.max_positions, max_length))
    model = BertForMaskedLM(config, rngs=nnx.Rngs(options["seed"]))
    run_info = {"journey": "pretrain-bert", "data": {"files": [str(f) for f in files], "encoding": encoding, "max_length": max_length}}
    return _fit(model, splits, out_dir, tokenizer, options, run_info | splits.info, resume=resume, overwrite=overwrite)


def finetune_bert(
    table: str | Path, out_dir: str | Path, *, start_from: str | Path | None = None, preset: str = "small",
    text_column: str = "text", label_column: str = "label", labels: Sequence[str] | None = None,
    num_labels: int | None = None, max_length: int = 128, encoding: str = "utf-8", vocab_size: int = 8192,
    resume: bool = False, overwrite: bool = False, config_overrides: dict[str, Any] | None = None, **options,
) -> dict[str, Any]:
    """Finetune BertForSequenceClassification on a labelled table, starting from our MLM run, a Hugging Face BERT
    folder, or (no `start_from`) a fresh model with a WordPiece trained on the table's texts."""
    options = training_options(**options)
    out_dir = _check_out_dir(out_dir, BertForSequenceClassification, resume=resume, overwrite=overwrite)
    start_from = Path(start_from) if start_from is not None else None
    if start_from is not None and not start_from.is_dir():
        raise ValueError(f"--from {start_from} is not a folder; give a flaxen run folder or a Hugging Face BERT folder")

    def new_tokenizer():
        if start_from is not None:
            return ftext.load_tokenizer(start_from / TOKENIZER_FILE if (start_from / TOKENIZER_FILE).exists() else start_from)
        texts = fdata.table_texts(table, text_column, encoding=encoding)
        return ftext.train_wordpiece(iter(texts), vocab_size=vocab_size)

    tokenizer = _tokenizer_for(out_dir, resume, new_tokenizer)
    splits = fdata.text_classification(
        table, tokenizer, text_column=text_column, label_column=label_column, labels=labels, max_length=max_length,
        encoding=encoding, seed=options["seed"],
    )
    num_labels = num_labels or splits.info["num_labels"]
    fdata.check_num_labels(splits, num_labels)
    model = _classifier_from(start_from, tokenizer, preset, num_labels, max_length, options["seed"], config_overrides)
    run_info = {
        "journey": "finetune-bert", "start_from": None if start_from is None else str(start_from),
        "data": {"table": str(table), "text_column": text_column, "label_column": label_column,
                 "labels": list(labels) if labels else None, "encoding": encoding, "max_length": max_length},
        **splits.info,
    }
    return _fit(model, splits, out_dir, tokenizer, options, run_info, resume=resume, overwrite=overwrite)


def train_vit(
    out_dir: str | Path, *, images: str | Path | None = None, preset: str = "small", patch_size: int | None = None,
    augment: bool = True, resume: bool = False, overwrite: bool = False,
    config_overrides: dict[str, Any] | None = None, **options,
) -> dict[str, Any]:
    """Train ViTForImageClassification on an image folder (one subfolder per class) or, by default, MNIST-5k."""
    options = training_options(**options)
    out_dir = _check_out_dir(out_dir, ViTForImageClassification, resume=resume, overwrite=overwrite)
    if images is None:
        pixels, labels = fdata.mnist_arrays()
        splits = fdata.image_classification(pixels, labels, seed=options["seed"])
        source = {"mnist": True}
    else:
        splits = fdata.image_folder(images, seed=options["seed"])
        source = {"images": str(images)}
    height, width, channels = splits.info["image_shape"]
    if height != width:
        raise ValueError(f"images are {height}×{width}; flaxen's ViT takes square images, so crop or resize them")
    config = vit_config(preset, image_size=height, channels=channels, num_labels=splits.info["num_labels"],
                        patch_size=patch_size, overrides=config_overrides)
    model = ViTForImageClassification(config, rngs=nnx.Rngs(options["seed"]))
    run_info = {"journey": "train-vit", "data": source | {"augment": augment}, **splits.info}
    # Digits and many other images change meaning when mirrored, so only crops are used.
    transform = functools.partial(_augment_batch, pad=max(1, height // 14)) if augment else None
    return _fit(model, splits, out_dir, None, options, run_info, resume=resume, overwrite=overwrite, augment=transform)


def evaluate_run(run_dir: str | Path, *, batch_size: int = 64) -> dict[str, Any]:
    """Re-build the run's validation split from what run.json recorded and score its best checkpoint."""
    run = load_run(run_dir)
    info = run.info
    recorded = info.get("data", {})
    journey = info.get("journey")
    if journey == "pretrain-gpt":
        splits = fdata.text_blocks(recorded["files"], run.tokenizer, info["block_size"], encoding=recorded["encoding"])
    elif journey == "pretrain-bert":
        splits = mlm_blocks(recorded["files"], run.tokenizer, recorded["max_length"], encoding=recorded["encoding"])
    elif journey == "finetune-bert":
        splits = fdata.text_classification(
            recorded["table"], run.tokenizer, text_column=recorded["text_column"], label_column=recorded["label_column"],
            labels=recorded["labels"], max_length=recorded["max_length"], encoding=recorded["encoding"],
            seed=info.get("seed", 0),
        )
    elif journey == "train-vit":
        if recorded.get("mnist"):
            pixels, labels = fdata.mnist_arrays()
            splits = fdata.image_classification(pixels, labels, seed=info.get("seed", 0), mean=info["mean"], std=info["std"])
        else:
            splits = fdata.image_folder(recorded["images"], seed=info.get("seed", 0), mean=info["mean"], std=info["std"])
    else:
        raise ValueError(f"{run_dir} was not made by a flaxen recipe (run.json has no known 'journey')")
    if splits.validation is None:
        raise ValueError(f"the data of {run_dir} has no validation split to evaluate on")
    trainer = Trainer(run.model, adamw(1e-3), run.folder, batch_size=batch_size, progress=False)
    return {"run": str(run.folder), "checkpoint_step": run.step, **trainer.evaluate(splits.validation)}


def mlm_blocks(files, tokenizer, max_length: int, *, encoding: str = "utf-8") -> DataSplits:
    """[CLS] block [SEP] rows of exactly `max_length` tokens for MLM pretraining (documents end with [SEP])."""
    ids = ftext.special_token_ids(tokenizer)
    if "cls" not in ids or "sep" not in ids:
        raise ValueError("MLM pretraining needs a WordPiece tokenizer with [CLS] and [SEP]")
    splits = fdata.text_blocks(files, tokenizer, max_length - 2, eos_token="[SEP]", encoding=encoding)

    def wrap(split: ArrayDataset | None) -> ArrayDataset | None:
        if split is None:
            return None
        blocks = split["token_ids"]
        column = lambda token: np.full((len(blocks), 1), ids[token], np.int32)
        token_ids = np.concatenate([column("cls"), blocks, column("sep")], axis=1)
        return ArrayDataset({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids, bool)})

    return DataSplits(wrap(splits.train), wrap(splits.validation), splits.info | {"max_length": max_length})


def vit_config(preset: str, *, image_size: int, channels: int, num_labels: int, patch_size: int | None = None,
               overrides: dict[str, Any] | None = None) -> ViTConfig:
    """A preset name ("tiny", "small") or a variant string ("Ti/4") sized for the data."""
    fields = {"image_size": image_size, "channels": channels, "num_labels": num_labels, **(overrides or {})}
    if "/" in preset:
        config = ViTConfig.from_variant(preset, **fields)
    else:
        config = _preset(VIT_PRESETS, preset)(**fields)
    if patch_size is not None:
        config = config.replace(patch_size=patch_size)
    if image_size % config.patch_size:
        raise ValueError(f"images of {image_size}×{image_size} do not split into {config.patch_size}×{config.patch_size} patches; choose --patch-size dividing {image_size}")
    return config


def _fit(model, splits: DataSplits, out_dir: Path, tokenizer, options, run_info, *, resume, overwrite, augment=None):
    """Everything is checked; now write the run folder and train."""
    run_info = run_info | {"seed": options["seed"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    # The run files before the tokenizer: run.json marks the folder as a flaxen run, so a run killed at any later
    # moment can be resumed (and a resumed run without a tokenizer.json trains the same tokenizer again).
    if not (resume and (out_dir / RUN_FILE).exists()):
        write_run_files(model, out_dir, run_info)
    if tokenizer is not None and not (resume and (out_dir / TOKENIZER_FILE).exists()):
        write_atomically(out_dir / TOKENIZER_FILE, tokenizer.to_str(pretty=True))
    optimizer = adamw(options["learning_rate"], warmup=options["warmup"], total=options["steps"], weight_decay=options["weight_decay"])
    trainer = Trainer(
        model, optimizer, out_dir, seed=options["seed"], batch_size=options["batch_size"],
        eval_every=options["eval_every"], compute_dtype=options["compute_dtype"], progress=options["progress"],
        run_info=run_info, augment=augment, mesh=options["mesh"],
    )
    final = trainer.fit(splits, options["steps"], resume=resume, overwrite=overwrite)
    return {"run": str(out_dir), **final}


def _check_out_dir(out_dir: str | Path, model_class: type, *, resume: bool, overwrite: bool) -> Path:
    """Refuse a folder that holds something else, unless told to resume (same model) or overwrite."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a folder")
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pass one")
    # A file still being written by a killed run's first moments does not make the folder taken.
    if not out_dir.is_dir() or all(path.name.endswith(PARTIAL_SUFFIX) for path in out_dir.iterdir()) or overwrite:
        return out_dir
    if not (out_dir / RUN_FILE).exists():
        raise ValueError(f"--out {out_dir} already holds files that are not a flaxen run; choose an empty or new folder")
    saved_class = read_run_file(out_dir).get("model_class")
    if saved_class != model_class.__name__:
        raise ValueError(f"--out {out_dir} holds a {saved_class} run, not a {model_class.__name__} one; choose another folder")
    if not resume:
        raise ValueError(f"--out {out_dir} already holds a {saved_class} run; pass --resume to continue it or --overwrite to replace it")
    return out_dir


def _tokenizer_for(out_dir: Path, resume: bool, make):
    if resume and (out_dir / TOKENIZER_FILE).exists():
        return ftext.load_tokenizer(out_dir / TOKENIZER_FILE)
    return make()


def _preset(presets: dict, name: str):
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
    return presets[name]


def _bert_token_fields(tokenizer) -> dict[str, Any]:
    ids = ftext.special_token_ids(tokenizer)
    missing = [name for name in ("pad", "mask") if name not in ids]
    if missing:
        raise ValueError(f"the tokenizer has no {' or '.join(missing)} token; BERT needs a WordPiece tokenizer with [PAD] and [MASK]")
    specials = tuple(sorted(v for k, v in ids.items() if k in ("pad", "unk", "cls", "sep", "mask")))
    return {"vocab_size": tokenizer.get_vocab_size(), "pad_token_id": ids["pad"], "mask_token_id": ids["mask"], "special_token_ids": specials}


def _classifier_from(start_from: Path | None, tokenizer, preset: str, num_labels: int, max_length: int, seed: int,
                     overrides: dict[str, Any] | None) -> BertForSequenceClassification:
    rngs = nnx.Rngs(seed)
    if start_from is None:
        config = _preset(BERT_PRESETS, preset)(**_bert_token_fields(tokenizer), num_labels=num_labels, **(overrides or {}))
        return BertForSequenceClassification(config.replace(max_positions=max(config.max_positions, max_length)), rngs=rngs)
    if (start_from / RUN_FILE).exists():
        source = load_run(start_from)
        if not isinstance(source.model, (BertForMaskedLM, BertForSequenceClassification)):
            raise ValueError(f"--from {start_from} holds a {type(source.model).__name__} run, not a BERT one")
        config = source.model.config.replace(num_labels=num_labels, **(overrides or {}))
        _check_length(config, max_length)
        classifier = BertForSequenceClassification(config, rngs=rngs)
        nnx.update(classifier.bert, nnx.state(source.model.bert, nnx.Param))  # the pooler stays freshly initialised
        return classifier
    if not hasattr(BertForSequenceClassification, "from_pretrained"):
        raise ValueError(f"--from {start_from} is not a flaxen run folder (no {RUN_FILE})")
    classifier = BertForSequenceClassification.from_pretrained(start_from, num_labels=num_labels, rngs=rngs, **(overrides or {}))
    check_tokenizer_fits(tokenizer, classifier.config, where=str(start_from))
    _check_length(classifier.config, max_length)
    return classifier


def _check_length(config: BertConfig, max_length: int) -> None:
    if max_length > config.max_positions:
        raise ValueError(f"--max-length {max_length} exceeds the model's {config.max_positions} positions; lower it")


def _augment_batch(batch: dict, key: jax.Array, *, pad: int) -> dict:
    return batch | {"images": fdata.augment_images(batch["images"], key, pad=pad, flip=False, padding_mode="constant")}

