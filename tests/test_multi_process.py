"""Two processes on this machine (2 simulated CPU devices each, CPU collectives) train as one 4-device process.

`flaxen pretrain gpt` runs as a 2-process job with FSDP from a token folder, each process reading its half of every
batch, beside the same command on one process with 4 devices (2-way data x 2-way FSDP). One process of the job is
killed with SIGKILL mid-run: the other stops too, naming the dead one. Both are restarted with --resume, and the
finished run matches the 1-process run's validation losses and parameters within 1e-5.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from flaxen import recipes
from flaxen.cli import main
from flaxen.train.metrics import read_metrics

FLAXEN = Path(sys.executable).with_name("flaxen")
WORDS = "the king queen love night day sword crown blood heart fair foul sweet death life honour".split()
STEPS = 40
EVAL_EVERY = 4
HEARTBEAT_SECONDS = 5
TRAIN = ["pretrain", "gpt", "--preset", "tiny", "--context-length", "16", "--steps", str(STEPS)]
TRAIN += ["--eval-every", str(EVAL_EVERY), "--batch-size", "8", "--fsdp", "2", "--no-progress", "--no-tensorboard"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def start(arguments: list[str], devices: int, log: Path, heartbeat: int = HEARTBEAT_SECONDS) -> subprocess.Popen:
    env = os.environ | {
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "FLAXEN_HEARTBEAT_TIMEOUT": str(heartbeat),
    }
    with open(log, "ab") as output:
        return subprocess.Popen([str(FLAXEN), *arguments], env=env, stdout=output, stderr=subprocess.STDOUT)


def start_job(run: Path, tokens: Path, *, resume: bool) -> list[subprocess.Popen]:
    coordinator = ["--coordinator", f"localhost:{free_port()}", "--num-processes", "2"]
    arguments = [*TRAIN, "--data", str(tokens), "--out", str(run), *coordinator, *(["--resume"] if resume else [])]
    return [start([*arguments, "--process-id", str(index)], 2, run.parent / f"process{index}.log") for index in (0, 1)]


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_after_one_is_killed(tmp_path):
    rng = np.random.default_rng(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS, size=8)) for _ in range(600)))
    recipes.tokenize([corpus], tmp_path / "tokens", vocab_size=300, progress=False)

    reference, job = tmp_path / "reference", tmp_path / "job"
    one_process = start([*TRAIN, "--data", str(tmp_path / "tokens"), "--out", str(reference)], 4, tmp_path / "ref.log")
    assert one_process.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()[-2000:]
    assert json.loads((reference / "run.json").read_text())["training"]["mesh"] == {"data": 2, "fsdp": 2}

    processes = start_job(job, tmp_path / "tokens", resume=False)
    while not (job / "checkpoints" / str(EVAL_EVERY)).is_dir():
        assert all(process.poll() is None for process in processes), (tmp_path / "process0.log").read_text()[-2000:]
        time.sleep(0.05)
    processes[1].send_signal(signal.SIGKILL)
    survivor_code = processes[0].wait(timeout=120)  # it stops (a hang fails here), by the heartbeat, as its log says
    assert survivor_code != 0
    survivor_log = (tmp_path / "process0.log").read_text()
    assert "another task died" in survivor_log, survivor_log[-2000:]
    assert not (job / "model.safetensors").exists()  # it did not finish

    for process in start_job(job, tmp_path / "tokens", resume=True):
        assert process.wait(timeout=300) == 0, (tmp_path / "process0.log").read_text()[-2000:]
    expected, got = load_file(reference / "model.safetensors"), load_file(job / "model.safetensors")
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-5, rtol=0, err_msg=name)
    assert main(["eval", "--run", str(job)]) == 0  # the 2-process checkpoint restores in this 1-device process
    records = [(r["step"], r["split"]) for r in read_metrics(reference / "metrics.jsonl")]
    assert [(r["step"], r["split"]) for r in read_metrics(job / "metrics.jsonl")] == records  # one log, no repeats
    # Validation losses; a train record averages the steps since the last log line, which a resume cuts short.
    validation = [r for r in read_metrics(job / "metrics.jsonl") if r["split"] == "validation"]
    expected_validation = [r for r in read_metrics(reference / "metrics.jsonl") if r["split"] == "validation"]
    for mine, theirs in zip(validation, expected_validation, strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-5)


def test_a_failure_in_process_zero_alone_stops_every_process_with_its_message(tmp_path):
    """Process 0 trains the tokenizer alone; its error reaches the others at once, not at the heartbeat timeout."""
    (tmp_path / "latin.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
    coordinator = ["--coordinator", f"localhost:{free_port()}", "--num-processes", "2"]
    arguments = [
        "pretrain",
        "bert",
        "--data",
        str(tmp_path / "latin.txt"),
        "--out",
        str(tmp_path / "run"),
        *coordinator,
    ]
    logs = [tmp_path / f"process{index}.log" for index in (0, 1)]
    # A heartbeat timeout far beyond the wait below: only the broadcast failure can end process 1 in time.
    processes = [start([*arguments, "--process-id", str(index)], 1, logs[index], heartbeat=900) for index in (0, 1)]
    assert [process.wait(timeout=240) for process in processes] == [2, 2]
    assert "latin.txt is not valid utf-8 text" in logs[0].read_text()
    assert "process 0 failed: " in logs[1].read_text() and "latin.txt is not valid utf-8 text" in logs[1].read_text()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--coordinator", "localhost:1"], "missing --num-processes, --process-id"),
        (["--num-processes", "2", "--process-id", "2", "--coordinator", "h:1"], "--process-id must be from 0 to 1"),
        (["--num-processes", "0", "--process-id", "0", "--coordinator", "h:1"], "--num-processes must be at least 1"),
    ],
)
def test_incomplete_multi_process_flags_get_one_line_before_anything_is_written(tmp_path, capsys, arguments, message):
    assert main(["pretrain", "gpt", "--steps", "2", "--out", str(tmp_path / "run"), *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_environment_names_the_run_too(monkeypatch):
    from flaxen import distributed

    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES must be a whole number, got 'two'"):
        distributed.initialize()
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="missing --coordinator, --process-id"):
        distributed.initialize()


def test_two_processes_from_the_environment_train_their_tokenizer_once_and_match_one_process(tmp_path):
    """The fast version of the slow test above: `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`
    instead of flags; text files, so process 0 trains the BPE and hands it to process 1; the same weights as one
    process with both processes' devices."""
    rng = np.random.default_rng(1)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS, size=8)) for _ in range(300)))
    train = ["pretrain", "gpt", "--preset", "tiny", "--context-length", "16", "--steps", "4", "--eval-every", "4"]
    train += ["--batch-size", "4", "--vocab-size", "300", "--no-progress", "--no-tensorboard", "--data", str(corpus)]
    one = start([*train, "--out", str(tmp_path / "one")], 2, tmp_path / "one.log")
    assert one.wait(timeout=300) == 0, (tmp_path / "one.log").read_text()[-2000:]

    address = f"localhost:{free_port()}"
    processes = []
    for index in (0, 1):
        log = tmp_path / f"process{index}.log"
        env = os.environ | {
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
            "FLAXEN_HEARTBEAT_TIMEOUT": str(HEARTBEAT_SECONDS),
            "JAX_COORDINATOR_ADDRESS": address,
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(index),
        }
        with open(log, "ab") as output:
            arguments = [str(FLAXEN), *train, "--out", str(tmp_path / "two")]
            processes.append(subprocess.Popen(arguments, env=env, stdout=output, stderr=subprocess.STDOUT))
    for index, process in enumerate(processes):
        assert process.wait(timeout=300) == 0, (tmp_path / f"process{index}.log").read_text()[-2000:]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["training"]["mesh"] == {"data": 2, "fsdp": 1}
    assert (tmp_path / "two" / "tokenizer.json").read_text() == (tmp_path / "one" / "tokenizer.json").read_text()
    expected, got = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-5, rtol=0, err_msg=name)
