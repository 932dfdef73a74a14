"""The training loop: one jitted pure step over split NNX state, evaluation, logging and checkpoints.

The state lives on a device mesh (`flaxen.train.sharding`): batches split over all devices, parameters and
optimizer state split over the `fsdp` axis by the rule table; with one device it is plain single-device training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TextIO

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from tqdm.auto import tqdm

from flaxen.checkpoints import (
    BEST_METRICS,
    check_best_metric,
    checkpoint_manager,
    restore_checkpoint,
    save_checkpoint,
)
from flaxen.core.rng import as_rngs
from flaxen.distributed import barrier, global_batch, is_main_process, place, process_shard
from flaxen.hf import CONFIG_FILE
from flaxen.runs import (
    CHECKPOINT_DIR,
    FROZEN_FILE,
    METRICS_FILE,
    PLOT_FILE,
    RUN_FILE,
    check_resumable,
    load_frozen_parameters,
    write_atomically,
    write_frozen_parameters,
    write_run_files,
    write_weights,
)
from flaxen.text.tokenizer import TOKENIZER_FILE
from flaxen.train.metrics import drop_records_after, plot_metrics, read_validation_scores
from flaxen.train.optim import current_learning_rate
from flaxen.train.sharding import (
    ShardingRules,
    batch_sharding,
    check_batch_size,
    make_mesh,
    parameter_sharding,
    replicated,
)

Batch = dict[str, Any]


class Dataset(Protocol):
    """What the trainer needs of a data split. In a multi-process run both methods are also given
    `shard=(process index, process count)` and yield only that process's rows of each batch."""

    def batches(self, batch_size: int, *, seed: int, start_step: int = 0) -> Iterator[Batch]: ...

    def epoch_batches(self, batch_size: int) -> Iterator[Batch]: ...


class Splits(Protocol):
    """What the trainer needs of `flaxen.data.DataSplits`."""

    train: Dataset
    validation: Dataset | None


class TrainingDiverged(RuntimeError):
    """The training loss (or gradient norm) became NaN or Inf."""


class _RunPosition(NamedTuple):
    step: int
    seed: int
    elapsed: float
    data: dict[str, Any] | None  # the training batches' iterator state, for iterators that have one (grain's)


@dataclasses.dataclass
class _TrainState:
    params: nnx.State
    opt_state: optax.OptState
    non_params: nnx.State  # frozen parameters and other variables (e.g. batch statistics), carried through the step


class Trainer:
    """Trains any NNX model that offers `loss(batch, *, rngs) -> (loss, metrics)` with an optax optimizer.

    Construction switches the model to eval mode (training uses a train-mode copy of its graph), and `fit` writes
    the trained weights back into the model (as arrays sharded over `mesh`).

    In a multi-process run (`flaxen.distributed.initialize` first) every process builds the same Trainer and calls
    `fit` alike: each reads its own share of every batch, and only process 0 writes the run folder's files.
    """

    def __init__(
        self,
        model: nnx.Module,
        optimizer: optax.GradientTransformation,
        out_dir: str | Path,
        *,
        seed: int = 0,
        batch_size: int = 32,
        eval_every: int = 200,
        eval_batches: int | None = None,
        log_every: int = 10,
        checkpoint_every: int | None = None,
        keep_checkpoints: int = 3,
        best_metric: str = "loss",
        compute_dtype: str | jnp.dtype | None = None,
        progress: bool = True,
        run_info: dict[str, Any] | None = None,
        augment: Callable[[Batch, jax.Array], Batch] | None = None,
        mesh: Mesh | None = None,
        sharding_rules: ShardingRules = ShardingRules(),
        tokenizer: Any = None,
        early_stopping: int | None = None,
        tensorboard: bool = True,
        trainable: Any = nnx.Param,
    ):
        """`augment(batch, key) -> batch` is applied on the device inside the training step only (jittable).

        `compute_dtype` sets the layers' arithmetic dtype; each layer casts the parameters it uses, which stay
        float32 with the optimizer state: "bfloat16", "float32", "auto" (bfloat16 on GPU and TPU, float32 on CPU)
        or None (the model's own).

        Besides the latest `keep_checkpoints`, the run keeps its best checkpoint by the validation `best_metric`
        ("loss", lowest; or "accuracy", highest), which `load_checkpoint` and `load_run` then restore.

        `mesh` (default: all devices on the `data` axis) says where the state and the batches live, and
        `sharding_rules` which arrays its `fsdp` axis splits; `batch_size` must divide by the mesh's device count.

        A text model's `tokenizer` (a `tokenizers.Tokenizer`) is saved with the run as tokenizer.json, so that
        `load_run`, `flaxen generate`, `predict` and `eval` can use the run folder.

        With `early_stopping` N, training stops (after saving a checkpoint) once N evaluations in a row have not
        improved the validation `best_metric`; a resumed run counts the evaluations it recorded, so a run that
        stopped stays stopped.

        With `tensorboard`, every metrics.jsonl record is also written as TensorBoard scalars ("train/loss",
        "validation/accuracy", ...) to event files in the run folder, with run.json and config.json as text, so
        `tensorboard --logdir runs/` shows every run.

        `trainable` (an nnx filter; default: every parameter) says which parameters train. The others stay
        bit-identical, the optimizer state holds nothing for them, and checkpoints leave them out: they are written
        once, to frozen.safetensors in the run folder. `flaxen.lora.trainable(model)` selects the adapters and the
        task head of a model given adapters by `flaxen.lora.add_lora`.
        """
        self.model = model
        self.optimizer = optimizer
        self.out_dir = Path(out_dir)
        self.seed = seed
        self.batch_size = batch_size
        self.eval_every = eval_every
        self.eval_batches = eval_batches
        self.log_every = log_every
        self.checkpoint_every = checkpoint_every or eval_every
        self.keep_checkpoints = keep_checkpoints
        check_best_metric(best_metric)
        self.best_metric = best_metric
        self.compute_dtype = resolve_compute_dtype(compute_dtype)
        self.progress = progress
        self.run_info = run_info
        self.tokenizer = tokenizer
        if early_stopping is not None and early_stopping < 1:
            raise ValueError(f"early_stopping must be at least 1 evaluation, got {early_stopping}")
        self.early_stopping = early_stopping
        self.tensorboard = tensorboard
        self.mesh = mesh or make_mesh()
        check_batch_size(batch_size, self.mesh)
        self.trainable = trainable
        params, non_params = nnx.state(model, trainable, ...)
        if not jax.tree.leaves(params):
            raise ValueError("the trainable filter selects no parameter of the model; nothing would train")
        self._state_sharding = _TrainState(  # a _TrainState of NamedShardings
            parameter_sharding(params, self.mesh, sharding_rules),
            parameter_sharding(jax.eval_shape(optimizer.init, params), self.mesh, sharding_rules),
            parameter_sharding(non_params, self.mesh, sharding_rules),  # frozen parameters split like trained ones
        )
        self._batch_sharding = batch_sharding(self.mesh)
        # Datasets are asked for one process's share only in a multi-process run, so single-process runs keep
        # working with datasets that know nothing of shards.
        self._shard = {"shard": process_shard()} if jax.process_count() > 1 else {}
        with _layers_computing_in(model, self.compute_dtype):
            model.train()
            train_graph = nnx.graphdef(model)
            model.eval()
            eval_graph = nnx.graphdef(model)
        self._train_step = _make_train_step(
            train_graph,
            optimizer,
            self.compute_dtype,
            self._state_sharding,
            self._batch_sharding,
            augment,
            trainable,
        )
        self._eval_step = _make_eval_step(eval_graph, self.compute_dtype, self._state_sharding, self._batch_sharding)

    def evaluate(self, dataset: Dataset) -> dict[str, float]:
        """Metrics of the model's current weights over one pass of `dataset` (weighted means, no dropout)."""
        params, non_params = self._placed_model_state()
        return self._evaluate(params, non_params, dataset, _run_keys(self.seed, self.mesh)[1])

    def time_steps(self, data: Dataset, steps: int = 5, seconds: float = 0.0) -> tuple[float, float]:
        """(seconds of the first training step, compile included; median seconds of a step after it).

        At least `steps` steps follow the first, and on one process more until `seconds` have passed; the median is
        over the later half, as the first few steps after compiling run slow. Each step counts from fetching its
        batch to its metrics being ready. The steps run on a copy of the model's state with a throwaway optimizer
        state: the model is not changed.
        """
        params, non_params = jax.tree.map(jnp.copy, self._placed_model_state())  # the step donates its inputs
        opt_state = jax.jit(self.optimizer.init, out_shardings=self._state_sharding.opt_state)(params)
        key = _run_keys(self.seed, self.mesh)[0]
        batches = data.batches(self.batch_size, seed=self.seed, **self._shard)
        durations = []
        # Processes of a multi-process run take steps together, so they time a fixed number of them.
        while len(durations) <= steps or (jax.process_count() == 1 and sum(durations[1:]) < seconds):
            start = time.perf_counter()
            batch = global_batch(next(batches), self._batch_sharding)
            step = len(durations)
            params, opt_state, non_params, metrics = self._train_step(params, opt_state, non_params, batch, key, step)
            jax.block_until_ready(metrics)
            durations.append(time.perf_counter() - start)
        after_compiling = durations[1:]
        return durations[0], float(np.median(after_compiling[len(after_compiling) // 2 :]))

    def time_evaluation(self, data: Dataset, batches: int = 3) -> tuple[float, float]:
        """(seconds of the first evaluation batch, compile included; median seconds of a batch after it)."""
        params, non_params = self._placed_model_state()
        key = _run_keys(self.seed, self.mesh)[1]
        results, durations = self._eval_batches(params, non_params, data, key, batches + 1), []
        while True:
            start = time.perf_counter()
            if (result := next(results, None)) is None:
                break
            jax.block_until_ready(result)
            durations.append(time.perf_counter() - start)
        return durations[0], float(np.median(durations[1:] or durations))

    def _placed_model_state(self) -> tuple[nnx.State, nnx.State]:
        """The model's parameters and its other variables, moved to their shardings on the mesh."""
        state = nnx.state(self.model, self.trainable, ...)
        return place(state, (self._state_sharding.params, self._state_sharding.non_params))

    def fit(self, data: Splits, steps: int, resume: bool = False, overwrite: bool = False) -> dict[str, float]:
        """Train until `steps` batches have been seen; `resume` continues the latest checkpoint's run (its seed too).

        Returns the final metrics: "step", "elapsed" (seconds), "train_<metric>" (mean since the last log line,
        with "train_items_per_sec") and "validation_<metric>".
        """
        metrics_path = self.out_dir / METRICS_FILE
        if resume:
            check_resumable(self.model, self.out_dir)
        barrier("flaxen-trainer-checked")  # every process has read the folder before the main one writes to it
        self.out_dir.mkdir(parents=True, exist_ok=True)
        track_best = data.validation is not None
        checkpoint_dir = self.out_dir / CHECKPOINT_DIR
        with checkpoint_manager(
            checkpoint_dir, keep=self.keep_checkpoints, track_best=track_best, best_metric=self.best_metric
        ) as manager:
            state, position = self._starting_state(manager, resume, overwrite, metrics_path, data)
            barrier("flaxen-trainer-started")  # metrics.jsonl is this run's before any process reads it
            patience = _Patience(self.best_metric, self.early_stopping, read_validation_scores(metrics_path))
            try:
                with self._metrics_file(metrics_path) as metrics_file, self._event_writer(position.step) as events:
                    final = self._loop(
                        data, steps, position, state, manager, MetricsLog(metrics_file, events), patience
                    )
            finally:
                _write_back(self.model, state)
                if is_main_process():
                    plot_metrics(metrics_path, self.out_dir / PLOT_FILE)
        write_weights(self.model, self.out_dir)
        return final

    def _starting_state(
        self, manager: ocp.CheckpointManager, resume: bool, overwrite: bool, metrics_path: Path, data: Splits
    ) -> tuple[_TrainState, _RunPosition]:
        """Fresh state, or the latest checkpoint's with `resume`; refuses to start over saved checkpoints."""
        latest = manager.latest_step()
        if latest is not None and not resume:
            if not overwrite:
                raise ValueError(
                    f"{self.out_dir} already holds checkpoints (latest step {latest}); "
                    "pass resume=True to continue that run or overwrite=True to start over"
                )
            for step in manager.all_steps():
                manager.delete(step)
        if resume and latest is not None and (self.out_dir / FROZEN_FILE).is_file():
            # What the run froze is what it trained against, whatever model this resume was handed.
            load_frozen_parameters(self.model, self.out_dir / FROZEN_FILE)
        params, non_params = self._placed_model_state()
        opt_state = jax.jit(self.optimizer.init, out_shardings=self._state_sharding.opt_state)(params)
        state = _TrainState(params, opt_state, non_params)
        if resume and latest is not None:
            # The placed state is the template: orbax reads each array straight into its sharding on this mesh,
            # whatever mesh saved it.
            frozen, others = _split_frozen(non_params)
            model_state, state.opt_state, progress = restore_checkpoint(
                manager, latest, nnx.merge_state(params, others), opt_state
            )
            state.params, others = nnx.split_state(model_state, self.trainable, ...)
            state.non_params = nnx.merge_state(frozen, others)
            if is_main_process():
                drop_records_after(metrics_path, latest)
            self._save_tokenizer()
            return state, _RunPosition(latest, progress["seed"], progress["elapsed"], progress.get("data"))
        data_info = dict(getattr(data, "info", None) or {})  # what the dataset learned: labels, image statistics, ...
        _name_the_classes(self.model, data_info.get("label_names"))
        run_info = data_info | (self.run_info or {}) | {"best_metric": self.best_metric}
        write_run_files(self.model, self.out_dir, run_info)
        frozen, _ = _split_frozen(non_params)
        if jax.tree.leaves(frozen):
            write_frozen_parameters(frozen, self.out_dir)
        elif is_main_process():  # an overwritten run's frozen weights must not be read as this one's
            (self.out_dir / FROZEN_FILE).unlink(missing_ok=True)
        self._save_tokenizer()
        if is_main_process():
            metrics_path.write_text("")
        return state, _RunPosition(0, self.seed, 0.0, None)

    def _metrics_file(self, metrics_path: Path) -> TextIO:
        """metrics.jsonl to append to; the other processes of a multi-process run write nowhere."""
        return open(metrics_path if is_main_process() else os.devnull, "a")

    def _event_writer(self, start_step: int):
        """TensorBoard's writer for the run folder (a no-op without `tensorboard`); a resumed run's events after
        `start_step` (recorded before a crash, trained again now) are purged, as metrics.jsonl drops its lines."""
        if not self.tensorboard or not is_main_process():
            return contextlib.nullcontext()
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(str(self.out_dir), purge_step=start_step + 1 if start_step else None)
        if start_step == 0:
            for name in (RUN_FILE, CONFIG_FILE):
                if (self.out_dir / name).exists():
                    writer.add_text(name, f"```\n{(self.out_dir / name).read_text()}\n```", 0)
        return contextlib.closing(writer)

    def _save_tokenizer(self) -> None:
        """tokenizer.json beside run.json (after it: run.json marks the folder), unless the run already has one."""
        if self.tokenizer is not None and not (self.out_dir / TOKENIZER_FILE).exists():
            write_atomically(self.out_dir / TOKENIZER_FILE, self.tokenizer.to_str(pretty=True))

    def _loop(
        self,
        data: Splits,
        steps: int,
        start: _RunPosition,
        state: _TrainState,
        manager: ocp.CheckpointManager,
        metrics_log: MetricsLog,
        patience: _Patience,
    ) -> dict[str, float]:
        """Train from `start` to `steps` (or until `patience` runs out), updating `state` in place (so the caller sees
        it even after an error)."""
        train_key, eval_key = _run_keys(start.seed, self.mesh)
        batches = self._training_batches(data.train, start)
        final: dict[str, float] = {"step": max(steps, start.step)}
        window: list[dict[str, jax.Array]] = []  # device metrics since the last log line
        window_items = 0
        clock_start = window_start = time.perf_counter()

        def elapsed() -> float:
            return start.elapsed + time.perf_counter() - clock_start

        def log(record: dict[str, Any]) -> None:
            metrics_log.write(record)
            split = record["split"]
            final.update({f"{split}_{k}": v for k, v in record.items() if k not in ("step", "split", "elapsed")})
            final["elapsed"] = record["elapsed"]

        done = start.step
        bar = tqdm(total=steps, initial=start.step, unit="step", disable=not self.progress, dynamic_ncols=True)
        postfix: dict[str, str] = {}
        try:
            for step in range(start.step, start.step if patience.exhausted else steps):
                host_batch = next(batches)
                state.params, state.opt_state, state.non_params, metrics = self._train_step(
                    state.params,
                    state.opt_state,
                    state.non_params,
                    global_batch(host_batch, self._batch_sharding),
                    train_key,
                    step,
                )
                window.append(metrics)
                window_items += _count_items(host_batch) * jax.process_count()
                bar.update()
                done = step + 1
                is_last = done == steps
                is_log = done % self.log_every == 0 or is_last
                is_eval = data.validation is not None and (done % self.eval_every == 0 or is_last)
                is_checkpoint = done % self.checkpoint_every == 0 or is_last
                if not (is_log or is_eval or is_checkpoint):
                    continue

                fetched = jax.device_get(window)
                _raise_if_diverged(fetched, first_step=done - len(window) + 1, manager=manager)
                pause_start = time.perf_counter()
                if is_log:
                    record = _window_means(fetched)
                    record["items_per_sec"] = window_items / (pause_start - window_start)
                    log({"step": done, "split": "train", **record, "elapsed": elapsed()})
                    postfix["loss"] = f"{record['loss']:.4f}"
                    postfix[f"{_item_unit(host_batch)}/s"] = f"{record['items_per_sec']:,.0f}"
                    window, window_items, window_start = [], 0, pause_start
                scores = None
                if is_eval:
                    scores = self._evaluate(state.params, state.non_params, data.validation, eval_key)
                    log({"step": done, "split": "validation", **scores, "elapsed": elapsed()})
                    if not np.isfinite(scores["loss"]):
                        raise _diverged(done, f"validation loss = {scores['loss']}", manager)
                    if self.best_metric not in scores:
                        raise ValueError(
                            f"best_metric {self.best_metric!r} is not among the model's metrics {list(scores)}"
                        )
                    postfix["val_loss"] = f"{scores['loss']:.4f}"
                    patience.record(scores[self.best_metric])
                    is_checkpoint = is_checkpoint or patience.exhausted
                if is_checkpoint:
                    if not _all_finite(state.params):  # an update can overflow even when its loss was finite
                        raise _diverged(done, "the parameters hold NaN or Inf", manager)
                    save_checkpoint(
                        manager,
                        done,
                        nnx.merge_state(state.params, _split_frozen(state.non_params)[1]),
                        state.opt_state,
                        seed=start.seed,
                        elapsed=elapsed(),
                        validation=scores,
                        data=batches.get_state() if hasattr(batches, "get_state") else None,
                    )
                bar.set_postfix(postfix, refresh=False)
                window_start += time.perf_counter() - pause_start  # evaluation and saving are not training time
                if patience.exhausted:
                    break
        finally:
            bar.close()
        if patience.exhausted:
            final |= {"step": done, "stopped_early": True}
        if start.step >= steps and data.validation is not None:
            scores = self._evaluate(state.params, state.non_params, data.validation, eval_key)
            final.update({f"validation_{k}": v for k, v in scores.items()})
        return final

    def _training_batches(self, dataset: Dataset, start: _RunPosition) -> Iterator[Batch]:
        """The training batches from `start`: positioned by the reader's own saved state when it has one (a grain
        iterator's, saved with each checkpoint), else by the step."""
        if start.data is not None:
            batches = dataset.batches(self.batch_size, seed=start.seed, **self._shard)
            if hasattr(batches, "set_state"):
                batches.set_state(start.data)
                return batches
        return dataset.batches(self.batch_size, seed=start.seed, start_step=start.step, **self._shard)

    def _eval_batches(
        self, params: nnx.State, non_params: nnx.State, dataset: Dataset, key: jax.Array, limit: int | None
    ) -> Iterator[tuple[dict[str, jax.Array], jax.Array]]:
        """The evaluation step's (metrics, weight) for each of the first `limit` batches (None: all), on the device."""
        for index, batch in enumerate(itertools.islice(dataset.epoch_batches(self.batch_size, **self._shard), limit)):
            batch = global_batch(batch, self._batch_sharding)
            yield self._eval_step(params, non_params, batch, jax.random.fold_in(key, index))

    def _evaluate(self, params: nnx.State, non_params: nnx.State, dataset: Dataset, key: jax.Array) -> dict[str, float]:
        results = jax.device_get(list(self._eval_batches(params, non_params, dataset, key, self.eval_batches)))
        total_weight = sum(weight for _, weight in results)
        if total_weight == 0:
            raise ValueError("the evaluation split yielded no rows")
        return {
            name: float(sum(metrics[name] * weight for metrics, weight in results) / total_weight)
            for name in results[0][0]
        }


AUTO_COMPUTE_DTYPE = "auto"


def resolve_compute_dtype(compute_dtype: str | jnp.dtype | None) -> jnp.dtype | None:
    """A compute dtype, with "auto" resolved for this process's devices: bfloat16 on GPU and TPU (their matrix units'
    fast type), float32 on CPU (where bfloat16 steps run slower); None stays None (no cast)."""
    if compute_dtype is None:
        return None
    if isinstance(compute_dtype, str) and compute_dtype == AUTO_COMPUTE_DTYPE:
        return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
    return jnp.dtype(compute_dtype)


def _make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    compute_dtype,
    state_sharding: _TrainState,
    batch_sharding: NamedSharding,
    augment: Callable | None = None,
    trainable: Any = nnx.Param,
) -> Callable:
    """A jitted pure step (params, opt_state, non_params, batch, base_key, step)
    -> (params, opt_state, non_params, metrics).

    Inputs and outputs carry their mesh shardings, so XLA's SPMD partitioner inserts the collectives.
    """

    def train_step(params, opt_state, non_params, batch, base_key, step):
        key = jax.random.fold_in(base_key, step)
        if augment is not None:
            key, augment_key = jax.random.split(key)
            batch = augment(batch, augment_key)
        inputs = _cast_inputs(batch, compute_dtype)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, non_params)
            loss, metrics = model.loss(inputs, rngs=as_rngs(key))
            return loss, (metrics, nnx.state(model, nnx.Not(trainable)))

        (loss, (metrics, non_params)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": loss, **metrics, "grad_norm": optax.tree.norm(grads)}
        learning_rate = current_learning_rate(opt_state)
        if learning_rate is not None:
            metrics["learning_rate"] = learning_rate
        return params, opt_state, non_params, _as_float32(metrics)

    state = (state_sharding.params, state_sharding.opt_state, state_sharding.non_params)
    whole = replicated(batch_sharding.mesh)
    return jax.jit(
        train_step,
        in_shardings=(*state, batch_sharding, whole, whole),
        out_shardings=(*state, whole),
        donate_argnums=(0, 1, 2),
    )


def _make_eval_step(
    graphdef: nnx.GraphDef, compute_dtype, state_sharding: _TrainState, batch_sharding: NamedSharding
) -> Callable:
    """A jitted step (params, non_params, batch, key) -> (metrics, weight),
    weight = number of real rows in the batch."""

    def eval_step(params, non_params, batch, key):
        model = nnx.merge(graphdef, params, non_params)
        loss, metrics = model.loss(_cast_inputs(batch, compute_dtype), rngs=as_rngs(key))
        weight = batch["weights"].sum() if "weights" in batch else len(next(iter(batch.values())))
        return _as_float32({"loss": loss, **metrics}), jnp.asarray(weight, jnp.float32)

    whole = replicated(batch_sharding.mesh)
    return jax.jit(
        eval_step,
        in_shardings=(state_sharding.params, state_sharding.non_params, batch_sharding, whole),
        out_shardings=whole,
    )


def _name_the_classes(model: nnx.Module, label_names) -> None:
    """A classifier whose config names no classes takes the dataset's names (same count), so its run and exports
    label predictions with them."""
    config = getattr(model, "config", None)
    if not label_names or getattr(config, "label_names", None) != () or config.num_labels != len(label_names):
        return
    model.config = config.replace(label_names=tuple(map(str, label_names)))


def _run_keys(seed: int, mesh: Mesh) -> tuple[jax.Array, jax.Array]:
    """Base keys for training (folded with the step) and evaluation (folded with the batch index), on every device
    of `mesh` (made by a program, as a key cannot be copied from the host to another process's devices)."""

    def keys():
        root = jax.random.key(seed)
        return jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)

    return jax.jit(keys, out_shardings=replicated(mesh))()


def _split_frozen(non_params: nnx.State) -> tuple[nnx.State, nnx.State]:
    """(frozen parameters, other variables) of the state the step carries untrained; checkpoints hold the second."""
    return nnx.split_state(non_params, nnx.Param, ...)


@contextlib.contextmanager
def _layers_computing_in(model: nnx.Module, dtype) -> Iterator[None]:
    """Every layer's compute `dtype` set to `dtype` (None: left alone) while the step's graph is taken, then put
    back. The parameters stay float32 in the step: each layer casts what it uses (an embedding, the rows it
    gathers), so their gradients are summed in float32."""
    changed = []
    if dtype is not None:
        for _, module in nnx.iter_modules(model):
            if hasattr(module, "dtype") and (module.dtype is None or jnp.issubdtype(module.dtype, jnp.floating)):
                changed.append((module, module.dtype))
                module.dtype = dtype
    try:
        yield
    finally:
        for module, current in changed:
            module.dtype = current


def _cast_floats(tree: Any, dtype) -> Any:
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _cast_inputs(batch: Batch, dtype) -> Batch:
    """Cast float inputs to the compute dtype (fp32 inputs would promote bf16 matmuls back to fp32); not `weights`."""
    return {name: value if name == "weights" else _cast_floats(value, dtype) for name, value in batch.items()}


def _as_float32(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {name: jnp.asarray(value, jnp.float32) for name, value in metrics.items()}


def _count_items(batch: Batch) -> int:
    """Tokens for token batches, else rows (images, examples)."""
    if "token_ids" in batch:
        return int(np.size(batch["token_ids"]))
    return len(next(iter(batch.values())))


def _item_unit(batch: Batch) -> str:
    return "tok" if "token_ids" in batch else "ex"


def _window_means(window: list[dict[str, np.ndarray]]) -> dict[str, float]:
    means = {name: float(np.mean([metrics[name] for metrics in window])) for name in window[0]}
    if "learning_rate" in means:
        means["learning_rate"] = float(window[-1]["learning_rate"])  # the rate now, not its recent average
    return means


def _raise_if_diverged(window: list[dict[str, np.ndarray]], *, first_step: int, manager: ocp.CheckpointManager) -> None:
    for offset, metrics in enumerate(window):
        bad = {name: float(metrics[name]) for name in ("loss", "grad_norm") if not np.isfinite(metrics[name])}
        if bad:
            details = ", ".join(f"{name} = {value}" for name, value in bad.items())
            raise _diverged(first_step + offset, details, manager)


def _diverged(step: int, details: str, manager: ocp.CheckpointManager) -> TrainingDiverged:
    """The error for divergence at `step`, naming the last checkpoint saved (after pending saves complete)."""
    manager.wait_until_finished()
    last_good = manager.latest_step()
    where = f"step {last_good} in {manager.directory}" if last_good is not None else "none saved"
    return TrainingDiverged(
        f"training diverged at step {step}: {details}; last good checkpoint: {where} "
        "(flaxen.train.load_checkpoint restores it); try a lower learning rate or check the data"
    )


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)]))


def _write_back(model: nnx.Module, state: _TrainState) -> None:
    """Put the trained state into the user's model; skipped if an interrupted step left donated (deleted) arrays."""
    leaves = jax.tree.leaves((state.params, state.non_params))
    if not any(leaf.is_deleted() for leaf in leaves if isinstance(leaf, jax.Array)):
        nnx.update(model, state.params, state.non_params)


class _Patience:
    """Early stopping's count: evaluations since the validation metric last improved (None: never stop)."""

    def __init__(self, best_metric: str, limit: int | None, history: list[dict[str, float]]):
        self.metric, self.limit = best_metric, limit
        self.best: float | None = None
        self.stale = 0
        for scores in history:
            if best_metric in scores:
                self.record(scores[best_metric])

    def record(self, value: float) -> None:
        better = self.best is None or (value > self.best if BEST_METRICS[self.metric] == "max" else value < self.best)
        self.best, self.stale = (value, 0) if better else (self.best, self.stale + 1)

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.stale >= self.limit


class MetricsLog:
    """Where a run's records go: one JSON line each in metrics.jsonl, and TensorBoard scalars when a writer is given."""

    def __init__(self, jsonl: TextIO, events: Any = None):
        self.jsonl, self.events = jsonl, events

    def write(self, record: dict[str, Any]) -> None:
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.events is not None:
            for name, value in record.items():
                if name not in ("step", "split") and isinstance(value, (int, float)):
                    self.events.add_scalar(f"{record['split']}/{name}", value, record["step"])
            self.events.flush()
