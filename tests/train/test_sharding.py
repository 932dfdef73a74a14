"""Data-parallel and FSDP training on 8 simulated CPU devices match 1-device training; checkpoints cross meshes.

XLA_FLAGS must be set before jax is imported, so the 8-device side runs in a subprocess (sharded_runs.py) that
reports in JSON; this process is the 1-device side.

The tolerance holds at a small learning rate: the attention key bias has an exactly zero gradient in theory
(softmax ignores a shift shared by a whole row), so Adam turns its rounding noise into steps of about the
learning rate, and those differ between reduction orders.
"""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import sharded_runs as runs
from flax import nnx

from flaxen.models.gpt import GPTForCausalLM
from flaxen.recipes import training_options
from flaxen.train import load_checkpoint, make_mesh

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharding")
    model, final = runs.train(root / "one-device", make_mesh(devices=jax.devices()[:1]))
    (root / "eight").mkdir()
    environment = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, runs.__file__, str(root / "eight"), str(root / "one-device")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return {
        "root": root,
        "params": {name: np.asarray(value) for name, value in runs.flat_params(model).items()},
        "losses": runs.train_losses(root / "one-device"),
        "validation_loss": final["validation_loss"],
        "report": json.loads(result.stdout.strip().splitlines()[-1]),
    }


def assert_params_close(params: dict, npz_path: str, tolerance: float = TOLERANCE) -> None:
    saved = np.load(npz_path)
    assert sorted(saved.files) == sorted(params)
    for name, value in params.items():
        np.testing.assert_allclose(saved[name], value, rtol=0, atol=tolerance, err_msg=name)


def test_the_subprocess_saw_eight_devices(trained):
    assert trained["report"]["device_count"] == 8


@pytest.mark.parametrize("run", ["data8", "fsdp"])
def test_eight_device_training_matches_one_device(trained, run):
    report = trained["report"][run]
    np.testing.assert_allclose(report["losses"], trained["losses"], rtol=0, atol=TOLERANCE)
    assert len(report["losses"]) == runs.STEPS
    assert report["validation_loss"] == pytest.approx(trained["validation_loss"], abs=TOLERANCE)
    assert_params_close(trained["params"], report["params"])


@pytest.mark.parametrize(("run", "fsdp_size"), [("data8", 1), ("fsdp", 4), ("resumed_on_8", 8)])
def test_parameter_shardings_follow_the_rule_table(trained, run, fsdp_size):
    min_ndim, min_size = trained["report"]["default_rules"]
    specs = trained["report"][run]["specs"]
    assert specs.keys() == trained["params"].keys()
    for name, spec in specs.items():
        shape = trained["params"][name].shape
        split = [dim for dim, axis in enumerate(spec) if axis == "fsdp"]
        assert set(spec) <= {"fsdp", None} and len(split) <= 1, (name, spec)
        small = fsdp_size == 1 or len(shape) < min_ndim or math.prod(shape) < min_size
        dividing = [dim for dim in range(len(shape)) if shape[dim] % fsdp_size == 0]
        if small or not dividing:
            assert not split, (name, shape, spec)  # replicated: too small, or no axis the devices divide
        else:  # split, on an axis the devices divide, and the largest such (the biggest shards saved)
            assert split and shape[split[0]] % fsdp_size == 0, (name, shape, spec)
            assert shape[split[0]] == max(shape[dim] for dim in dividing), (name, shape, spec)
    if fsdp_size > 1:  # both branches of the table are exercised: some matrices split, some replicated
        matrices = [spec for name, spec in specs.items() if trained["params"][name].ndim == 2]
        assert [] in matrices and any("fsdp" in spec for spec in matrices)
    assert trained["report"]["moments_mirror_params"]


def test_one_device_checkpoint_resumes_sharded_on_eight(trained):
    assert_params_close(trained["params"], trained["report"]["resumed_on_8"]["params"])


def test_sharded_checkpoint_restores_and_resumes_on_one_device(trained, tmp_path):
    sharded_run = trained["root"] / "eight" / "fsdp"
    restored = GPTForCausalLM(runs.CONFIG, rngs=nnx.Rngs(1))
    assert load_checkpoint(restored, sharded_run, step=runs.STEPS) == runs.STEPS
    saved = np.load(trained["report"]["fsdp"]["params"])
    for name, value in runs.flat_params(restored).items():
        np.testing.assert_array_equal(np.asarray(value), saved[name], err_msg=name)

    resumed_copy = runs.copy_at_step(sharded_run, runs.CHECKPOINT_EVERY, tmp_path / "resumed-on-1")
    resumed, _ = runs.train(resumed_copy, make_mesh(devices=jax.devices()[:1]), resume=True)
    params = {name: np.asarray(value) for name, value in runs.flat_params(resumed).items()}
    assert_params_close(params, trained["report"]["fsdp"]["params"])


def test_meshes_and_batches_that_do_not_fit_are_refused(trained):
    errors = trained["report"]["errors"]
    assert errors["batch"] == (
        "batch size 12 does not split evenly over the 8 devices of the mesh (data=2 × fsdp=4); use a multiple of 8"
    )
    assert errors["mesh"].startswith("a data=3 × fsdp=1 mesh needs 3 devices but 8 are available")
    with pytest.raises(ValueError, match="mesh axis sizes must be positive"):
        make_mesh(data=-1, fsdp=-1)


def test_fsdp_option_lays_out_every_device(trained):
    assert trained["report"]["cli_mesh"] == {"data": 2, "fsdp": 4}
    if jax.device_count() == 1:
        with pytest.raises(ValueError, match="fsdp=2 does not divide the 1 available devices"):
            training_options(steps=1, fsdp=2)
