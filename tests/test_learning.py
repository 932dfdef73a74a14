"""A few hundred steps on real data make the validation loss fall clearly (real text, real images)."""

import json

import pytest
from flax import nnx

import flaxen
from flaxen.recipes import mlm_blocks

pytestmark = pytest.mark.slow
SMALL = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "mlp_dim": 256}


def fit(model, splits, tmp_path, *, steps, learning_rate, batch_size=16, augment=None):
    optimizer = flaxen.train.adamw(learning_rate, warmup=steps // 10, total=steps)
    trainer = flaxen.Trainer(
        model,
        optimizer,
        tmp_path,
        batch_size=batch_size,
        eval_every=steps,
        eval_batches=8,
        progress=False,
        augment=augment,
    )
    start = trainer.evaluate(splits.validation)
    return start, trainer.fit(splits, steps=steps)


@pytest.fixture(scope="module")
def plays():
    return flaxen.data.shakespeare_files()[:4]


def test_gpt_validation_loss_falls_on_shakespeare(plays, tmp_path):
    tokenizer = flaxen.text.train_bpe(plays, vocab_size=1024)
    config = flaxen.GPTConfig.tiny(vocab_size=tokenizer.get_vocab_size(), context_length=64, **SMALL)
    splits = flaxen.data.text_blocks(plays, tokenizer, block_size=65)
    start, final = fit(flaxen.GPTForCausalLM(config, rngs=nnx.Rngs(0)), splits, tmp_path, steps=300, learning_rate=3e-3)
    assert start["loss"] > 6.5  # about ln(1024) = 6.93 untrained
    assert final["validation_loss"] < start["loss"] - 1.5, (start, final)


def test_bert_mlm_validation_loss_falls_on_shakespeare(plays, tmp_path):
    tokenizer = flaxen.text.train_wordpiece(plays, vocab_size=1024)
    ids = flaxen.text.special_token_ids(tokenizer)
    config = flaxen.BertConfig.tiny(
        vocab_size=tokenizer.get_vocab_size(),
        mask_token_id=ids["mask"],
        pad_token_id=ids["pad"],
        special_token_ids=tuple(sorted(ids.values())),
        **SMALL,
    )
    splits = mlm_blocks(plays, tokenizer, 64)
    start, final = fit(
        flaxen.BertForMaskedLM(config, rngs=nnx.Rngs(0)), splits, tmp_path, steps=300, learning_rate=2e-3, batch_size=32
    )
    assert final["validation_loss"] < start["loss"] - 1.0, (start, final)


def test_vit_learns_mnist_digits(tmp_path):
    images, labels = flaxen.data.mnist_arrays()
    splits = flaxen.data.image_classification(images, labels, seed=0)
    config = flaxen.ViTConfig.tiny(image_size=28, channels=1, patch_size=7, num_labels=10, **SMALL)
    start, final = fit(
        flaxen.ViTForImageClassification(config, rngs=nnx.Rngs(0)),
        splits,
        tmp_path,
        steps=300,
        learning_rate=2e-3,
        batch_size=32,
    )
    assert final["validation_loss"] < start["loss"] - 1.0, (start, final)
    assert final["validation_accuracy"] > 0.5, final  # chance is 0.1; the full example reaches about 0.95


def test_bf16_compute_reaches_the_fp32_loss_within_two_percent(plays, tmp_path):
    tokenizer = flaxen.text.train_bpe(plays, vocab_size=1024)
    config = flaxen.GPTConfig.tiny(vocab_size=tokenizer.get_vocab_size(), context_length=64, **SMALL)
    splits = flaxen.data.text_blocks(plays, tokenizer, block_size=65)
    losses = {}
    for dtype in ("float32", "bfloat16"):
        model = flaxen.GPTForCausalLM(config, rngs=nnx.Rngs(0))
        trainer = flaxen.Trainer(
            model,
            flaxen.train.adamw(3e-3, warmup=30, total=300),
            tmp_path / dtype,
            batch_size=16,
            eval_every=300,
            eval_batches=8,
            compute_dtype=None if dtype == "float32" else dtype,
            progress=False,
        )
        losses[dtype] = trainer.fit(splits, steps=300)["validation_loss"]
        params = [v for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]
        assert all(p.dtype == "float32" for p in params)  # master weights stay fp32
    assert abs(losses["bfloat16"] - losses["float32"]) / losses["float32"] < 0.02, losses


def test_the_vit_recipe_with_its_augmentation_learns_mnist(tmp_path):
    # The recipe's defaults end to end: a data-sized model, random affine, label smoothing.
    final = flaxen.recipes.train_vit(tmp_path / "run", steps=1000, learning_rate=1e-3, progress=False)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["data"]["augment"] and json.loads((tmp_path / "run" / "config.json").read_text())["hidden_size"] == 128
    assert final["validation_accuracy"] > 0.5, final  # chance is 0.1; here 0.67; 5 CLI minutes reach 0.97
