"""Apply a trained model to new data: label texts or images, score text with a language model.

`pipeline(task, model)` reads a flaxen run folder (its best checkpoint), a flaxen model folder or a Hugging Face
folder, and returns the pipeline for what that model does:

    classify = flaxen.pipeline("text-classification", "runs/bert-sentiment")
    classify(["what a lovely day", "the bus never came"])   # [{"label": ..., "score": ..., "scores": {...}}, ...]
    flaxen.pipeline(model="runs/vit")("photos/")            # every image file under the folder
    flaxen.pipeline(model="runs/gpt").score(Path("held_out.txt"))  # loss, perplexity, bits per character

Inputs are prepared exactly as training prepared them (the run's tokenizer and truncation; the run's image scale,
mean and std), and batches are padded to a few fixed shapes so the number of compilations stays small.
"""

from __future__ import annotations

import concurrent.futures
import csv
import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from flaxen.convert import load_folder
from flaxen.data.images import IMAGE_SUFFIXES, image_files, normalize_images, per_channel, prepare_image
from flaxen.data.text import check_columns, load_table
from flaxen.hf.save import PREPROCESSOR_FILE
from flaxen.hf.table import default_label_names
from flaxen.models import (
    BertForSequenceClassification,
    GPTForCausalLM,
    GPTForSequenceClassification,
    ViTForImageClassification,
)
from flaxen.runs import check_tokenizer_fits, is_run_folder, load_run, write_atomically
from flaxen.text.files import read_text_file
from flaxen.text.tokenizer import (
    TOKENIZER_CONFIG_FILE,
    encode_documents,
    encode_truncated,
    load_tokenizer,
    pad_token_id,
)

SMALLEST_LENGTH_BUCKET = 16
Prediction = dict[str, Any]  # {"label": name, "score": its probability, "scores": {name: probability}}


# ------------------------------------------------------------------------------------------------ shapes


def length_buckets(max_length: int) -> list[int]:
    """The padded lengths a text batch may take: 16, 24, 32, 48, 64, 96, ... (each 1.5× or 1.33× the last, so a
    batch carries at most half its length in padding) below `max_length`, then `max_length`."""
    buckets, length = [], SMALLEST_LENGTH_BUCKET
    while length < max_length:
        buckets.append(length)
        length = length * 3 // 2 if length & (length - 1) == 0 else length * 4 // 3  # 16 → 24 → 32 → 48 → 64 ...
    return buckets + [max_length]


def row_buckets(batch_size: int) -> list[int]:
    """The padded row counts a batch may take: powers of two below `batch_size`, then `batch_size`."""
    buckets, rows = [], 1
    while rows < batch_size:
        buckets.append(rows)
        rows *= 2
    return buckets + [batch_size]


def _bucket(size: int, buckets: Sequence[int]) -> int:
    return next(bucket for bucket in buckets if bucket >= size)


class _Forward:
    """A model's inference function, compiled once per input shape, with the parameters split off once."""

    def __init__(self, model: nnx.Module, function: Callable[..., jax.Array]):
        graphdef, self._state = nnx.split(model)
        self._compiled = jax.jit(lambda state, *inputs: function(nnx.merge(graphdef, state), *inputs))

    def __call__(self, *inputs: np.ndarray) -> jax.Array:
        """The result on the device, not waited for: the caller prepares the next batch while this one runs."""
        return self._compiled(self._state, *inputs)

    @property
    def compilations(self) -> int:
        """How many input shapes have been compiled so far."""
        return self._compiled._cache_size()


def _probabilities(model: nnx.Module, *inputs: jax.Array) -> jax.Array:
    return jax.nn.softmax(model(*inputs).astype(jnp.float32), axis=-1)


# --------------------------------------------------------------------------------------------- classifiers


class _Classifier:
    """What the text and image classifiers share: label names, batching, and the prediction records."""

    def __init__(self, model: nnx.Module, label_names: Sequence[str] | None, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.label_names = list(label_names or model.config.label_names or default_label_names(model.config.num_labels))
        if len(self.label_names) != model.config.num_labels:
            raise ValueError(
                f"{len(self.label_names)} label names for a model with {model.config.num_labels} classes; "
                "give one name per class"
            )
        self.batch_size = batch_size
        self._forward = _Forward(model, _probabilities)

    def __call__(self, inputs: Any) -> Prediction | list[Prediction]:
        """One input (a text; an image file, array or PIL image) -> one prediction; a list (or a folder) -> a list,
        in order."""
        records = self._records(self.probabilities(inputs))
        return records[0] if self._single(inputs) else records

    @property
    def compilations(self) -> int:
        """Input shapes compiled so far; at most `len(row_buckets(batch_size))` × the number of length buckets."""
        return self._forward.compilations

    def _records(self, probabilities: np.ndarray) -> list[Prediction]:
        best = probabilities.argmax(axis=-1)
        return [
            {
                "label": self.label_names[index],
                "score": float(row[index]),
                "scores": dict(zip(self.label_names, map(float, row))),
            }
            for index, row in zip(best, probabilities)
        ]

    def _run_batches(self, count: int, batch_of: Callable[[np.ndarray], tuple[np.ndarray, ...]], order) -> np.ndarray:
        """Probabilities (count, num_labels): rows taken in `order`, `batch_size` at a time, padded to a row bucket."""
        out = np.zeros((count, len(self.label_names)), np.float32)
        buckets = row_buckets(self.batch_size)
        running = None  # (rows, result) of the batch on the device while the next one is prepared
        for start in range(0, count, self.batch_size):
            rows = order[start : start + self.batch_size]
            inputs = batch_of(rows)
            padded_rows = _bucket(len(rows), buckets)
            inputs = [np.concatenate([x, np.repeat(x[-1:], padded_rows - len(rows), axis=0)]) for x in inputs]
            result = self._forward(*inputs)  # queued behind the running batch
            if running is not None:
                out[running[0]] = np.asarray(running[1])[: len(running[0])]
            running = rows, result
        if running is not None:
            out[running[0]] = np.asarray(running[1])[: len(running[0])]
        return out


class TextClassificationPipeline(_Classifier):
    """Texts -> label names and class probabilities, tokenized and truncated as the model was trained.

    Texts are sorted by length and batched; each batch is padded to `batch_size`'s row buckets (1, 2, 4, ...) and to
    a length bucket (16, 24, 32, 48, 64, ... up to `max_length`), so at most `len(row_buckets) ×
    len(length_buckets)` shapes are ever compiled, however many texts come.
    """

    def __init__(
        self,
        model: nnx.Module,
        tokenizer,
        *,
        max_length: int,
        label_names: Sequence[str] | None = None,
        batch_size: int = 32,
    ):
        super().__init__(model, label_names, batch_size)
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        self.tokenizer, self.max_length = tokenizer, max_length
        self.pad_id = pad_token_id(tokenizer)

    def _single(self, texts: Any) -> bool:
        return isinstance(texts, str)

    def probabilities(self, texts: str | Sequence[str]) -> np.ndarray:
        """(N, num_labels) float32 class probabilities."""
        texts = [texts] if isinstance(texts, str) else texts
        texts = [_check_text(text, row) for row, text in enumerate(texts)]
        if not texts:
            return np.zeros((0, len(self.label_names)), np.float32)
        ids = encode_truncated(self.tokenizer, texts, self.max_length)
        lengths = np.array([max(len(row), 1) for row in ids])
        buckets = length_buckets(self.max_length)

        def batch_of(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            width = _bucket(int(lengths[rows].max()), buckets)
            token_ids = np.full((len(rows), width), self.pad_id, np.int32)
            for out_row, row in enumerate(rows):
                token_ids[out_row, : len(ids[row])] = ids[row]
            return token_ids, np.arange(width)[None, :] < lengths[rows, None]

        return self._run_batches(len(texts), batch_of, np.argsort(lengths, kind="stable"))

    def predict_table(
        self, path: str | Path, *, text_column: str = "text", encoding: str = "utf-8"
    ) -> list[Prediction]:
        """Predictions for every row of a CSV/TSV/JSON/JSONL/parquet file's `text_column`, in file order."""
        table = load_table(path, encoding)
        check_columns(table, path, text_column)
        return self(list(table[text_column]))


class ImageClassificationPipeline(_Classifier):
    """Images -> label names and class probabilities, preprocessed as training did.

    Takes image files, folders (every image file below them, sorted), numpy arrays (H, W), (H, W, C) or (N, H, W[, C])
    with uint8 pixels, or PIL images, alone or in a list. Each image is converted to the model's channels, its
    shorter side resized to the model's image size and the centre cropped, then scaled and normalised with the
    run's values: `(pixels · scale − mean) / std`. Files are decoded in a thread pool.
    """

    def __init__(
        self,
        model: nnx.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        scale: float = 1 / 255,
        label_names: Sequence[str] | None = None,
        batch_size: int = 64,
    ):
        super().__init__(model, label_names, batch_size)
        config = model.config
        self.image_size, self.channels, self.scale = config.image_size, config.channels, scale
        self.mean = per_channel(mean, config.channels, "mean")
        self.std = per_channel(std, config.channels, "std")

    def _single(self, images: Any) -> bool:
        return _is_single_image(images)

    def probabilities(self, images: Any) -> np.ndarray:
        """(N, num_labels) float32 class probabilities, in the order `image_items(images)` lists the images."""
        items = image_items(images)
        if not items:
            return np.zeros((0, len(self.label_names)), np.float32)
        workers = min(8, os.cpu_count() or 1, len(items))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # PIL decodes and resizes without the GIL

            def batch_of(rows: np.ndarray) -> tuple[np.ndarray]:
                return (np.stack(list(pool.map(lambda row: self.preprocess(items[row]), rows))),)

            return self._run_batches(len(items), batch_of, np.arange(len(items)))

    def preprocess(self, image: Any) -> np.ndarray:
        """One image -> float32 (S, S, C) as the model takes it."""
        pixels = prepare_image(image, channels=self.channels, image_size=self.image_size)
        return normalize_images(pixels[None], mean=self.mean, std=self.std, scale=self.scale)[0]


# -------------------------------------------------------------------------------------------- language model


class LanguageModelPipeline:
    """A causal language model and its tokenizer: `score` text (loss, perplexity, bits per character), `generate`."""

    def __init__(self, model: GPTForCausalLM, tokenizer, *, batch_size: int = 16):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self._forward = _Forward(model, _token_losses)

    def score(self, texts: str | Path | Sequence[str | Path], *, encoding: str = "utf-8") -> dict[str, float]:
        """Mean next-token loss (nats), perplexity and bits per character over texts (str) or text files (Path).

        Each text (or file) is cut into windows of the model's context that overlap by one token, so every token
        after a text's first is predicted exactly once, from up to a context's worth of the tokens before it.
        Bits per character divide the total loss by the characters of the texts.
        """
        documents = self._documents(texts, encoding)
        nats, tokens = self._nats_and_tokens(documents)
        return _language_scores(float(nats.sum()), int(tokens.sum()), sum(len(text) for text in documents))

    def score_each(self, texts: Sequence[str | Path], *, encoding: str = "utf-8") -> list[dict[str, float]]:
        """`score` of every text (or file) on its own, all of them batched together in one pass."""
        documents = self._documents(texts, encoding)
        nats, tokens = self._nats_and_tokens(documents)
        return [_language_scores(float(n), int(k), len(text)) for n, k, text in zip(nats, tokens, documents)]

    @staticmethod
    def _documents(texts: str | Path | Sequence[str | Path], encoding: str) -> list[str]:
        items = [texts] if isinstance(texts, (str, Path)) else texts
        documents = [read_text_file(item, encoding) if isinstance(item, Path) else item for item in items]
        return [_check_text(text, row) for row, text in enumerate(documents)]

    def _nats_and_tokens(self, documents: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per document: the summed next-token loss (nats) and the number of tokens predicted."""
        windows, weights, owners = self._windows(documents)
        window_nats = np.zeros(len(windows), np.float64)
        for start in range(0, len(windows), self.batch_size):
            batch = slice(start, start + self.batch_size)
            rows = len(windows[batch])
            padded = [
                np.concatenate([x, np.zeros((self.batch_size - rows, *x.shape[1:]), x.dtype)])
                for x in (windows[batch], weights[batch])
            ]
            window_nats[batch] = np.asarray(self._forward(*padded))[:rows]
        nats, tokens = np.zeros(len(documents)), np.zeros(len(documents), np.int64)
        np.add.at(nats, owners, window_nats)
        np.add.at(tokens, owners, weights.sum(axis=-1).astype(np.int64))
        return nats, tokens

    def _windows(self, documents: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(W, context + 1) int32 token windows, (W, context) float32 weights of the tokens they predict, and (W,)
        the document each window belongs to."""
        width, pad_id = self.model.config.context_length + 1, pad_token_id(self.tokenizer)
        windows, weights, owners = [], [], []
        for document, ids in enumerate(encode_documents(self.tokenizer, documents)):
            for start in range(0, max(len(ids) - 1, 0), width - 1):
                piece = ids[start : start + width]
                window = np.full(width, pad_id, np.int32)
                window[: len(piece)] = piece
                windows.append(window)
                weights.append((np.arange(1, width) < len(piece)).astype(np.float32))
                owners.append(document)
        if not windows:
            return np.zeros((0, width), np.int32), np.zeros((0, width - 1), np.float32), np.zeros(0, np.int64)
        return np.stack(windows), np.stack(weights), np.asarray(owners)

    def generate(self, prompts: str | Sequence[str], **options: Any) -> str | list[str]:
        """Prompt(s) -> prompt plus sampled text; options as `flaxen.generate` takes them."""
        from flaxen.generate import generate

        return generate(self.model, self.tokenizer, prompts, **options)


def _language_scores(nats: float, tokens: int, characters: int) -> dict[str, float]:
    if tokens == 0:
        raise ValueError("the text is too short to score: it needs at least two tokens")
    loss = nats / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_character": nats / math.log(2) / characters,
        "tokens": tokens,
        "characters": characters,
    }


def _token_losses(model: GPTForCausalLM, windows: jax.Array, weights: jax.Array) -> jax.Array:
    """(B,) summed next-token losses (nats) of each window's weighted positions."""
    logits = model(windows[:, :-1]).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    losses = -jnp.take_along_axis(log_probs, windows[:, 1:, None], axis=-1)[..., 0]
    return (losses * weights).sum(axis=-1)


# ------------------------------------------------------------------------------------------- from a folder

TASKS = {
    "text-classification": (BertForSequenceClassification, GPTForSequenceClassification),
    "image-classification": (ViTForImageClassification,),
    "text-generation": (GPTForCausalLM,),
}


def pipeline(
    task: str | None = None, model: str | Path | None = None, *, batch_size: int | None = None
) -> TextClassificationPipeline | ImageClassificationPipeline | LanguageModelPipeline:
    """The pipeline for a flaxen run folder, a flaxen model folder or a Hugging Face folder (`model`).

    `task` ("text-classification", "image-classification", "text-generation") is checked against the model the
    folder holds; None takes the folder's own.
    """
    if model is None:
        raise ValueError("pipeline needs model=: a flaxen run folder or a Hugging Face/flaxen model folder")
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    folder = Path(model)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; give a flaxen run folder or a Hugging Face/flaxen model folder")
    if is_run_folder(folder):
        run = load_run(folder)
        loaded, tokenizer, info = run.model, run.tokenizer, run.info
    else:
        loaded, info = load_folder(folder), {}
        tokenizer = None
    own_task = next((name for name, classes in TASKS.items() if isinstance(loaded, classes)), None)
    if own_task is None or (task is not None and task != own_task):
        wanted = f"a {task} model" if task else "a classifier or a causal language model"
        raise ValueError(f"{folder} holds a {type(loaded).__name__}; a pipeline needs {wanted}")
    sizes = {} if batch_size is None else {"batch_size": batch_size}
    if own_task == "image-classification":
        return ImageClassificationPipeline(
            loaded, label_names=info.get("label_names"), **folder_normalisation(folder, info), **sizes
        )
    if tokenizer is None:
        tokenizer = _folder_tokenizer(folder, loaded)
    if own_task == "text-generation":
        return LanguageModelPipeline(loaded, tokenizer, **sizes)
    return TextClassificationPipeline(
        loaded, tokenizer, max_length=_max_length(folder, info, loaded), label_names=info.get("label_names"), **sizes
    )


def _folder_tokenizer(folder: Path, model: nnx.Module):
    try:
        tokenizer = load_tokenizer(folder)
    except ValueError:
        fix = (
            "save the tokenizer into the run folder (flaxen.text.save_tokenizer(tokenizer, folder))"
            if is_run_folder(folder)
            else "copy the model's tokenizer files into the folder"
        )
        raise ValueError(
            f"{folder} has no tokenizer (tokenizer.json, vocab.txt or vocab.json + merges.txt); {fix}"
        ) from None
    check_tokenizer_fits(tokenizer, model.config, where=str(folder))
    return tokenizer


def _max_length(folder: Path, info: dict[str, Any], model: nnx.Module) -> int:
    """Tokens per text: the run's training length, else the folder's tokenizer_config, else the model's positions."""
    config = model.config
    positions = getattr(config, "max_positions", None) or config.context_length
    recorded = info.get("data", {}).get("max_length") or info.get("max_length")
    if recorded:
        return int(recorded)
    tokenizer_config = folder / TOKENIZER_CONFIG_FILE
    if tokenizer_config.is_file():
        stated = json.loads(tokenizer_config.read_text()).get("model_max_length")
        if isinstance(stated, int) and stated > 0:
            return min(stated, positions)
    return positions


def folder_normalisation(folder: Path, info: dict[str, Any]) -> dict[str, Any]:
    """The run's pixel scale, mean and std; a Hugging Face folder's from its preprocessor_config.json."""
    if "mean" in info:
        return {"mean": info["mean"], "std": info["std"], "scale": info.get("scale", 1 / 255)}
    processor_file = folder / PREPROCESSOR_FILE
    processor = json.loads(processor_file.read_text()) if processor_file.is_file() else {}
    normalise = processor.get("do_normalize", True)
    return {
        "mean": processor.get("image_mean", [0.5, 0.5, 0.5]) if normalise else [0.0],
        "std": processor.get("image_std", [0.5, 0.5, 0.5]) if normalise else [1.0],
        "scale": processor.get("rescale_factor", 1 / 255) if processor.get("do_rescale", True) else 1.0,
    }


# -------------------------------------------------------------------------------------------------- inputs


def image_items(images: Any) -> list[Any]:
    """Every image an input names: files, folders (recursively, sorted), arrays, stacks of arrays, PIL images."""
    if _is_single_image(images) or isinstance(images, (str, Path)):
        images = [images]
    elif isinstance(images, np.ndarray):  # (N, H, W) or (N, H, W, C)
        images = list(images)
    items = []
    for item in images:
        if isinstance(item, (str, Path)):
            path = Path(item)
            if path.is_dir():
                found = image_files(path)
                if not found:
                    raise ValueError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
                items.extend(found)
            elif path.is_file():
                items.append(path)
            else:
                raise ValueError(f"no such image file or folder: {path}")
        elif isinstance(item, (np.ndarray, Image.Image)):
            items.append(item)
        else:
            raise ValueError(
                f"cannot read an image from a {type(item).__name__}; give a file, a folder, an array or a PIL image"
            )
    return items


def _is_single_image(images: Any) -> bool:
    if isinstance(images, Image.Image):
        return True
    if isinstance(images, np.ndarray):
        return images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3, 4))
    return isinstance(images, (str, Path)) and Path(images).is_file()


def _check_text(text: Any, row: int) -> str:
    if not isinstance(text, str):
        raise ValueError(f"input {row} is a {type(text).__name__}, not a text")
    if not text.strip():
        raise ValueError(f"input {row} is an empty text; remove it")
    return text


def read_lines(stream: Iterable[str]) -> list[str]:
    """The non-empty lines of a text stream (e.g. stdin), without their line ends."""
    return [line.rstrip("\r\n") for line in stream if line.strip()]


# ------------------------------------------------------------------------------------------ records and files


def predict_records(
    predictor: TextClassificationPipeline | ImageClassificationPipeline | LanguageModelPipeline,
    *,
    texts: Sequence[str] = (),
    data: Sequence[str | Path] = (),
    text_column: str = "text",
    images: Sequence[str | Path] = (),
    encoding: str = "utf-8",
) -> list[dict[str, Any]]:
    """One record per input (`flaxen predict`): its id and text or path, then label + score + scores, or for a
    language model its loss, perplexity and bits per character."""
    given = [name for name, value in (("texts", texts), ("data", data), ("images", images)) if value]
    if len(given) != 1:
        raise ValueError("give one kind of input: texts (--text or lines on stdin), --data FILE, or --images PATH")
    if isinstance(predictor, ImageClassificationPipeline):
        if not images:
            raise ValueError("this model classifies images: pass --images FILE_OR_FOLDER...")
        items = image_items(list(images))
        inputs = [{"id": i, "path": str(item)} for i, item in enumerate(items)]
        return [row | record for row, record in zip(inputs, predictor(items))]
    if images:
        raise ValueError(f"this model reads text, not images: pass --text or --data ({type(predictor.model).__name__})")
    if isinstance(predictor, LanguageModelPipeline):
        if texts:
            return [{"id": i, "text": text} | s for i, (text, s) in enumerate(zip(texts, predictor.score_each(texts)))]
        scores = predictor.score_each([Path(file) for file in data], encoding=encoding)
        return [{"id": i, "path": str(file)} | s for i, (file, s) in enumerate(zip(data, scores))]
    if data:
        if len(data) != 1:
            raise ValueError(f"a classifier reads one table; got {len(data)} files")
        table = load_table(data[0], encoding)
        check_columns(table, data[0], text_column)
        texts = list(table[text_column])
    records = predictor(list(texts))
    return [{"id": i, "text": text} | record for i, (text, record) in enumerate(zip(texts, records))]


def write_records(records: Sequence[dict[str, Any]], path: str | Path | None, *, overwrite: bool = False) -> None:
    """JSON lines on stdout (`path` None), or a .jsonl / .csv file (class probabilities as score_<label> columns)."""
    if path is None:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
        return
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".csv"):
        raise ValueError(f"--output {path}: write .jsonl (JSON lines) or .csv")
    if path.exists() and not overwrite:
        raise ValueError(f"--output {path} already exists; choose a new file or pass --overwrite")
    if path.suffix.lower() == ".jsonl":
        content = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    else:
        rows = [
            {k: v for k, v in record.items() if k != "scores"}
            | {f"score_{name}": p for name, p in record.get("scores", {}).items()}
            for record in records
        ]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["id"])
        writer.writeheader()
        writer.writerows(rows)
        content = buffer.getvalue()

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, content)
    print(f"wrote {len(records)} predictions to {path}", file=sys.stderr)
