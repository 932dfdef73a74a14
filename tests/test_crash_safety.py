"""Training survives crashes exactly: real `flaxen pretrain gpt` runs killed with SIGKILL, then resumed.

After every kill the latest checkpoint restores and no half-written checkpoint is listed; every chain of
kill-and-resume ends with checkpoints bit-for-bit equal to an uninterrupted run's. A diverging run stops with one
error line and exit code 1, and its last good checkpoint still loads.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from flaxen.checkpoints import checkpoint_manager, restore_checkpoint
from flaxen.cli import main
from flaxen.models.gpt import GPTConfig, GPTForCausalLM
from flaxen.runs import CHECKPOINT_DIR
from flaxen.train import adamw
from flaxen.train.metrics import read_metrics

FLAXEN = Path(sys.executable).with_name("flaxen")
WORDS = "the king queen love night day sword crown blood heart fair foul sweet death life honour".split()
STEPS = 16
CHECKPOINT_EVERY = 2
TRAIN = [
    "pretrain",
    "gpt",
    "--preset",
    "tiny",
    "--context-length",
    "16",
    "--vocab-size",
    "300",
    "--steps",
    str(STEPS),
    "--batch-size",
    "4",
    "--eval-every",
    str(CHECKPOINT_EVERY),
    "--seed",
    "3",
    "--no-progress",
]
TEMPORARY_MARK = ".orbax-checkpoint-tmp"  # orbax writes a checkpoint here, then renames it to its step number
CHAINS = 2  # side by side: this machine has two cores
KILLS_PER_CHAIN = 5


def write_text(path: Path, words: int = 3600, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.write_text("\n".join(" ".join(rng.choice(WORDS, 12)) + "." for _ in range(words // 12)) + "\n")
    return path


class Runner:
    """Starts CLI training runs on one text file, sharing a persistent compilation cache to keep restarts quick."""

    def __init__(self, root: Path):
        self.text = write_text(root / "plays.txt")
        self.environment = os.environ | {
            "JAX_PLATFORMS": "cpu",
            "JAX_COMPILATION_CACHE_DIR": str(root / "jax-cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
        }

    def start(self, out_dir: Path, *, resume: bool, log: Path) -> subprocess.Popen:
        argv = [str(FLAXEN), *TRAIN, "--data", str(self.text), "--out", str(out_dir)] + (["--resume"] if resume else [])
        with open(log, "a") as log_file:
            return subprocess.Popen(argv, env=self.environment, stdout=log_file, stderr=subprocess.STDOUT)


def temporary_checkpoints(out_dir: Path) -> list[Path]:
    folder = out_dir / CHECKPOINT_DIR
    try:
        return [path for path in folder.iterdir() if TEMPORARY_MARK in path.name]
    except FileNotFoundError:
        return []


def finished_steps(out_dir: Path) -> list[int]:
    folder = out_dir / CHECKPOINT_DIR
    return sorted(int(path.name) for path in folder.iterdir() if path.name.isdigit()) if folder.is_dir() else []


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], *, timeout: float = 120.0) -> None:
    """SIGKILL `process` as soon as `ready()` holds (polled every millisecond)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the run ended (exit code {process.returncode}) before it could be killed"
        assert time.monotonic() < deadline, "the run did not reach the moment to kill it"
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait()


class CheckpointWrites:
    """Checkpoint writes in progress in a run folder, ignoring a killed run's leftovers until they are cleaned up."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.leftovers = {path.name for path in temporary_checkpoints(out_dir)}

    def in_progress(self) -> set[str]:
        current = {path.name for path in temporary_checkpoints(self.out_dir)}
        self.leftovers &= current
        return current - self.leftovers


def kill_moment(
    rng: random.Random, out_dir: Path, writes: CheckpointWrites, seconds_per_run: float
) -> tuple[str, Callable[[], bool]]:
    """A seeded choice of when to kill the run writing `out_dir`: a kind and the condition that says "now".

    Every kind also fires once the last checkpoint before the final one has finished: the run still has steps, an
    evaluation and the final write ahead of it then, so it is always killed before it completes (polling for the
    final write alone could miss a fast write and let the run finish). A run resumed from that checkpoint is
    killed within half a second of its start, while Python and JAX are still starting.
    """
    latest = max(finished_steps(out_dir), default=0)
    last_but_one = STEPS - CHECKPOINT_EVERY
    if latest >= last_but_one:
        deadline = time.monotonic() + rng.uniform(0.0, 0.5)
        return "any moment", lambda: time.monotonic() >= deadline

    def near_the_end() -> bool:
        return last_but_one in finished_steps(out_dir)

    kind = rng.choice(["any moment", "during a checkpoint write", "between checkpoint writes"])
    if kind == "any moment":
        deadline = time.monotonic() + rng.uniform(0.0, seconds_per_run)
        return kind, lambda: time.monotonic() >= deadline or near_the_end()
    target_step = rng.randrange(latest + CHECKPOINT_EVERY, last_but_one + 1, CHECKPOINT_EVERY)
    if kind == "during a checkpoint write":
        return kind, lambda: f"{target_step}{TEMPORARY_MARK}" in writes.in_progress() or near_the_end()
    delay = rng.uniform(0.0, 0.3)
    reached_at: list[float] = []

    def ready() -> bool:
        if not reached_at and target_step in finished_steps(out_dir):
            reached_at.append(time.monotonic())
        return bool(reached_at) and time.monotonic() >= reached_at[0] + delay or near_the_end()

    return kind, ready


def abstract_training_state(out_dir: Path):
    """Templates (model state, optimizer state) for restoring a run's checkpoint without the run's process."""
    config = GPTConfig.from_json(out_dir / "config.json")
    model = nnx.eval_shape(lambda: GPTForCausalLM(config, rngs=nnx.Rngs(0)))
    return nnx.state(model), jax.eval_shape(adamw(1e-3, warmup=1, total=STEPS).init, nnx.state(model, nnx.Param))


def restore_latest(out_dir: Path) -> int | None:
    """Restore the latest checkpoint completely (model, optimizer state, progress); its step, None if none.

    Also checks that orbax lists exactly the finished (renamed) checkpoint folders, no half-written one.
    """
    if not (out_dir / CHECKPOINT_DIR).is_dir():
        return None
    with checkpoint_manager(out_dir / CHECKPOINT_DIR, read_only=True) as manager:
        assert manager.all_steps() == finished_steps(out_dir)
        latest = manager.latest_step()
        if latest is None:
            return None
        model_state, opt_state, progress = restore_checkpoint(manager, latest, *abstract_training_state(out_dir))
    assert progress["step"] == latest
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves((model_state, opt_state)))
    return latest


def final_state(out_dir: Path) -> list[np.ndarray]:
    with checkpoint_manager(out_dir / CHECKPOINT_DIR, read_only=True) as manager:
        assert manager.latest_step() == STEPS
        model_state, opt_state, _ = restore_checkpoint(manager, STEPS, *abstract_training_state(out_dir))
    return [np.asarray(leaf) for leaf in jax.tree.leaves((model_state, opt_state))]


def validation_records(out_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(out_dir / "metrics.jsonl") if r["split"] == "validation"]


def run_chain(runner: Runner, out_dir: Path, seed: int, seconds_per_run: float) -> list[dict]:
    """Start a run and kill it, resume and kill it again (KILLS_PER_CHAIN kills in all), then resume it to the end.

    After each kill, the latest checkpoint must restore and orbax must list no half-written one.
    """
    rng = random.Random(seed)
    log = out_dir.with_suffix(".log")
    kills = []
    for _ in range(KILLS_PER_CHAIN):
        writes = CheckpointWrites(out_dir)
        # A run killed before it wrote run.json left nothing to resume: it is started again, as a user would.
        process = runner.start(out_dir, resume=(out_dir / "run.json").is_file(), log=log)
        kind, ready = kill_moment(rng, out_dir, writes, seconds_per_run)
        kill_when(process, ready)
        kills.append({"kind": kind, "while_writing": bool(writes.in_progress()), "latest": restore_latest(out_dir)})
    process = runner.start(out_dir, resume=True, log=log)
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert not temporary_checkpoints(out_dir)
    return kills


@pytest.mark.slow
def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path):
    runner = Runner(tmp_path)
    reference = tmp_path / "reference"
    started = time.monotonic()
    assert runner.start(reference, resume=False, log=tmp_path / "reference.log").wait(timeout=300) == 0
    seconds_per_run = time.monotonic() - started  # with a cold compilation cache: longer than later runs
    expected_state = final_state(reference)
    expected_validation = validation_records(reference)
    assert [step for step, _ in expected_validation] == list(range(CHECKPOINT_EVERY, STEPS + 1, CHECKPOINT_EVERY))

    chains = [tmp_path / f"chain{index}" for index in range(CHAINS)]
    with ThreadPoolExecutor(max_workers=2) as pool:  # two at a time: this machine has two cores
        kills = list(
            pool.map(lambda i: run_chain(runner, chains[i], seed=i, seconds_per_run=seconds_per_run), range(CHAINS))
        )

    for chain in chains:
        assert validation_records(chain) == expected_validation
        for got, expected in zip(final_state(chain), expected_state, strict=True):
            np.testing.assert_array_equal(got, expected)
        for name in ("tokenizer.json", "config.json", "run.json"):
            assert (chain / name).read_text() == (reference / name).read_text(), name
    all_kills = [kill for chain_kills in kills for kill in chain_kills]
    assert len(all_kills) == CHAINS * KILLS_PER_CHAIN >= 10
    assert sum(kill["while_writing"] for kill in all_kills) >= 3, kills
    assert any(kill["latest"] is None for kill in all_kills) and any(kill["latest"] for kill in all_kills), kills


def test_divergence_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out_dir = tmp_path / "run"
    text = write_text(tmp_path / "plays.txt", words=1200)
    argv = [
        *TRAIN[: TRAIN.index("--steps")],
        "--steps",
        "20",
        "--batch-size",
        "4",
        "--eval-every",
        "1",
        "--no-progress",
        "--data",
        str(text),
        "--out",
        str(out_dir),
        "--lr",
        "1e6",
    ]
    assert main(argv) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("flaxen: error: training diverged at step "), lines
    diverged_at = int(lines[0].split("at step ")[1].split(":")[0])
    last_good = int(lines[0].split("last good checkpoint: step ")[1].split(" ")[0])
    assert 1 <= last_good < diverged_at
    assert finished_steps(out_dir)[-1] == last_good
    assert restore_latest(out_dir) == last_good

    assert main(["eval", "--run", str(out_dir)]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["checkpoint_step"] <= last_good and np.isfinite(scores["loss"])
