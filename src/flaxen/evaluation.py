"""Scoring a trained model on held-out data the user keeps apart: classification reports and language-model scores.

`evaluate_held_out(folder, data=...)` labels a held-out table (text classifiers) or class-subfolder image folder
(image classifiers) with the model's pipeline and reports accuracy, macro-F1, per-class precision and recall and
the confusion matrix, written as JSON and PNG into the run folder; for a language model it scores text files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flaxen.data.images import labelled_image_files
from flaxen.data.labels import clean_labels
from flaxen.data.text import check_columns, load_table
from flaxen.predict import (
    ImageClassificationPipeline,
    LanguageModelPipeline,
    pipeline,
)
from flaxen.runs import recorded_data


def classification_report(true_ids: np.ndarray, predicted_ids: np.ndarray, label_names: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (rows: true class)."""
    count = len(label_names)
    matrix = np.zeros((count, count), np.int64)
    np.add.at(matrix, (np.asarray(true_ids), np.asarray(predicted_ids)), 1)
    hits = np.diag(matrix).astype(np.float64)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros(count), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(count), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(count), where=precision + recall > 0)
    present = support > 0  # a class absent from the held-out data has no recall to average
    return {
        "examples": int(matrix.sum()),
        "accuracy": float(hits.sum() / max(matrix.sum(), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": matrix.tolist(),
    }


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], label_names: Sequence[str], path: Path) -> Path:
    """A PNG heat map of the confusion matrix with its counts (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    side = min(2 + 0.5 * len(label_names), 16)
    figure, axes = plt.subplots(figsize=(side + 1, side))
    image = axes.imshow(matrix, cmap="Blues")
    axes.set(
        xticks=range(len(label_names)),
        yticks=range(len(label_names)),
        xlabel="predicted",
        ylabel="true",
        title="confusion matrix",
    )
    axes.set_xticklabels(label_names, rotation=45, ha="right")
    axes.set_yticklabels(label_names)
    if len(label_names) <= 30:
        threshold = matrix.max() / 2
        for (row, column), value in np.ndenumerate(matrix):
            color = "white" if value > threshold else "black"
            axes.text(column, row, str(value), ha="center", va="center", color=color, fontsize=8)
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def evaluate_held_out(
    folder: str | Path,
    *,
    data: str | Path | Sequence[str | Path] | None = None,
    images: str | Path | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    encoding: str | None = None,
    batch_size: int | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Score the model in `folder` (a run, or a model folder) on held-out data it never trained on.

    Text classifiers take a table `data` (columns default to the run's); image classifiers a class-subfolder
    folder `images`; language models text files `data`: a causal one's loss, perplexity and bits per character, a
    masked one's loss and accuracy at masked positions (MLM_EVALUATION_SEED's masks, so two calls agree) over
    [CLS] block [SEP] rows of its run's length. A held-out label the model never had is a ValueError.
    With `write`, classifier reports go to `folder/eval-<data name>.json` and `...-confusion.png`.
    """
    folder = Path(folder)
    recorded = recorded_data(folder)
    if _holds_masked_language_model(folder):
        if data is None or images is not None:
            raise ValueError("a masked language model is evaluated on text files: pass --data FILE...")
        files = [Path(file) for file in ([data] if isinstance(data, (str, Path)) else data)]
        return {"data": [str(file) for file in files]} | _masked_language_model_scores(
            folder, files, encoding=encoding or recorded.get("encoding", "utf-8"), batch_size=batch_size or 32
        )
    predictor = pipeline(model=folder, **({} if batch_size is None else {"batch_size": batch_size}))
    if isinstance(predictor, LanguageModelPipeline):
        if data is None or images is not None:
            raise ValueError("a language model is evaluated on text files: pass --data FILE...")
        files = [Path(file) for file in ([data] if isinstance(data, (str, Path)) else data)]
        return {"data": [str(file) for file in files]} | predictor.score(
            files, encoding=encoding or recorded.get("encoding", "utf-8")
        )
    if isinstance(predictor, ImageClassificationPipeline):
        if images is None or data is not None:
            raise ValueError(
                "an image classifier is evaluated on an image folder: pass --images DIR (one subfolder per class)"
            )
        source = Path(images)
        files, raw_labels = labelled_image_files(source)
        true_names, probabilities = raw_labels, predictor.probabilities(files)
    else:
        if data is None or images is not None or not isinstance(data, (str, Path)):
            raise ValueError("a text classifier is evaluated on one table: pass --data FILE (CSV/TSV/JSON/parquet)")
        source = Path(data)
        text_column = text_column or recorded.get("text_column", "text")
        label_column = label_column or recorded.get("label_column", "label")
        table = load_table(source, encoding or recorded.get("encoding", "utf-8"))
        check_columns(table, source, text_column, label_column)
        true_names = [str(label) for label in clean_labels(table[label_column])]
        probabilities = predictor.probabilities(list(table[text_column]))
    true_ids = _check_labels(true_names, predictor.label_names, source)
    report = {"data": str(source)} | classification_report(
        true_ids, probabilities.argmax(axis=-1), predictor.label_names
    )
    if write:
        stem = f"eval-{source.stem or 'held-out'}"
        (folder / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        report["report_file"] = str(folder / f"{stem}.json")
        report["confusion_plot"] = str(
            plot_confusion_matrix(report["confusion_matrix"], predictor.label_names, folder / f"{stem}-confusion.png")
        )
    return report


MLM_EVALUATION_SEED = 0


def _holds_masked_language_model(folder: Path) -> bool:
    from flaxen.convert import model_class_for

    try:
        return model_class_for(folder).__name__ == "BertForMaskedLM"
    except ValueError:  # not a model folder: the pipeline says so
        return False


def _masked_language_model_scores(folder: Path, files: list[Path], *, encoding: str, batch_size: int) -> dict:
    """Masked-token loss and accuracy of the folder's BertForMaskedLM over every [CLS] block [SEP] row of `files`."""
    from flaxen.convert import load_folder
    from flaxen.data.mlm import mlm_blocks
    from flaxen.runs import TOKENIZER_FILE, is_run_folder
    from flaxen.text.tokenizer import load_tokenizer
    from flaxen.train import Trainer, adamw

    model = load_folder(folder)
    tokenizer = load_tokenizer(folder / TOKENIZER_FILE if is_run_folder(folder) else folder)
    max_length = recorded_data(folder).get("max_length") or min(model.config.max_positions, 128)
    rows = mlm_blocks(files, tokenizer, max_length, encoding=encoding, validation_fraction=0).train
    trainer = Trainer(model, adamw(1e-3), folder, batch_size=batch_size, seed=MLM_EVALUATION_SEED, progress=False)
    return {"examples": len(rows), "max_length": max_length, **trainer.evaluate(rows)}


def _check_labels(true_names: Sequence[str], label_names: Sequence[str], source: Path) -> np.ndarray:
    """Held-out labels as the model's class ids; ValueError naming the labels the model never had."""
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted({name for name in true_names if name not in index})
    if unknown:
        shown = ", ".join(map(repr, unknown[:10])) + (", ..." if len(unknown) > 10 else "")
        raise ValueError(
            f"{source} has label(s) {shown} that the model never had (its labels: {', '.join(label_names)}); "
            "remove those rows or evaluate a model trained on them"
        )
    return np.array([index[name] for name in true_names], np.int64)
