"""A run folder written by an earlier release (tests/fixtures/run-0.1-gpt) still loads, evaluates and resumes."""

import json
import shutil
from pathlib import Path

import pytest

from flaxen.cli import main
from flaxen.models import GPTForCausalLM
from flaxen.recipes import evaluate_run
from flaxen.runs import load_run, read_run_file, recipe_of

FIXTURE = Path(__file__).parent / "fixtures" / "run-0.1-gpt"
TRAIN = [
    "--preset",
    "tiny",
    "--vocab-size",
    "280",
    "--batch-size",
    "4",
    "--eval-every",
    "2",
    "--seed",
    "3",
    "--no-progress",
]


@pytest.fixture
def old_run(tmp_path, monkeypatch):
    folder = tmp_path / "gpt-run"
    shutil.copytree(FIXTURE, folder)
    monkeypatch.chdir(folder)  # run.json names its data file relative to where the run was made
    return folder


def validation_losses(folder: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in records if record["split"] == "validation"}


def test_an_old_run_loads_its_best_checkpoint_and_scores_what_it_logged(old_run):
    run = load_run(old_run)
    assert isinstance(run.model, GPTForCausalLM) and run.step == 4  # step 4 had the lower validation loss
    assert run.tokenizer.get_vocab_size() <= run.model.config.vocab_size
    assert recipe_of(read_run_file(old_run)) == "pretrain-gpt"  # written under its old key, "journey"
    scores = evaluate_run(old_run, batch_size=4)
    assert scores["checkpoint_step"] == 4
    assert scores["loss"] == pytest.approx(validation_losses(old_run)[4], rel=1e-5)


def test_an_old_run_resumes_from_its_latest_checkpoint(old_run):
    assert (
        main(["pretrain", "gpt", "--data", "plays.txt", "--out", str(old_run), "--steps", "6", "--resume", *TRAIN]) == 0
    )
    assert sorted(validation_losses(old_run)) == [2, 4, 6]
    assert (old_run / "model.safetensors").is_file()
    assert load_run(old_run, step=6).step == 6
    assert evaluate_run(old_run, batch_size=4)["loss"] == pytest.approx(
        min(validation_losses(old_run).values()), rel=1e-5
    )
