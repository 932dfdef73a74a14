"""benchmarks/gpu.py, the GPU benchmark, runs end to end at tiny size on this CPU (each case in its own process)."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_tiny_run_measures_every_case_and_both_libraries_train(tmp_path):
    results = tmp_path / "results.jsonl"
    tasks = "gpt-16x1024,bert-64x128,vit-64,decode"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--no-compile", "--only", tasks, "--out", str(results)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {row["case"]: row for row in map(json.loads, results.read_text().splitlines())}
    expected = ["ceilings/jax"] + [f"{t}/{i}" for t in tasks.split(",") for i in ("flaxen", "hf_eager")]
    assert sorted(rows) == sorted(expected)
    assert not [row for row in rows.values() if "error" in row or "skipped" in row]
    ceilings = rows["ceilings/jax"]
    assert ceilings["matmul_tflops"] > 0 and ceilings["copy_gbps"] > 0 and ceilings["cudnn_attention"] == "no GPU"
    classes = {"gpt-16x1024": 512, "bert-64x128": 512, "vit-64": 10}  # a few steps from random weights: ≈ ln(classes)
    for task, count in classes.items():
        for implementation in ("flaxen", "hf_eager"):
            row = rows[f"{task}/{implementation}"]
            assert row["rate"] > 0 and 0 < row["mfu"] and row["step_ms"] > 0
            assert abs(row["last_loss"] - math.log(count)) < 0.6, (task, implementation, row["last_loss"])
        assert rows[f"{task}/flaxen"]["compute_dtype"] == "float32"  # auto, on a CPU
        assert rows[f"{task}/flaxen"]["model_tflop_per_step"] == rows[f"{task}/hf_eager"]["model_tflop_per_step"]
    for implementation in ("flaxen", "hf_eager"):
        assert set(rows[f"decode/{implementation}"]["tokens_per_s"]) == {"1", "2"}
    assert set(rows["decode/flaxen"]["ceiling_tokens_per_s"]) == {"1", "2"}
    table = done.stdout.split("| case |")[1]
    assert all(f"| {task} (" in table for task in classes) and "| decode batch 2 " in table


def test_cases_run_in_priority_order_with_levers_merged(gpu_bench):
    args = gpu_bench.parse_args(["--no-compile", "--only", "vit-64,gpt-16x1024"])
    assert gpu_bench.planned_cases(args) == [
        "ceilings/jax",
        "vit-64/flaxen",
        "vit-64/hf_eager",
        "gpt-16x1024/flaxen",
        "gpt-16x1024/hf_eager",
    ]
    _, task, implementation, settings = gpu_bench.split_case("gpt-16x1024/flaxen+unpadded_logits+command_buffers")
    assert (task.kind, implementation) == ("gpt", "flaxen")
    assert settings["constants"] == {"flaxen.core.embeddings.LOGITS_PAD_MULTIPLE": {}}
    assert settings["xla_flags"].startswith("--xla_gpu_enable_command_buffer=")
    with pytest.raises(SystemExit, match="unknown lever"):
        gpu_bench.split_case("gpt-16x1024/flaxen+faster")


def test_a_case_that_does_not_fit_the_budget_is_reported_not_lost(gpu_bench, tmp_path, capsys):
    gpu_bench.run_all(
        gpu_bench.parse_args(["--tiny", "--only", "decode", "--budget", "10", "--out", str(tmp_path / "r")])
    )
    rows = [json.loads(line) for line in (tmp_path / "r").read_text().splitlines()]
    assert [row["skipped"] for row in rows] == ["over the time budget"] * 3
    assert "skipped (budget): ceilings/jax, decode/flaxen, decode/hf_eager" in capsys.readouterr().out
