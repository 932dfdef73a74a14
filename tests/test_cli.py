"""The command line at tiny size: every journey runs, and bad input gets one line, exit code 2, nothing touched."""

import hashlib
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import flaxen
from flaxen.cli import build_parser, main

WORDS = "the king queen love night day sword crown blood heart fair foul sweet death life honour".split()
TRAIN = ["--preset", "tiny", "--steps", "4", "--batch-size", "4", "--eval-every", "2", "--no-progress"]


def write_text(path: Path, words: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    lines = [" ".join(rng.choice(WORDS, 12)) + "." for _ in range(words // 12)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_table(path: Path, rows: int = 60, labels=("negative", "positive")) -> Path:
    rng = np.random.default_rng(0)
    lines = ["text,label"] + [f"{' '.join(rng.choice(WORDS, 6))},{labels[i % len(labels)]}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_images(folder: Path, sizes=((8, 8),)) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(12):
            size = sizes[i % len(sizes)]
            Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(folder / label / f"{i}.png")
    return folder


def snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    texts = [str(write_text(root / f"doc{i}.txt", 1500, i)) for i in range(2)]
    runs = {"gpt": root / "gpt", "mlm": root / "mlm", "clf": root / "clf", "vit": root / "vit"}
    assert main(["pretrain", "gpt", "--data", *texts, "--vocab-size", "300", "--out", str(runs["gpt"]), *TRAIN]) == 0
    assert (
        main(
            [
                "pretrain",
                "bert",
                "--data",
                *texts,
                "--vocab-size",
                "200",
                "--max-length",
                "32",
                "--out",
                str(runs["mlm"]),
                *TRAIN,
            ]
        )
        == 0
    )
    table = write_table(root / "tweets.csv")
    assert (
        main(
            [
                "finetune",
                "bert",
                "--from",
                str(runs["mlm"]),
                "--data",
                str(table),
                "--max-length",
                "16",
                "--out",
                str(runs["clf"]),
                *TRAIN,
            ]
        )
        == 0
    )
    images = write_images(root / "images")
    assert main(["train", "vit", "--images", str(images), "--patch-size", "4", "--out", str(runs["vit"]), *TRAIN]) == 0
    return {"root": root, "texts": texts, "table": table, "images": images, **runs}


@pytest.mark.parametrize("run", ["gpt", "mlm", "clf", "vit"])
def test_each_journey_leaves_a_complete_run_folder(workspace, run):
    folder = workspace[run]
    for name in ("config.json", "run.json", "metrics.jsonl", "loss_curve.png", "checkpoints"):
        assert (folder / name).exists(), name
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "validation"}
    assert (folder / "tokenizer.json").exists() == (run != "vit")


def test_generate_prints_the_prompt_and_new_text(workspace, capsys):
    assert (
        main(
            [
                "generate",
                "--run",
                str(workspace["gpt"]),
                "--prompt",
                "the king",
                "--prompt",
                "love",
                "--max-new-tokens",
                "8",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("the king") and "\nlove" in out
    king, love = out.split("\nlove")
    assert len(king.strip()) > len("the king") and love.strip()  # new text after each prompt, not an echo


@pytest.mark.parametrize("run", ["gpt", "mlm", "clf", "vit"])
def test_eval_scores_the_run_on_its_validation_data(workspace, run, capsys):
    from flaxen.runs import load_run

    # At the training batch size: an MLM's masks are drawn per batch.
    assert main(["eval", "--run", str(workspace[run]), "--batch-size", "4"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    loaded = load_run(workspace[run])
    assert scores["checkpoint_step"] == loaded.step == 4
    best = [  # the run's own record of the checkpoint eval scored, written by the training loop
        record
        for record in map(json.loads, (workspace[run] / "metrics.jsonl").read_text().splitlines())
        if record["split"] == "validation" and record["step"] == loaded.step
    ]
    assert scores["loss"] == pytest.approx(best[0]["loss"], rel=1e-5)
    assert scores["accuracy"] == pytest.approx(best[0]["accuracy"], abs=1e-6)


def test_eval_scores_a_masked_language_model_on_held_out_text(workspace, tmp_path, capsys):
    from flaxen.runs import load_run

    held_out = write_text(tmp_path / "held_out.txt", 900, seed=7)
    argv = ["eval", "--run", str(workspace["mlm"]), "--data", str(held_out)]
    reports = []
    for _ in range(2):
        assert main(argv) == 0
        reports.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert reports[0] == reports[1]  # the masks are drawn from a fixed seed
    tokenizer = load_run(workspace["mlm"]).tokenizer
    tokens = len(tokenizer.encode(held_out.read_text(), add_special_tokens=False).ids) + 1  # and its [SEP]
    assert reports[0]["examples"] == tokens // (32 - 2)  # every [CLS] block [SEP] row of the run's 32 tokens
    assert 0 <= reports[0]["accuracy"] < 1 and 0 < reports[0]["loss"] < np.log(200)  # better than uniform


def test_predict_labels_texts_from_flags_stdin_and_a_table(workspace, capsys, monkeypatch, tmp_path):
    import io

    run = str(workspace["clf"])
    assert main(["predict", "--run", run, "--text", "fair day", "--text", "foul night"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in records] == ["fair day", "foul night"]
    assert all(r["label"] in ("negative", "positive") and set(r["scores"]) == {"negative", "positive"} for r in records)

    monkeypatch.setattr("sys.stdin", io.StringIO("fair day\n\nfoul night\n"))
    assert main(["predict", "--run", run]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == records

    output = tmp_path / "predictions.csv"
    assert main(["predict", "--run", run, "--data", str(workspace["table"]), "--output", str(output)]) == 0
    import csv

    rows = list(csv.DictReader(output.open()))
    assert len(rows) == 60 and {"id", "text", "label", "score", "score_negative", "score_positive"} <= set(rows[0])
    before = output.read_bytes()
    assert main(["predict", "--run", run, "--text", "fair", "--output", str(output)]) == 2  # never overwritten
    assert "--overwrite" in capsys.readouterr().err and output.read_bytes() == before


def test_eval_on_a_held_out_table_agrees_with_predict(workspace, capsys, tmp_path):
    run, table = workspace["clf"], workspace["table"]
    assert main(["predict", "--run", str(run), "--data", str(table), "--output", str(tmp_path / "p.jsonl")]) == 0
    predicted = [json.loads(line)["label"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    truth = [line.rsplit(",", 1)[1] for line in table.read_text().splitlines()[1:]]
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--data", str(table)]) == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["accuracy"] == pytest.approx(np.mean(np.array(predicted) == np.array(truth)), abs=1e-6)
    assert "macro-F1" in out and np.sum(report["confusion_matrix"]) == 60
    assert (run / "eval-tweets.json").is_file() and (run / "eval-tweets-confusion.png").is_file()


def test_predict_and_eval_images_and_language_model_scores(workspace, capsys):
    assert main(["predict", "--run", str(workspace["vit"]), "--images", str(workspace["images"] / "a")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 12 and records[0]["path"].endswith("0.png") and records[0]["label"] in ("a", "b")
    assert main(["predict", "--run", str(workspace["vit"]), "--images", str(workspace["images"])]) == 0
    labelled = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    hits = [Path(record["path"]).parent.name == record["label"] for record in labelled]
    assert main(["eval", "--run", str(workspace["vit"]), "--images", str(workspace["images"])]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["examples"] == len(labelled) == 24 and report["accuracy"] == pytest.approx(np.mean(hits))
    assert main(["eval", "--run", str(workspace["gpt"]), "--data", *workspace["texts"]]) == 0
    score = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    characters = sum(len(Path(text).read_text()) for text in workspace["texts"])
    assert score["bits_per_character"] == pytest.approx(score["loss"] * score["tokens"] / np.log(2) / characters)
    assert score["perplexity"] == pytest.approx(np.exp(score["loss"])) and score["loss"] < np.log(300)
    from flaxen.runs import load_run

    text = "the king and the queen"
    assert main(["predict", "--run", str(workspace["gpt"]), "--text", text]) == 0
    tokens = len(load_run(workspace["gpt"]).tokenizer.encode(text, add_special_tokens=False).ids)
    assert json.loads(capsys.readouterr().out)["tokens"] == tokens - 1  # every token after the first is predicted


def test_generate_from_a_hugging_face_gpt2_folder_with_either_tokenizer_layout(workspace, tmp_path, capsys):
    from tokenizers import Tokenizer

    hf = tmp_path / "hf"
    assert main(["convert", str(workspace["gpt"]), str(hf)]) == 0
    greedy = ["generate", "--model", str(hf), "--prompt", "the king", "--max-new-tokens", "6", "--temperature", "0"]
    capsys.readouterr()
    assert main(greedy) == 0
    from_tokenizer_json = capsys.readouterr().out
    assert from_tokenizer_json.startswith("the king") and len(from_tokenizer_json.split("\n")[0]) > len("the king")
    Tokenizer.from_file(str(hf / "tokenizer.json")).model.save(str(hf))  # GPT-2's vocab.json + merges.txt
    (hf / "tokenizer.json").unlink()
    assert main(greedy) == 0
    assert capsys.readouterr().out == from_tokenizer_json


def test_the_readme_python_journey_leaves_a_run_the_shell_can_use(workspace, tmp_path, capsys):
    from flax import nnx

    import flaxen

    tok = flaxen.text.train_bpe(workspace["texts"], vocab_size=300)
    config = flaxen.GPTConfig.tiny(vocab_size=tok.get_vocab_size(), context_length=16)
    data = flaxen.data.text_blocks(workspace["texts"], tok, block_size=config.context_length + 1)
    for folder, tokenizer in ((tmp_path / "with", tok), (tmp_path / "without", None)):
        model = flaxen.GPTForCausalLM(config, rngs=nnx.Rngs(0))
        trainer = flaxen.Trainer(
            model, flaxen.train.adamw(1e-3), folder, batch_size=4, progress=False, tokenizer=tokenizer
        )
        trainer.fit(data, steps=2)
    capsys.readouterr()
    assert main(["generate", "--run", str(tmp_path / "with"), "--prompt", "the king", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("the king")
    assert main(["generate", "--run", str(tmp_path / "without"), "--prompt", "the king"]) == 2
    assert "has no tokenizer" in capsys.readouterr().err


def test_resume_continues_a_run_to_more_steps(workspace, capsys):
    texts = workspace["texts"]
    args = ["pretrain", "gpt", "--data", *texts, "--vocab-size", "300", "--out", str(workspace["gpt"])]
    assert main([*args, *TRAIN[:2], "--steps", "6", *TRAIN[4:], "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (workspace["gpt"] / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 6


@pytest.fixture(scope="module")
def bad_inputs(workspace):
    ws = workspace
    texts = ws["texts"]
    root = ws["root"]
    empty = root / "empty.txt"
    empty.write_text("")
    binary = root / "binary.txt"
    binary.write_bytes(bytes(range(128, 256)) * 8)
    short = root / "short.txt"
    short.write_text("the king")
    no_label = root / "no_label.csv"
    no_label.write_text("text,stars\nfair day,5\nfoul night,1\n")
    three_labels = write_table(root / "three.csv", labels=("negative", "neutral", "positive"))
    truncated = write_images(root / "truncated")
    whole = (truncated / "b" / "3.png").read_bytes()
    (truncated / "b" / "3.png").write_bytes(whole[: len(whole) // 2])
    one_label = write_table(root / "one_label.csv", labels=("positive",))
    one_class = root / "one_class"
    (one_class / "a").mkdir(parents=True, exist_ok=True)
    for image in sorted((ws["images"] / "a").glob("*.png"))[:3]:
        (one_class / "a" / image.name).write_bytes(image.read_bytes())
    gpt = ["pretrain", "gpt", "--vocab-size", "300", *TRAIN]
    return {
        "missing file": ([*gpt, "--data", str(root / "nope.txt"), "--out", str(root / "new1")], "no such file"),
        "empty file": ([*gpt, "--data", str(empty), "--out", str(root / "new2")], "is empty: there is no text"),
        "undecodable text": ([*gpt, "--data", str(binary), "--out", str(root / "new3")], "is not valid utf-8 text"),
        "text shorter than a block": ([*gpt, "--data", str(short), "--out", str(root / "new4")], "tokens but"),
        "missing label column": (
            ["finetune", "bert", "--data", str(no_label), "--out", str(root / "new5"), *TRAIN],
            "no column 'label'",
        ),
        "more labels than the head": (
            ["finetune", "bert", "--data", str(three_labels), "--num-labels", "2", "--out", str(root / "new6"), *TRAIN],
            "the data has 3 labels (negative, neutral, positive) but the model has num_labels=2",
        ),
        "a truncated image": (
            ["train", "vit", "--images", str(truncated), "--out", str(root / "new7"), *TRAIN],
            "cannot read image " + str(truncated / "b" / "3.png"),
        ),
        "negative mixup": (
            ["train", "vit", "--images", str(ws["images"]), "--mixup", "-1", "--out", str(root / "new9"), *TRAIN],
            "--mixup must be at least 0",
        ),
        "resume a run of another model": (
            [*gpt, "--data", *texts, "--out", str(ws["vit"]), "--resume"],
            "ViTForImageClassification run",
        ),
        "out folder holds a run": ([*gpt, "--data", *texts, "--out", str(ws["gpt"])], "--resume"),
        "bad preset": (
            [*gpt[: -len(TRAIN)], "--preset", "huge", "--data", *texts, "--out", str(root / "new8")],
            "unknown preset",
        ),
        "unknown flag": (["train", "vit", "--wings"], "unrecognized arguments"),
        "generate from a ViT run": (["generate", "--run", str(ws["vit"])], "needs a text-generation model"),
        "eval of a non-run folder": (["eval", "--run", str(root)], "not a flaxen run folder"),
        "a table with one label": (
            ["finetune", "bert", "--data", str(one_label), "--out", str(root / "new2"), *TRAIN],
            "has only the label 'positive'; a classifier needs examples of at least two labels",
        ),
        "resume with nothing to resume": (
            [*gpt, "--data", *texts, "--out", str(root / "new3"), "--resume"],
            "nothing to resume in",
        ),
        "an image folder with one class": (
            ["train", "vit", "--images", str(one_class), "--out", str(root / "new4"), *TRAIN],
            "has one class folder (a); a classifier needs",
        ),
        "held-out label the model never had": (
            ["eval", "--run", str(ws["clf"]), "--data", str(three_labels)],
            "label(s) 'neutral' that the model never had",
        ),
        "images for a text classifier": (
            ["predict", "--run", str(ws["clf"]), "--images", str(ws["images"])],
            "reads text, not images",
        ),
        "predict output that exists": (
            ["predict", "--run", str(ws["clf"]), "--text", "fair", "--output", str(ws["table"])],
            "already exists; choose a new file or pass --overwrite",
        ),
    }


CASES = [
    "missing file",
    "empty file",
    "undecodable text",
    "text shorter than a block",
    "missing label column",
    "more labels than the head",
    "a truncated image",
    "negative mixup",
    "resume a run of another model",
    "out folder holds a run",
    "bad preset",
    "unknown flag",
    "generate from a ViT run",
    "eval of a non-run folder",
    "a table with one label",
    "resume with nothing to resume",
    "an image folder with one class",
    "held-out label the model never had",
    "images for a text classifier",
    "predict output that exists",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_one_line_exit_two_and_changes_nothing(workspace, bad_inputs, case, capsys):
    argv, expected = bad_inputs[case]
    before = {name: snapshot(workspace[name]) for name in ("gpt", "vit")}
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("flaxen: error:"), captured.err
    assert expected in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert {name: snapshot(workspace[name]) for name in ("gpt", "vit")} == before
    for i in range(1, 10):
        assert not (workspace["root"] / f"new{i}").exists()


def test_a_run_folder_loads_with_from_pretrained_as_its_final_weights(workspace):
    import jax.numpy as jnp

    from flaxen import GPTForCausalLM, ViTForImageClassification
    from flaxen.runs import load_run

    for name, cls, inputs in (
        ("gpt", GPTForCausalLM, jnp.ones((1, 5), jnp.int32)),
        ("vit", ViTForImageClassification, jnp.ones((1, 8, 8, 1))),
    ):
        final_step = max(
            json.loads(line)["step"] for line in (workspace[name] / "metrics.jsonl").read_text().splitlines()
        )
        from_checkpoint = load_run(workspace[name], step=final_step).model
        np.testing.assert_array_equal(cls.from_pretrained(workspace[name])(inputs), from_checkpoint(inputs))


def test_an_empty_labels_list_means_every_label():

    assert build_parser().parse_args(["finetune", "bert", "--labels", ""]).labels is None
    assert build_parser().parse_args(["finetune", "bert", "--labels", "neg,pos"]).labels == ["neg", "pos"]


def test_lora_finetune_from_the_shell_trains_adapters_and_exports_a_plain_model(workspace, tmp_path, capsys):
    from flaxen import lora
    from flaxen.runs import FROZEN_FILE, load_run

    out = tmp_path / "lora"
    common = ["finetune", "bert", "--from", str(workspace["mlm"]), "--data", str(workspace["table"])]
    common += ["--max-length", "16", "--out", str(out), *TRAIN]
    assert main([*common, "--lora", "2"]) == 0
    assert json.loads((out / "run.json").read_text())["lora"]["rank"] == 2
    assert (out / FROZEN_FILE).is_file()
    run = load_run(out)
    assert not lora.has_lora(run.model)  # loaded merged
    capsys.readouterr()
    assert main(["predict", "--run", str(out), "--text", "the king"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in ("negative", "positive")
    assert main(["convert", str(out), str(tmp_path / "hf")]) == 0
    exported = flaxen.BertForSequenceClassification.from_pretrained(tmp_path / "hf")
    ids = jnp.asarray([[2, 5, 6, 3]])
    np.testing.assert_array_equal(np.asarray(exported(ids)), np.asarray(run.model(ids)))  # the same weights, read back
    # transformers reads the converted run as a plain BERT classifier: every tensor in place, the same logits.
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_model, info = transformers.BertForSequenceClassification.from_pretrained(
        tmp_path / "hf", output_loading_info=True
    )
    assert not any(info.values()), info
    with torch.no_grad():
        hf_logits = hf_model.eval()(torch.tensor([[2, 5, 6, 3]])).logits.numpy()
    np.testing.assert_allclose(hf_logits, np.asarray(run.model(ids)), atol=2e-6, rtol=0)  # the README's parity
    # Resuming it without --lora (or with another rank) would restore the wrong state: refused, nothing touched.
    before = snapshot(out)
    for flags in ([], ["--lora", "4"]):
        assert main([*common, "--resume", *flags]) == 2
        assert "was trained with --lora 2" in capsys.readouterr().err
    assert main([*common, "--lora", "0", "--overwrite"]) == 2
    assert "--lora must be a whole number of at least 1" in capsys.readouterr().err
    assert snapshot(out) == before


def _every_command(parser, prefix=()):
    """Each runnable command's words, e.g. ("pretrain", "gpt"), walking the parser's subcommands."""
    import argparse

    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield prefix
        return
    for name, sub in actions[0].choices.items():
        yield from _every_command(sub, (*prefix, name))


@pytest.mark.parametrize("words", list(_every_command(build_parser())), ids=" ".join)
def test_every_command_has_help_that_names_its_options(words, capsys):
    assert main([*words, "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: flaxen {' '.join(words)}") and "options:" in text
    if words[0] in ("pretrain", "finetune", "train"):
        for flag in (
            "--steps",
            "--minutes",
            "--lr",
            "--out",
            "--resume",
            "--early-stopping",
            "--schedule",
            "--coordinator",
        ):
            assert flag in text, flag


def test_eval_equals_an_independent_computation_on_the_validation_split(workspace, capsys):
    from flaxen.runs import load_run

    capsys.readouterr()
    assert main(["eval", "--run", str(workspace["clf"])]) == 0
    reported = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = load_run(workspace["clf"])
    recorded = run.info["data"]
    split = flaxen.data.text_classification(
        workspace["table"], run.tokenizer, max_length=recorded["max_length"], seed=run.info["seed"]
    ).validation.arrays
    logits = np.asarray(run.model(jnp.asarray(split["token_ids"]), jnp.asarray(split["padding_mask"])), np.float64)
    log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    nll = log_z - logits[np.arange(len(logits)), split["labels"]]
    assert reported["loss"] == pytest.approx(nll.mean(), rel=1e-5)
    assert reported["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == split["labels"]))


def test_the_readme_python_classifiers_lead_into_pipelines_and_exports(tmp_path):
    """The README's Python journeys 2 and 3 (smaller): a run trained from Python records what its data taught it
    (label names, pixel statistics), so pipelines and `flaxen convert` label and normalise as training did."""
    import subprocess
    import sys

    from flax import nnx

    import flaxen

    rng = np.random.default_rng(0)
    table = tmp_path / "tweets.csv"
    words = {"negative": ["awful", "sad", "bad"], "positive": ["lovely", "happy", "good"]}
    rows = [(" ".join(rng.choice(words[label], 4)), label) for label in ("negative", "positive") * 20]
    table.write_text("text,sentiment\n" + "".join(f"{text},{label}\n" for text, label in rows))
    tok = flaxen.text.train_wordpiece([str(table)], vocab_size=120)
    tweets = flaxen.data.text_classification(
        table, tok, text_column="text", label_column="sentiment", labels=["negative", "positive"], max_length=16
    )
    clf = flaxen.BertForSequenceClassification(
        flaxen.BertConfig.tiny(vocab_size=tok.get_vocab_size()), rngs=nnx.Rngs(0)
    )
    flaxen.Trainer(
        clf, flaxen.train.adamw(1e-3), tmp_path / "sentiment", tokenizer=tok, batch_size=4, progress=False
    ).fit(tweets, steps=2)
    prediction = flaxen.pipeline("text-classification", tmp_path / "sentiment")("what a lovely day")
    assert set(prediction["scores"]) == {"negative", "positive"} and prediction["label"] in prediction["scores"]
    flaxen.convert.convert(tmp_path / "sentiment", tmp_path / "export")
    hf_config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert hf_config["id2label"] == {"0": "negative", "1": "positive"}

    images, labels = flaxen.data.mnist_arrays()
    data = flaxen.data.image_classification(images[::50], labels[::50])
    vit = flaxen.ViTForImageClassification(
        flaxen.ViTConfig.from_variant("Ti/7", image_size=28, channels=1, num_labels=10, num_layers=1), rngs=nnx.Rngs(0)
    )
    flaxen.Trainer(vit, flaxen.train.adamw(1e-3), tmp_path / "vit", batch_size=8, progress=False).fit(data, steps=2)
    run = json.loads((tmp_path / "vit" / "run.json").read_text())
    assert len(run["mean"]) == len(run["std"]) == 1 and run["label_names"] == [str(d) for d in range(10)]
    labelled = flaxen.pipeline(model=tmp_path / "vit")([images[0], images[1][:, :, None]])
    assert all(row["label"] in run["label_names"] for row in labelled)  # a grey (H, W) and an (H, W, 1) image
    assert all(abs(sum(row["scores"].values()) - 1) < 1e-5 for row in labelled)

    check = "import flaxen; print(flaxen.evaluation.evaluate_held_out.__name__)"  # after a plain `import flaxen`
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "evaluate_held_out", done.stderr[-500:]
