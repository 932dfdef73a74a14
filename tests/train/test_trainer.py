"""Trainer, checkpoints and run folders on a toy MLP classifier."""

import dataclasses
import itertools
import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from flaxen.checkpoints import checkpoint_manager, restore_checkpoint, save_checkpoint
from flaxen.core.config import ConfigMixin
from flaxen.train import Trainer, TrainingDiverged, adamw, load_checkpoint
from flaxen.train.metrics import read_metrics


@dataclasses.dataclass(frozen=True)
class ToyConfig(ConfigMixin):
    num_features: int = 8
    hidden_size: int = 32
    num_classes: int = 4
    dropout: float = 0.1


class ToyClassifier(nnx.Module):
    """Linear -> LayerNorm -> GELU -> dropout -> Linear, with the task-model `loss` contract."""

    def __init__(self, config: ToyConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.hidden = nnx.Linear(config.num_features, config.hidden_size, rngs=rngs)
        self.norm = nnx.LayerNorm(config.hidden_size, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout)
        self.head = nnx.Linear(config.hidden_size, config.num_classes, rngs=rngs)

    def __call__(self, features: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        hidden = nnx.gelu(self.norm(self.hidden(features)))
        return self.head(self.dropout(hidden, rngs=rngs))

    def loss(self, batch, *, rngs=None):
        logits = self(batch["features"], rngs=rngs).astype(jnp.float32)
        per_row = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        weights = batch.get("weights", jnp.ones_like(per_row))
        total = jnp.maximum(weights.sum(), 1.0)
        accuracy = ((logits.argmax(-1) == batch["labels"]) * weights).sum() / total
        return (per_row * weights).sum() / total, {"accuracy": accuracy}


class OtherToyClassifier(ToyClassifier):
    pass


class ArrayDataset:
    """Stand-in for a flaxen.data split: batch order a pure function of (seed, step); padded last eval batch."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, nan_from_step: int | None = None):
        self.features, self.labels, self.nan_from_step = features, labels, nan_from_step

    def batches(self, batch_size, *, seed, start_step=0):
        for step in itertools.count(start_step):
            rows = np.random.default_rng((seed, step)).integers(0, len(self.labels), batch_size)
            features = self.features[rows]
            if self.nan_from_step is not None and step >= self.nan_from_step:
                features = np.full_like(features, np.nan)
            yield {"features": features, "labels": self.labels[rows]}

    def epoch_batches(self, batch_size):
        for start in range(0, len(self.labels), batch_size):
            features = self.features[start : start + batch_size]
            labels = self.labels[start : start + batch_size]
            missing = batch_size - len(labels)
            if not missing:
                yield {"features": features, "labels": labels}
                continue
            yield {
                "features": np.pad(features, ((0, missing), (0, 0))),
                "labels": np.pad(labels, (0, missing)),
                "weights": np.pad(np.ones(len(labels), np.float32), (0, missing)),
            }


class DataSplits(NamedTuple):
    train: ArrayDataset
    validation: ArrayDataset | None
    info: dict


def toy_data(nan_from_step: int | None = None) -> DataSplits:
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(8, 4))
    features = rng.normal(size=(612, 8)).astype(np.float32)
    labels = (features @ teacher).argmax(-1).astype(np.int32)
    return DataSplits(
        ArrayDataset(features[:512], labels[:512], nan_from_step), ArrayDataset(features[512:], labels[512:]), {}
    )


def toy_model(config: ToyConfig = ToyConfig(), cls=ToyClassifier) -> ToyClassifier:
    return cls(config, rngs=nnx.Rngs(0))


def make_trainer(model, out_dir, *, learning_rate=1e-2, total=40, **kwargs) -> Trainer:
    settings = dict(batch_size=32, eval_every=10, log_every=5, progress=False) | kwargs
    return Trainer(model, adamw(learning_rate, warmup=5, total=total), out_dir, **settings)


def params_of(model) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))]


def assert_trees_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_loss_falls_and_model_is_trained_in_place(tmp_path):
    model = toy_model()
    data = toy_data()
    before = Trainer(model, adamw(1e-2), tmp_path / "unused", progress=False).evaluate(data.validation)
    final = make_trainer(model, tmp_path / "run").fit(data, steps=40)
    assert final["step"] == 40
    assert final["validation_loss"] < 0.5 * before["loss"]
    assert final["validation_accuracy"] > 0.8
    after = Trainer(model, adamw(1e-2), tmp_path / "unused", progress=False).evaluate(data.validation)
    assert after["loss"] == pytest.approx(final["validation_loss"], rel=1e-5)


def test_metrics_jsonl_and_loss_curve(tmp_path):
    make_trainer(toy_model(), tmp_path).fit(toy_data(), steps=20)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    validation = [r for r in records if r["split"] == "validation"]
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    assert [r["step"] for r in validation] == [10, 20]
    for record in train:
        assert {"loss", "accuracy", "grad_norm", "learning_rate", "items_per_sec", "elapsed"} <= record.keys()
        assert record["items_per_sec"] > 0
    # Logged with each update: the rate that update used. Linear warm-up over 5 updates, then a cosine from 1e-2 to a
    # tenth of it at update 40.
    assert train[0]["learning_rate"] == pytest.approx(1e-2 * 4 / 5)
    cosine = 1e-3 + (1e-2 - 1e-3) * 0.5 * (1 + np.cos(np.pi * (9 - 5) / (40 - 5)))
    assert train[1]["learning_rate"] == pytest.approx(cosine)
    assert {"loss", "accuracy", "elapsed"} <= validation[0].keys()
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "run.json").read_text()) == {"model_class": "ToyClassifier", "best_metric": "loss"}
    assert ToyConfig.from_json(tmp_path / "config.json") == ToyConfig()


def test_evaluation_weights_padded_rows_out(tmp_path):
    model, data = toy_model(), toy_data()
    scores = Trainer(model, adamw(1e-2), tmp_path, batch_size=32, progress=False).evaluate(data.validation)
    model.eval()
    full = {"features": jnp.asarray(data.validation.features), "labels": jnp.asarray(data.validation.labels)}
    loss, metrics = model.loss(full)
    assert scores["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert scores["accuracy"] == pytest.approx(float(metrics["accuracy"]), rel=1e-5)


def test_checkpoint_restore_is_bit_identical(tmp_path):
    model = toy_model()
    params = nnx.state(model, nnx.Param)
    optimizer = adamw(1e-2)
    opt_state = optimizer.init(params)
    for i in range(3):  # give the moments non-trivial values
        grads = jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1)), params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)

    with checkpoint_manager(tmp_path) as manager:
        save_checkpoint(manager, 3, params, opt_state, seed=7, elapsed=1.5)
    with checkpoint_manager(tmp_path) as manager:
        template = jax.tree.map(jnp.zeros_like, (params, opt_state))
        restored_params, restored_opt_state, progress = restore_checkpoint(manager, 3, *template)
    assert_trees_identical(restored_params, params)
    assert_trees_identical(restored_opt_state, opt_state)
    assert progress == {"step": 3, "seed": 7, "elapsed": 1.5}


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    data = toy_data()
    straight = toy_model()
    make_trainer(straight, tmp_path / "straight").fit(data, steps=20)

    interrupted = toy_model()
    make_trainer(interrupted, tmp_path / "resumed").fit(data, steps=10)
    resumed = toy_model()  # a fresh process would start from a freshly built model
    make_trainer(resumed, tmp_path / "resumed").fit(data, steps=20, resume=True)

    for a, b in zip(params_of(straight), params_of(resumed)):
        np.testing.assert_array_equal(a, b)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 10, 15, 20, 20]  # train/validation lines, none repeated


@pytest.mark.parametrize(("best_metric", "best_step"), [("loss", 2), ("accuracy", 3)])
def test_checkpoints_keep_latest_and_best(tmp_path, best_metric, best_step):
    model = toy_model()
    params = nnx.state(model)
    opt_state = adamw(1e-2).init(nnx.state(model, nnx.Param))
    losses, accuracies = [3.0, 1.0, 2.0, 4.0, 5.0], [0.1, 0.5, 0.7, 0.2, 0.3]  # lowest loss at 2, best accuracy at 3
    with checkpoint_manager(tmp_path / "checkpoints", keep=2, best_metric=best_metric) as manager:
        for step, loss, accuracy in zip(range(1, 6), losses, accuracies):
            params = jax.tree.map(lambda p: p + 1, params)
            validation = {"loss": loss, "accuracy": accuracy}
            save_checkpoint(manager, step, params, opt_state, seed=0, elapsed=0.0, validation=validation)
    with checkpoint_manager(tmp_path / "checkpoints", read_only=True, best_metric=best_metric) as manager:
        assert manager.all_steps() == sorted({best_step, 4, 5})

    (tmp_path / "run.json").write_text(json.dumps({"model_class": "ToyClassifier", "best_metric": best_metric}))
    restored = toy_model()
    assert load_checkpoint(restored, tmp_path) == best_step  # the run's own best_metric decides
    np.testing.assert_array_equal(restored.head.bias[...], model.head.bias[...] + best_step)
    assert load_checkpoint(restored, tmp_path, step=5) == 5


def test_load_checkpoint_into_an_abstract_model(tmp_path):
    trained = toy_model()
    make_trainer(trained, tmp_path).fit(toy_data(), steps=10)
    skeleton = nnx.eval_shape(lambda: toy_model())
    assert load_checkpoint(skeleton, tmp_path) == 10
    for a, b in zip(params_of(trained), params_of(skeleton)):
        np.testing.assert_array_equal(a, b)


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    model = toy_model()
    trainer = make_trainer(model, tmp_path, log_every=10, checkpoint_every=5)
    with pytest.raises(TrainingDiverged, match="step 8"):
        trainer.fit(toy_data(nan_from_step=7), steps=40)
    restored = toy_model()
    assert load_checkpoint(restored, tmp_path) == 5
    assert all(np.isfinite(leaf).all() for leaf in params_of(restored))


def test_refuses_to_resume_a_mismatched_run_folder(tmp_path):
    make_trainer(toy_model(), tmp_path).fit(toy_data(), steps=5)
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())

    with pytest.raises(ValueError, match="differs from this model's config in hidden_size"):
        make_trainer(toy_model(ToyConfig(hidden_size=16)), tmp_path).fit(toy_data(), steps=10, resume=True)
    with pytest.raises(ValueError, match="holds a ToyClassifier run, not a OtherToyClassifier"):
        make_trainer(toy_model(cls=OtherToyClassifier), tmp_path).fit(toy_data(), steps=10, resume=True)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        make_trainer(toy_model(), tmp_path).fit(toy_data(), steps=10)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before

    make_trainer(toy_model(), tmp_path).fit(toy_data(), steps=10, overwrite=True)
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][0] == 5


def test_bfloat16_compute_keeps_float32_master_weights_and_learns_as_float32_does(tmp_path):
    model = toy_model()
    final = make_trainer(model, tmp_path / "bf16", compute_dtype="bfloat16").fit(toy_data(), steps=40)
    assert {leaf.dtype for leaf in params_of(model)} == {np.dtype("float32")}
    reference = make_trainer(toy_model(), tmp_path / "fp32", compute_dtype="float32").fit(toy_data(), steps=40)
    assert final["validation_loss"] != reference["validation_loss"]  # the arithmetic really was bf16
    assert final["validation_loss"] == pytest.approx(reference["validation_loss"], rel=0.02)
    assert final["validation_accuracy"] > 0.8


def test_gradient_accumulation_trains(tmp_path):
    model = toy_model()
    optimizer = adamw(5e-2, warmup=4, total=60, accumulate_steps=2)
    trainer = Trainer(model, optimizer, tmp_path, batch_size=16, eval_every=30, log_every=10, progress=False)
    final = trainer.fit(toy_data(), steps=60)
    assert final["validation_accuracy"] > 0.8


def test_two_accumulated_half_batches_make_the_large_batch_step(tmp_path):
    """Batches of 16 accumulated over 2 steps are rows 0-31 of the epoch's order, one batch of 32 (same mean loss):
    the same update, gradient clipping included."""
    import flaxen.data

    rows = toy_data().train
    data = DataSplits(flaxen.data.ArrayDataset({"features": rows.features, "labels": rows.labels}), None, {})
    models = {}
    for name, batch_size, steps, accumulate in (("accumulated", 16, 2, 2), ("large", 32, 1, 1)):
        optimizer = adamw(5e-2, schedule="constant", accumulate_steps=accumulate)
        models[name] = toy_model(ToyConfig(dropout=0.0))  # no dropout: both see the same function of the rows
        Trainer(models[name], optimizer, tmp_path / name, batch_size=batch_size, progress=False).fit(data, steps)
    for accumulated, large, initial in zip(
        params_of(models["accumulated"]), params_of(models["large"]), params_of(toy_model(ToyConfig(dropout=0.0)))
    ):
        assert not np.allclose(large, initial)
        np.testing.assert_allclose(accumulated, large, rtol=1e-5, atol=1e-6)


def test_resume_allows_new_config_fields_and_changed_execution_switches(tmp_path):
    from flaxen import GPTConfig, GPTForCausalLM
    from flaxen.runs import check_resumable

    model = GPTForCausalLM(GPTConfig.tiny(), rngs=nnx.Rngs(0))
    saved = json.loads(model.config.to_json())
    del saved["scan_layers"], saved["remat"]  # a config.json written before these fields existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_resumable(model, tmp_path)
    check_resumable(GPTForCausalLM(GPTConfig.tiny(scan_layers=True, remat=True), rngs=nnx.Rngs(0)), tmp_path)
    with pytest.raises(ValueError, match="in num_layers"):
        check_resumable(GPTForCausalLM(GPTConfig.tiny(num_layers=3), rngs=nnx.Rngs(0)), tmp_path)


def test_early_stopping_stops_after_evaluations_without_improvement_and_stays_stopped(tmp_path):
    data = toy_data()
    # A rate of ~0 leaves the validation loss where it is: the first evaluation is the best, later ones tie.
    trainer = make_trainer(toy_model(), tmp_path, learning_rate=1e-12, eval_every=2, early_stopping=2)
    final = trainer.fit(data, steps=20)
    assert final["stopped_early"] and final["step"] == 6  # best at 2; no better at 4 and 6
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 6
    assert 6 in ocp_steps(tmp_path)  # the step it stopped at is saved
    again = make_trainer(toy_model(), tmp_path, learning_rate=1e-12, eval_every=2, early_stopping=2)
    assert again.fit(data, steps=20, resume=True)["stopped_early"]
    assert max(json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()) == 6
    improving = make_trainer(toy_model(), tmp_path / "improving", eval_every=2, early_stopping=5)
    assert "stopped_early" not in improving.fit(data, steps=20)


def ocp_steps(run) -> list[int]:
    return sorted(int(path.name) for path in (run / "checkpoints").iterdir() if path.name.isdigit())


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the folder's event files, read from the TFRecord framing with the Event protocol buffer."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[tuple[int, float]]] = {}
    for file in sorted(folder.glob("events.out.tfevents.*")):
        data, offset = file.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_every_metrics_record_is_also_a_tensorboard_scalar(tmp_path):
    make_trainer(toy_model(), tmp_path).fit(toy_data(), steps=20)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scalars = tensorboard_scalars(tmp_path)
    for record in records:
        for name in ("loss", "accuracy"):
            assert (record["step"], pytest.approx(record[name])) in scalars[f"{record['split']}/{name}"]
    assert {"train/learning_rate", "train/grad_norm", "train/items_per_sec"} <= set(scalars)
    make_trainer(toy_model(), tmp_path / "off", tensorboard=False).fit(toy_data(), steps=5)
    assert not list((tmp_path / "off").glob("events.out.tfevents.*"))


def test_the_progress_bar_counts_steps_and_shows_the_loss(tmp_path, capsys):
    make_trainer(toy_model(), tmp_path, progress=True).fit(toy_data(), steps=20)
    bar = capsys.readouterr().err
    assert "20/20" in bar and "loss=" in bar and "ex/s" in bar


def test_auto_compute_dtype_is_bfloat16_on_accelerators_and_float32_on_cpu(monkeypatch):
    from flaxen.train import resolve_compute_dtype

    assert resolve_compute_dtype("auto") == jnp.float32  # this CPU: bf16 steps run slower here
    assert resolve_compute_dtype(None) is None and resolve_compute_dtype("bfloat16") == jnp.bfloat16
    for backend in ("gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
        assert resolve_compute_dtype("auto") == jnp.bfloat16


def test_keep_checkpoints_and_eval_batches_do_what_they_say(tmp_path):
    model = toy_model()
    trainer = make_trainer(model, tmp_path, keep_checkpoints=1, eval_batches=2)
    trainer.fit(toy_data(), steps=40)  # evaluations (and checkpoints) at 10, 20, 30, 40
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    best = min(
        (r for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "validation"), key=lambda r: r["loss"]
    )["step"]
    assert kept == sorted({40, best})  # the latest one, and the best
    validation = toy_data().validation
    first_two = ArrayDataset(validation.features[:64], validation.labels[:64])  # 2 batches of 32 of the 100 rows
    recorded = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "validation"][-1]
    judge = make_trainer(model, tmp_path / "other")
    assert recorded["loss"] == pytest.approx(judge.evaluate(first_two)["loss"])
    assert recorded["loss"] != pytest.approx(judge.evaluate(validation)["loss"])  # not all 100 rows
