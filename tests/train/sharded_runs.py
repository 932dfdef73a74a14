"""Tiny GPT training runs on a device mesh, shared by test_sharding.py and its 8-device subprocess.

As a script (`python sharded_runs.py WORK_DIR ONE_DEVICE_RUN`, with XLA_FLAGS forcing 8 CPU devices) it trains
data-parallel and FSDP runs in WORK_DIR, resumes a copy of the 1-device run at step 3 on an FSDP mesh, and prints
a JSON report; parameters go to .npz files beside the runs.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

from flaxen.data import ArrayDataset, DataSplits
from flaxen.models.gpt import GPTConfig, GPTForCausalLM
from flaxen.recipes import training_options
from flaxen.runs import CHECKPOINT_DIR
from flaxen.train import ShardingRules, Trainer, adamw, make_mesh, parameter_sharding
from flaxen.train.metrics import read_metrics

jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py sets it for the 1-device side

STEPS = 5
CHECKPOINT_EVERY = 3
BATCH_SIZE = 8
CONFIG = GPTConfig.tiny(context_length=16, dropout=0.0)


def token_data() -> DataSplits:
    """Random token blocks: 48 training rows, 16 validation rows."""
    token_ids = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (64, CONFIG.context_length + 1), dtype=np.int32)
    return DataSplits(ArrayDataset({"token_ids": token_ids[:48]}), ArrayDataset({"token_ids": token_ids[48:]}), {})


def optimizer():
    return adamw(1e-3, warmup=1, total=STEPS)


def train(out_dir: Path, mesh, *, resume: bool = False) -> tuple[GPTForCausalLM, dict]:
    """Train a fresh tiny GPT for STEPS steps on `mesh` (checkpoints at 3 and 5), or resume the run in `out_dir`."""
    model = GPTForCausalLM(CONFIG, rngs=nnx.Rngs(0))
    trainer = Trainer(
        model,
        optimizer(),
        out_dir,
        batch_size=BATCH_SIZE,
        log_every=1,
        eval_every=STEPS,
        checkpoint_every=CHECKPOINT_EVERY,
        progress=False,
        mesh=mesh,
    )
    return model, trainer.fit(token_data(), STEPS, resume=resume)


def flat_params(model) -> dict[str, jax.Array]:
    return {
        "/".join(map(str, path)): variable[...] for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


def save_params(model, path: Path) -> str:
    np.savez(path, **{name: np.asarray(value) for name, value in flat_params(model).items()})
    return str(path)


def train_losses(run_dir: Path) -> list[float]:
    return [record["loss"] for record in read_metrics(run_dir / "metrics.jsonl") if record["split"] == "train"]


def copy_at_step(run_dir: Path, step: int, destination: Path) -> Path:
    """A copy of a run folder holding only its checkpoints up to `step`, as if the run had stopped there."""
    shutil.copytree(run_dir, destination)
    for checkpoint in (destination / CHECKPOINT_DIR).iterdir():
        if checkpoint.name.isdigit() and int(checkpoint.name) > step:
            shutil.rmtree(checkpoint)
    return destination


def spec_of(sharding) -> list:
    return [list(axes) if isinstance(axes, tuple) else axes for axes in sharding.spec]


def main(work_dir: Path, one_device_run: Path) -> dict:
    report: dict = {"device_count": jax.device_count()}
    for name, mesh in {"data8": make_mesh(data=8), "fsdp": make_mesh(data=2, fsdp=4)}.items():
        model, final = train(work_dir / name, mesh)
        report[name] = {
            "params": save_params(model, work_dir / f"{name}.npz"),
            "losses": train_losses(work_dir / name),
            "validation_loss": final["validation_loss"],
            "specs": {path: spec_of(value.sharding) for path, value in flat_params(model).items()},
        }

    fsdp_mesh = make_mesh(data=1, fsdp=8)
    resumed, _ = train(
        copy_at_step(one_device_run, CHECKPOINT_EVERY, work_dir / "resumed-on-8"), fsdp_mesh, resume=True
    )
    report["resumed_on_8"] = {
        "params": save_params(resumed, work_dir / "resumed-on-8.npz"),
        "specs": {path: spec_of(value.sharding) for path, value in flat_params(resumed).items()},
    }

    params = nnx.state(GPTForCausalLM(CONFIG, rngs=nnx.Rngs(0)), nnx.Param)
    param_shardings = jax.tree.leaves(parameter_sharding(params, fsdp_mesh))
    opt_shardings = parameter_sharding(jax.eval_shape(optimizer().init, params), fsdp_mesh)
    report["moments_mirror_params"] = all(
        jax.tree.leaves(optax.tree_utils.tree_get(opt_shardings, moment)) == param_shardings for moment in ("mu", "nu")
    )

    errors = {}
    for case, build in {
        "batch": lambda: Trainer(
            GPTForCausalLM(CONFIG, rngs=nnx.Rngs(0)),
            optimizer(),
            work_dir / "unused",
            batch_size=12,
            mesh=make_mesh(data=2, fsdp=4),
        ),
        "mesh": lambda: make_mesh(data=3),
    }.items():
        try:
            build()
            errors[case] = None
        except ValueError as error:
            errors[case] = str(error)
    report["errors"] = errors
    report["cli_mesh"] = dict(training_options(steps=1, batch_size=8, fsdp=4)["mesh"].shape)  # what `--fsdp 4` gets
    report["default_rules"] = [ShardingRules().min_ndim, ShardingRules().min_size]
    return report


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))))
