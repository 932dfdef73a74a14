"""LoRA finetuning: adapters start as a no-op, only they and the head train, checkpoints are small, merging is exact."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flaxen
from flaxen import lora
from flaxen.data.arrays import ArrayDataset, DataSplits
from flaxen.hf.save import flaxen_params
from flaxen.models.bert.modeling import BertConfig, BertForSequenceClassification
from flaxen.runs import FROZEN_FILE, load_run
from flaxen.train import Trainer, adamw

RANK = 4


def tiny_classifier(seed: int = 0) -> BertForSequenceClassification:
    config = BertConfig.tiny(num_labels=3, dropout=0.0)
    return BertForSequenceClassification(config, rngs=nnx.Rngs(seed))


def token_splits(config: BertConfig, rows: int = 96, length: int = 12) -> DataSplits:
    """Labels a tiny model can learn: which third of the vocabulary the first token falls in."""
    rng = np.random.default_rng(0)
    token_ids = rng.integers(5, config.vocab_size, (rows, length)).astype(np.int32)
    labels = (token_ids[:, 0] * 3 // config.vocab_size).astype(np.int32)
    mask = np.ones((rows, length), bool)
    mask[::2, length // 2 :] = False  # padded rows too
    data = ArrayDataset({"token_ids": token_ids, "padding_mask": mask, "labels": labels})
    return DataSplits(data.take(np.arange(64)), data.take(np.arange(64, rows)), {})


def logits(model, splits) -> np.ndarray:
    batch = splits.validation.arrays
    return np.asarray(model(jnp.asarray(batch["token_ids"]), jnp.asarray(batch["padding_mask"])))


def test_adapters_start_as_a_no_op_and_wrap_every_projection():
    model = tiny_classifier()
    splits = token_splits(model.config)
    before = logits(model, splits)
    lora.add_lora(model, RANK, rngs=nnx.Rngs(1))
    adapters = [module for _, module in nnx.iter_modules(model) if isinstance(module, nnx.LoRA)]
    assert len(adapters) == 4 * model.config.num_layers  # qkv, out, fc_in, fc_out of every block
    assert lora.lora_rank(model) == RANK
    np.testing.assert_array_equal(logits(model, splits), before)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        lora.add_lora(model, RANK, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="rank must be a whole number"):
        lora.add_lora(tiny_classifier(), 0, rngs=nnx.Rngs(1))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A tiny LoRA finetune beside a full finetune of the same model and data."""
    out = tmp_path_factory.mktemp("runs")
    model = tiny_classifier()
    splits = token_splits(model.config)
    base = nnx.state(tiny_classifier(), nnx.Param)
    lora.add_lora(model, RANK, rngs=nnx.Rngs(1))

    def trainer(model, folder, **settings):
        return Trainer(
            model,
            adamw(1e-2, warmup=2, total=30),
            out / folder,
            batch_size=16,
            eval_every=15,
            progress=False,
            tensorboard=False,
            **settings,
        )

    adapted = trainer(model, "lora", trainable=lora.trainable(model), best_metric="accuracy")
    final = adapted.fit(splits, 30)
    trainer(tiny_classifier(), "full").fit(splits, 30)
    return {"out": out, "model": model, "splits": splits, "base": base, "final": final, "trainer": adapted}


def test_only_adapters_and_head_train_and_frozen_weights_stay_bit_identical(lora_run):
    model, base = lora_run["model"], nnx.to_flat_state(lora_run["base"])
    trained = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    changed_head = unchanged_base = 0
    for path, variable in base:
        adapted_path = (
            path[:-1] + ("base_module", path[-1]) if (path[:-1] + ("base_module", path[-1])) in trained else path
        )
        now = np.asarray(trained[adapted_path][...])
        if path[0] == "classifier" or "pooler" in path:
            changed_head += not np.array_equal(now, np.asarray(variable[...]))
        else:
            np.testing.assert_array_equal(now, np.asarray(variable[...]), err_msg=str(path))
            unchanged_base += 1
    assert changed_head == 4 and unchanged_base > 20  # classifier and pooler: kernel and bias
    adapters_b = [np.asarray(v[...]) for p, v in trained.items() if p[-1] == "lora_b"]
    assert adapters_b and all(np.abs(b).max() > 0 for b in adapters_b)  # every adapter moved off zero


def test_optimizer_state_and_checkpoints_hold_only_what_trains(lora_run):
    trainer, model = lora_run["trainer"], lora_run["model"]
    trained_count = sum(x.size for x in jax.tree.leaves(nnx.state(model, lora.trainable(model))))
    moments = [
        x.size
        for x in jax.tree.leaves(jax.eval_shape(trainer.optimizer.init, nnx.state(model, lora.trainable(model))))
        if x.ndim
    ]
    assert sum(moments) == 2 * trained_count  # Adam's two moments, of the trained parameters only
    assert trained_count < 0.25 * sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

    def size(folder):
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())

    out = lora_run["out"]
    assert (out / "lora" / FROZEN_FILE).is_file() and not (out / "full" / FROZEN_FILE).exists()
    assert size(out / "lora" / "checkpoints") < 0.4 * size(out / "full" / "checkpoints")


def test_merged_model_equals_the_adapted_one(lora_run, tmp_path):
    model, splits = lora_run["model"], lora_run["splits"]
    adapted = logits(model, splits)
    merged = lora.merged(model)
    assert not lora.has_lora(merged) and lora.has_lora(model)  # `merged` leaves the adapted model as it was
    np.testing.assert_allclose(logits(merged, splits), adapted, atol=1e-5)
    # The run folder's weights and an export are the plain merged model.
    folder = lora_run["out"] / "lora"
    plain = BertForSequenceClassification.from_pretrained(folder)
    np.testing.assert_allclose(logits(plain, splits), adapted, atol=1e-5)
    model.save_pretrained(tmp_path / "hf")
    exported = BertForSequenceClassification.from_pretrained(tmp_path / "hf")
    np.testing.assert_allclose(logits(exported, splits), adapted, atol=1e-5)
    assert set(flaxen_params(model)) == set(flaxen_params(tiny_classifier()))


def test_load_run_rebuilds_the_best_checkpoint_merged(lora_run):
    folder = lora_run["out"] / "lora"
    info = json.loads((folder / "run.json").read_text())
    assert info["lora"] == {"rank": RANK, "layers": ["fc_in", "fc_out", "out", "qkv"]}
    run = load_run(folder)
    assert not lora.has_lora(run.model)
    restored = flaxen.train.load_checkpoint(lora.add_lora(tiny_classifier(seed=5), RANK, rngs=nnx.Rngs(9)), folder)
    assert restored == run.step and run.step in (15, 30)  # the best of the two evaluated checkpoints


def test_a_resume_trains_against_the_runs_frozen_weights_and_an_overwrite_drops_them(lora_run, tmp_path):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(lora_run["out"] / "lora", folder)
    other = lora.add_lora(tiny_classifier(seed=5), RANK, rngs=nnx.Rngs(9))  # another base than the run's
    settings = dict(batch_size=16, eval_every=15, progress=False, tensorboard=False, trainable=lora.trainable(other))
    Trainer(other, adamw(1e-2, warmup=2, total=32), folder, **settings).fit(lora_run["splits"], 32, resume=True)
    base = dict(nnx.to_flat_state(lora_run["base"]))
    kernel = ("bert", "stack", "blocks", 0, "attention", "qkv", "kernel")
    resumed = other.bert.stack.blocks[0].attention.qkv.base_module.kernel[...]
    np.testing.assert_array_equal(np.asarray(resumed), np.asarray(base[kernel][...]))
    plain = tiny_classifier()
    Trainer(plain, adamw(1e-2, warmup=1, total=2), folder, batch_size=16, progress=False, tensorboard=False).fit(
        lora_run["splits"], 2, overwrite=True
    )
    assert not (folder / FROZEN_FILE).exists()
    assert not lora.has_lora(load_run(folder).model)


def test_adapters_on_chosen_layers_are_recorded_by_name():
    model = lora.add_lora(tiny_classifier(), 2, rngs=nnx.Rngs(1), layers=("qkv", "fc_out"))
    assert lora.adapted_layers(model) == ["fc_out", "qkv"]
