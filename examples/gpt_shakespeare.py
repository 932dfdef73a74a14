"""Pretrain GPT on Shakespeare's plays with a BPE trained on them, then sample from it.

python examples/gpt_shakespeare.py --steps 3000          # the full example
"""

import argparse

from flax import nnx

import flaxen


def main(
    *,
    steps: int = 3000,
    batch_size: int = 16,
    vocab_size: int = 8192,
    out_dir: str = "runs/example-gpt",
    config: flaxen.GPTConfig | None = None,
    progress: bool = True,
) -> dict:
    files = flaxen.data.shakespeare_files()
    tokenizer = flaxen.text.train_bpe(files, vocab_size=vocab_size)
    config = (config or flaxen.GPTConfig.small()).replace(vocab_size=tokenizer.get_vocab_size())
    data = flaxen.data.text_blocks(files, tokenizer, block_size=config.context_length + 1)

    model = flaxen.GPTForCausalLM(config, rngs=nnx.Rngs(0))
    optimizer = flaxen.train.adamw(1e-3, warmup=steps // 20, total=steps, weight_decay=0.1)
    trainer = flaxen.Trainer(
        model,
        optimizer,
        out_dir,
        batch_size=batch_size,
        eval_every=max(1, steps // 5),
        eval_batches=20,
        progress=progress,
        tokenizer=tokenizer,
    )
    start = trainer.evaluate(data.validation)
    final = trainer.fit(data, steps=steps, overwrite=True)
    sample = flaxen.generate(
        model,
        tokenizer,
        "ROMEO:",
        max_new_tokens=min(120, config.context_length - 8),
        temperature=0.8,
        top_k=50,
        seed=0,
    )
    return {
        "start_validation_loss": start["loss"],
        "validation_loss": final["validation_loss"],
        "tokens_per_second": final["train_items_per_sec"],
        "sample": sample,
        "run": out_dir,
    }


if __name__ == "__main__":
    flaxen.runtime.relaunch_with_fast_allocator()  # huge pages for XLA's scratch memory: see README, Speed
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", default="runs/example-gpt")
    args = parser.parse_args()
    result = main(steps=args.steps, out_dir=args.out)
    print(f"validation loss {result['start_validation_loss']:.3f} -> {result['validation_loss']:.3f}")
    print(result["sample"])
