"""The demo: the three journeys end to end on real data, at a size that runs in minutes on two CPU cores.

GPT on Shakespeare, BERT MLM pretraining + sentiment finetuning on tweets, ViT on MNIST-5k. Prints the numbers.
"""

import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bert_sentiment  # noqa: E402
import datasets  # noqa: E402
import gpt_shakespeare  # noqa: E402
import vit_mnist  # noqa: E402

import flaxen  # noqa: E402

SMALL = {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "mlp_dim": 512}


def timed(name, run):
    start = time.perf_counter()
    print(f"\n== {name}", flush=True)
    result = run()
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def main(tiny: bool = False) -> dict:
    """The demo; `tiny` runs each journey for two steps at the tiny presets (the tests use it)."""
    datasets.disable_progress_bars()
    gpt_config = (
        flaxen.GPTConfig.tiny(context_length=32) if tiny else flaxen.GPTConfig.small(context_length=64, **SMALL)
    )
    bert_config = (
        flaxen.BertConfig.tiny(max_positions=32) if tiny else flaxen.BertConfig.small(max_positions=64, **SMALL)
    )
    vit_config = flaxen.ViTConfig.tiny if tiny else functools.partial(flaxen.ViTConfig.small, **SMALL)
    gpt = timed(
        "GPT on Shakespeare",
        lambda: gpt_shakespeare.main(
            steps=2 if tiny else 500,
            batch_size=4 if tiny else 16,
            vocab_size=300 if tiny else 2048,
            out_dir="runs/demo/gpt",
            config=gpt_config,
            progress=not tiny,
        ),
    )
    bert = timed(
        "BERT: MLM on Shakespeare, then tweet sentiment",
        lambda: bert_sentiment.main(
            mlm_steps=2 if tiny else 400,
            finetune_steps=2 if tiny else 400,
            vocab_size=300 if tiny else 4096,
            max_length=32 if tiny else 64,
            out_dir="runs/demo/bert",
            config=bert_config,
            progress=not tiny,
        ),
    )
    vit = timed(
        "ViT on MNIST-5k",
        lambda: vit_mnist.main(
            steps=2 if tiny else 1500,
            out_dir="runs/demo/vit",
            config=vit_config(image_size=28, channels=1, patch_size=7),
            progress=not tiny,
        ),
    )

    print("\n== Results")
    print(
        f"GPT  validation loss {gpt['start_validation_loss']:.3f} -> {gpt['validation_loss']:.3f}  "
        f"({gpt['tokens_per_second']:,.0f} tokens/s, {gpt['seconds']} s)"
    )
    print(f"     sample: {gpt['sample']!r}")
    print(
        f"BERT MLM validation loss {bert['mlm_start_validation_loss']:.3f} -> {bert['mlm_validation_loss']:.3f}; "
        f"sentiment held-out accuracy {bert['sentiment_validation_accuracy']:.3f} "
        f"(majority class {bert['majority_class_accuracy']:.3f}; {bert['seconds']} s)"
    )
    print(
        f"ViT  MNIST held-out accuracy {vit['validation_accuracy']:.3f}  "
        f"({vit['images_per_second']:,.0f} images/s, {vit['seconds']} s)"
    )
    print(json.dumps({"gpt": gpt, "bert": bert, "vit": vit}, default=str))
    return {"gpt": gpt, "bert": bert, "vit": vit}


if __name__ == "__main__":
    flaxen.runtime.relaunch_with_fast_allocator()  # huge pages for XLA's scratch memory: see README, Speed
    main()
