"""A forward-pass tour of the three families: build each tiny/small preset, run it, print shapes and sizes."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import flaxen
from flaxen.models.vit import to_finetune


def parameter_count(model) -> int:
    return sum(v.size for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))


def main() -> None:
    rng = np.random.default_rng(0)
    token_ids = jnp.asarray(rng.integers(5, 8192, (2, 32)), jnp.int32)
    padding_mask = jnp.arange(32)[None, :] < jnp.array([[32], [20]])

    gpt = flaxen.GPTForCausalLM(flaxen.GPTConfig.small(), rngs=nnx.Rngs(0))
    gpt.eval()
    logits = gpt(token_ids)
    loss, _ = gpt.loss({"token_ids": token_ids})
    print(f"GPT small     {parameter_count(gpt):>10,} params  logits {logits.shape}  untrained loss {float(loss):.3f} (ln V = {np.log(8192):.3f})")

    bert = flaxen.BertForMaskedLM(flaxen.BertConfig.small(), rngs=nnx.Rngs(0))
    bert.eval()
    loss, metrics = bert.loss({"token_ids": token_ids, "padding_mask": padding_mask})
    print(f"BERT small    {parameter_count(bert):>10,} params  MLM logits {bert(token_ids, padding_mask).shape}  untrained MLM loss {float(loss):.3f}")

    classifier = flaxen.BertForSequenceClassification(flaxen.BertConfig.small(num_labels=2), rngs=nnx.Rngs(0))
    classifier.eval()
    print(f"BERT classify {parameter_count(classifier):>10,} params  logits {classifier(token_ids, padding_mask).shape}")

    config = flaxen.ViTConfig.from_variant("Ti/4", image_size=28, channels=1, num_labels=10, representation_size=192)
    vit = flaxen.ViTForImageClassification(config, rngs=nnx.Rngs(0))
    vit.eval()
    images = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
    print(f"ViT Ti/4      {parameter_count(vit):>10,} params  logits {vit(images).shape}")
    finetune = to_finetune(vit, num_labels=3, image_size=32, rngs=nnx.Rngs(1))
    finetune.eval()
    finetune_logits = finetune(jax.random.normal(jax.random.key(1), (2, 32, 32, 1)))
    print(f"ViT finetune  {parameter_count(finetune):>10,} params  logits {finetune_logits.shape}  (zero-initialised head: max |logit| {float(jnp.abs(finetune_logits).max()):.1f})")


if __name__ == "__main__":
    main()
